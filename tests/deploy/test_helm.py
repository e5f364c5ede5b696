"""The Helm chart, rendered offline with helm-python-sdk for every values file in deploy/helm/ci-values: lint,
strict schema validation of every object against Kubernetes 1.33 (kubernetes-validate), and the properties the
system relies on (probes, resources, selectors, headless services, wiring of every env var and config path)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import yaml

from searchrl.config import load_config
from tests.deploy.conftest import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ci_values,
    find,
    notes,
    one,
    pod_templates,
    render,
    with_secrets,
)

SEARCHRL = ("retriever", "reward", "rollout", "trainer")
POD_NAME = "statefulset.kubernetes.io/pod-name"
CRDS = {"ServiceMonitor", "PrometheusRule"}  # no schema in kubernetes-validate; checked structurally


def validate_all(objs: list[dict], version: str = KUBE_VERSION) -> list[str]:
    """kubernetes-validate --strict for every object; returns the failures (kind/name: message)."""
    import kubernetes_validate

    errors = []
    for o in objs:
        if o["kind"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {e.message} at {list(e.path)}")
    return errors


def lint_errors(values: dict, chart: Path = CHART) -> list[str]:
    import helm_python as helm

    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    return [m["error"] for m in report["messages"] if m["severity"] >= 2] + report["errors"]


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def searchrl_pods(objs: list[dict]) -> dict[str, dict]:
    """component -> pod template of the long-running searchrl services."""
    out = {}
    for wl, tpl in pod_templates(objs):
        comp = tpl["metadata"]["labels"]["app.kubernetes.io/component"]
        if comp in SEARCHRL and wl["kind"] != "Job":
            out[comp] = tpl
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def set_args(container: dict) -> list[str]:
    """The `--set KEY=VALUE` config overrides in a container's args."""
    args = container["args"]
    return [v for flag, v in zip(args, args[1:], strict=False) if flag == "--set"]


def expand(value: str, env: dict[str, str]) -> str:
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


# ---- the checks CI runs on every values file -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ci_values()))
def test_lint_clean(name: str) -> None:
    assert lint_errors(ci_values()[name]) == []


# Kubernetes 1.33 and the newest schemas kubernetes-validate ships (1.37).
@pytest.mark.parametrize("version", [KUBE_VERSION, "1.37.0"])
@pytest.mark.parametrize("name", sorted(ci_values()))
def test_every_object_validates_strictly(rendered, name: str, version: str) -> None:
    objs = rendered[name]
    assert objs, "nothing rendered"
    assert validate_all(objs, version) == []


