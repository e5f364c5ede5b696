"""An asyncio event loop on a daemon thread, for synchronous code that drives an async engine (vLLM's AsyncLLM
lives on one loop): `LoopThread().run(coro, timeout)` runs `coro` on that loop and returns its result (or raises
its exception) in the calling thread; `stop()` ends the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="event-loop", daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 900) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
