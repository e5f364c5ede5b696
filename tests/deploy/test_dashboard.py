"""The Grafana dashboard and the Prometheus alert rules (deploy/helm/searchrl/dashboards): they parse, every PromQL
query parses and names only metrics the services export, and the chart ships both when asked (a ConfigMap with the
dashboard sidecar's label, a PrometheusRule), and neither by default. That the step metrics they select by label
exist is checked where a real trainer step runs (tests/integration/test_trainer_loop.py)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY

from searchrl import queue_metrics
from searchrl.config import RetrieverConfig, RewardConfig, RolloutConfig, StreamsConfig, TrainerConfig
from tests.deploy.conftest import CHART, find, render, with_secrets
from tests.deploy.test_compose import run_compose
from tests.deploy.test_helm import lint_errors, validate_all

DASHBOARDS = CHART / "dashboards"
# Every module that defines a service's metrics (imported, they register in the default registry).
METRIC_MODULES = (
    "searchrl.grpcutil",
    "searchrl_retriever.metrics",
    "searchrl_retriever.service",
    "searchrl_reward.scorer",
    "searchrl_rollout.worker",
    "searchrl_trainer.loop",
)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
METRIC = re.compile(r"\bsearchrl_[a-z0-9_]+")


def dashboard() -> dict:
    return json.loads((DASHBOARDS / "searchrl.json").read_text())


def alert_rules() -> list[dict]:
    return [
        rule
        for g in yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"]
        for rule in g["rules"]
    ]


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and alert rule."""
    out = [(f"panel {p['title']!r}", t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]
    return out + [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


@pytest.fixture
def exported(redis_client) -> set[str]:
    """The names of every series the services export (a labelled metric counts before its first sample)."""
    for name in METRIC_MODULES:
        importlib.import_module(name)
    queue_metrics.register(redis_client, StreamsConfig())
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_every_query_parses_and_names_only_exported_metrics(exported):
    problems, used = [], set()
    for where, expr in queries():
        try:
            promql_parser.parse(expr)
        except Exception as e:  # noqa: BLE001 - the parser raises plain exceptions
            problems.append(f"{where}: {expr!r} does not parse: {e}")
        names = set(METRIC.findall(expr))
        used |= names
        problems += [f"{where}: {n} is not exported by any service" for n in sorted(names - exported)]
    assert not problems, "\n".join(problems)
    # the panels: reward, searches, valid queries, length, entropy, staleness, phase seconds,
    # retriever queries/s and batch size, queue depths
    for needed in (
        "searchrl_trainer_step_metric",
        "searchrl_retriever_queries_total",
        "searchrl_queue_entries",
    ):
        assert needed in used


def test_collapse_warnings_exist_for_searches_and_entropy():
    alerts = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert 'metric="num_searches_mean"' in alerts["SearchrlSearchCollapse"]
    assert 'metric="entropy_est"' in alerts["SearchrlEntropyCollapse"]
    stats = [p for p in dashboard()["panels"] if "collapse" in p["title"].lower()]
    assert len(stats) == 2 and all(
        p["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"] == "red" for p in stats
    )


def test_panels_are_unique_and_laid_out_without_overlap():
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_chart_ships_the_dashboard_and_rules_only_when_enabled():
    kinds = {o["kind"] for o in render(values=with_secrets({}))}
    assert "PrometheusRule" not in kinds
    assert not [o for o in render(values=with_secrets({})) if "searchrl.json" in o.get("data", {})]
    metrics = {
        "grafanaDashboard": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    }
    objs = render(values=with_secrets({"metrics": metrics}))
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and "searchrl.json" in o.get("data", {}))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["searchrl.json"]) == dashboard()
    (rule,) = find(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())
    assert not validate_all(objs)
    assert not lint_errors(with_secrets({"metrics": metrics}))


def test_compose_monitoring_profile_scrapes_every_service_with_the_charts_files():
    r = run_compose(
        "--profile",
        "cpu",
        "--profile",
        "monitoring",
        "config",
        "--format",
        "json",
        env={"REDIS_PASSWORD": "pw"},
    )
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    mounts = {
        v["target"]: Path(v["source"]) for s in ("prometheus", "grafana") for v in services[s]["volumes"]
    }
    assert mounts["/etc/prometheus/alerts.yaml"] == DASHBOARDS / "alerts.yaml"
    assert mounts["/var/lib/grafana/dashboards/searchrl.json"] == DASHBOARDS / "searchrl.json"
    assert all(p.is_file() for p in mounts.values())
    prom = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    targets = {t for c in prom["scrape_configs"][0]["static_configs"] for t in c["targets"]}
    aliases = {
        a
        for s in services.values()
        for net in (s.get("networks") or {}).values()
        for a in (net or {}).get("aliases", [])
    }
    ports = {"retriever": RetrieverConfig().metrics_port, "reward": RewardConfig().metrics_port}
    ports |= {"trainer": TrainerConfig().metrics_port, "rollout": RolloutConfig().metrics_port}
    assert targets == {f"{name}:{port}" for name, port in ports.items()} and set(ports) <= aliases
