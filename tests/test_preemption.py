"""A real SIGTERM to a real training process: it saves, exits as terminated, and a re-run continues exactly."""
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from helpers import ROOT, TINY

EPOCHS, BATCH = 3, 32
STEPS_PER_EPOCH = 1437 // BATCH  # digits: 1437 training images


def start(run_dir, method, extra=()):
    args = [o for o in TINY if not o.startswith(("trainer.epochs", "trainer.batch_size"))] + [
        f"trainer.epochs={EPOCHS}", f"trainer.batch_size={BATCH}", "trainer.eval_at_init=false",
        f"method={method}", f"hydra.run.dir={run_dir}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(900, proc.kill)  # reading proc.stdout line by line has no timeout of its own
    watchdog.daemon = True
    watchdog.start()
    return proc


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def load(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)


def assert_same_tensors(a, b, where=""):
    """Bit-for-bit equality of two (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):  # numpy's generator state
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize(("method", "signum"), [
    ("simclr", signal.SIGINT),  # Ctrl-C at the terminal
    ("moco", signal.SIGTERM),  # a launcher's stop; moco: the queue, its pointer, the key encoder
], ids=["simclr-ctrl_c", "moco-sigterm"])
def test_a_stop_signal_mid_epoch_then_rerun_equals_the_uninterrupted_run(tmp_path, method, signum):
    """Either stop signal (each path once: the two signals share everything after their handler, the two
    methods everything before the state they save) saves the step it stopped at, exits as stopped by that
    signal, and the same command continues to the uninterrupted run's state, bit for bit."""
    code, out = finish(start(tmp_path / "full", method))
    assert code == 0, out[-2000:]

    proc = start(tmp_path / "killed", method)
    for line in proc.stdout:  # wait until the first epoch is done, then pre-empt the second
        if line.startswith(f"epoch 1/{EPOCHS}:"):
            proc.send_signal(signum)
            break
    code, out = finish(proc)
    assert code == 128 + signum, out[-2000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "Run the same command again to continue" in out
    if signum == signal.SIGINT:
        assert "Ctrl-C: stopping after this step" in out
    state = load(tmp_path / "killed")
    assert STEPS_PER_EPOCH < state["step"] < 2 * STEPS_PER_EPOCH, "the signal should land inside epoch 2"
    assert state["history"]["epochs"][-1]["stopped_by_signal"]

    code, out = finish(start(tmp_path / "killed", method))  # the same command: resume=auto picks it up
    assert code == 0, out[-2000:]
    assert f"resumed from {tmp_path / 'killed' / 'checkpoints' / 'last.pt'} at step {state['step']}" in out
    assert "warning: settings changed" not in out
    a, b = load(tmp_path / "full"), load(tmp_path / "killed")
    assert a["step"] == b["step"] == EPOCHS * STEPS_PER_EPOCH
    for part in ("method", "probe", "optimizer", "probe_optimizer", "scheduler", "rng"):
        assert_same_tensors(a[part], b[part], part)
    assert a["history"]["final"] == b["history"]["final"]
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())["final"] for run in ("full", "killed")]
    assert metrics[0] == metrics[1]


def test_sigusr1_is_a_stop_signal_and_the_previous_handler_comes_back():
    from cl_suite.engine.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered to the main thread before the next bytecode
        assert guard.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_second_ctrl_c_interrupts_at_once():
    from cl_suite.engine.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGINT)
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        assert guard.received == signal.SIGINT  # the first: recorded, the loop stops after its step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert not PreemptionGuard().hand_over()  # nothing received: nothing handed over


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it():
    from cl_suite.engine.preemption import PreemptionGuard

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup or a non-interactive shell's background job
    try:
        with PreemptionGuard() as guard:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.received is None
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_after_another_stop_signal_only_records_it():
    """Only a second Ctrl-C interrupts at once: a Ctrl-C after SIGTERM (the launcher's stop) still lets the
    step end and its checkpoint be saved."""
    from cl_suite.engine.preemption import PreemptionGuard

    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt
        assert guard.received == signal.SIGINT


def test_raising_stops_at_entry_for_an_earlier_signal_and_only_inside_its_block():
    """A signal that came before the final evaluation stops it before it starts; after the block a signal
    is only recorded again (the loop saves at the step's end); inside it, one exception per block, none
    inside the handling of that one."""
    from cl_suite.engine.preemption import PreemptionGuard, StopRequested

    with PreemptionGuard() as guard:
        with guard.raising():
            pass  # an evaluation that ended without a signal
        os.kill(os.getpid(), signal.SIGUSR1)  # after the block: recorded, not raised
        assert guard.received == signal.SIGUSR1
        guard.received = None
        with guard.raising():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                raise AssertionError("the signal did not raise inside the block")
            except StopRequested as stop:
                assert stop.signum == signal.SIGTERM
                os.kill(os.getpid(), signal.SIGUSR1)  # while handling the first: recorded, not raised
        assert guard.received == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # after the block: recorded, not raised
        assert guard.received == signal.SIGTERM
        with pytest.raises(StopRequested) as stop, guard.raising():
            raise AssertionError("entered the block although a signal had arrived")
        assert stop.value.signum == signal.SIGTERM


def test_ctrl_c_is_not_handed_to_pythons_own_handler():
    """Python's Ctrl-C handler would raise KeyboardInterrupt after the checkpoint was saved: the exit
    status would be a traceback's, not 128 + SIGINT."""
    from cl_suite.engine.preemption import PreemptionGuard

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PreemptionGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
        assert guard.received == signal.SIGINT and guard.hand_over() is False
    finally:
        signal.signal(signal.SIGINT, before)
