"""Child-process helpers."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """`preexec_fn` for Popen: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux prctl), so a
    killed `searchrl up` leaves no orphan services or Redis behind. Elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
