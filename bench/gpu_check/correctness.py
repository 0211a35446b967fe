"""Stage ``correctness``: the CUDA tests (tests/test_gpu_check.py and every test that skips without CUDA),
run with pytest; a table of every test's outcome and seconds, then the host syncs of the steady-state
loop (SimCLR and MoCo, from ``test_steady_state_host_syncs_are_listed``) with their source lines.

Dry run: the same tests on the CPU (``GPU_CHECK_ON_CPU=1``), a few of the per-method cases only.
Exit status: pytest's (0 = every selected test passed or skipped).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import _shared

# Tests elsewhere that skip without CUDA (grep tests/ for "needs CUDA" / cuda skips).
OTHER_CUDA_TESTS = ["tests/test_augment.py::test_cuda_no_host_sync"]
# Checked by the dry-run test itself (a recursion otherwise); the no-wandb test is cheap and is the GPU image's case.
SELECT_GPU = "not dry_run"
# Dry run: every preset and 4 sampler pairs; the no-wandb run has its own slow test on the CPU.
SELECT_DRY = "not dry_run and not without_wandb and (not every_method or preset_ or simclr_with or moco_with)"


def main() -> int:
    section = _shared.Section("correctness", "Correctness on the device (pytest)")
    log = _shared.WORK / "pytest.jsonl"
    syncs = _shared.WORK / "syncs.md"
    for path in (log, syncs):
        path.unlink(missing_ok=True)
    env = {**os.environ, "GPU_CHECK_PYTEST_LOG": str(log), "GPU_CHECK_SYNC_REPORT": str(syncs),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    if _shared.DRY:
        env["GPU_CHECK_ON_CPU"] = "1"
    # `-m "slow or not slow"`: both tiers; the selection is the -k expression alone.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_stream", "-rfE",
           "-m", "slow or not slow", "tests/test_gpu_check.py", *OTHER_CUDA_TESTS, "-k", SELECT_DRY if _shared.DRY else SELECT_GPU]
    budget = max(10.0, _shared.seconds_left() - 15)  # keep time to write the table of what finished
    print("$", " ".join(cmd), f"(timeout {budget:.0f} s)", flush=True)
    proc = subprocess.Popen(cmd, cwd=_shared.ROOT, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and whatever it started (the no-wandb subprocess)
        proc.wait()
        rc = 124
        print(f"pytest stopped after {budget:.0f} s", flush=True)

    results = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    def row(r: dict) -> list[object]:
        return [r["test"].replace("tests/", ""), r["outcome"], f"{r['seconds']:.1f}", r["reason"][:90].replace("|", "/")]

    print(_shared.table(["test", "outcome", "s", "note"], [row(r) for r in results]))  # every test, in log.txt
    # The section: every test that did not pass, then the slowest that did.
    shown = [r for r in results if r["outcome"] != "passed"]
    shown += sorted((r for r in results if r["outcome"] == "passed"), key=lambda r: -r["seconds"])[:8]
    section.add(_shared.table(["test (not passed, then the slowest passed)", "outcome", "s", "note"],
                              [row(r) for r in shown]) if shown else "(no test finished)")
    section.add(("pytest TIMEOUT (stopped at the stage's deadline); " if rc == 124 else f"pytest exit status {rc}; ") + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    section.add("### Host syncs in the steady-state loop\n\n" + (syncs.read_text() if syncs.exists() else
                                                                  "(the sync tests did not run)"))
    sync_lines = [line for line in (syncs.read_text().splitlines() if syncs.exists() else []) if line.startswith("| ")
                  and not line.startswith("| syncs")]
    section.headline(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f"; {len(sync_lines)} sync sites listed"
                     + ("" if rc == 0 else f"; pytest rc {rc}"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
