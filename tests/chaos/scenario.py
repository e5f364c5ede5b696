"""One chaos run: the cluster on its own Redis, the faults injected into it with their recovery times, and the
verdict after the trainer finished (`searchrl audit` plus the independent `accounting`), as one report row."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from searchrl.config import Config
from searchrl.redisio import connect
from tests.chaos.accounting import Accounting, StreamTap, account
from tests.chaos.harness import Cluster, RedisServer

COLUMNS = (
    "scenario",
    "faults",
    "recover s",
    "steps done",
    "trained twice (audit / own)",
    "lost (audit / own)",
    "dead-lettered",
    "audit",
    "result",
)


@dataclass
class Fault:
    label: str
    t0: float
    lines_before: set[str]  # metrics.jsonl at the fault
    recover_s: float | None = None


@dataclass
class Run:
    name: str
    cluster: Cluster
    tap: StreamTap
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # contract breaches seen while the run went on
    row: dict[str, str] | None = None
    audit_rc: int | None = None

    @property
    def cfg(self) -> Config:
        return self.cluster.cfg

    @property
    def redis(self) -> RedisServer:
        return self.cluster.redis

    def fault(self, label: str) -> Fault:
        """Mark the moment a fault is injected (call it right before injecting)."""
        f = Fault(label, time.monotonic(), set(self.cluster.metrics_lines()))
        self.faults.append(f)
        return f

    def expect(self, ok: bool, problem: str) -> None:
        """Note a breach without stopping the run, so the row still shows how the run ended."""
        if not ok:
            self.problems.append(problem)

    def recovered(self, f: Fault, timeout: float = 600.0) -> None:
        """Block until a step is committed after the fault (a step trained again after a rollback counts); its
        recovery time is from the fault to that step."""

        def new_step() -> bool:
            lines = self.cluster.metrics_lines()
            return bool(lines) and lines[-1] not in f.lines_before

        self.cluster.wait_until(f"a step committed after: {f.label}", new_step, timeout)
        f.recover_s = time.monotonic() - f.t0

    # ---- the verdict -----------------------------------------------------------------------------------------

    def finish(
        self, checks: Callable[[Accounting], list[str]] = lambda _: [], timeout: float = 900.0
    ) -> None:
        """Wait for `max_steps`, stop the services, then audit and account (plus the scenario's own `checks`);
        record the row and assert it is clean (every problem listed in the one assertion message)."""
        max_steps = self.cfg.trainer.max_steps
        self.cluster.wait_until("trainer done", lambda: self.cluster.trainer_status().done, timeout, 1.0)
        status = self.cluster.trainer_status()
        self.cluster.stop_services()
        acc, report, problems = self.verdict()
        problems += checks(acc)
        if status.step != max_steps:
            problems.insert(0, f"trainer reports step {status.step} at the end, not {max_steps}")
        self.record(acc, report, problems)
        assert not problems, "\n".join(problems)

    def audit(self) -> dict:
        """`searchrl audit --json` as a subprocess; its JSON report, or {"error": ...} when it did not give one."""
        proc = subprocess.run(
            [sys.executable, "-m", "searchrl.cli", "audit", "--run-dir", str(self.cluster.run_dir), "--json"],
            env=self.cluster.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.audit_rc = proc.returncode
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return {"error": (proc.stdout + proc.stderr).strip()[-1500:]}

    def verdict(self) -> tuple[Accounting, dict, list[str]]:
        """The independent accounting, the audit's report, and every problem of both."""
        self.tap.stop()
        report = self.audit()
        r = connect(self.redis.url)
        try:
            acc = account(r, self.cfg, self.cluster.run_dir, self.tap)
        finally:
            r.close()
        problems = self.problems + acc.problems(self.cfg.trainer.max_steps)
        if self.audit_rc != 0:
            problems.append(f"searchrl audit exited {self.audit_rc}: {json.dumps(report)[-1500:]}")
        return acc, report, problems

    def record(self, acc: Accounting | None, report: dict, problems: list[str]) -> None:
        def pair(audit_value: object, own: object) -> str:
            a = len(audit_value) if isinstance(audit_value, list | dict) else "?"
            return f"{a} / {own}"

        rc = {None: "not run", 0: "pass", 1: "FAIL"}.get(self.audit_rc, f"error (exit {self.audit_rc})")
        self.row = {
            "scenario": self.name,
            "faults": "; ".join(f.label for f in self.faults) or "none",
            "recover s": " / ".join("-" if f.recover_s is None else f"{f.recover_s:.0f}" for f in self.faults)
            or "-",
            "steps done": str(acc.steps[-1] if acc and acc.steps else 0),
            "trained twice (audit / own)": pair(
                report.get("trained_twice"), acc.trained_twice if acc else "?"
            ),
            "lost (audit / own)": pair(report.get("unaccounted"), acc.lost if acc else "?"),
            "dead-lettered": str(len(acc.dead)) if acc else "?",
            "audit": rc,
            "result": "pass" if not problems else problems[0].splitlines()[0][:200],
        }


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c].replace("|", "/") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"
