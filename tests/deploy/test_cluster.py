"""`searchrl cluster` without a cluster: argument parsing, the names it derives (checked against what the chart
really renders), the scale patches, the status table, and `wait-index` against a real index folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client import V1Container, V1ContainerStatus, V1ObjectMeta, V1Pod, V1PodSpec, V1PodStatus

from searchrl import cluster
from searchrl.cli import build_parser, main
from tests.deploy.conftest import RELEASE, one, render, with_secrets


def test_parse_scale() -> None:
    assert cluster.parse_scale(["retriever=8", "reward=2", "rollout=0"]) == {
        "retriever": 8,
        "reward": 2,
        "rollout": 0,
    }
    for bad, msg in (
        ([], "at least one"),
        (["retriever"], "'retriever': expected COMPONENT=N"),
        (["trainer=2"], "'trainer=2': the trainer"),
        (["redis=2"], "unknown component 'redis'"),
        (["retriever=x"], "'retriever=x': replicas must be an integer"),
        (["retriever=0"], "'retriever=0': replicas must be >= 1"),
        (["rollout=-1"], "'rollout=-1': replicas must be >= 0"),
        (["reward=1", "reward=2"], "'reward=2': reward given twice"),
    ):
        with pytest.raises(ValueError, match=msg):
            cluster.parse_scale(bad)


def test_names_match_the_rendered_chart() -> None:
    objs = render(values=with_secrets({"retriever": {"autoscaling": {"enabled": True}}}))
    assert one(objs, "Deployment", "retriever")["metadata"]["name"] == cluster.component_name(
        RELEASE, "retriever"
    )
    assert one(objs, "StatefulSet", "rollout")["metadata"]["name"] == cluster.component_name(
        RELEASE, "rollout"
    )
    hpa = one(objs, "HorizontalPodAutoscaler", "retriever")
    assert hpa["metadata"]["name"] == cluster.component_name(RELEASE, "retriever")
    labels = one(objs, "Deployment", "reward")["spec"]["template"]["metadata"]["labels"]
    for part in cluster.selector(RELEASE).split(","):
        k, v = part.split("=")
        assert labels[k] == v
    for comp, kind in cluster.SCALABLE.items():
        assert one(objs, kind, comp)
    assert cluster.fullname("searchrl-prod") == "searchrl-prod"


def test_scale_patches_keep_the_hpa_in_charge() -> None:
    ret = cluster.component_name("rl", "retriever")
    patches = cluster.scale_patches("rl", {"retriever": 12, "rollout": 3}, hpas={ret: 8})
    assert patches == [
        cluster.Patch("HorizontalPodAutoscaler", ret, {"spec": {"minReplicas": 12, "maxReplicas": 12}}),
        cluster.Patch("Deployment", ret, {"spec": {"replicas": 12}}),
        cluster.Patch("StatefulSet", cluster.component_name("rl", "rollout"), {"spec": {"replicas": 3}}),
    ]
    (p,) = [p for p in cluster.scale_patches("rl", {"retriever": 2}, {ret: 8}) if p.kind.startswith("Hor")]
    assert p.body == {"spec": {"minReplicas": 2, "maxReplicas": 8}}


def test_status_table() -> None:
    def pod(name: str, comp: str, ready: list[bool], restarts: int, node: str | None) -> V1Pod:
        return V1Pod(
            metadata=V1ObjectMeta(name=name, labels={"app.kubernetes.io/component": comp}),
            spec=V1PodSpec(containers=[V1Container(name=f"c{i}") for i in range(len(ready))], node_name=node),
            status=V1PodStatus(
                phase="Running" if node else "Pending",
                container_statuses=[
                    V1ContainerStatus(
                        name=f"c{i}",
                        ready=r,
                        restart_count=restarts,
                        image="i",
                        image_id="",
                        container_id=None,
                    )
                    for i, r in enumerate(ready)
                ]
                if node
                else None,
            ),
        )

    rows = cluster.pod_rows(
        [pod("rl-trainer-0", "trainer", [True], 1, "gpu-1"), pod("rl-ret-a", "retriever", [False], 0, None)]
    )
    assert rows == [
        ("retriever", "rl-ret-a", "Pending", "0/1", 0, "-"),
        ("trainer", "rl-trainer-0", "Running", "1/1", 1, "gpu-1"),
    ]
    table = cluster.format_table(rows).splitlines()
    assert table[0].split() == ["COMPONENT", "POD", "PHASE", "READY", "RESTARTS", "NODE"]
    assert table[2].split() == ["trainer", "rl-trainer-0", "Running", "1/1", "1", "gpu-1"]


def test_cli_parses_cluster_commands(capsys) -> None:
    args = build_parser().parse_args(["cluster", "scale", "retriever=8", "-n", "ml", "--release", "rl"])
    assert (args.command, args.action, args.assignments, args.namespace, args.release) == (
        "cluster",
        "scale",
        ["retriever=8"],
        "ml",
        "rl",
    )
    with pytest.raises(ValueError, match="trainer"):
        cluster.cmd_scale(build_parser().parse_args(["cluster", "scale", "trainer=2"]))


def test_wait_index(tmp_path: Path) -> None:
    from searchrl_retriever.corpus import load_corpus
    from searchrl_retriever.index import META_FILE, corpus_fingerprint

    root = Path(__file__).resolve().parents[2]
    corpus = root / "data" / "tiny" / "corpus.jsonl"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump({"retriever": {"corpus": str(corpus), "index_dir": str(tmp_path / "index")}})
    )
    argv = ["cluster", "wait-index", "-c", str(cfg), "--timeout", "0", "--interval", "0.01"]
    assert main(argv) == 1, "no index yet"
    (tmp_path / "index").mkdir()
    meta = {"embedder": "builtin:all-minilm-l6-v2", "fingerprint": "stale", "num_passages": 1}
    (tmp_path / "index" / META_FILE).write_text(json.dumps(meta))
    assert main(argv) == 1, "an index of another corpus is not current"
    meta["fingerprint"] = corpus_fingerprint(load_corpus(str(corpus)))
    (tmp_path / "index" / META_FILE).write_text(json.dumps(meta))
    assert main(argv) == 1, "an index without the passage prefix it was embedded with is not current"
    meta["passage_prefix"] = ""
    (tmp_path / "index" / META_FILE).write_text(json.dumps(meta))
    assert main(argv) == 0
    cfg.write_text(
        yaml.safe_dump(
            {
                "retriever": {
                    "corpus": str(corpus),
                    "index_dir": str(tmp_path / "index"),
                    "passage_prefix": "passage: ",
                }
            }
        )
    )
    assert main(argv) == 1, "a changed passage prefix makes the index stale"


def test_no_cluster_access_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["cluster", "status", "-n", "ml"]) == 2
    assert "no Kubernetes access" in capsys.readouterr().err
