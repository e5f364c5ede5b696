"""`searchrl serve NAME`: run one service in the foreground until SIGTERM/SIGINT, then stop it cleanly.

Each service module exposes `serve(cfg, ...)`; this module only adds logging, signal handling and the choice of
Redis URL (services never start Redis themselves: `searchrl up`, compose or Helm provide it).
"""

from __future__ import annotations

import logging
import signal
import threading

from searchrl.affinity import parse_cpu_list, pin
from searchrl.config import Config, ConfigError

log = logging.getLogger(__name__)

SERVICES = ("retriever", "reward", "rollout", "trainer")


def _redis_url(cfg: Config) -> str:
    if not cfg.addresses.redis_url:
        raise ConfigError(f"{cfg.source}: addresses.redis_url: not set (set it or SEARCHRL_REDIS_URL)")
    return cfg.addresses.redis_url


def _on_signal(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _pin(name: str, cfg: Config) -> None:
    cpus = parse_cpu_list(str(getattr(cfg.run.cpu_affinity, name, "")))
    if not cpus:
        return
    try:
        pin(cpus)
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: run.cpu_affinity.{name}: {e}") from None
    log.info("%s pinned to cpus %s", name, sorted(cpus))


def serve(name: str, cfg: Config) -> int:
    _pin(name, cfg)
    stop = threading.Event()
    _on_signal(stop)
    if name == "retriever":
        from searchrl_retriever.server import serve as serve_retriever

        server = serve_retriever(cfg)
        stop.wait()
        server.stop()
    elif name == "reward":
        from searchrl_reward.server import serve as serve_reward

        server = serve_reward(cfg)
        stop.wait()
        server.stop()
    elif name == "rollout":
        from searchrl_rollout.server import serve as serve_rollout

        server, worker = serve_rollout(cfg, _redis_url(cfg))
        threading.Thread(target=lambda: (stop.wait(), worker.stop()), daemon=True).start()
        worker.run_forever()
        server.stop()
    elif name == "trainer":
        from searchrl_trainer.server import serve as serve_trainer

        server, loop = serve_trainer(cfg, _redis_url(cfg))
        loop.run(stop_requested=stop.is_set)  # a stop checkpoints what was trained since the last checkpoint
        stop.wait()  # keep serving weights until told to stop
        server.stop()
    else:
        raise ValueError(f"unknown service {name!r} (known: {', '.join(SERVICES)})")
    return 0
