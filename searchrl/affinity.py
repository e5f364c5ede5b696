"""CPU pinning of one service process (`run.cpu_affinity.<service>`), for a CPU box where the learner and the
vLLM engine would otherwise take turns on the same cores.

Contract: `parse_cpu_list("0-2,5")` -> {0, 1, 2, 5} (Linux cpu-list syntax; '' -> empty = no pinning), a
ValueError naming the bad part otherwise. `pin(cpus)` restricts the calling process (and the threads and
processes it starts afterwards, vLLM's engine core and worker included) to `cpus`; cpus this process may not use
are an error naming them.
"""

from __future__ import annotations

import os


def parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"{part!r} is not a cpu number or range like '0-3'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{part!r}: range ends before it starts")
        cpus.update(range(first, last + 1))
    return cpus


def pin(cpus: set[int]) -> None:
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise ValueError(
            f"cpus {sorted(cpus - allowed)} are not available here (this process may use {sorted(allowed)})"
        )
    os.sched_setaffinity(0, cpus)
