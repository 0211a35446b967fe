"""Trust in a run's outcome: changed settings take effect on resume, one job per run folder, failures that
would come late come at start-up, a stop during the final evaluation, and skip mode that cannot end in a
silent exit 0 with a broken model."""
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections import namedtuple

import pytest
import torch

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine import trainer as trainer_module
from cl_suite.engine.numerics import NonFiniteLossError, NonFiniteStateError, TooManySkippedStepsError
from cl_suite.engine.run_lock import LOCK_NAME, RunFolderError, RunLock
from cl_suite.engine.trainer import Trainer, train
from cl_suite.engine.validation import ConfigError
from cl_suite.methods.simclr import SimCLR
from helpers import ROOT, TINY, compose_train, run_cli

STEPS_PER_EPOCH = 128 // 32  # synthetic: 4 classes x 32 training images
RUN = TINY + ["dataset=synthetic", "trainer.batch_size=32", "trainer.epochs=4", "trainer.eval_at_init=false",
              "trainer.checkpoint_every_epochs=1", "evaluation.linear.epochs=2"]


def epochs_of(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["epochs"]


@pytest.fixture
def poison_steps(monkeypatch):
    """``poison_steps(steps, where)``: SimCLR's n-th training forward is step n; at the given steps make its
    loss NaN (``where="loss"``) or feed it NaN images (``where="input"``: BatchNorm statistics go NaN too)."""
    def inject(steps, where="loss"):
        original, calls = SimCLR.forward, {"n": 0}

        def forward(self, views, *args, **kwargs):
            poisoned = False
            if self.training:
                step, calls["n"] = calls["n"], calls["n"] + 1
                poisoned = step in steps
            if poisoned and where == "input":
                views = tuple(v * float("nan") for v in views)
            out = original(self, views, *args, **kwargs)
            if poisoned and where == "loss":
                out = dataclasses.replace(out, loss=out.loss * float("nan"))
            return out

        monkeypatch.setattr(SimCLR, "forward", forward)
    return inject


def refuse_training(monkeypatch):
    def fit(self):
        raise AssertionError("training started")
    monkeypatch.setattr(Trainer, "fit", fit)


# ---- 1. changed settings take effect on resume ----

def test_a_lower_lr_after_a_nan_resumes_from_the_last_good_checkpoint_and_finishes(tmp_path, monkeypatch, capsys):
    """The loss turns NaN whenever the learning rate in effect exceeds LIMIT (a stand-in for a divergence
    that a smaller lr avoids). optimizer.lr=1.0 warms up past it at step 5; the same command with
    optimizer.lr=0.5 must continue from step 4 with the new lr, not the checkpoint's."""
    limit, lr_now = 0.08, {}
    original_step, original_forward = Trainer.train_step, SimCLR.forward

    def train_step(self, batch, generator):
        lr_now["lr"] = self.optimizer.param_groups[0]["lr"]
        return original_step(self, batch, generator)

    def forward(self, *args, **kwargs):
        out = original_forward(self, *args, **kwargs)
        if self.training and lr_now["lr"] > limit:
            out = dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(SimCLR, "forward", forward)
    # base lr = 1.0 x 32/256 = 0.125, warm-up over 8 steps: step s runs at 0.125 (s + 1) / 8 -> 0.094 at step 5
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        train(compose_train(RUN + ["optimizer.lr=1.0"], tmp_path))
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == STEPS_PER_EPOCH
    capsys.readouterr()

    final = train(compose_train(RUN + ["optimizer.lr=0.5"], tmp_path))  # the fix, then the same command
    out = capsys.readouterr().out
    assert "optimizer.lr: 1.0 -> 0.5 applied to the restored optimizer" in out
    assert f"resumed from {tmp_path / 'checkpoints' / 'last.pt'} at step 4" in out
    assert final["step"] == 4 * STEPS_PER_EPOCH
    epochs = epochs_of(tmp_path)
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(math.isfinite(e["train/epoch_loss"]) for e in epochs)


def test_restored_param_groups_and_schedule_carry_the_new_settings(tmp_path, capsys):
    train(compose_train(RUN + ["trainer.max_steps=2"], tmp_path))
    capsys.readouterr()
    cfg = compose_train(RUN + ["optimizer.lr=0.03", "optimizer.momentum=0.5", "optimizer.weight_decay=0.001",
                               "scheduler.warmup_epochs=1"], tmp_path)
    trainer = Trainer(cfg, torch.device("cpu"))
    assert trainer.step == 2
    base = 0.03 * 32 / 256
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.001 and no_decay["weight_decay"] == 0.0  # biases and norms stay excluded
    for group in (decay, no_decay):
        assert group["momentum"] == 0.5
        assert group["initial_lr"] == base
        assert math.isclose(group["lr"], base * 3 / 4)  # step 2 of a 4-step warm-up (was 8 steps)
    assert trainer.scheduler.base_lrs == [base, base]
    trainer.scheduler.step()  # the next steps follow the new base rate and the new warm-up
    assert math.isclose(decay["lr"], base * 4 / 4)
    out = capsys.readouterr().out
    for line in ("optimizer.lr: 0.06 -> 0.03 applied to the restored optimizer",
                 "optimizer.momentum: 0.9 -> 0.5 applied to the restored optimizer",
                 "optimizer.weight_decay: 0.0005 -> 0.001 applied to the restored optimizer",
                 "scheduler.warmup_epochs: 2 -> 1 applied to the restored schedule"):
        assert line in out
    assert "optimizer.lr: checkpoint" not in out  # said once, as applied


# ---- 2. one owner per run folder ----

@pytest.mark.slow
def test_a_second_job_on_a_held_run_folder_is_refused_naming_the_owner(tmp_path):
    run_dir = tmp_path / "run"
    owners_record = run_dir / ".hydra" / "config.yaml"
    owners_record.parent.mkdir(parents=True)
    owners_record.write_text("the owner's record\n")
    with RunLock(run_dir):  # this test process is the live owner
        proc = run_cli("train.py", TINY + ["trainer.max_steps=2", f"hydra.run.dir={run_dir}"], timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-2000:]
    assert "is in use by another job" in output
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in output
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert owners_record.read_text() == "the owner's record\n"  # the refused job wrote no .hydra/ record
    assert not (run_dir / LOCK_NAME).exists()  # released by its owner


def test_a_second_trainer_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
            train(compose_train(RUN + ["trainer.max_steps=1"], tmp_path))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    code = ("import os, sys; from cl_suite.engine.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print(os.getpid(), flush=True); os.kill(os.getpid(), 9)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    dead_pid = int(proc.stdout.split()[0])
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == dead_pid  # left behind

    final = train(compose_train(RUN + ["trainer.max_steps=2"], tmp_path))
    assert final["step"] == 2
    assert f"took over the lock of a job that no longer holds it (host {socket.gethostname()}, pid {dead_pid}" in \
        capsys.readouterr().out
    assert not (tmp_path / LOCK_NAME).exists()


def without_file_locks(monkeypatch):
    """A file system without flock (some NFS or FUSE mounts answer ENOLCK): RunLock's flock fails so."""
    import errno
    import fcntl
    from types import SimpleNamespace

    from cl_suite.engine import run_lock

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))


