"""Cluster plumbing: the submitit launcher path (run locally) and signal hand-over to the launcher."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cl_suite.engine.preemption import PreemptionGuard
from helpers import ROOT, TINY, run_cli


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


def test_submitits_preemption_signal_is_a_stop_signal_and_goes_to_its_handler(monkeypatch):
    """submitit has SLURM send SIGUSR2 (SUBMITIT_PREEMPT_SIGNAL names another): the run must save first and
    then hand the signal to submitit's handler, which requeues the job."""
    from cl_suite.engine.preemption import stop_signals

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert guard.received == signal.SIGUSR2 and seen == []
        assert guard.hand_over() and seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    # submitit's signal, then SLURM's SIGTERM before the step ended: both handlers get theirs, in that order
    seen.clear()
    handlers = {sig: signal.signal(sig, lambda signum, frame: seen.append(signum))
                for sig in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.received == signal.SIGUSR2 and guard.hand_over()
        assert seen == [signal.SIGUSR2, signal.SIGTERM]
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "HUP")
    assert signal.SIGHUP in stop_signals() and signal.SIGUSR2 in stop_signals()
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # already one: listed once
    assert stop_signals().count(signal.SIGUSR1) == 1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOSUCH")  # submitit refuses it itself
    assert signal.SIGHUP not in stop_signals()


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


def _submitit_task_pids(folder) -> list[int]:
    """The processes that run the jobs of the local launcher whose submitit folder is ``folder``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if b"submitit.core._submit" in argv and any(str(folder).encode() in arg for arg in argv):
            pids.append(int(entry))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the job's process through /proc")
def test_submitits_preemption_signal_saves_requeues_and_the_requeued_job_finishes_the_run(tmp_path):
    """The SLURM path run locally: submitit's pre-emption signal (SIGUSR2) reaches a job mid-training. The
    run saves at that step, submitit's own handler requeues the job, and the requeued job resumes from the
    checkpoint and finishes: the final step count of an uninterrupted run, nothing trained twice."""
    epochs, batch = 3, 32
    steps_per_epoch = 1437 // batch
    args = ["-m", "hydra/launcher=local", "seed=0",
            *[o for o in TINY if not o.startswith(("trainer.epochs", "trainer.batch_size"))],
            f"trainer.epochs={epochs}", f"trainer.batch_size={batch}", "trainer.eval_at_init=false",
            f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    env.pop("SUBMITIT_PREEMPT_SIGNAL", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log, deadline = tmp_path / "0" / "train.log", time.monotonic() + 600
        while not (log.is_file() and f"epoch 1/{epochs}" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        pids = _submitit_task_pids(tmp_path / ".submitit")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGUSR2)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    job_log = "".join(p.read_text() for p in (tmp_path / ".submitit").glob("*/*_log.*"))
    assert "this job is preempted" in job_log and "Requeued job" in job_log, job_log[-3000:]
    text = log.read_text()
    stopped = re.findall(rf"stopped by signal {int(signal.SIGUSR2)} at step (\d+)", text)
    assert len(stopped) == 1 and steps_per_epoch < int(stopped[0]) < epochs * steps_per_epoch, text[-3000:]
    assert f"at step {stopped[0]}" in text.split("stopped by signal")[1]  # the requeued job resumed there
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    assert metrics["final"]["step"] == epochs * steps_per_epoch
