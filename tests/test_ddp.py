"""torchrun with 2 CPU processes (gloo): global negatives are exact, and a run writes one run dir."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY


def torchrun(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout, capture_output=True, text=True)


@pytest.mark.slow
def test_nt_xent_on_two_processes_equals_one_process():
    proc = torchrun([str(ROOT / "tests" / "ddp_nt_xent_script.py")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "DDP NT-Xent equals single process" in proc.stdout


@pytest.mark.slow
def test_torchrun_training_writes_one_run_dir_and_one_checkpoint(tmp_path):
    outputs = tmp_path / "outputs"
    args = [o for o in TINY if not o.startswith("trainer.epochs")] + [
        "trainer.max_steps=4", "trainer.eval_at_init=false", f"hydra.run.dir={outputs}/run"]
    proc = torchrun([str(ROOT / "train.py"), *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in outputs.iterdir()] == ["run"]
    state = torch.load(outputs / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4
    assert (outputs / "run" / "metrics.json").is_file()