@pytest.mark.parametrize("name", sorted(ci_values()))
def test_selectors_match_pod_labels(rendered, name: str) -> None:
    objs = rendered[name]
    # a StatefulSet's controller adds each pod's name as a label (a Service may pick one pod by it)
    templates = [
        tpl["metadata"]["labels"]
        | ({POD_NAME: f"{wl['metadata']['name']}-0"} if wl["kind"] == "StatefulSet" else {})
        for wl, tpl in pod_templates(objs)
    ]

    def matches_some(selector: dict) -> bool:
        return any(all(labels.get(k) == v for k, v in selector.items()) for labels in templates)

    for wl, tpl in pod_templates(objs):
        sel = wl["spec"].get("selector", {}).get("matchLabels")
        if sel is not None:
            assert all(tpl["metadata"]["labels"].get(k) == v for k, v in sel.items()), wl["metadata"]["name"]
    for svc in find(objs, "Service"):
        assert matches_some(svc["spec"]["selector"]), f"Service {svc['metadata']['name']} selects no pod"
        # every targetPort names a port of the selected containers
        names = {
            p["name"]
            for labels, (_, tpl) in zip(templates, pod_templates(objs), strict=True)
            if all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
            for c in containers(tpl)
            for p in c.get("ports", [])
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, f"{svc['metadata']['name']}: targetPort {port['targetPort']}"
    for pdb in find(objs, "PodDisruptionBudget"):
        assert matches_some(pdb["spec"]["selector"]["matchLabels"]), pdb["metadata"]["name"]
    for np in find(objs, "NetworkPolicy"):
        assert matches_some(np["spec"]["podSelector"]["matchLabels"]), np["metadata"]["name"]
    workloads = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for hpa in find(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) in workloads, hpa["metadata"]["name"]
    for sts in find(objs, "StatefulSet"):
        svc = find(objs, "Service", sts["spec"]["serviceName"])
        assert svc, f"StatefulSet {sts['metadata']['name']}: no Service {sts['spec']['serviceName']}"


@pytest.mark.parametrize("name", sorted(ci_values()))
def test_probes_resources_security(rendered, name: str) -> None:
    objs = rendered[name]
    for wl, tpl in pod_templates(objs):
        for c in containers(tpl) + tpl["spec"].get("initContainers", []):
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits", {}).get("memory"), f"{c['name']}: resources"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            if (
                "command" not in c and "/searchrl-" in f"/{c['image']}"
            ):  # runs searchrl (the image's entrypoint)
                # what a read-only root leaves writable for the searchrl images: HOME (HF/vLLM/triton caches), /tmp
                writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
                assert {"/home/searchrl", "/tmp"} <= writable, f"{wl['metadata']['name']}/{c['name']}"
        assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True, wl["metadata"]["name"]
        assert tpl["spec"]["automountServiceAccountToken"] is False, wl["metadata"]["name"]
        volumes = {v["name"] for v in tpl["spec"].get("volumes", [])}
        volumes |= {v["metadata"]["name"] for v in wl["spec"].get("volumeClaimTemplates", [])}
        for c in containers(tpl) + tpl["spec"].get("initContainers", []):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{wl['metadata']['name']}/{c['name']}: no volume {m['name']}"
    for comp, tpl in searchrl_pods(objs).items():
        (c,) = containers(tpl)
        health_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "health")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == health_port, f"{comp}: {probe} on the health port"
        # the trainer's JIT ops build dir is writable under the read-only root
        if comp == "trainer":
            ext = env_of(c)["TORCH_EXTENSIONS_DIR"]["value"]
            assert any(m["mountPath"] == ext for m in c["volumeMounts"])
        assert c["args"][:2] == ["serve", comp] and c["args"][-1] == "/etc/searchrl/config.yaml"