def a_dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60, check=True)
    return int(proc.stdout)


def write_owner(run_dir, host, pid, started="2024-01-01T00:00:00+0000"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": host, "pid": pid, "started": started}))


def test_without_file_locks_a_live_owner_on_this_host_is_refused(tmp_path, monkeypatch):
    without_file_locks(monkeypatch)
    fresh = RunLock(tmp_path / "fresh")
    with fresh:  # no owner yet: taken, and nothing was taken over
        assert fresh.took_over is None
        assert json.loads((tmp_path / "fresh" / LOCK_NAME).read_text())["pid"] == os.getpid()
    write_owner(tmp_path / "run", socket.gethostname(), os.getppid())  # a live process, not this one
    with pytest.raises(RunFolderError, match=f"is in use by another job .*pid {os.getppid()}"):
        RunLock(tmp_path / "run").acquire()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getppid()  # left to its owner


@pytest.mark.parametrize("pid", ["dead", "this process", 0, -1, 2 ** 80, True])
def test_without_file_locks_the_lock_of_a_gone_process_on_this_host_is_taken_over(tmp_path, monkeypatch, pid):
    """A dead pid, or this process's own (a requeued job in a fresh container gets the pid its dead
    predecessor had): no other job can hold it; nor can a pid no process has (0 and negative ones would
    make os.kill signal a process group, a huge one overflow). The new owner's record replaces the old
    one entirely, however long that was."""
    without_file_locks(monkeypatch)
    old_pid = {"dead": a_dead_pid(), "this process": os.getpid()}.get(pid, pid)
    write_owner(tmp_path, socket.gethostname(), old_pid, started="x" * 500)
    with RunLock(tmp_path) as lock:
        assert f"pid {old_pid}, started xxx" in lock.took_over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_without_file_locks_a_lock_from_another_host_is_refused_naming_the_file(tmp_path, monkeypatch):
    without_file_locks(monkeypatch)
    write_owner(tmp_path, "some-other-node", a_dead_pid())  # its processes cannot be checked from here
    with pytest.raises(RunFolderError, match=f"another host .*some-other-node.*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "some-other-node"


def test_a_lock_file_replaced_while_it_was_being_taken_is_taken_again(tmp_path, monkeypatch):
    """The owner deletes run.lock on release, and the next job can create a new one between this job's open
    and its flock: the flock on the deleted file would hold nothing, so the name is opened again."""
    import fcntl
    from types import SimpleNamespace

    from cl_suite.engine import run_lock

    calls = []

    def flock(fd, operation):
        if not calls:  # the first attempt: meanwhile the file was released and created anew by another job
            (tmp_path / LOCK_NAME).unlink()
            (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "another", "pid": 1}))
        calls.append(fd)
        fcntl.flock(fd, operation)

    monkeypatch.setattr(run_lock, "fcntl", SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))
    with RunLock(tmp_path) as lock:
        assert len(calls) == 2
        assert os.fstat(lock._fd).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino  # the lock is on the named file
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("flock", [True, False])
@pytest.mark.parametrize("content", ["[1]", '"text"'])
def test_a_lock_file_that_is_json_but_no_record_is_taken_over(tmp_path, monkeypatch, flock, content):
    """A run.lock no job holds whose JSON is not an owner record (planted in a shared folder) is taken
    over like an unreadable one; it once failed the run with an AttributeError while naming its owner."""
    if not flock:
        without_file_locks(monkeypatch)
    (tmp_path / LOCK_NAME).write_text(content)
    with RunLock(tmp_path) as lock:
        assert lock.took_over == "an unknown owner (the lock file is unreadable)"
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_pid_of_another_user_counts_as_alive(monkeypatch):
    """os.kill(pid, 0) on another user's process raises PermissionError: that process exists."""
    from cl_suite.engine import run_lock

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(run_lock.os, "kill", kill)
    assert run_lock._pid_alive(12345)


