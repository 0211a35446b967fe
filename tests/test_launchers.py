"""Cluster plumbing: the submitit launcher path (run locally) and signal hand-over to the launcher."""
import json
import os
import signal

import pytest

from cl_suite.engine.preemption import PreemptionGuard
from helpers import run_cli


def test_guard_records_the_signal_and_hands_it_to_the_previous_handler():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert guard.received == signal.SIGUSR1 and seen == []  # recorded, not acted on yet
        assert guard.hand_over() and seen == [signal.SIGUSR1]  # e.g. submitit's requeue handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_guard_without_a_python_handler_hands_over_nothing():
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
    assert guard.received == signal.SIGTERM and not guard.hand_over()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


@pytest.mark.slow
def test_submitit_launcher_runs_a_sweep_as_separate_jobs(tmp_path):
    args = ["-m", "hydra/launcher=local", "seed=0,1", "logger=none", "trainer.max_steps=2",
            "trainer.eval_at_init=false", "trainer.progress_bar=false", "evaluation.linear.epochs=2",
            "backbone.widths=[8,16]", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli("train.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        metrics = json.loads((tmp_path / job / "metrics.json").read_text())
        assert metrics["final"]["step"] == 2
    assert (tmp_path / ".submitit").is_dir()  # went through submitit, not the in-process sweeper
    # Where the README says the silent jobs' output is: .submitit/<job id>/<job id>_<task>_log.out, and train.log.
    outs = sorted((tmp_path / ".submitit").glob("*/*_log.out"))
    assert len(outs) == 2 and all("kNN (frozen, un-augmented)" in out.read_text() for out in outs)
    assert all("][INFO] epoch 1/" in (tmp_path / job / "train.log").read_text() for job in ("0", "1"))


@pytest.mark.slow
def test_a_local_job_with_two_tasks_trains_as_one_ddp_run_of_two_processes(tmp_path):
    """hydra.launcher.tasks_per_node=2 on the local launcher: the tasks join one process group (as on SLURM),
    so the run is one 2-process DDP run, not two single processes fighting over one run folder."""
    args = ["-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "seed=0", "logger=none",
            "trainer.max_steps=2", "trainer.batch_size=64", "trainer.eval_at_init=false", "trainer.progress_bar=false",
            "evaluation.linear.epochs=1", "backbone.widths=[8,16]", f"hydra.sweep.dir={tmp_path}"]
    proc = run_cli("train.py", args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert metrics["final"]["step"] == 2 and metrics["compute"]["processes"] == 2
    errors = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*/*_log.err"))
    assert "in use by another job" not in errors