@pytest.mark.parametrize("name", sorted(ci_values()))
def test_config_and_env_wiring(rendered, name: str, tmp_path: Path, monkeypatch) -> None:
    """config.yaml loads with load_config; with each pod's env it points every address at a rendered Service and
    port, and every path the service reads at a mounted volume."""
    objs = rendered[name]
    cm = one(objs, "ConfigMap", "config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in find(objs, "Service")}
    for comp, tpl in searchrl_pods(objs).items():
        (c,) = containers(tpl)
        env = env_of(c)
        plain = {k: e.get("value", "secret") for k, e in env.items()}
        for key in (
            "SEARCHRL_REDIS_URL",
            "SEARCHRL_RETRIEVER_ADDR",
            "SEARCHRL_REWARD_ADDR",
            "SEARCHRL_TRAINER_ADDR",
        ):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.delenv("SEARCHRL_ROLLOUT_ADDRS", raising=False)
        for k, v in plain.items():
            if k.startswith("SEARCHRL_") and "value" in env[k]:
                monkeypatch.setenv(k, expand(v, plain))
        # every service gets the gRPC token from a Secret (never as a plain value)
        token_ref = env["SEARCHRL_TOKEN"]["valueFrom"]["secretKeyRef"]
        values = ci_values()[name]
        assert token_ref["name"] == (
            values.get("auth", {}).get("existingSecret") or f"{RELEASE}-searchrl-auth"
        )
        cfg = load_config(path, set_args(c))
        # the config volume is mounted where the args say
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "/etc/searchrl" in mounts

        def mounted(p: str, writable: bool = False, mounts: dict = mounts) -> bool:
            hit = [m for mp, m in mounts.items() if p == mp or p.startswith(mp.rstrip("/") + "/")]
            return bool(hit) and (not writable or not hit[0].get("readOnly", False))

        # the retriever uses Redis only for the shared query cache
        if comp in ("rollout", "trainer") or (comp == "retriever" and cfg.retriever.cache.redis_ttl_s):
            names = list(env)
            assert names.index("REDIS_PASSWORD") < names.index("SEARCHRL_REDIS_URL"), (
                "$(REDIS_PASSWORD) order"
            )
            assert "$(REDIS_PASSWORD)" in env["SEARCHRL_REDIS_URL"]["value"]
            assert cfg.addresses.redis_url and cfg.addresses.redis_url.startswith(("redis://", "rediss://"))
        if comp in ("rollout", "trainer"):
            if not cfg.model.path.startswith("builtin:"):
                assert mounted(cfg.model.path), f"{comp}: model.path {cfg.model.path} not mounted"
            assert mounted(cfg.model.cache_dir, writable=True), f"{comp}: model.cache_dir"
        elif not (comp == "retriever" and cfg.retriever.cache.redis_ttl_s):
            assert "SEARCHRL_REDIS_URL" not in env, f"{comp} does not use Redis and gets no password"
        if comp == "rollout":
            for addr in (cfg.addresses.retriever, cfg.addresses.reward, cfg.addresses.trainer):
                host, port = addr.rsplit(":", 1)
                assert host in services and int(port) in services[host], f"rollout -> {addr}: no such Service"
            assert mounted(cfg.rollout.weights_dir, writable=True)
        if comp == "trainer":
            assert mounted(cfg.run.run_dir, writable=True), "trainer: run_dir (checkpoints) not on a volume"
            for stage in cfg.trainer.stages:
                assert mounted(stage.data), f"trainer: {stage.data} not mounted"
        if comp == "retriever" and cfg.retriever.mode != "router":
            assert mounted(cfg.retriever.corpus), f"retriever: corpus {cfg.retriever.corpus} not mounted"
            assert mounted(cfg.retriever.index_dir), "retriever: index_dir not mounted"
        # ports of the config are the container's, the Service's and the probes'
        section = getattr(cfg, comp)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        http = {"http": cfg.retriever.http_port} if comp == "retriever" and cfg.retriever.http_port else {}
        if comp == "trainer" and cfg.trainer.nodes > 1:  # torch's rendezvous on pod 0 (MASTER_PORT)
            http = {"rendezvous": int(env["MASTER_PORT"]["value"])}
        assert (
            ports
            == {"grpc": section.port, "metrics": section.metrics_port, "health": section.health_port} | http
        )
        assert len(set(ports.values())) == len(ports), comp
        if ci_values()[name].get("tls", {}).get("existingSecret"):
            assert cfg.security.tls_cert and mounted(cfg.security.tls_cert) and mounted(cfg.security.tls_ca)
            assert cfg.security.tls_client_auth is ci_values()[name]["tls"]["clientAuth"]
        if cfg.addresses.rollout and comp == "rollout":
            for addr in cfg.addresses.rollout:
                assert addr.endswith(f".svc:{section.port}")


def test_default_chart_shape(rendered) -> None:
    objs = rendered["default"]
    ret_svc = one(objs, "Service", "retriever")
    assert ret_svc["spec"]["clusterIP"] == "None", (
        "retriever Service must be headless for per-request balancing"
    )
    assert one(objs, "Service", "reward")["spec"]["clusterIP"] == "None"
    rollout = one(objs, "StatefulSet", "rollout")
    headless = one(objs, "Service", "rollout")
    assert (
        headless["spec"]["clusterIP"] == "None"
        and rollout["spec"]["serviceName"] == headless["metadata"]["name"]
    )
    (c,) = containers(rollout["spec"]["template"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert rollout["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    addrs = env_of(c)["SEARCHRL_ROLLOUT_ADDRS"]["value"].split(",")
    assert addrs == [
        f"{RELEASE}-searchrl-rollout-{i}.{RELEASE}-searchrl-rollout.{NAMESPACE}.svc:50054" for i in range(2)
    ]
    trainer = one(objs, "StatefulSet", "trainer")
    assert trainer["spec"]["replicas"] == 1
    assert [v["metadata"]["name"] for v in trainer["spec"]["volumeClaimTemplates"]] == ["run"]
    redis = one(objs, "StatefulSet", "redis")
    cmd = " ".join(containers(redis["spec"]["template"])[0]["command"])
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd and "--requirepass" in cmd
    assert "--maxmemory 6gb" in cmd and "--maxmemory-policy noeviction" in cmd  # finding 9
    assert not find(objs, "Secret"), "the secrets come from the existing Secret"
    kinds = {(o["kind"], o["metadata"].get("labels", {}).get("app.kubernetes.io/component")) for o in objs}
    for comp in ("retriever", "reward"):
        assert ("HorizontalPodAutoscaler", comp) in kinds and ("PodDisruptionBudget", comp) in kinds
        assert "replicas" not in one(objs, "Deployment", comp)["spec"], "the HPA owns replicas"
    assert ("PodDisruptionBudget", "rollout") in kinds
    pod = one(objs, "Deployment", "retriever")["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["initContainers"][0]["args"][:2] == ["cluster", "wait-index"]
    assert one(objs, "Job", "index")["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "retriever",
        "build-index",
    ]


def test_gpu_cluster_values(rendered) -> None:
    objs = rendered["gpu-cluster"]
    images = {c["image"] for _, tpl in pod_templates(objs) for c in containers(tpl)}
    assert "registry.example.com/ml/searchrl-rollout:0.1.0-gpu" in images
    assert "registry.example.com/ml/searchrl-reward:0.1.0" in images
    rollout = one(objs, "StatefulSet", "rollout")
    assert rollout["spec"]["replicas"] == 4
    assert rollout["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"
    }
    for comp, kind in (("retriever", "Deployment"), ("trainer", "StatefulSet")):
        (c,) = containers(one(objs, kind, comp)["spec"]["template"])
        assert c["resources"]["requests"]["nvidia.com/gpu"] == 1 == c["resources"]["limits"]["nvidia.com/gpu"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in one(objs, "StatefulSet", "trainer")["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"searchrl-models", "searchrl-data"}
    monitors = find(objs, "ServiceMonitor")
    assert len(monitors) == 4 and all(m["spec"]["endpoints"][0]["port"] == "metrics" for m in monitors)
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors)


def test_eight_retrievers_and_retriever_only(rendered) -> None:
    dep = one(rendered["retriever-8"], "Deployment", "retriever")
    assert dep["spec"]["replicas"] == 8
    assert not find(rendered["retriever-8"], "HorizontalPodAutoscaler", f"{RELEASE}-searchrl-retriever")
    only = rendered["retriever-only"]
    comps = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in only}
    assert comps <= {"retriever", "index", "config", "network"}, comps
    assert not find(only, "Secret") and not find(only, "StatefulSet")


def test_retriever_shards_and_router(rendered, tmp_path: Path) -> None:
    """3 shards x 2 replicas: a Deployment, headless Service and index Job per shard, each serving its slice; a
    router behind the usual retriever Service scatters to the three shard Services; only the router reaches them."""
    from searchrl.cluster import parse_scale, scale_patches

    objs = rendered["retriever-shards"]
    path = tmp_path / "config.yaml"
    path.write_text(one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    for i in range(3):
        comp = f"retriever-shard-{i}"
        dep = one(objs, "Deployment", comp)
        assert dep["spec"]["replicas"] == 2 and one(objs, "PodDisruptionBudget", comp)
        tpl = dep["spec"]["template"]
        (c,) = containers(tpl)
        (wait,) = tpl["spec"]["initContainers"]
        job = next(j for j in find(objs, "Job") if f"index-shard-{i}-" in j["metadata"]["name"])
        (build,) = containers(job["spec"]["template"])
        for container in (c, wait, build):
            shard = load_config(path, set_args(container)).retriever.shard
            assert (shard.index, shard.count) == (i, 3), container["name"]
        assert services[f"{RELEASE}-searchrl-{comp}"]["spec"]["clusterIP"] == "None"
    router = one(objs, "Deployment", "retriever")
    (c,) = containers(router["spec"]["template"])
    cfg = load_config(path, set_args(c))
    assert cfg.retriever.mode == "router" and router["spec"]["replicas"] == 2
    assert cfg.retriever.router.deadline_s == 3 and cfg.retriever.index.type == "ivf-pq"
    for addr in cfg.retriever.router.shards:
        host, port = addr.rsplit(":", 1)
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    assert {m["name"] for m in c["volumeMounts"]} == {"config", "home", "tmp"}, "the router holds no index"
    assert [p.name for p in scale_patches(RELEASE, {"retriever": 4}, {})] == [router["metadata"]["name"]]
    shard1 = one(objs, "Deployment", "retriever-shard-1")["metadata"]["name"]
    assert [(p.kind, p.name) for p in scale_patches(RELEASE, parse_scale(["retriever-shard-1=5"]), {})] == [
        ("Deployment", shard1)
    ]
    # network: rollout -> router, router -> every shard, nobody else -> a shard
    policies = find(objs, "NetworkPolicy")
    labels = {
        tpl["metadata"]["labels"]["app.kubernetes.io/component"]: tpl["metadata"]["labels"]
        for _, tpl in pod_templates(objs)
    }
    port = cfg.retriever.port

    def reach(src: str, dst: str) -> bool:
        return _allowed(policies, "Egress", labels[src], labels[dst], NAMESPACE, port) and _allowed(
            policies, "Ingress", labels[dst], labels[src], NAMESPACE, port
        )

    assert reach("rollout", "retriever")
    for i in range(3):
        assert reach("retriever", f"retriever-shard-{i}") and not reach("rollout", f"retriever-shard-{i}")


def test_external_redis(rendered) -> None:
    objs = rendered["external-redis"]
    assert not [o for o in objs if o["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"]
    (c,) = containers(one(objs, "StatefulSet", "trainer")["spec"]["template"])
    env = env_of(c)
    assert (
        env["SEARCHRL_REDIS_URL"]["value"]
        == "rediss://:$(REDIS_PASSWORD)@redis.data.svc.cluster.local:6380/2"
    )
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "searchrl-redis", "key": "password"}
    egress = [
        np for np in find(objs, "NetworkPolicy") if np["metadata"]["name"].endswith("trainer-redis-egress")
    ]
    (rule,) = egress[0]["spec"]["egress"]
    assert rule["ports"] == [{"port": 6380, "protocol": "TCP"}] and rule["to"] == [
        {"ipBlock": {"cidr": "10.20.0.0/16"}}
    ]


# ---- NetworkPolicies allow exactly the data flow -------------------------------------------------------------


def _selects(sel: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items())


def _peer_matches(peer: dict, labels: dict, ns: str) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
    else:
        ns_ok = ns == NAMESPACE
    return ns_ok and _selects(peer.get("podSelector", {}), labels)


def _allowed(policies: list[dict], direction: str, me: dict, peer: dict, peer_ns: str, port: int) -> bool:
    """NetworkPolicy semantics for one direction: isolated when any policy of that type selects `me`."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    mine = [
        p
        for p in policies
        if direction in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], me)
    ]
    if not mine:
        return True
    for p in mine:
        for rule in p["spec"].get(key, []):
            ports_ok = not rule.get("ports") or any(
                int(r["port"]) <= port <= int(r.get("endPort", r["port"])) for r in rule["ports"]
            )
            peers = rule.get(peers_key)
            peers_ok = peers is None or any(_peer_matches(x, peer, peer_ns) for x in peers)
            if ports_ok and peers_ok:
                return True
    return False


def test_network_policies_allow_exactly_the_data_flow(rendered) -> None:
    objs = rendered["default"]
    policies = find(objs, "NetworkPolicy")
    pods = {
        tpl["metadata"]["labels"]["app.kubernetes.io/component"]: tpl["metadata"]["labels"]
        for _, tpl in pod_templates(objs)
    }
    cfg = yaml.safe_load(one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    ports = {c: cfg[c]["port"] for c in SEARCHRL} | {"redis": 6379}
    metrics = {c: cfg[c]["metrics_port"] for c in SEARCHRL}
    allowed = set()
    for src, src_labels in pods.items():
        for dst, dst_labels in pods.items():
            for port in {ports.get(dst), metrics.get(dst)} - {None}:
                if src != dst and (
                    _allowed(policies, "Egress", src_labels, dst_labels, NAMESPACE, port)
                    and _allowed(policies, "Ingress", dst_labels, src_labels, NAMESPACE, port)
                ):
                    allowed.add((src, dst, port))
    expected = {
        ("rollout", "retriever", 50051),
        ("rollout", "reward", 50052),
        ("rollout", "trainer", 50053),  # workers pull weights; the trainer never calls a worker
        ("rollout", "redis", 6379),
        ("trainer", "redis", 6379),
    }
    assert allowed == expected
    # a Prometheus pod in another namespace may scrape metrics ports, never gRPC or Redis
    prom = {"app": "prometheus"}
    for comp in SEARCHRL:
        assert _allowed(policies, "Ingress", pods[comp], prom, "monitoring", metrics[comp])
        assert not _allowed(policies, "Ingress", pods[comp], prom, "monitoring", ports[comp])
    assert not _allowed(policies, "Ingress", pods["redis"], prom, "monitoring", 6379)
    # DNS egress for everyone
    dns = {"k8s-app": "kube-dns"}
    assert all(_allowed(policies, "Egress", labels, dns, "kube-system", 53) for labels in pods.values())


def test_pushed_weights_open_the_trainer_and_the_workers_to_each_other() -> None:
    """trainer.weight_sync nccl: the trainer calls the workers' control port and the transfer group connects
    both ways on run-time ports; every pod learns its own address (POD_IP) for the rendezvous."""
    objs = render(values={**ci_values()["default"], "config": {"trainer": {"weight_sync": "nccl"}}})
    assert not validate_all(objs)
    policies = find(objs, "NetworkPolicy")
    pods = {
        tpl["metadata"]["labels"]["app.kubernetes.io/component"]: tpl["metadata"]["labels"]
        for _, tpl in pod_templates(objs)
    }
    cfg = yaml.safe_load(one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    for src, dst, port in [("trainer", "rollout", cfg["rollout"]["port"]), ("trainer", "rollout", 41234)] + [
        ("rollout", "trainer", 41234)
    ]:
        assert _allowed(policies, "Egress", pods[src], pods[dst], NAMESPACE, port), (src, dst, port)
        assert _allowed(policies, "Ingress", pods[dst], pods[src], NAMESPACE, port), (src, dst, port)
    assert not _allowed(policies, "Ingress", pods["rollout"], pods["reward"], NAMESPACE, 41234)
    for name in ("trainer", "rollout"):
        env = env_of(containers(searchrl_pods(objs)[name])[0])
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_retriever_http_port_and_shared_cache(rendered) -> None:
    """http_port on: a container port, a Service port, open to the namespace's pods (networkPolicy.retrieverHttpFrom)
    only; the shared query cache on: the retriever gets the Redis URL and a path to Redis."""
    objs = rendered["retriever-http"]
    ports = one(objs, "Service", "retriever")["spec"]["ports"]
    assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"} in ports
    policies = find(objs, "NetworkPolicy")
    pods = {
        tpl["metadata"]["labels"]["app.kubernetes.io/component"]: tpl["metadata"]["labels"]
        for _, tpl in pod_templates(objs)
    }
    trainer_script = {"app": "search-r1-trainer"}
    assert _allowed(policies, "Ingress", pods["retriever"], trainer_script, NAMESPACE, 8000)
    assert not _allowed(policies, "Ingress", pods["retriever"], trainer_script, "elsewhere", 8000)
    assert _allowed(policies, "Egress", pods["retriever"], pods["redis"], NAMESPACE, 6379)
    assert _allowed(policies, "Ingress", pods["redis"], pods["retriever"], NAMESPACE, 6379)
    default = find(rendered["default"], "NetworkPolicy")
    assert not _allowed(default, "Egress", pods["retriever"], pods["redis"], NAMESPACE, 6379)
    # sharded: the router (the "retriever" Service) serves HTTP and holds the shared cache; shards do neither
    sharded = rendered["retriever-shards"]
    assert "http" in {p["name"] for p in one(sharded, "Service", "retriever")["spec"]["ports"]}
    for wl, tpl in pod_templates(sharded):
        comp = tpl["metadata"]["labels"]["app.kubernetes.io/component"]
        if comp.startswith("retriever-shard-") and wl["kind"] == "Deployment":
            (c,) = containers(tpl)
            assert "http" not in {p["name"] for p in c["ports"]} and "SEARCHRL_REDIS_URL" not in env_of(c)
            assert "retriever.http_port=0" in c["args"] and "retriever.cache.redis_ttl_s=0" in c["args"]


# ---- the checks fail when they should ------------------------------------------------------------------------


def test_unknown_values_key_fails_render_and_lint() -> None:
    import helm_python as helm

    for bad, where in (
        ({"retriever": {"replicaz": 3}}, "replicaz"),
        ({"config": {"trainer": {"learning_rate": 1e-6}}}, "learning_rate"),
        ({"config": {"rollout": {"top_k": 0}}}, "/config/rollout/top_k"),
        ({"redis": {"url": "redis://:secret@host:6379/0"}}, "/redis/url"),
    ):
        with pytest.raises(helm.HelmValuesError, match=where):
            render(values=bad)
        assert any(where in e for e in lint_errors(bad)), bad


def test_external_redis_without_secret_fails() -> None:
    import helm_python as helm

    auth = {"auth": {"existingSecret": "a"}}
    with pytest.raises(helm.HelmError, match="redis.auth.existingSecret"):
        render(values={**auth, "redis": {"enabled": False, "url": "redis://r:6379/0"}})
    with pytest.raises(helm.HelmError, match="redis.url"):
        render(values={**auth, "redis": {"enabled": False, "auth": {"existingSecret": "s"}}})


def test_broken_template_and_invalid_object_fail(tmp_path: Path) -> None:
    import helm_python as helm

    chart = tmp_path / "searchrl"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "broken.yaml").write_text("{{ .Values.retriever.replicas | nosuchfunc }}\n")
    with pytest.raises(helm.HelmError):
        render(chart)
    assert lint_errors({}, chart)
    (chart / "templates" / "broken.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec: {replicaz: 2, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}},"
        " spec: {containers: [{name: c, image: i}]}}}\n"
    )
    errors = validate_all(render(chart, with_secrets({})))
    assert len(errors) == 1 and "replicaz" in errors[0]


def test_values_schema_is_generated_from_the_config_tree() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("values_schema", CHART.parent / "values_schema.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, "run python deploy/helm/values_schema.py"


def test_index_job_name_follows_the_corpus(rendered) -> None:
    a = one(rendered["default"], "Job", "index")["metadata"]["name"]
    b = one(
        render(values=with_secrets({"config": {"retriever": {"corpus": "/data/other.jsonl"}}})),
        "Job",
        "index",
    )
    assert a != b["metadata"]["name"], "a Job is immutable: a new corpus must make a new Job"


def test_notes_tell_how_to_watch_training() -> None:
    text = notes(with_secrets({}))
    assert 'bearer token in Secret "searchrl-secrets"' in text
    assert (
        f"kubectl -n {NAMESPACE} exec {RELEASE}-searchrl-trainer-0 -- tail -f /var/lib/searchrl/run/metrics.jsonl"
        in text
    )
    assert "searchrl cluster scale retriever=" in text


# ---- secrets: required, stable across renders, never random ------------------------------------------------


def test_secrets_are_required_and_stable_across_renders(rendered) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="auth.existingSecret.*auth.token"):
        render(values={"redis": {"auth": {"existingSecret": "s"}}})
    with pytest.raises(helm.HelmError, match="redis.auth.existingSecret.*redis.auth.password"):
        render(values={"auth": {"existingSecret": "s"}})
    vals = ci_values()["cpu-tiny"]
    first = {o["metadata"]["name"]: o["data"] for o in find(rendered["cpu-tiny"], "Secret")}
    again = {o["metadata"]["name"]: o["data"] for o in find(render(values=vals), "Secret")}
    assert first == again, "an offline render (helm template, ArgoCD) must give the same secrets every time"
    assert set(first) == {f"{RELEASE}-searchrl-auth", f"{RELEASE}-searchrl-redis"}
    decoded = {k: base64.b64decode(v).decode() for d in first.values() for k, v in d.items()}
    assert decoded == {"token": vals["auth"]["token"], "redis-password": vals["redis"]["auth"]["password"]}
    # a token too short for the services, or a password that would break the Redis URL, fails the schema
    for bad in ({"auth": {"token": "short"}}, {"redis": {"auth": {"password": "p@ss/word-0123456789"}}}):
        with pytest.raises(helm.HelmValuesError):
            render(values=with_secrets(bad))


# ---- the GPU recipes in configs/ install through the chart ----------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        "r1searcher-qwen2.5-7b-base.yaml",
        "r1searcher-llama3.1-8b-instruct.yaml",
        "research-qwen2.5-7b-instruct.yaml",
        "search-r1-qwen2.5-3b.yaml",
    ],
)
def test_gpu_recipe_renders(recipe: str, tmp_path: Path) -> None:
    """A recipe given as `config:` (docs/rewards.md "Recipes") lints, renders valid objects, and its ConfigMap
    loads with load_config and keeps every value the recipe sets."""
    config = yaml.safe_load((CHART.parents[2] / "configs" / recipe).read_text())
    values = with_secrets(
        {
            "config": config,
            "volumes": {
                "models": {"existingClaim": "searchrl-models"},
                "data": {"existingClaim": "searchrl-data"},
            },
            "rollout": {"gpus": 1},
            "trainer": {"gpus": config["trainer"]["world_size"]},
        }
    )
    assert lint_errors(values) == []
    objs = render(values=values)
    assert validate_all(objs) == []
    path = tmp_path / "config.yaml"
    path.write_text(one(objs, "ConfigMap", "config")["data"]["config.yaml"])
    rendered_cfg = load_config(path).model_dump(mode="json")
    wanted = load_config(CHART.parents[2] / "configs" / recipe).model_dump(mode="json")
    for section, keys in config.items():
        for key in keys:
            assert rendered_cfg[section][key] == wanted[section][key], f"{section}.{key}"


# ---- the multi-node learner ------------------------------------------------------------------------------------


def test_trainer_over_two_nodes(rendered) -> None:
    """trainer.world_size 8 over trainer.nodes 2 (ci-values/trainer-multinode.yaml): 2 pods of 4 GPUs each, the
    pod index as SEARCHRL_NODE_RANK, rank 0's address through a headless Service, the Trainer API on pod 0 only,
    one ReadWriteMany checkpoint volume (every rank writes its ZeRO shards into the same folder), and the ranks
    reach each other on any port (gloo/NCCL pick their own)."""
    objs = rendered["trainer-multinode"]
    sts = one(objs, "StatefulSet", "trainer")
    name = sts["metadata"]["name"]
    ranks = one(objs, "Service", "trainer-ranks")
    assert sts["spec"]["replicas"] == 2 and sts["spec"]["serviceName"] == ranks["metadata"]["name"]
    assert ranks["spec"]["clusterIP"] == "None" and ranks["spec"]["publishNotReadyAddresses"] is True
    assert ranks["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    (c,) = containers(sts["spec"]["template"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4
    env = env_of(c)
    label = env["SEARCHRL_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert label == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{ranks['metadata']['name']}.{NAMESPACE}.svc"
    assert env["MASTER_PORT"]["value"] == "29500"
    assert {"containerPort": 29500, "name": "rendezvous", "protocol": "TCP"} in c["ports"]
    api = one(objs, "Service", "trainer")
    assert api["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == f"{name}-0"
    assert "volumeClaimTemplates" not in sts["spec"]
    claim = one(objs, "PersistentVolumeClaim", "trainer")
    assert (
        claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs-rwx"
    )
    run = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "run")
    assert run["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    policies = find(objs, "NetworkPolicy")
    pod = sts["spec"]["template"]["metadata"]["labels"]
    assert policies and _allowed(policies, "Ingress", pod, pod, NAMESPACE, 12345)
    assert _allowed(policies, "Egress", pod, pod, NAMESPACE, 12345)
    assert (
        claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    )  # checkpoints outlive the release
    single = rendered["default"]
    (c1,) = containers(one(single, "StatefulSet", "trainer")["spec"]["template"])
    assert "MASTER_ADDR" not in env_of(c1) and not find(single, "Service", f"{name}-ranks")


def test_trainer_gpus_must_match_ranks_per_node() -> None:
    values = with_secrets(ci_values()["trainer-multinode"] | {"trainer": {"gpus": 2}})
    with pytest.raises(
        Exception, match=r"trainer.gpus \(2\) must equal config.trainer.world_size / nodes \(4\)"
    ):
        render(values=values)
