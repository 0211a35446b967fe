"""A pytest plugin (``-p pytest_stream``) that appends one JSON line per finished test to
``$GPU_CHECK_PYTEST_LOG`` as it happens, so a stage killed by its timeout still reports every test it ran."""
from __future__ import annotations

import json
import os


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get("GPU_CHECK_PYTEST_LOG")
    # Under pytest-xdist (pyproject's addopts: -n auto) a worker's report reaches this hook twice: in the
    # worker and again in the controller, which receives every worker's reports. The controller writes.
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
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
