"""A NaN loss stops the run naming the step, and the last checkpoint on disk stays the last good one;
``trainer.nonfinite=skip`` drops the step's update instead."""
import dataclasses
import json

import pytest
import torch

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.numerics import NonFiniteLossError
from cl_suite.engine.trainer import train
from cl_suite.methods.simclr import SimCLR
from helpers import TINY, compose_train

STEPS_PER_EPOCH = 128 // 32  # synthetic: 4 classes x 32 training images
RUN = TINY + ["dataset=synthetic", "trainer.batch_size=32", "trainer.epochs=4", "trainer.eval_at_init=false",
              "trainer.checkpoint_every_epochs=1"]


@pytest.fixture
def nan_at_steps(monkeypatch):
    """Make SimCLR's training loss NaN at the given optimizer steps (its n-th training forward is step n)."""
    def inject(steps):
        original, calls = SimCLR.forward, {"n": 0}

        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if self.training:
                step, calls["n"] = calls["n"], calls["n"] + 1
                if step in steps:
                    out = dataclasses.replace(out, loss=out.loss * float("nan"))
            return out

        monkeypatch.setattr(SimCLR, "forward", forward)
    return inject


@pytest.mark.parametrize("log_every, stopped_at", [(2, 10), (100, 12)])  # at a log step, or at the epoch's save
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, nan_at_steps, log_every,
                                                                              stopped_at):
    nan_at_steps({9})  # inside epoch 3 (steps 8..11); the checkpoint of epoch 2 is at step 8
    with pytest.raises(NonFiniteLossError) as err:
        train(compose_train(RUN + [f"trainer.log_every_steps={log_every}"], tmp_path))
    message = str(err.value)
    assert "non-finite training loss (nan) at step 9" in message
    assert f"stopped at step {stopped_at} without saving" in message
    assert "method.temperature=0.5" in message and "trainer.nonfinite=skip" in message
    assert str(tmp_path / "checkpoints" / "step_000000008.pt") in message

    folder = tmp_path / "checkpoints"
    assert [p.name for p in ckpt.step_checkpoints(folder)][-1] == "step_000000008.pt"
    state = ckpt.load_checkpoint(folder / "last.pt")
    assert state["step"] == 2 * STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    assert len(json.loads((tmp_path / "metrics.json").read_text())["epochs"]) == 2

    # The last good checkpoint continues: without the injected NaN the run now finishes.
    final = train(compose_train(RUN + [f"trainer.log_every_steps={log_every}"], tmp_path))
    assert final["step"] == 4 * STEPS_PER_EPOCH


def test_skip_mode_drops_the_update_of_a_nan_step_and_finishes(tmp_path, nan_at_steps, capsys):
    nan_at_steps({5})
    final = train(compose_train(RUN + ["trainer.nonfinite=skip"], tmp_path))
    assert "step 5: non-finite loss, update skipped" in capsys.readouterr().out
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["train/skipped_steps"] for e in history["epochs"]] == [0, 1, 0, 0]
    assert all(torch.isfinite(torch.tensor(e["train/epoch_loss"])) for e in history["epochs"])
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == final["step"] == 4 * STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_skipped_step_leaves_weights_and_optimizer_untouched(tmp_path, nan_at_steps):
    """Every step NaN from step 4 on: the weights stay those of step 4's checkpoint, bit for bit."""
    nan_at_steps(set(range(4, 100)))
    train(compose_train(RUN + ["trainer.nonfinite=skip", "trainer.epochs=2"], tmp_path))
    first, last = (torch.load(p, weights_only=False) for p in ckpt.step_checkpoints(tmp_path / "checkpoints"))
    assert (first["step"], last["step"]) == (4, 8)
    for key, value in first["method"].items():
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue  # BatchNorm statistics move in every forward pass, skipped or not
        assert torch.equal(value, last["method"][key]), key
    assert first["optimizer"]["state"]  # SGD with momentum 0.9: a buffer per parameter
    for index, buffers in first["optimizer"]["state"].items():  # SGD momentum: not advanced by skipped steps
        assert torch.equal(buffers["momentum_buffer"], last["optimizer"]["state"][index]["momentum_buffer"])
