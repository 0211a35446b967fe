"""A real SIGTERM to a real training process: it saves, exits as terminated, and a re-run continues exactly."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY


def start(run_dir, extra=()):
    args = [o for o in TINY if not o.startswith("trainer.epochs")] + [
        "trainer.epochs=8", "trainer.eval_at_init=false", f"hydra.run.dir={run_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_continues_exactly(tmp_path):
    code, out = finish(start(tmp_path / "full"))
    assert code == 0, out[-2000:]

    proc = start(tmp_path / "killed")
    for line in proc.stdout:  # wait until the first epoch is done, then pre-empt the second
        if line.startswith("epoch 1/8:"):
            proc.send_signal(signal.SIGTERM)
            break
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out[-2000:]
    assert "Run the same command again to continue" in out
    state = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    steps_per_epoch = 1437 // 64
    assert steps_per_epoch <= state["step"] < 8 * steps_per_epoch
    assert state["history"]["epochs"][-1]["stopped_by_signal"]

    code, out = finish(start(tmp_path / "killed"))  # the same command: resume=auto picks the checkpoint up
    assert code == 0, out[-2000:]
    assert f"resumed from {tmp_path / 'killed' / 'checkpoints' / 'last.pt'} at step {state['step']}" in out
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 8 * steps_per_epoch
    for part in ("method", "probe"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert a["history"]["final"] == b["history"]["final"]
