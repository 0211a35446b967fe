"""Diagnostics only on the steps that record them: the loss and its gradient do not depend on the flag,
the recorded diagnostics are the ones ``diagnostics()`` gives, and a real run records them on its log
steps and the last step of each epoch. Also the hot-path changes that must not change a number: NNCLR's
support set normalised at push time, CMC's Lab constants as buffers."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import cl_suite.samplers.base as sampler_base
from cl_suite.engine.diagnostics import EpochDiagnostics
from cl_suite.engine.trainer import Trainer, train
from cl_suite.methods import NNCLR
from cl_suite.methods.cmc import _D65_WHITE, _LAB_HALF_RANGE, _LAB_MEAN, _RGB_TO_XYZ, CMC, rgb_to_lab
from cl_suite.models import SmallConvNet
from cl_suite.samplers import (Contrast, DebiasedSampler, HardSampler, MixingSampler, NegativeTerm, RingSampler,
                               UniformSampler)
from cl_suite.samplers.base import diagnostics
from helpers import TINY, compose_train

T = 0.2
SAMPLERS = {
    "uniform": UniformSampler,
    "debiased": lambda: DebiasedSampler(tau_plus=0.1),
    "hard": lambda: HardSampler(beta=1.0, tau_plus=0.1),
    "ring": lambda: RingSampler(0.5, 0.1),
    "ring_draws": lambda: RingSampler(0.5, 0.1, num_samples=40),
    "mixing": lambda: MixingSampler(n_hard=8, s1=6, s2=5),
}


def inputs(seed=0, a=12, m=30, d=8):
    g = torch.Generator().manual_seed(seed)
    anchors = F.normalize(torch.randn(a, d, generator=g), dim=1).requires_grad_()
    positives = F.normalize(torch.randn(a, d, generator=g), dim=1).requires_grad_()
    candidates = F.normalize(torch.randn(m, d, generator=g), dim=1).requires_grad_()
    mask = torch.rand(a, m, generator=g) > 0.1
    anchor_labels = torch.randint(-1, 3, (a,), generator=g)
    candidate_labels = torch.randint(-1, 3, (m,), generator=g)
    return anchors, positives, candidates, mask, anchor_labels, candidate_labels


def run(sampler, record: bool, step: int = 3):
    anchors, positives, candidates, mask, al, cl = inputs()
    sampler.set_progress(step, 10, record_diagnostics=record)
    torch.manual_seed(5)  # ring draws and MoCHi synthetics: the same numbers for both runs
    out = sampler(anchors, positives, candidates, mask, T, anchor_labels=al, candidate_labels=cl)
    grads = torch.autograd.grad(out.loss, (anchors, positives, candidates))
    return out, grads


@pytest.mark.parametrize("name", SAMPLERS)
def test_loss_and_gradients_on_a_non_logging_step_equal_those_of_a_logging_step(name):
    sampler = SAMPLERS[name]()
    quiet, quiet_grads = run(sampler, record=False)
    logged, logged_grads = run(sampler, record=True)
    assert quiet.stats == {}
    assert "hist/negative" in logged.stats and "negatives/false_negative_rate" in logged.stats
    assert torch.equal(quiet.loss, logged.loss)
    for q, g in zip(quiet_grads, logged_grads):
        assert torch.equal(q, g)


def todays_term(name: str, sampler, ctx: Contrast) -> NegativeTerm:
    """The NegativeTerm the samplers returned before diagnostics became per-step optional, written out
    from that code (weights and extra stats), so the comparison does not go through the new code."""
    term = sampler.negative_term(ctx)  # its log_mass is not read by diagnostics()
    logits = ctx.cand_sim / ctx.temperature
    if name == "hard":
        beta = sampler.current_beta()
        weights = torch.softmax((beta * logits).masked_fill(~ctx.mask, float("-inf")), dim=1).detach()
        return NegativeTerm(term.log_mass, weights, {"hard/beta": torch.tensor(beta)})
    if name == "mixing":
        return NegativeTerm(term.log_mass, None, {"mixing/synthetic": torch.tensor(float(sampler.s1 + sampler.s2))})
    if name == "ring":
        counts = ctx.mask.sum(dim=1)
        inner = torch.tensor([int(0.1 * int(0.5 * c)) for c in counts.tolist()])
        outer = torch.tensor([int(0.5 * c) for c in counts.tolist()])
        ranks = ctx.cand_sim.masked_fill(~ctx.mask, float("-inf")).argsort(dim=1, descending=True, stable=True)
        weights = torch.zeros(ctx.cand_sim.shape)
        for a in range(ranks.shape[0]):
            weights[a, ranks[a, inner[a]:outer[a]]] = 1.0
        width = (outer - inner).float()
        return NegativeTerm(term.log_mass, weights, {"ring/kept_fraction": (width / counts).mean(),
                                                     "ring/width": width.mean(), "ring/outer_fraction": torch.tensor(0.5)})
    return NegativeTerm(term.log_mass)


@pytest.mark.parametrize("name", ["uniform", "debiased", "hard", "ring", "mixing"])
def test_diagnostics_on_a_logging_step_equal_those_of_diagnostics(name):
    sampler = SAMPLERS[name]()
    run(sampler, record=False)  # the flag goes back to True on the next logging step
    out, _ = run(sampler, record=True)
    anchors, positives, candidates, mask, al, cl = inputs()
    with torch.no_grad():
        ctx = Contrast(anchors, candidates, (anchors * positives).sum(1), anchors @ candidates.T, mask, T)
        torch.manual_seed(5)
        expected = diagnostics(ctx, todays_term(name, sampler, ctx), al, cl)
    assert set(out.stats) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(out.stats[key], value.to(out.stats[key].dtype), rtol=1e-6, atol=0, msg=key)
        if key.startswith("hist/"):
            assert torch.equal(out.stats[key], value)


def test_hcl_computes_its_softmax_only_for_the_diagnostics(monkeypatch):
    calls = []
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: calls.append(1) or softmax(*a, **k))
    sampler = HardSampler(beta=1.0, tau_plus=0.1)
    run(sampler, record=False)
    assert calls == []
    run(sampler, record=True)
    assert calls == [1]


def test_epoch_diagnostics_skip_steps_without_stats():
    diag = EpochDiagnostics()
    diag.update({"a": torch.tensor(1.0)})
    diag.update({})  # a skipped (non-finite) step
    diag.update({"a": torch.tensor(3.0)})
    assert diag.steps == 2 and diag.compute() == {"diag/a": 2.0}


def test_a_real_run_records_diagnostics_on_its_log_steps_and_epoch_ends(tmp_path, monkeypatch):
    calls = []
    real = sampler_base.diagnostics
    monkeypatch.setattr(sampler_base, "diagnostics", lambda *a, **k: calls.append(1) or real(*a, **k))
    flags = []
    decide = Trainer._records_diagnostics
    monkeypatch.setattr(Trainer, "_records_diagnostics", lambda self, step: flags.append((step, decide(self, step)))
                        or flags[-1][1])
    cfg = compose_train(TINY + ["trainer.log_every_steps=4", "trainer.eval_at_init=false",
                                "evaluation.linear.epochs=1", "trainer.max_steps=30"], tmp_path)
    train(cfg)
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    steps_per_epoch = records[0]["step"]  # 1437 // 64 = 22 digits batches
    assert steps_per_epoch == 22 and [r["step"] for r in records] == [22, 30]
    recorded = [s for s, on in flags if on]
    # every 4th step (4, 8, ...), the last step of epoch 1 (22) and the run's last step (30)
    assert [s + 1 for s in recorded] == [4, 8, 12, 16, 20, 22, 24, 28, 30]
    assert len(calls) == len(recorded)  # simclr: one sampler call per step, diagnostics only when recorded
    for record in records:
        for key in ("diag/sim/positive_mean", "diag/sim/negative_mean", "diag/negatives/effective",
                    "diag/negatives/effective_fraction", "diag/negatives/false_negative_rate",
                    "diag/instance/top1", "diag/instance/top5"):
            assert math.isfinite(record[key]), key
        assert sum(record["diag/hist/negative"]["counts"]) > 0
    # epoch 1 recorded 6 steps (4 .. 22), epoch 2 three (24, 28, 30): one histogram of 2B = 128 positives each
    assert sum(records[0]["diag/hist/positive"]["counts"]) == 6 * 128
    assert sum(records[1]["diag/hist/positive"]["counts"]) == 3 * 128


# --------------------------------------------------------------------------------- hot-path changes
def make_nnclr(size):
    torch.manual_seed(0)
    return NNCLR(SmallConvNet(widths=[4, 8]), sampler=UniformSampler(), temperature=T, projector_hidden_dims=[16],
                 projector_dim=8, predictor_hidden_dims=[16], support_set_size=size)


def test_nnclr_support_set_normalised_at_push_time_is_bit_identical():
    method = make_nnclr(50)
    g = torch.Generator().manual_seed(1)
    for n in (20, 17, 64, 3, 33):  # wraps around, and one batch larger than the set
        method.support_set.push(torch.randn(n, 8, generator=g) * 3, torch.randint(0, 5, (n,), generator=g))
        assert torch.equal(method.support_set.normalised, F.normalize(method.support_set.embeddings.float(), dim=1))
    # a load (e.g. a resume) recomputes it from the loaded rows; the checkpoint keys are unchanged
    other = make_nnclr(50)
    assert "support_set.normalised" not in method.state_dict()
    assert "support_set.normalised" not in dict(method.named_buffers())  # not broadcast by DDP either
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.support_set.normalised, F.normalize(method.support_set.embeddings, dim=1))
    # the lookup returns exactly the normalised rows of today's computation
    z = torch.randn(10, 8, generator=g)
    positives, _ = method.lookup(z, torch.zeros(10, dtype=torch.long))
    support = F.normalize(method.support_set.embeddings.float(), dim=1)
    index = (F.normalize(z, dim=1) @ support.T).argmax(dim=1)
    assert torch.equal(positives, support[index])
    # it moves with the module
    method.to(torch.float64)
    assert method.support_set.normalised.dtype == torch.float64


def test_nnclr_stats_only_on_logging_steps_and_the_same_loss():
    method = make_nnclr(16)
    method.support_set.push(torch.randn(16, 8), torch.arange(16))
    views = (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    labels = torch.arange(4)
    losses = []
    for record in (False, True):
        method.set_progress(0, 1, record_diagnostics=record)
        out = method(views, labels)
        losses.append(out.loss)
        assert ("nnclr/neighbour_same_class" in out.stats) == record and bool(out.stats) == record
    assert torch.equal(*losses)


def test_cmc_lab_constants_are_device_buffers_with_the_same_result():
    method = CMC(SmallConvNet(widths=[4]), UniformSampler(), num_samples=10, mean=[0.5] * 3, std=[0.25] * 3,
                 projector_dim=8, num_negatives=4)
    assert not any(k in method.state_dict() for k in ("rgb_to_xyz", "d65_white", "lab_mean", "lab_half_range"))
    rgb = torch.rand(2, 3, 5, 5)
    assert torch.equal(rgb_to_lab(rgb, method.rgb_to_xyz, method.d65_white), rgb_to_lab(rgb))
    for buffer, constant in ((method.rgb_to_xyz, _RGB_TO_XYZ), (method.d65_white, _D65_WHITE),
                             (method.lab_mean, _LAB_MEAN), (method.lab_half_range, _LAB_HALF_RANGE)):
        assert torch.equal(buffer, constant)