# ---- 3. failures that come late ----

def test_a_run_folder_that_cannot_be_written_fails_before_training(tmp_path, monkeypatch):
    refuse_training(monkeypatch)
    (tmp_path / "a_file").write_text("")
    run_dir = tmp_path / "a_file" / "run"  # below a file: not creatable, even for root
    with pytest.raises(RunFolderError, match="is not writable"):
        train(compose_train(RUN, run_dir))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_run_folder_fails_before_training(tmp_path, monkeypatch):
    refuse_training(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match="is not writable"):
            train(compose_train(RUN, run_dir))
    finally:
        run_dir.chmod(0o755)


def test_a_run_folder_without_room_for_a_checkpoint_fails_before_training(tmp_path, monkeypatch):
    refuse_training(monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(RunFolderError, match=r"has 1\.0 MiB free, less than the"):
        train(compose_train(RUN, tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_the_trained_weights_are_saved_before_the_final_evaluation(tmp_path, monkeypatch, capsys):
    original = trainer_module.evaluate_encoder

    def evaluate_encoder(*args, with_linear, **kwargs):
        if with_linear:
            raise RuntimeError("the final evaluation crashed")
        return original(*args, with_linear=with_linear, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_encoder", evaluate_encoder)
    overrides = RUN + ["trainer.epochs=2", "trainer.checkpoint_every_epochs=0"]  # no save but the end
    with pytest.raises(RuntimeError, match="final evaluation crashed"):
        train(compose_train(overrides, tmp_path))
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2 * STEPS_PER_EPOCH and state["history"]["final"] == {}
    capsys.readouterr()

    monkeypatch.setattr(trainer_module, "evaluate_encoder", original)
    final = train(compose_train(overrides, tmp_path))  # the same command: only the evaluation
    out = capsys.readouterr().out
    assert f"at step {2 * STEPS_PER_EPOCH}" in out and "epoch 1/2:" not in out and "epoch 2/2:" not in out
    assert final["step"] == 2 * STEPS_PER_EPOCH and "linear/top1" in final
    assert [e["epoch"] for e in epochs_of(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_a_stop_signal_during_the_final_evaluation_saves_and_the_rerun_only_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    args = RUN + ["trainer.epochs=2", "evaluation.linear.epochs=100000", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = []
    watchdog = threading.Timer(600, proc.kill)  # reading stdout has no timeout of its own
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("final evaluation at step"):
                proc.send_signal(signal.SIGTERM)
                break
        out, _ = proc.communicate(timeout=600)
    finally:
        watchdog.cancel()
        proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "during the final evaluation" in out and "Run the same command again" in out
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 2 * STEPS_PER_EPOCH and state["history"]["final"] == {}
    assert json.loads((run_dir / "metrics.json").read_text())["final"] == {}

    rerun = run_cli("train.py", [a for a in args if not a.startswith("evaluation.linear.epochs")]
                    + ["evaluation.linear.epochs=2"], timeout=600)  # same run; a short probe keeps the test fast
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {2 * STEPS_PER_EPOCH}" in rerun.stdout and "epoch 2/2:" not in rerun.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"]["step"] == 2 * STEPS_PER_EPOCH and [e["epoch"] for e in metrics["epochs"]] == [1, 2]


def test_a_graceful_stop_and_resume_leaves_one_record_per_epoch(tmp_path, monkeypatch):
    overrides = RUN + ["trainer.checkpoint_every_epochs=0"]
    train(compose_train(overrides, tmp_path / "full"))
    original = Trainer.train_step

    def train_step(self, batch, generator):
        result = original(self, batch, generator)
        if self.step == STEPS_PER_EPOCH + 2:  # inside epoch 2: as if SIGTERM arrived here
            self.guard.received = signal.SIGTERM
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    with pytest.raises(SystemExit) as stop:
        train(compose_train(overrides, tmp_path / "split"))
    assert stop.value.code == 128 + signal.SIGTERM
    assert [e["epoch"] for e in epochs_of(tmp_path / "split")] == [1, 2]  # the partial record, while stopped
    monkeypatch.setattr(Trainer, "train_step", original)
    train(compose_train(overrides, tmp_path / "split"))

    full, split = epochs_of(tmp_path / "full"), epochs_of(tmp_path / "split")
    assert [e["epoch"] for e in split] == [1, 2, 3, 4]
    for a, b in zip(full, split):  # the resumed epoch's record covers the whole epoch, as uninterrupted
        for key in ("step", "train/epoch_loss", "online_probe/train_top1", "diag/negatives/false_negative_rate"):
            assert a[key] == b[key], (a["epoch"], key)
        assert "stopped_by_signal" not in b


def test_a_negative_embedding_snapshot_fails_at_start_up(tmp_path, monkeypatch):
    refuse_training(monkeypatch)
    with pytest.raises(ConfigError, match=r"evaluation\.embedding_snapshot=-5 is not allowed: expected an integer"):
        train(compose_train(RUN + ["evaluation.embedding_snapshot=-5"], tmp_path))
    assert not (tmp_path / "checkpoints").exists()


# ---- 4. trainer.nonfinite=skip ----

def test_skip_mode_stops_once_too_many_steps_were_skipped(tmp_path, poison_steps):
    poison_steps({5, 6, 7})
    with pytest.raises(TooManySkippedStepsError) as err:  # 16 steps x 0.1 = 1.6: the second skip is one too many
        train(compose_train(RUN + ["trainer.nonfinite=skip", "trainer.max_skipped_fraction=0.1"], tmp_path))
    message = str(err.value)
    assert "2 of the run's 16 steps" in message and "trainer.max_skipped_fraction=0.1" in message
    assert "stopped at step 6" in message
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == STEPS_PER_EPOCH


def test_skip_mode_warns_about_skipped_steps(tmp_path, poison_steps, capsys):
    poison_steps({5})
    train(compose_train(RUN + ["trainer.nonfinite=skip"], tmp_path))
    # On the console, and in the run's train.log at WARNING level.
    assert "1 of the 4 steps of epoch 2 had a non-finite loss" in capsys.readouterr().out
    warnings = [line for line in (tmp_path / "train.log").read_text().splitlines() if "][WARNING] " in line]
    assert any("1 of the 4 steps of epoch 2 had a non-finite loss and were skipped" in w for w in warnings), warnings
    assert any("1 of this run's 16 steps had a non-finite loss" in w for w in warnings), warnings


def test_skip_mode_never_saves_nan_batchnorm_statistics(tmp_path, poison_steps):
    poison_steps({5}, where="input")  # NaN images: a skipped step, and NaN BatchNorm running statistics
    with pytest.raises(NonFiniteStateError) as err:
        train(compose_train(RUN + ["trainer.nonfinite=skip"], tmp_path))
    message = str(err.value)
    assert "not saving a checkpoint at step 8" in message and "running_mean" in message
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


@pytest.mark.parametrize("value", ["-0.1", "1.5", "inf", "nan", "true"])
def test_max_skipped_fraction_is_validated(tmp_path, monkeypatch, value):
    refuse_training(monkeypatch)
    # (inf and nan may be refused by the generic finite-number check of validation.py first)
    with pytest.raises(ConfigError, match=r"trainer\.max_skipped_fraction=\S+ is not allowed: expected a "):
        train(compose_train(RUN + [f"trainer.max_skipped_fraction={value}"], tmp_path))


def test_a_job_refused_for_its_config_still_leaves_its_hydra_record(tmp_path):
    """Hydra's own .hydra/ writing is off (the trainer writes it once it owns the folder); a job whose
    config is refused still records it, so a sweep report lists the job as failed, not as not run."""
    run_dir = tmp_path / "run"
    proc = run_cli("train.py", TINY + ["method.temperature=inf", f"hydra.run.dir={run_dir}"], timeout=600)
    assert proc.returncode != 0 and "method.temperature=inf" in proc.stdout + proc.stderr
    assert "temperature: .inf" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "method.temperature=inf" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert not (run_dir / LOCK_NAME).exists()
