"""The run's own messages (progress lines, warnings, the final table): on the console and in train.log.

Written through the ``cl_suite.run`` logger, which does not propagate to the root logger: Hydra's
console handler would add a ``[time][name][LEVEL]`` prefix to every line of the summary table. While a
run is open (:class:`RunLog`), its messages go to stdout as they are and to ``<run folder>/train.log``
with a time stamp; otherwise (the Python API without ``train()``) they are printed.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

RUN_LOGGER = logging.getLogger("cl_suite.run")
LOG_FILE = "train.log"


_open_runs: list["RunLog"] = []  # the RunLog of the run in progress (train() opens one at a time)


def say(text: str, level: int = logging.INFO) -> None:
    """One message of the run: to its console and log file while a run is open, else printed.

    Decided by whether a run is open, not by the logger's handler list: test harnesses and logging
    set-ups may attach handlers of their own to it."""
    if _open_runs:
        RUN_LOGGER.log(level, text)
    else:
        print(text)


class RunLog:
    """Attach the console and file handlers for one run; :meth:`close` detaches them (idempotent)."""

    def __init__(self) -> None:
        self.handlers: list[logging.Handler] = []

    def open(self, run_dir: Path) -> None:
        # Set here, not at import: Hydra's logging set-up (dictConfig, once per job) resets existing loggers.
        RUN_LOGGER.propagate, RUN_LOGGER.disabled = False, False
        RUN_LOGGER.setLevel(logging.INFO)
        console = logging.StreamHandler(sys.stdout)  # the stdout of now (pytest's capture, a redirect)
        console.setFormatter(logging.Formatter("%(message)s"))
        file = logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8")  # appends: a resume continues it
        file.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
        self.handlers = [console, file]
        for handler in self.handlers:
            RUN_LOGGER.addHandler(handler)
        _open_runs.append(self)

    def close(self) -> None:
        for handler in self.handlers:
            RUN_LOGGER.removeHandler(handler)
            handler.close()
        self.handlers = []
        if self in _open_runs:
            _open_runs.remove(self)
