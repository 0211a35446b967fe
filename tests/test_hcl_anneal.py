"""HCL's beta annealing (``sampler.anneal=down``): the schedule against a step-by-step replay of the
authors' epoch loop (joshr17/HCL, ``image/main.py``, ``--anneal down``), the loss at an annealed beta
against the constant-beta sampler, validation, the config and a real short run."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl_suite.engine.build import DatasetFacts, build_method
from cl_suite.engine.trainer import train
from cl_suite.engine.validation import validate_train_config
from cl_suite.samplers import HardSampler
from helpers import TINY, compose_train

# TINY without the settings these tests choose themselves
BASE = [o for o in TINY if not o.startswith(("trainer.epochs=", "trainer.batch_size="))]


def authors_betas(beta: float, epochs: int) -> list[float]:
    """Replay the authors' loop: epochs are numbered 1..E; each epoch trains with the current beta, and
    after an epoch that is a multiple of int(E / 9) beta becomes the next of the 9 evenly spaced values
    from beta down to 0. Returns the beta of every epoch their run completes: when the 9 values are used
    up and another multiple comes, their loop stops there (the list is shorter than E)."""
    levels = list(np.linspace(beta, 0.0, 9))
    period = int(epochs / 9)
    used, taken = [], 0
    for epoch in range(1, epochs + 1):
        used.append(float(beta))
        if epoch % period == 0:
            if taken == len(levels):
                return used  # their run ends after this epoch
            beta, taken = levels[taken], taken + 1
    return used


def unit(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def beta_at(sampler: HardSampler, step: int, steps_per_epoch: int) -> float:
    sampler.set_progress(step, steps_per_epoch)
    return sampler.current_beta()


# ---- the schedule ----

@pytest.mark.parametrize("epochs, beta", [(9, 1.0), (10, 0.5), (17, 1.0), (18, 2.0), (20, 1.0), (30, 6.0),
                                          (100, 1.0), (400, 1.0), (401, 0.5)])
def test_down_schedule_matches_the_authors_loop_at_every_step(epochs, beta):
    sampler = HardSampler(beta=beta, tau_plus=0.1, anneal="down", anneal_epochs=epochs)
    expected = authors_betas(beta, epochs)
    spe = 7  # every step of an epoch uses that epoch's beta: first, middle and last step
    for epoch in range(epochs):  # 0-based: the authors' epoch epoch + 1
        want = expected[epoch] if epoch < len(expected) else 0.0  # past the end of their run: 0
        for step in (epoch * spe, epoch * spe + 3, epoch * spe + spe - 1):
            assert beta_at(sampler, step, spe) == want, (epoch, step)
    # once at 0 it stays there (training past the planned epochs, e.g. a longer resumed run)
    assert beta_at(sampler, 3 * epochs * spe, spe) == 0.0


def test_authors_run_stops_early_where_their_values_run_out():
    # E = 17: int(17 / 9) = 1, so every epoch is a multiple and the 10th change fails after epoch 10.
    assert len(authors_betas(1.0, 17)) == 10 and len(authors_betas(1.0, 20)) == 20
    assert len(authors_betas(1.0, 400)) == 400
    # The suite runs on where their run stopped: their 10 epochs' betas, then 0 to the end (epochs 11-17).
    sampler = HardSampler(beta=1.0, anneal="down", anneal_epochs=17)
    betas = [beta_at(sampler, epoch * 10 + 5, 10) for epoch in range(17)]
    assert betas == pytest.approx(authors_betas(1.0, 17) + [0.0] * 7)
    assert betas[:3] == pytest.approx([1.0, 1.0, 0.875])  # the first change keeps beta, then 1/8 steps


def test_400_epochs_change_beta_after_the_documented_epochs():
    """The paper's 400 epochs: int(400 / 9) = 44; the first change (after epoch 44) keeps beta, then
    1/8 steps after epochs 88, 132, ..., 396 (1-based), so 397-400 train at beta = 0."""
    sampler = HardSampler(beta=1.0, anneal="down", anneal_epochs=400)
    one_based = {1: 1.0, 44: 1.0, 45: 1.0, 88: 1.0, 89: 0.875, 132: 0.875, 133: 0.75, 352: 0.25, 353: 0.125,
                 396: 0.125, 397: 0.0, 400: 0.0}
    for epoch, beta in one_based.items():
        assert beta_at(sampler, (epoch - 1) * 10, 10) == beta, epoch
    changes = [e for e in range(2, 401) if beta_at(sampler, (e - 1) * 10, 10) != beta_at(sampler, (e - 2) * 10, 10)]
    assert changes == [89 + 44 * k for k in range(8)]


def test_without_annealing_beta_is_constant_and_logged():
    sampler = HardSampler(beta=1.5, tau_plus=0.1, anneal=None, anneal_epochs=9)
    anchors, candidates = unit(4, 5, 0, torch.float32), unit(12, 5, 1, torch.float32)
    for step in (0, 50, 10_000):
        sampler.set_progress(step, 5)
        out = sampler(anchors, anchors, candidates, None, 0.5)
        assert sampler.current_beta() == 1.5 and out.stats["hard/beta"].item() == 1.5


def test_logged_beta_is_the_annealed_value_as_a_0d_device_tensor():
    sampler = HardSampler(beta=2.0, anneal="down", anneal_epochs=18)  # period 2 epochs
    anchors, candidates = unit(4, 5, 0, torch.float32), unit(12, 5, 1, torch.float32)
    for epoch, beta in [(0, 2.0), (3, 2.0), (4, 1.75), (10, 1.0), (17, 0.25), (18, 0.0)]:
        sampler.set_progress(epoch * 3 + 1, 3)
        stat = sampler(anchors, anchors, candidates, None, 0.5).stats["hard/beta"]
        assert stat.ndim == 0 and stat.device == anchors.device and not stat.requires_grad
        assert stat.item() == beta


# ---- the loss at an annealed beta is the constant-beta loss ----

@pytest.mark.parametrize("epoch, beta", [(0, 1.5), (5, 1.5), (6, 1.3125), (17, 0.75), (26, 0.1875), (29, 0.0)])
def test_annealed_loss_and_gradients_equal_the_fixed_beta_sampler(epoch, beta):
    # E = 30: period 3; 0-based epoch 6 = 1-based 7, after the changes at 3 (keeps beta) and 6 (7/8 beta).
    assert authors_betas(1.5, 30)[epoch] == beta
    annealed = HardSampler(beta=1.5, tau_plus=0.1, anneal="down", anneal_epochs=30)
    annealed.set_progress(epoch * 4 + 2, 4)
    fixed = HardSampler(beta=beta, tau_plus=0.1)
    results = []
    for sampler in (annealed, fixed):
        anchors = unit(6, 5, 2).requires_grad_()
        positives = unit(6, 5, 3).requires_grad_()
        candidates = unit(14, 5, 4).requires_grad_()
        mask = torch.rand(6, 14, generator=torch.Generator().manual_seed(5)) > 0.2
        out = sampler(anchors, positives, candidates, mask, 0.5)
        grads = torch.autograd.grad(out.loss, (anchors, positives, candidates))
        results.append((out.loss, *grads))
        assert all(g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_annealing_reaches_dcl_at_the_end():
    from cl_suite.samplers import DebiasedSampler
    # E = 100: period 11, beta = 0 after the 9th change (after epoch 99), in the last epoch 100 (0-based 99)
    assert authors_betas(1.0, 100)[-2:] == [0.125, 0.0]
    annealed = HardSampler(beta=1.0, tau_plus=0.1, anneal="down", anneal_epochs=100)
    annealed.set_progress(99, 1)
    anchors, candidates = unit(4, 5, 6), unit(10, 5, 7)
    a = annealed(anchors, anchors.flip(0), candidates, None, 0.5).loss
    b = DebiasedSampler(tau_plus=0.1)(anchors, anchors.flip(0), candidates, None, 0.5).loss
    torch.testing.assert_close(a, b)



def test_annealed_hcl_under_torch_compile_compiles_few_graphs_and_matches_eager():
    """The annealed beta is computed in ``set_progress`` (outside the graph): the compiled sampler follows
    all 9 levels without a graph per step or per level, and equals the eager sampler."""
    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()  # reset() leaves the counters of earlier compilations
    sampler = HardSampler(beta=1.0, tau_plus=0.1, anneal="down", anneal_epochs=18)  # period 2 epochs
    compiled = torch.compile(sampler, backend="eager")
    anchors, candidates = unit(8, 16, 8, torch.float32), unit(40, 16, 9, torch.float32)
    betas = set()
    for step in range(38):  # 2 steps per epoch, 19 epochs: every level and the end at 0
        sampler.set_progress(step, 2, record_diagnostics=step % 2 == 0)
        eager = HardSampler(beta=1.0, tau_plus=0.1, anneal="down", anneal_epochs=18)
        eager.set_progress(step, 2)
        got, want = compiled(anchors, anchors, candidates, None, 0.5), eager(anchors, anchors, candidates, None, 0.5)
        assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-6)
        betas.add(sampler.current_beta())
    assert len(betas) == 9
    assert dynamo.utils.counters["stats"]["unique_graphs"] <= 4  # with and without diagnostics
    dynamo.reset()


# ---- validation ----

@pytest.mark.parametrize("kwargs, message", [
    (dict(anneal="up", anneal_epochs=400), "sampler.anneal=up is not allowed"),
    (dict(anneal="Down", anneal_epochs=400), "sampler.anneal=Down is not allowed"),
    (dict(anneal="down", anneal_epochs=8), "sampler.anneal_epochs=8 is not allowed with sampler.anneal=down"),
    (dict(anneal="down", anneal_epochs=None), "sampler.anneal_epochs=null is not allowed with sampler.anneal=down"),
    (dict(anneal="down", anneal_epochs=float("nan")), "sampler.anneal_epochs=nan is not allowed"),
    (dict(anneal="down", anneal_epochs=float("inf")), "sampler.anneal_epochs=inf is not allowed"),
    (dict(anneal="down", anneal_epochs=40.5), "sampler.anneal_epochs=40.5 is not allowed"),
    (dict(anneal=None, anneal_epochs=-3), "sampler.anneal_epochs=-3 is not allowed"),
    (dict(anneal="down", anneal_epochs=True), "sampler.anneal_epochs=true is not allowed"),
    (dict(beta=float("inf"), anneal="down", anneal_epochs=400), "sampler.beta=inf is not allowed"),
    (dict(beta=float("nan")), "sampler.beta=nan is not allowed"),
])
def test_bad_anneal_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        HardSampler(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("bad, named", [("trainer.epochs=2 sampler.anneal=up", "sampler.anneal=up"),
                                        ("trainer.epochs=5 sampler.anneal=down", "sampler.anneal_epochs=5"),
                                        ("trainer.epochs=2 sampler.anneal_epochs=nan", "sampler.anneal_epochs=nan")])
def test_bad_anneal_config_stops_before_training(tmp_path, bad, named):
    with pytest.raises(ValueError) as err:
        train(compose_train(BASE + ["method=hcl", *bad.split()], tmp_path))
    assert named in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


# ---- config and a real run ----

def test_hcl_config_with_annealing_composes_and_spans_the_run():
    cfg = compose_train(["method=hcl", "sampler.anneal=down", "trainer.epochs=90", "backbone.widths=[8]"])
    validate_train_config(cfg)
    assert cfg.sampler.anneal == "down" and cfg.sampler.anneal_epochs == 90
    facts = DatasetFacts(num_samples=40, num_classes=10, steps_per_epoch=1, coarse_of_class=torch.arange(10) // 2)
    sampler = build_method(cfg, facts).sampler
    assert isinstance(sampler, HardSampler) and sampler.anneal == "down" and sampler.anneal_epochs == 90
    assert beta_at(sampler, 19, 1) == 1.0 and beta_at(sampler, 20, 1) == 0.875  # period 10


def test_default_hard_config_does_not_anneal():
    cfg = compose_train(["sampler=hard"])
    assert cfg.sampler.anneal is None and cfg.sampler.anneal_epochs == cfg.trainer.epochs


def test_short_run_with_annealing_logs_the_authors_betas(tmp_path):
    # synthetic: 128 training images, batch 128 -> one step per epoch; E = 9 -> beta changes every epoch,
    # the first change (after epoch 1) keeps beta, so the third step is the first at 7/8 beta.
    cfg = compose_train(BASE + ["method=hcl", "sampler.anneal=down", "sampler.beta=2.0", "dataset=synthetic",
                                "trainer.epochs=9", "trainer.batch_size=128", "trainer.max_steps=3",
                                "trainer.eval_at_init=false", "trainer.log_every_steps=1",
                                "evaluation.linear.epochs=1"], tmp_path)
    final = train(cfg)
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    assert final["step"] == 3
    assert [r["diag/hard/beta"] for r in records] == authors_betas(2.0, 9)[:3] == [2.0, 2.0, 1.75]
    assert all(np.isfinite(r["train/epoch_loss"]) for r in records)
