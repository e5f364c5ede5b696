"""`searchrl cluster`: a Helm release of searchrl seen through the Kubernetes API, plus the retriever's index wait.

  searchrl cluster status [-n NS] [--release R] [--context C]      pods per component: ready, restarts, node
  searchrl cluster scale retriever=N [reward=N rollout=N retriever-shard-<i>=N] [-n NS] [--release R]
  searchrl cluster wait-index -c CONFIG [--timeout S] [--set K=V]   (the retriever pods' initContainer)

`scale` patches the workload's replicas; when an HPA manages the workload (retriever, reward) it also sets the
HPA's minReplicas (and raises maxReplicas if needed), since the HPA would otherwise undo the change. With index
shards (Helm retriever.shards), `retriever` is the router and `retriever-shard-<i>` a shard's replicas. The trainer
is one pod by design and is not scalable. Names follow the chart (deploy/helm/searchrl): `<release>-searchrl-<c>`
(just `<release>-<c>` when the release name contains "searchrl").

Pure parts (argument parsing, names, the patches, the status table) take plain values; only `_api()` and the
`cmd_*` functions talk to a cluster, with the `kubernetes` client (`pip install searchrl[k8s]`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

CHART = "searchrl"
# component -> workload kind in the chart; the trainer is left out on purpose (one learner per run).
SCALABLE = {"retriever": "Deployment", "reward": "Deployment", "rollout": "StatefulSet"}
HPA_MANAGED = {"retriever", "reward"}
# With retriever.shards > 1, "retriever" is the router and each shard a Deployment of its own (HPA-managed).
_SHARD = re.compile(r"retriever-shard-\d+")


def workload_kind(component: str) -> str | None:
    """The workload kind of a scalable component (None: not scalable)."""
    return "Deployment" if _SHARD.fullmatch(component) else SCALABLE.get(component)


@dataclass(frozen=True)
class Patch:
    kind: str  # Deployment | StatefulSet | HorizontalPodAutoscaler
    name: str
    body: dict[str, Any]


def fullname(release: str) -> str:
    """The chart's `searchrl.fullname` for a release (no nameOverride/fullnameOverride)."""
    return release if CHART in release else f"{release}-{CHART}"[:63].rstrip("-")


def component_name(release: str, component: str) -> str:
    return f"{fullname(release)}-{component}"[:63].rstrip("-")


def selector(release: str) -> str:
    return f"app.kubernetes.io/name={CHART},app.kubernetes.io/instance={release}"


def parse_scale(assignments: list[str]) -> dict[str, int]:
    """`["retriever=8", "reward=2"]` -> {"retriever": 8, "reward": 2}; errors name the offending argument."""
    if not assignments:
        raise ValueError("scale: give at least one COMPONENT=N (e.g. retriever=8)")
    out: dict[str, int] = {}
    for a in assignments:
        comp, sep, value = a.partition("=")
        comp = comp.strip()
        if not sep:
            raise ValueError(f"{a!r}: expected COMPONENT=N")
        if comp == "trainer":
            raise ValueError(f"{a!r}: the trainer is a single learner and does not scale by replicas")
        if workload_kind(comp) is None:
            scalable = ", ".join([*SCALABLE, "retriever-shard-<i>"])
            raise ValueError(f"{a!r}: unknown component {comp!r} (scalable: {scalable})")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{a!r}: replicas must be an integer, got {value!r}") from None
        hpa = comp in HPA_MANAGED or _SHARD.fullmatch(comp)
        if n < 0 or (hpa and n < 1):
            raise ValueError(f"{a!r}: replicas must be >= {1 if hpa else 0}")
        if comp in out:
            raise ValueError(f"{a!r}: {comp} given twice")
        out[comp] = n
    return out


def scale_patches(release: str, targets: dict[str, int], hpas: dict[str, int]) -> list[Patch]:
    """Patches that set each component to its replica count. `hpas` maps the names of existing HPAs to their
    maxReplicas; an HPA of the workload gets minReplicas = N (and maxReplicas >= N) so it keeps the new floor."""
    patches = []
    for comp, n in targets.items():
        name = component_name(release, comp)
        if name in hpas:
            patches.append(
                Patch(
                    "HorizontalPodAutoscaler",
                    name,
                    {"spec": {"minReplicas": n, "maxReplicas": max(hpas[name], n)}},
                )
            )
        patches.append(Patch(workload_kind(comp), name, {"spec": {"replicas": n}}))
    return patches


def pod_rows(pods: list[Any]) -> list[tuple[str, str, str, str, int, str]]:
    """(component, pod, phase, ready 'r/n', restarts, node) per pod, sorted; `pods` are V1Pod objects."""
    rows = []
    for p in pods:
        labels = p.metadata.labels or {}
        statuses = p.status.container_statuses or []
        ready = sum(1 for s in statuses if s.ready)
        restarts = sum(s.restart_count or 0 for s in statuses)
        rows.append(
            (
                labels.get("app.kubernetes.io/component", "?"),
                p.metadata.name,
                p.status.phase or "?",
                f"{ready}/{len(p.spec.containers)}",
                restarts,
                p.spec.node_name or "-",
            )
        )
    return sorted(rows)


