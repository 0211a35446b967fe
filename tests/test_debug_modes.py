"""debug=fast|overfit|profile (conf/debug/) and the trainer settings behind them."""
import json

import pytest
import torch

from cl_suite.data.loader import TrainBatches
from cl_suite.data.types import ImageSplit
from cl_suite.engine.trainer import train
from helpers import TINY, compose_train

SMALL = [o for o in TINY if not o.startswith(("logger", "trainer.epochs", "trainer.eval_every"))]


def test_fast_runs_two_steps_and_writes_no_checkpoint(tmp_path):
    cfg = compose_train(["debug=fast", *SMALL], tmp_path)
    assert cfg.logger._target_.endswith("NullLogger") and cfg.trainer.max_steps == 2
    final = train(cfg)
    assert final["step"] == 2 and 0 <= final["knn/top1"] <= 100
    assert not (tmp_path / "checkpoints").exists()
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history["final"]["step"] == 2 and len(history["epochs"]) == 1


def test_overfit_batches_repeat_the_same_images_in_the_same_order_every_epoch():
    split = ImageSplit(labels=torch.arange(40), images=torch.zeros(40, 3, 4, 4, dtype=torch.uint8))
    batches = TrainBatches(split, batch_size=8, device=torch.device("cpu"), seed=0, overfit_batches=2)
    assert len(batches) == 2
    epochs = [[b.indices.tolist() for b in batches.epoch(e)] for e in range(3)]
    assert epochs[0] == epochs[1] == epochs[2] and len(epochs[0]) == 2
    full = TrainBatches(split, batch_size=8, device=torch.device("cpu"), seed=0)
    assert [b.indices.tolist() for b in full.epoch(0)][:2] == epochs[0]  # the first batches of epoch 0
    assert [b.indices.tolist() for b in full.epoch(1)][:2] != epochs[0]


@pytest.mark.parametrize("method", ["simclr", "ring"])  # ring: the README's example (t = 0.07)
def test_overfit_drives_the_loss_down_on_its_few_batches(tmp_path, method):
    final = train(compose_train(["debug=overfit", f"method={method}", *SMALL, "trainer.epochs=30",
                                 "evaluation.linear.epochs=1"], tmp_path))
    losses = [r["train/epoch_loss"] for r in json.loads((tmp_path / "metrics.json").read_text())["epochs"]]
    assert final["step"] == 30 * 2 and len(losses) == 30
    assert losses[-1] < 0.9 * losses[0], losses  # two batches of 64 are learnt, not just sampled


@pytest.mark.slow
def test_the_readmes_overfit_example_learns(tmp_path):
    # python train.py method=ring debug=overfit, at its default size (batch 256): without a warm-up the
    # ring's t = 0.07 collapsed every embedding within 10 epochs (loss flat at log of the ring width, 5.45)
    train(compose_train(["debug=overfit", "method=ring", "trainer.progress_bar=false"], tmp_path))
    losses = [r["train/epoch_loss"] for r in json.loads((tmp_path / "metrics.json").read_text())["epochs"]]
    assert losses[-1] < 0.5 * losses[0], losses


def test_profile_writes_a_table_of_top_ops_and_a_trace(tmp_path):
    train(compose_train(["debug=profile", *SMALL, "trainer.max_steps=4", "trainer.profile_steps=2",
                         "trainer.profile_warmup_steps=1"], tmp_path))
    table = (tmp_path / "profile.txt").read_text()
    assert table.startswith("torch.profiler: 2 training step(s) after 1 warm-up step(s)")
    assert "aten::" in table and "ProfilerStep" in table
    trace = json.loads((tmp_path / "profile_trace.json").read_text())
    assert any(event.get("name", "").startswith("aten::") for event in trace["traceEvents"])


def test_a_run_that_ends_inside_the_profiled_steps_still_writes_their_table(tmp_path):
    train(compose_train(["debug=profile", *SMALL, "trainer.max_steps=3", "trainer.profile_steps=10",
                         "trainer.profile_warmup_steps=1"], tmp_path))
    assert (tmp_path / "profile.txt").read_text().startswith("torch.profiler: 2 training step(s) after 1 warm-up")
