"""Per-API counts of the fuzz suite: every input sent, by outcome (a gRPC status code, or for Redis records what
the decoder or the intake path did with it), failures, and wall time; rendered as markdown tables (one per
section) for docs/reliability.md."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

# Columns in this order first; any other outcome follows alphabetically.
_ORDER = (
    "OK",
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "INTERNAL",
    "accepted",
    "ValueError",
    "completed",
    "dead-lettered",
    "admitted",
    "discarded",
)


class Outcome:
    """What the inputs of one `Tally.count` block came to: the test sets `name` (one input) or `names` (one per
    input) before the block ends."""

    name = "unset"
    names: list[str] | None = None


class Tally:
    """Inputs per API and outcome. `count(section, api, inputs)` wraps the handling of `inputs` inputs: an
    exception inside counts them as failures (and propagates, so Hypothesis reports the input)."""

    def __init__(self) -> None:
        self.sections: dict[str, list[str]] = {}
        self.outcomes: dict[str, Counter[str]] = {}
        self.failures: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    @contextmanager
    def count(self, section: str, api: str, inputs: int = 1) -> Iterator[Outcome]:
        apis = self.sections.setdefault(section, [])
        if api not in apis:
            apis.append(api)
        row = self.outcomes.setdefault(api, Counter())
        out = Outcome()
        t0 = time.perf_counter()
        try:
            yield out
        except BaseException:
            self.failures[api] += inputs
            raise
        else:
            row.update(out.names if out.names is not None else [out.name])
        finally:
            self.seconds[api] += time.perf_counter() - t0

    def inputs(self, api: str) -> int:
        return sum(self.outcomes.get(api, Counter()).values()) + self.failures[api]

    def markdown(self) -> str:
        return "\n".join(self._table(section, apis) for section, apis in self.sections.items())

    def _table(self, section: str, apis: list[str]) -> str:
        seen = {name for api in apis for name in self.outcomes[api]}
        cols = [c for c in _ORDER if c in seen] + sorted(seen - set(_ORDER))
        lines = [
            "| " + " | ".join([section, "inputs", *cols, "failures", "s"]) + " |",
            "|---|" + "---:|" * (len(cols) + 3),
        ]
        for api in apis:
            row = self.outcomes[api]
            cells = [
                api,
                self.inputs(api),
                *(row[c] for c in cols),
                self.failures[api],
                f"{self.seconds[api]:.0f}",
            ]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        return "\n".join(lines) + "\n"