def format_table(rows: list[tuple]) -> str:
    header = ("COMPONENT", "POD", "PHASE", "READY", "RESTARTS", "NODE")
    cells = [header, *[tuple(str(c) for c in r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


# ---- cluster I/O -------------------------------------------------------------------------------------------


def _api(context: str | None):  # noqa: ANN202 - kubernetes client module
    try:
        from kubernetes import client, config
    except ImportError:
        raise RuntimeError("the kubernetes client is not installed: pip install 'searchrl[k8s]'") from None
    try:
        config.load_kube_config(context=context)
    except Exception as outside:  # noqa: BLE001 - fall back to the pod's service account
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise RuntimeError(
                f"no Kubernetes access: kubeconfig: {outside}; not inside a pod either"
            ) from None
    return client


def cmd_status(args: argparse.Namespace) -> int:
    client = _api(args.context)
    pods = client.CoreV1Api().list_namespaced_pod(args.namespace, label_selector=selector(args.release)).items
    if not pods:
        print(f"no pods of release {args.release!r} in namespace {args.namespace!r}", file=sys.stderr)
        return 1
    print(format_table(pod_rows(pods)))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    targets = parse_scale(args.assignments)
    client = _api(args.context)
    apps, autoscaling = client.AppsV1Api(), client.AutoscalingV2Api()
    hpas = {
        h.metadata.name: h.spec.max_replicas
        for h in autoscaling.list_namespaced_horizontal_pod_autoscaler(
            args.namespace, label_selector=selector(args.release)
        ).items
    }
    patch_fn = {
        "Deployment": apps.patch_namespaced_deployment,
        "StatefulSet": apps.patch_namespaced_stateful_set,
        "HorizontalPodAutoscaler": autoscaling.patch_namespaced_horizontal_pod_autoscaler,
    }
    for p in scale_patches(args.release, targets, hpas):
        patch_fn[p.kind](p.name, args.namespace, p.body)
        print(f"{p.kind}/{p.name}: {json.dumps(p.body['spec'])}")
    return 0


def cmd_wait_index(args: argparse.Namespace) -> int:
    """Block until the retriever's index dir holds an index of exactly this corpus (this replica's shard),
    embedder, passage prefix and FAISS tier (the retriever's own staleness rule, `IndexKey`)."""
    from searchrl.config import load_config
    from searchrl_retriever.backend import dense_key, index_dir, load_passages
    from searchrl_retriever.index import META_FILE, DenseIndex

    cfg = load_config(args.config, args.overrides)
    want = dense_key(cfg, load_passages(cfg))
    directory = index_dir(cfg)
    deadline = time.monotonic() + args.timeout
    while True:
        if DenseIndex.is_current(directory, want):
            meta = json.loads((directory / META_FILE).read_text())
            print(f"index in {directory} is current ({meta.get('num_passages')} passages)")
            return 0
        if time.monotonic() > deadline:
            print(
                f"{directory / META_FILE}: no current index after {args.timeout:.0f}s (want {want})",
                file=sys.stderr,
            )
            return 1
        time.sleep(args.interval)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster", help="a Helm release on Kubernetes: status, scale; the retriever's index wait"
    )
    csub = p.add_subparsers(dest="action", required=True)

    def target(q: argparse.ArgumentParser) -> None:
        q.add_argument("-n", "--namespace", default="default")
        q.add_argument("--release", default="searchrl", help="Helm release name (default: searchrl)")
        q.add_argument(
            "--context", help="kubeconfig context (default: current; in a pod: its service account)"
        )

    p_status = csub.add_parser("status", help="pods of the release per component")
    target(p_status)
    p_scale = csub.add_parser("scale", help="set replicas, e.g. retriever=8 reward=2 rollout=4")
    p_scale.add_argument("assignments", nargs="+", metavar="COMPONENT=N")
    target(p_scale)
    p_wait = csub.add_parser("wait-index", help="wait until the retriever's index is current (initContainer)")
    p_wait.add_argument("-c", "--config", required=True)
    p_wait.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    p_wait.add_argument("--timeout", type=float, default=86400.0)
    p_wait.add_argument("--interval", type=float, default=15.0)


def run(args: argparse.Namespace) -> int:
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:  # wait-index needs no client; status/scale say how to install it

        class ApiException(Exception):  # noqa: N818 - stands in for the client's class
            pass

    try:
        return {"status": cmd_status, "scale": cmd_scale, "wait-index": cmd_wait_index}[args.action](args)
    except ApiException as e:  # the API's answer (status + reason) instead of a traceback
        print(f"error: Kubernetes API: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
