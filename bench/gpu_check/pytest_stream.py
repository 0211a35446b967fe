"""A pytest plugin (``-p pytest_stream``) that appends one JSON line per finished test to
``$GPU_CHECK_PYTEST_LOG`` as it happens, so a stage killed by its timeout still reports every test it ran."""
from __future__ import annotations

import json
import os


_in_xdist_worker = False


def pytest_configure(config) -> None:
    # Under pytest-xdist (pyproject's addopts: -n auto) a worker's report reaches pytest_runtest_logreport
    # twice: in the worker and again in the controller, which receives every worker's reports; only the
    # controller writes. A worker's config has ``workerinput`` (PYTEST_XDIST_WORKER would also be set in a
    # pytest that a worker's test starts, whose own controller must write).
    global _in_xdist_worker
    _in_xdist_worker = hasattr(config, "workerinput")


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("GPU_CHECK_PYTEST_LOG")
    if not path or _in_xdist_worker:
        return
    # One line per test: its call phase, or the phase that failed/skipped before or after it.
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or \
            (report.when == "teardown" and report.outcome == "failed"):
        reason = ""
        if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
        elif report.outcome == "failed":
            reason = str(report.longrepr).strip().splitlines()[-1][:200] if report.longrepr else ""
        with open(path, "a") as f:
            f.write(json.dumps({"test": report.nodeid, "outcome": report.outcome, "when": report.when,
                                "seconds": round(report.duration, 2), "reason": reason}) + "\n")
