"""Graceful stop on SIGTERM / SIGUSR1 (cluster pre-emption, SLURM time limits, `kill`, Ctrl-\\).

The handler only records the signal; the loop checks it between optimizer steps, saves a checkpoint
at that step and stops. Saving inside the handler could catch the model half-way through an update.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionGuard:
    """Context manager that turns the stop signals into a flag (``received``) while it is active.

    On exit the previous handlers come back. ``hand_over`` then gives the signal to the previous
    handler when there was a Python one (submitit installs one that requeues the job), so the suite
    cooperates with launchers instead of replacing them.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def hand_over(self) -> bool:
        """Call the previous Python handler of the received signal; return whether there was one."""
        previous = self._previous.get(self.received)
        if callable(previous):
            previous(self.received, None)
            return True
        return False
