"""Writes deploy/helm/searchrl/values.schema.json: the chart's own keys (below) plus the `config:` tree generated
from searchrl.config.Config, so `helm install` rejects an unknown or mistyped key anywhere in the values, the
searchrl config included, with the key's path in the message.

  python deploy/helm/values_schema.py           # rewrite the schema
  python deploy/helm/values_schema.py --check   # exit 1 when the committed schema is stale (a test runs this)

Objects are closed (additionalProperties: false) except free-form Kubernetes fragments (resources, affinity,
tolerations, annotations, env entries, NetworkPolicy peers), which the Kubernetes API itself validates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from searchrl.config import Config

SCHEMA_PATH = Path(__file__).resolve().parent / "searchrl" / "values.schema.json"

STR = {"type": "string"}
BOOL = {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
POSITIVE = {"type": "integer", "minimum": 1}
OBJECT = {"type": "object"}  # free-form Kubernetes fragment
OBJECTS = {"type": "array", "items": OBJECT}
QUANTITY = {"type": ["string", "integer"], "pattern": r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?|[munk])?$"}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
}


def closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    return out


def scheduling() -> dict[str, Any]:
    return {
        "nodeSelector": {"type": "object", "additionalProperties": STR},
        "tolerations": OBJECTS,
        "affinity": OBJECT,
        "podAnnotations": {"type": "object", "additionalProperties": STR},
        "extraEnv": OBJECTS,
    }


AUTOSCALING = closed(
    {
        "enabled": BOOL,
        "maxReplicas": POSITIVE,
        "targetCPUUtilizationPercentage": {"type": "integer", "minimum": 1, "maximum": 100},
    }
)
PDB = closed({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}})
SHARED_VOLUME = closed({"existingClaim": STR, "hostPath": STR})


def chart_schema() -> dict[str, Any]:
    return closed(
        {
            "nameOverride": STR,
            "fullnameOverride": STR,
            "image": closed(
                {
                    "registry": STR,
                    "prefix": {"type": "string", "minLength": 1},
                    "tag": STR,
                    "variant": {"enum": ["gpu", "cpu"]},
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                }
            ),
            "imagePullSecrets": OBJECTS,
            "config": {},  # filled in from searchrl.config below
            "volumes": closed(
                {
                    "models": SHARED_VOLUME,
                    "data": SHARED_VOLUME,
                    "index": closed(
                        {
                            "existingClaim": STR,
                            "create": BOOL,
                            "size": QUANTITY,
                            "storageClassName": STR,
                            "accessModes": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "enum": [
                                        "ReadWriteOnce",
                                        "ReadOnlyMany",
                                        "ReadWriteMany",
                                        "ReadWriteOncePod",
                                    ]
                                },
                            },
                        }
                    ),
                }
            ),
            "podSecurityContext": OBJECT,
            "securityContext": OBJECT,
            "auth": closed(
                {
                    "existingSecret": STR,
                    "existingSecretKey": {"type": "string", "minLength": 1},
                    "token": {
                        "type": "string",
                        "pattern": r"^$|^[!-~]{16,}$",
                    },  # as searchrl.config.read_token
                }
            ),
            "tls": closed({"existingSecret": STR, "clientAuth": BOOL}),
            "retriever": closed(
                {
                    "enabled": BOOL,
                    "replicas": POSITIVE,
                    "gpus": COUNT,
                    "resources": RESOURCES,
                    **scheduling(),
                    "autoscaling": AUTOSCALING,
                    "pdb": PDB,
                    "startupSeconds": POSITIVE,
                    "shards": POSITIVE,
                    "router": closed({"replicas": POSITIVE, "resources": RESOURCES}),
                    "indexJob": closed(
                        {"enabled": BOOL, "gpus": COUNT, "resources": RESOURCES, "timeoutSeconds": POSITIVE}
                    ),
                }
            ),
            "reward": closed(
                {
                    "enabled": BOOL,
                    "replicas": POSITIVE,
                    "resources": RESOURCES,
                    **scheduling(),
                    "autoscaling": AUTOSCALING,
                    "pdb": PDB,
                }
            ),
            "rollout": closed(
                {
                    "enabled": BOOL,
                    "replicas": POSITIVE,
                    "gpus": COUNT,
                    "resources": RESOURCES,
                    "shmSize": QUANTITY,
                    **scheduling(),
                    "pdb": PDB,
                    "startupSeconds": POSITIVE,
                }
            ),
            "trainer": closed(
                {
                    "enabled": BOOL,
                    "gpus": COUNT,
                    "resources": RESOURCES,
                    "shmSize": QUANTITY,
                    **scheduling(),
                    "checkpoints": closed({"size": QUANTITY, "storageClassName": STR}),
                    "startupSeconds": POSITIVE,
                    "rendezvousPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                }
            ),
            "redis": closed(
                {
                    "enabled": BOOL,
                    # No credentials in the URL: the password comes from auth.existingSecret.
                    "url": {"type": "string", "pattern": r"^$|^rediss?://[^@/\s]+(/[0-9]+)?$"},
                    "image": closed({"repository": STR, "tag": STR}),
                    "auth": closed(
                        {
                            "existingSecret": STR,
                            "existingSecretKey": {"type": "string", "minLength": 1},
                            # spliced into the Redis URL: URL-safe characters only
                            "password": {"type": "string", "pattern": r"^$|^[A-Za-z0-9._~-]{16,}$"},
                        }
                    ),
                    "resources": RESOURCES,
                    "maxmemory": {"type": "string", "pattern": r"^[0-9]+(b|kb|mb|gb)?$"},
                    "appendfsync": {"enum": ["always", "everysec"]},
                    "persistence": closed({"size": QUANTITY, "storageClassName": STR}),
                    "nodeSelector": {"type": "object", "additionalProperties": STR},
                    "tolerations": OBJECTS,
                }
            ),
            "metrics": closed(
                {
                    "podAnnotations": BOOL,
                    "serviceMonitor": closed(
                        {
                            "enabled": BOOL,
                            "interval": STR,
                            "labels": {"type": "object", "additionalProperties": STR},
                        }
                    ),
                    "prometheusRule": closed(
                        {"enabled": BOOL, "labels": {"type": "object", "additionalProperties": STR}}
                    ),
                    "grafanaDashboard": closed(
                        {
                            "enabled": BOOL,
                            "labels": {"type": "object", "additionalProperties": STR},
                            "annotations": {"type": "object", "additionalProperties": STR},
                        }
                    ),
                }
            ),
            "networkPolicy": closed(
                {
                    "enabled": BOOL,
                    "metricsFrom": OBJECTS,
                    "retrieverHttpFrom": OBJECTS,
                    "dnsTo": OBJECTS,
                    "redisTo": OBJECTS,
                }
            ),
        }
    )


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema of `config:`, its $defs) from the pydantic tree; `source` is bookkeeping, not a config key."""
    schema = Config.model_json_schema(mode="validation")
    defs = schema.pop("$defs", {})
    schema["properties"].pop("source", None)
    schema.pop("title", None)
    schema["description"] = "The searchrl config (searchrl/config.py), rendered to config.yaml."
    return schema, defs


def build() -> dict[str, Any]:
    root = chart_schema()
    cfg, defs = config_schema()
    root["properties"]["config"] = cfg
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "searchrl Helm chart values (generated by deploy/helm/values_schema.py)",
        **root,
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail when the committed schema differs")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH}: stale; run python deploy/helm/values_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
