"""Graceful stop on SIGTERM / SIGUSR1 / SIGUSR2 (cluster pre-emption, SLURM time limits, `kill`) and Ctrl-C
(SIGINT). SIGUSR2 is submitit's pre-emption signal (``#SBATCH --signal=USR2@<signal_delay_s>``; its
``SUBMITIT_PREEMPT_SIGNAL`` environment variable names another, which is then a stop signal too).

The handler only records the signal; the loop checks it between optimizer steps, saves a checkpoint
at that step and stops. Saving inside the handler could catch the model half-way through an update.
A second Ctrl-C raises ``KeyboardInterrupt`` at once, as Python's own handler does: the way out of a
step that hangs, at the price of the checkpoint of that step.

The final evaluation (a linear probe can take long) changes no state worth saving: inside
``PreemptionGuard.raising()`` the handler raises ``StopRequested`` instead, so a stop signal ends it at
once (its checkpoint is written before it starts) rather than after the launcher's grace period.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


def stop_signals() -> tuple[signal.Signals, ...]:
    """``STOP_SIGNALS`` plus the signal ``SUBMITIT_PREEMPT_SIGNAL`` names (without ``SIG``, e.g. ``HUP``) when
    it is another one; a name that is not a signal is left to submitit, which refuses it itself."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    extra = getattr(signal, "SIG" + name, None)
    if isinstance(extra, signal.Signals) and extra not in STOP_SIGNALS and extra not in (signal.SIGKILL, signal.SIGSTOP):
        return STOP_SIGNALS + (extra,)
    return STOP_SIGNALS


class StopRequested(Exception):
    """A stop signal arrived inside ``PreemptionGuard.raising()``; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class PreemptionGuard:
    """Context manager that turns the stop signals into a flag (``received``) while it is active.

    On exit the previous handlers come back. ``hand_over`` then gives the signal to the previous
    handler when there was a Python one (submitit installs one that requeues the job), so the suite
    cooperates with launchers instead of replacing them.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] | None = None):
        self.signals = stop_signals() if signals is None else signals
        self.received: int | None = None  # the latest stop signal
        self._arrived: list[int] = []  # every distinct one, in order of arrival (hand_over)
        self._previous: dict[int, object] = {}
        self._raise = False

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.signals:
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # started with Ctrl-C ignored (nohup, a background job): Python's rule, kept
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            if self.received == signal.SIGINT:  # the second Ctrl-C: no more waiting for the step to end
                raise KeyboardInterrupt
            # Under torchrun the agent receives the terminal's Ctrl-C and forwards one SIGINT; its shutdown
            # then sends SIGTERM, which stops after the step as well: "again" only works in one process.
            again = "" if "TORCHELASTIC_RUN_ID" in os.environ else " (Ctrl-C again: stop at once, without saving)"
            sys.stderr.write(f"\nCtrl-C: stopping after this step and saving its checkpoint{again}\n")
        self.received = signum
        if signum not in self._arrived:
            self._arrived.append(signum)
        if self._raise:
            self._raise = False  # one exception per block, not one inside the handling of another
            raise StopRequested(signum)

    @contextlib.contextmanager
    def raising(self):
        """Inside the block a stop signal raises ``StopRequested`` (also at entry, for one that arrived
        before it). Only for work that can be dropped and redone: the exception lands between any two
        Python bytecodes."""
        if self.received is not None:
            raise StopRequested(self.received)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def hand_over(self) -> bool:
        """Call the previous Python handler of each stop signal received, in order of arrival; return whether
        there was one. All of them, not the latest only: submitit's pre-emption signal followed by SLURM's
        SIGTERM must still reach submitit's requeue handler (its SIGTERM handler only logs)."""
        handed = False
        for signum in self._arrived:
            previous = self._previous.get(signum)
            if previous is signal.default_int_handler:  # Python's Ctrl-C handler would only raise KeyboardInterrupt
                continue
            if callable(previous):
                previous(signum, None)
                handed = True
        return handed
