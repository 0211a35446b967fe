"""The Ring family (Wu et al., ICLR 2021) against transcriptions of the authors' computations, on identical
inputs, in float64, gradients included, on sizes where u m and l floor(u m) are not integers.

The transcriptions below restate, step by step, what the Ring code does (MoCoRing / MoCoBall,
NCERing / NCEBall, SimCLRRing and its threshold policies): sort each row of similarities/t in
descending order, ``O = int(u * size)``, ``I = int(l * O)``, keep ``sorted[:, I:O]``, prepend the positive
logit, ``loss = -mean(pos - logsumexp(...))``. They never call the suite's ring arithmetic.
"""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.methods import InstanceRecognition
from cl_suite.objectives import ring_borders
from cl_suite.samplers import Contrast, RingSampler, UniformSampler
from cl_suite.samplers.ring import anneal_outer_fraction
from helpers import RawFeatures, compose_train, simclr_on_raw_embeddings

T = 0.07


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


# ---- transcriptions of the authors' losses (float64) ----

def authors_moco_ring(q, k, queue, t, u, l):
    """MoCoRing (MoCoBall when l = 0: the same ranks 0..O-1): the whole queue ranked per query."""
    pos = (q * k).sum(dim=1) / t
    ranked, _ = torch.sort(q @ queue.T / t, dim=1, descending=True)
    outer = ranked[:, :int(u * queue.shape[0])]
    ring = outer[:, int(l * outer.shape[1]):]
    return -(pos - torch.logsumexp(torch.cat([pos[:, None], ring], dim=1), dim=1)).mean()


def authors_simclr_ring(out1, out2, t, u, l):
    """SimCLRRing (initial commit): view-1 anchors against all 2B outputs, self and positive included."""
    z1, z2 = unit(out1), unit(out2)
    pos = (z1 * z2).sum(dim=1) / t
    ranked, _ = torch.sort(z1 @ torch.cat([z1, z2]).T / t, dim=1, descending=True)
    outer = ranked[:, :int(u * ranked.shape[1])]
    ring = outer[:, int(l * outer.shape[1]):]
    return -(pos - torch.logsumexp(torch.cat([pos[:, None], ring], dim=1), dim=1)).mean()


def authors_ir_ring(q, indices, bank, t, u, l, draws):
    """NCERing: top int(u N) of the whole bank, the hole cut off, then the given (B, k-1) positions drawn
    with replacement in the ring picked, the positive prepended. At l = 0 this is the paper's IR-Ball
    (``method=ir_ball``), not the code's NCEBall, whose ball is top int(u B) with B the batch size."""
    pos = (q * bank[indices]).sum(dim=1) / t
    top, _ = torch.topk(q @ bank.T / t, int(u * bank.shape[0]), dim=1)  # sorted, descending
    ring = top[:, int(l * top.shape[1]):]
    picked = ring.gather(1, draws)
    return -(pos - torch.logsumexp(torch.cat([pos[:, None], picked], dim=1), dim=1)).mean()


# ---- MoCo-Ring / MoCo-Ball: the sampler on the queue, as MoCo calls it (no mask) ----

MOCO_SIZES = [(5, 15, 0.1, 0.1), (4, 123, 0.1, 0.1), (3, 1000, 0.37, 0.23), (2, 4096, 0.1, 0.1),
              (3, 257, 0.29, 0.0)]


@pytest.mark.parametrize("anchors, size, u, l", MOCO_SIZES)
def test_moco_ring_equals_the_authors_loss(anchors, size, u, l):
    torch.manual_seed(size)
    q, k, queue = unit(torch.randn(anchors, 16)), unit(torch.randn(anchors, 16)), unit(torch.randn(size, 16))
    leaves = [x.clone().float().requires_grad_() for x in (q, k, queue)]
    out = RingSampler(outer_fraction=u, inner_fraction=l)(*leaves, None, T)
    grads = torch.autograd.grad(out.loss, leaves)
    ref_leaves = [x.double().requires_grad_() for x in (q, k, queue)]
    ref = authors_moco_ring(*ref_leaves, T, u, l)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    for g, h in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)
    outer = int(u * size)
    assert out.stats["ring/width"].item() == outer - int(l * outer)


def test_fifteen_keys_at_u_l_point_one_keep_the_closest_key():
    """1 anchor, 15 keys, u = l = 0.1: O = int(1.5) = 1, I = int(0.1) = 0, so the ring is the closest key."""
    torch.manual_seed(0)
    q, queue = unit(torch.randn(1, 8)), unit(torch.randn(15, 8))
    out = RingSampler(0.1, 0.1)(q, q, queue, None, T)
    closest = (q @ queue.T).max()
    expected = F.softplus(closest / T - (q * q).sum() / T)  # -log P / (P + N): N = the closest key alone
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)
    assert out.stats["negatives/effective"].item() == 1


# ---- SimCLR-Ring: the real SimCLR method in the authors' form ----

SIMCLR_SIZES = [(5, 0.5, 0.1), (13, 0.5, 0.1), (7, 0.3, 0.2), (20, 0.37, 0.23)]


@pytest.mark.parametrize("batch, u, l", SIMCLR_SIZES)
def test_simclr_ring_equals_the_authors_loss(batch, u, l):
    torch.manual_seed(batch)
    x1, x2 = torch.randn(batch, 12), torch.randn(batch, 12)
    method = simclr_on_raw_embeddings(12, T)
    method.form, method.sampler = "ring_code", RingSampler(outer_fraction=u, inner_fraction=l)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = method((a, b), labels=torch.zeros(batch, dtype=torch.long))
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    c, d = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = authors_simclr_ring(c, d, T, u, l)
    ha, hb = torch.autograd.grad(ref, (c, d))
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(ga.double(), ha, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb.double(), hb, rtol=1e-4, atol=1e-6)


def test_simclr_ring_code_form_with_every_candidate_keeps_self_and_positive_in_the_partition():
    """u = 1, l = 0: LSE(pos, all 2B similarities of view 1) - pos, the self-similarity 1/t included."""
    torch.manual_seed(1)
    x1, x2 = torch.randn(4, 6), torch.randn(4, 6)
    method = simclr_on_raw_embeddings(6, 0.5)
    method.form, method.sampler = "ring_code", RingSampler(outer_fraction=1.0, inner_fraction=0.0)
    z1, z2 = unit(x1.double()), unit(x2.double())
    pos = (z1 * z2).sum(1) / 0.5
    partition = torch.cat([pos[:, None], z1 @ torch.cat([z1, z2]).T / 0.5], dim=1)
    expected = (torch.logsumexp(partition, dim=1) - pos).mean()
    assert math.isclose(method((x1, x2), labels=torch.zeros(4, dtype=torch.long)).loss.item(), expected.item(),
                        rel_tol=1e-6)


def authors_simclr(out1, out2, t):
    """SimCLR.get_loss (initial commit): view-1 anchors, the partition the logsumexp over all 2B outputs
    (self and positive included once), nothing prepended."""
    z1, z2 = unit(out1), unit(out2)
    pos = (z1 * z2).sum(dim=1)
    partition = torch.logsumexp(z1 @ torch.cat([z1, z2]).T / t, dim=1)
    return -(pos / t - partition).mean()


@pytest.mark.parametrize("t", [T, 0.5])
@pytest.mark.parametrize("batch", [1, 5, 16])
def test_ring_baseline_form_equals_the_authors_simclr(batch, t):
    """form=ring_code_simclr with the uniform sampler is the Ring code's SimCLR baseline, loss and gradients;
    form=ring_code would count the positive twice (what SimCLRRing does with a ring that keeps everything):
    0.02-0.2 more loss at t = 0.5, ~1e-7 relative at t = 0.07, where the self-similarity 1/t dominates."""
    torch.manual_seed(batch)
    x1, x2 = torch.randn(batch, 12), torch.randn(batch, 12)
    method = simclr_on_raw_embeddings(12, t)
    method.form = "ring_code_simclr"
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = method((a, b), labels=torch.zeros(batch, dtype=torch.long))
    assert "instance/top1" not in out.stats  # the anchor's own view is a candidate: no positive rank
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    c, d = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = authors_simclr(c, d, t)
    ha, hb = torch.autograd.grad(ref, (c, d))
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(ga.double(), ha, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb.double(), hb, rtol=1e-4, atol=1e-6)
    method.form = "ring_code"  # the same partition with the positive prepended once more
    z1, z2 = unit(x1.double()), unit(x2.double())
    pos = (z1 * z2).sum(dim=1) / t
    twice = torch.logsumexp(torch.cat([pos[:, None], z1 @ torch.cat([z1, z2]).T / t], dim=1), dim=1) - pos
    assert math.isclose(method((x1, x2), labels=torch.zeros(batch, dtype=torch.long)).loss.item(), twice.mean().item(),
                        rel_tol=1e-5)
    if t == 0.5:
        assert twice.mean().item() > ref.item() + 0.01  # far outside the comparison's tolerance


def test_ring_baseline_preset_and_recipe_compose_the_authors_simclr():
    cfg = compose_train(["method=ring_baseline"])
    assert cfg.method.form == "ring_code_simclr" and cfg.method.temperature == 0.07
    assert cfg.sampler._target_.endswith("UniformSampler")
    recipe = compose_train(["experiment=simclr_ring_baseline_cifar10"])
    ring = compose_train(["experiment=simclr_ring_cifar10"])
    assert recipe.method.form == "ring_code_simclr" and recipe.trainer.batch_size == 128
    assert recipe.sampler._target_.endswith("UniformSampler") and ring.trainer.batch_size == 256
    # the same setting otherwise: data, backbone, head, optimizer, schedule, epochs
    for key in ("dataset", "backbone", "optimizer", "scheduler", "evaluation"):
        assert recipe[key] == ring[key], key
    assert recipe.method.projector_hidden_dims == ring.method.projector_hidden_dims == [512]
    assert recipe.trainer.epochs == ring.trainer.epochs == 200


def test_symmetric_form_ranks_only_the_negatives_of_both_views():
    """The suite's symmetric variant (nt_xent form): 2B anchors, each ranking its 2B-2 negatives."""
    torch.manual_seed(2)
    x1, x2 = torch.randn(6, 5), torch.randn(6, 5)
    method = simclr_on_raw_embeddings(5, T)
    method.sampler = RingSampler(outer_fraction=0.5, inner_fraction=0.1)
    z = unit(torch.cat([x1, x2]).double())
    total = 0.0
    for a in range(12):
        p = (a + 6) % 12
        negs = sorted((z[a] @ z[j] / T for j in range(12) if j not in (a, p)), reverse=True)
        outer = negs[:int(0.5 * 10)]
        kept = outer[int(0.1 * len(outer)):]
        pos = z[a] @ z[p] / T
        total += torch.logsumexp(torch.stack([pos, *kept]), 0) - pos
    assert math.isclose(method((x1, x2), labels=torch.zeros(6, dtype=torch.long)).loss.item(), total.item() / 12,
                        rel_tol=1e-5)


# ---- IR-Ring / IR-Ball: the real InstanceRecognition over the whole bank, 4,095-style resampling ----

IR_SIZES = [(4, 50, 0.3, 0.1, 31), (3, 200, 0.1, 0.1, 63), (5, 333, 0.25, 0.15, 40), (3, 333, 0.25, 0.0, 40)]


def ir_ring_against(reference, batch, bank_size, u, l, samples, **sampler_kwargs):
    """The real InstanceRecognition over the whole bank and ``reference`` (an authors' transcription, called as
    ``reference(q, indices, bank, t, u, l, draws)``) on the same inputs and draws: (loss, grad, ref, ref grad)."""
    torch.manual_seed(bank_size)
    method = InstanceRecognition(RawFeatures(10), RingSampler(u, l, num_samples=samples, **sampler_kwargs),
                                 num_samples=bank_size, temperature=T, num_negatives=None, projector_dim=10)
    method.projector = nn.Identity()
    bank = method.bank.embeddings.clone()
    x = torch.randn(batch, 10)
    indices = torch.randperm(bank_size)[:batch]
    a = x.clone().requires_grad_()
    torch.manual_seed(99)
    out = method((a, a), torch.zeros(batch, dtype=torch.long), indices)
    (g,) = torch.autograd.grad(out.loss, a)
    # Replay the draws: the sampler's only random numbers are (B, k) uniforms, mapped to ring offsets.
    torch.manual_seed(99)
    uniforms = torch.rand(batch, samples, dtype=torch.float64)
    outer = int(u * bank_size)
    width = outer - int(l * outer)
    draws = torch.floor(uniforms * width).long()
    c = x.double().requires_grad_()
    ref = reference(unit(c), indices, bank.double(), T, u, l, draws)
    (h,) = torch.autograd.grad(ref, c)
    return out.loss, g, ref, h


@pytest.mark.parametrize("batch, bank_size, u, l, samples", IR_SIZES)
def test_ir_ring_over_the_whole_bank_equals_the_authors_estimator(batch, bank_size, u, l, samples):
    loss, g, ref, h = ir_ring_against(authors_ir_ring, batch, bank_size, u, l, samples)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)


# ---- neighbour views: the positive joined by the hole (the code's neighbor_views of MoCoRing / NCERing) ----

def authors_neighbor_positive(pos, sorted_dps, inner_idx, aggregate):
    """The code's neighbour-views numerator: ``cat(pos, sorted_dps[:, :inner_idx])``, then logsumexp (what
    ``logsumexp_inner or True`` always runs) or mean."""
    joined = torch.cat([pos[:, None], sorted_dps[:, :inner_idx]], dim=1)
    return torch.logsumexp(joined, dim=1) if aggregate == "logsumexp" else joined.mean(dim=1)


def authors_moco_ring_neighbor_views(q, k, queue, t, u, l, aggregate):
    """MoCoRing.get_loss with neighbor_views=True (dynamic_inner, self_negative: both always on)."""
    pos = (q * k).sum(dim=1) / t
    sorted_dps, _ = torch.sort(q @ queue.T / t, dim=1, descending=True)
    outer_dps = sorted_dps[:, :int(u * queue.shape[0])]
    inner_idx = int(l * outer_dps.shape[1])
    ring = torch.cat([pos[:, None], outer_dps[:, inner_idx:]], dim=1)
    return -(authors_neighbor_positive(pos, sorted_dps, inner_idx, aggregate) - torch.logsumexp(ring, dim=1)).mean()


def authors_ir_ring_neighbor_views(q, indices, bank, t, u, l, draws, aggregate):
    """NCERing.get_loss with neighbor_views=True: the hole of the top int(u N), never resampled."""
    pos = (q * bank[indices]).sum(dim=1) / t
    sorted_dps, _ = torch.topk(q @ bank.T / t, int(u * bank.shape[0]), dim=1)
    inner_idx = int(l * sorted_dps.shape[1])
    picked = sorted_dps[:, inner_idx:].gather(1, draws)
    ring = torch.cat([pos[:, None], picked], dim=1)
    return -(authors_neighbor_positive(pos, sorted_dps, inner_idx, aggregate) - torch.logsumexp(ring, dim=1)).mean()


@pytest.mark.parametrize("aggregate", ["logsumexp", "mean"])
@pytest.mark.parametrize("anchors, size, u, l", [(5, 15, 0.1, 0.1), (4, 123, 0.1, 0.1), (3, 1000, 0.37, 0.23),
                                                 (2, 4096, 0.1, 0.1)])
def test_moco_ring_neighbor_views_equal_the_authors_loss(anchors, size, u, l, aggregate):
    torch.manual_seed(size + 1)
    q, k, queue = unit(torch.randn(anchors, 16)), unit(torch.randn(anchors, 16)), unit(torch.randn(size, 16))
    sampler = RingSampler(u, l, neighbor_views=True, neighbor_aggregate=aggregate)
    leaves = [x.clone().float().requires_grad_() for x in (q, k, queue)]
    out = sampler(*leaves, None, T)
    grads = torch.autograd.grad(out.loss, leaves)
    ref_leaves = [x.double().requires_grad_() for x in (q, k, queue)]
    ref = authors_moco_ring_neighbor_views(*ref_leaves, T, u, l, aggregate)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    for g, h in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)
    if int(l * int(u * size)) > 0:  # a hole exists: the numerator, and with it the loss, changed
        plain = RingSampler(u, l)(*leaves, None, T).loss
        assert plain.item() > out.loss.item() + 1e-3


@pytest.mark.parametrize("aggregate", ["logsumexp", "mean"])
@pytest.mark.parametrize("batch, bank_size, u, l, samples", [(4, 50, 0.3, 0.2, 31), (3, 333, 0.25, 0.15, 40)])
def test_ir_ring_neighbor_views_equal_the_authors_estimator(batch, bank_size, u, l, samples, aggregate):
    def reference(*args):
        return authors_ir_ring_neighbor_views(*args, aggregate)

    loss, g, ref, h = ir_ring_against(reference, batch, bank_size, u, l, samples, neighbor_views=True,
                                      neighbor_aggregate=aggregate)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)


def authors_simclr_ring_neighbor_views(out1, out2, t, u, l, aggregate):
    """SimCLRRing.get_loss (initial commit) with neighbor_views=True: the hole of the 2B ranked similarities
    (the anchor's self-similarity, 1/t, first among them) joins the positive."""
    z1, z2 = unit(out1), unit(out2)
    pos = (z1 * z2).sum(dim=1) / t
    sorted_dps, _ = torch.sort(z1 @ torch.cat([z1, z2]).T / t, dim=1, descending=True)
    outer_dps = sorted_dps[:, :int(u * sorted_dps.shape[1])]
    inner_idx = int(l * outer_dps.shape[1])
    ring = torch.cat([pos[:, None], outer_dps[:, inner_idx:]], dim=1)
    return -(authors_neighbor_positive(pos, sorted_dps, inner_idx, aggregate) - torch.logsumexp(ring, dim=1)).mean()


@pytest.mark.parametrize("aggregate", ["logsumexp", "mean"])
@pytest.mark.parametrize("batch, u, l", [(13, 0.5, 0.1), (20, 0.37, 0.23)])
def test_simclr_ring_neighbor_views_equal_the_authors_loss(batch, u, l, aggregate):
    torch.manual_seed(batch + 7)
    x1, x2 = torch.randn(batch, 12), torch.randn(batch, 12)
    method = simclr_on_raw_embeddings(12, T)
    method.form = "ring_code"
    method.sampler = RingSampler(u, l, neighbor_views=True, neighbor_aggregate=aggregate)
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    out = method((a, b), labels=torch.zeros(batch, dtype=torch.long))
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    c, d = x1.double().requires_grad_(), x2.double().requires_grad_()
    ref = authors_simclr_ring_neighbor_views(c, d, T, u, l, aggregate)
    ha, hb = torch.autograd.grad(ref, (c, d))
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    torch.testing.assert_close(ga.double(), ha, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb.double(), hb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("aggregate", ["logsumexp", "mean"])
def test_neighbor_views_with_a_mask_equal_a_slow_loop_over_anchors(aggregate):
    """Anchors with different candidate counts (a mask): each anchor's own hole, I = int(l int(u m_a)),
    computed one anchor at a time from the equations."""
    torch.manual_seed(11)
    anchors, positives, pool = unit(torch.randn(4, 6)), unit(torch.randn(4, 6)), unit(torch.randn(60, 6))
    mask = torch.ones(4, 60, dtype=torch.bool)
    mask[1, :25] = False  # 35 candidates: O = 10, I = 3 (u = 0.3, l = 0.3); the others O = 18, I = 5
    mask[2, 40:] = False  # 40 candidates: O = 12, I = 3
    out = RingSampler(0.3, 0.3, neighbor_views=True, neighbor_aggregate=aggregate)(anchors, positives, pool, mask, T)
    total = 0.0
    for a in range(4):
        pos = float(anchors[a] @ positives[a]) / T
        logits = sorted((float(anchors[a] @ pool[j]) / T for j in range(60) if mask[a, j]), reverse=True)
        outer = int(0.3 * len(logits))
        inner = int(0.3 * outer)
        hole, ring = [pos, *logits[:inner]], [pos, *logits[inner:outer]]
        numerator = math.log(sum(math.exp(v) for v in hole)) if aggregate == "logsumexp" else sum(hole) / len(hole)
        total += math.log(sum(math.exp(v) for v in ring)) - numerator
    assert math.isclose(out.loss.item(), total / 4, rel_tol=1e-5)


def test_neighbor_views_need_a_hole_and_a_known_aggregate():
    with pytest.raises(ValueError, match=r"sampler.neighbor_views=true with sampler.inner_fraction=0.0"):
        RingSampler(0.1, 0.0, neighbor_views=True)
    with pytest.raises(ValueError, match=r"sampler.neighbor_aggregate='max' is not allowed"):
        RingSampler(neighbor_aggregate="max")
    with pytest.raises(ValueError, match=r"sampler.neighbor_views='yes' is not allowed"):
        RingSampler(neighbor_views="yes")


def test_moco_ring_with_neighbor_views_trains_from_the_config(tmp_path):
    """A real run: the option reaches the sampler from the command line, and the loss, which may be
    negative with neighbour views, stays finite."""
    import json

    from cl_suite.engine.trainer import train
    from helpers import TINY

    cfg = compose_train(TINY + ["method=moco_ring", "dataset=synthetic", "sampler.neighbor_views=true",
                                "sampler.neighbor_aggregate=mean", "method.queue_size=64", "trainer.epochs=2",
                                "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path)
    assert cfg.sampler.neighbor_views is True
    final = train(cfg)
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    assert final["step"] == 4 and all(math.isfinite(r["train/epoch_loss"]) for r in records)


def test_resampled_ring_draws_cover_the_ring_uniformly_and_nothing_else():
    torch.manual_seed(5)
    anchors, pool = unit(torch.randn(2, 8)), unit(torch.randn(300, 8))
    out_ring = RingSampler(0.2, 0.25, num_samples=None)(anchors, anchors, pool, None, T)
    torch.manual_seed(6)
    sampler = RingSampler(0.2, 0.25, num_samples=60_000)
    term = sampler.negative_term(_contrast(anchors, pool))
    counts = term.weights  # (A, M) draws per candidate
    ring = _ring_members(anchors, pool, 0.2, 0.25)
    assert torch.equal(counts > 0, ring) and counts.sum(1).tolist() == [60_000, 60_000]
    expected = 60_000 / ring.sum(1, keepdim=True)  # 45 ring members: ~1333 draws each
    assert ((counts[ring].view(2, -1) - expected).abs() < 5 * expected.sqrt()).all()
    assert out_ring.stats["ring/width"].item() == 45


def _contrast(anchors, pool):
    sim = anchors @ pool.T
    return Contrast(anchors, pool, torch.ones(anchors.shape[0]), sim, torch.ones_like(sim, dtype=torch.bool), T)


def _ring_members(anchors, pool, u, l):
    order = (anchors @ pool.T).argsort(dim=1, descending=True)
    outer = int(u * pool.shape[0])
    members = torch.zeros(anchors.shape[0], pool.shape[0], dtype=torch.bool)
    members.scatter_(1, order[:, int(l * outer):outer], True)
    return members


def test_ir_ring_preset_composes_the_authors_estimator():
    cfg = compose_train(["method=ir_ring"])
    assert cfg.method.num_negatives is None and cfg.sampler.num_samples == 4095
    assert (cfg.sampler.outer_fraction, cfg.sampler.inner_fraction) == (0.1, 0.1)
    ball = compose_train(["method=ir_ball"])
    assert ball.sampler.inner_fraction == 0.0 and ball.sampler.num_samples == 4095
    ring = compose_train(["method=ring"])
    assert ring.method.form == "ring_code" and ring.sampler.outer_fraction == 0.5 and ring.method.temperature == 0.07
    assert compose_train(["method=ring_symmetric"]).method.form == "nt_xent"


# ---- annealing: the authors' threshold policies ----

def authors_schedule(policy, final, anneal_steps, total_steps, step_size=0.1, decay=0.1):
    """The policies' arrays (init 1.0), built as the Ring code builds them with numpy, indexed by step."""
    tail = np.ones(total_steps - anneal_steps + 1) * final
    if policy == "linear":
        head = np.linspace(final, 1.0, anneal_steps)[::-1]
    elif policy == "step":
        values = np.arange(final, 1.0 + step_size, step_size)[::-1]
        head = np.repeat(values, int(anneal_steps / len(values)))
    else:
        head = (1.0 - final) * np.exp(-decay * np.arange(anneal_steps)) + final
    return np.concatenate([head, tail])


@pytest.mark.parametrize("policy", ["linear", "step", "exponential"])
@pytest.mark.parametrize("final, anneal_steps, step_size", [(0.1, 390, 0.1), (0.1, 1000, 0.1), (0.25, 77, 0.05),
                                                            (0.1, 7, 0.1), (0.3, 1, 0.2),
                                                            # (1 + d - u) / d not whole: numpy's ceil counts the
                                                            # values (0.5: 7 of them, up to 1.1; 0.33: 8)
                                                            (0.5, 100, 0.1), (0.33, 95, 0.1)])
def test_anneal_schedules_equal_the_authors_policies(policy, final, anneal_steps, step_size):
    # The code's step schedule is shorter than the run when the values do not divide the annealing steps
    # (it would index past its end in the last steps); compare where it is defined.
    expected = authors_schedule(policy, final, anneal_steps, anneal_steps + 20, step_size)
    total = len(expected)
    ours = [anneal_outer_fraction(policy, final, s, anneal_steps, step_size, 0.1) for s in range(total)]
    if policy == "exponential":  # numpy's vectorised exp and math.exp may differ in the last bit
        np.testing.assert_allclose(ours, expected[:total], rtol=1e-15, atol=0)
    else:
        assert ours == expected[:total].tolist()  # exact: the values decide integer borders
    for size in (4096, 50_000, 65_536):  # the borders the schedule produces are the authors' borders
        assert [int(v * size) for v in ours] == [int(v * size) for v in expected[:total]]


def test_linear_annealing_starts_from_every_candidate_and_ends_at_the_ring():
    sampler = RingSampler(0.1, 0.1, anneal="linear", anneal_epochs=2.0)
    anchors, pool = unit(torch.randn(3, 8)), unit(torch.randn(200, 8))
    widths = []
    for step in (0, 5, 10, 19, 20, 50):
        sampler.set_progress(step, steps_per_epoch=10)
        out = sampler(anchors, anchors, pool, None, 0.1)
        widths.append(out.stats["ring/width"].item())
        expected_u = 1.0 if step == 0 else (0.1 if step >= 19 else (19 - step) * (0.9 / 19) + 0.1)
        assert out.stats["ring/outer_fraction"].item() == pytest.approx(expected_u)
    assert widths[0] == 200 - 20 and widths[-1] == widths[-2] == 20 - 2
    assert widths == sorted(widths, reverse=True)


# ---- errors ----

def test_a_ring_that_keeps_nothing_is_a_clear_error():
    anchors = unit(torch.randn(3, 4))
    with pytest.raises(ValueError, match="keep no negative for an anchor with 9 candidates"):
        RingSampler(0.1, 0.1)(anchors, anchors, unit(torch.randn(9, 4)), None, 0.1)  # O = int(0.9) = 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(outer_fraction=0.0), "sampler.outer_fraction=0.0"),
    (dict(outer_fraction=1.5), "sampler.outer_fraction=1.5"),
    (dict(outer_fraction=float("nan")), "sampler.outer_fraction=nan"),
    (dict(inner_fraction=1.0), "sampler.inner_fraction=1.0"),
    (dict(inner_fraction=-0.1), "sampler.inner_fraction=-0.1"),
    (dict(num_samples=0), "sampler.num_samples=0"),
    (dict(num_samples=2.5), "sampler.num_samples=2.5"),
    (dict(anneal="cosine"), "sampler.anneal='cosine'"),
    (dict(anneal_epochs=float("inf")), "sampler.anneal_epochs=inf"),
    (dict(anneal_step_size=0.0), "sampler.anneal_step_size=0.0"),
    (dict(anneal_decay=-1.0), "sampler.anneal_decay=-1.0"),
])
def test_bad_ring_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        RingSampler(**kwargs)
    assert message in str(err.value)


def test_borders_are_the_authors_truncated_products():
    assert ring_borders(0.1, 0.1, 65_536) == (655, 6553)
    assert ring_borders(0.1, 0.1, 50_000) == (500, 5000)
    assert ring_borders(0.5, 0.1, 512) == (25, 256)
    assert ring_borders(0.29, 0.1, 100) == (2, 28)  # 0.29 * 100 = 28.999999999999996 in double, as in their code
    assert ring_borders(1.0, 0.0, 7) == (0, 7)


def test_an_outer_fraction_above_one_is_clipped_to_the_pool_as_the_authors_slices_do():
    # The step policy's first value exceeds 1 for most finals (final 0.5: 1.0999999999999999, numpy's
    # arange). The code's ``sorted[:, :O]`` slice then holds the whole pool and its hole is int(l * pool):
    # the borders clip O to the pool before I is taken, in the scalar and the per-anchor arithmetic.
    u = anneal_outer_fraction("step", 0.5, 0, 60)
    assert u == np.arange(0.5, 1.1, 0.1)[-1] > 1.0
    assert ring_borders(u, 0.1, 123) == (12, 123)  # not (13, 135)
    torch.manual_seed(6)
    q, k, queue = unit(torch.randn(4, 8)), unit(torch.randn(4, 8)), unit(torch.randn(123, 8))
    sampler = RingSampler(0.5, 0.1, anneal="step", anneal_epochs=60.0)
    sampler.set_progress(0, steps_per_epoch=1)
    leaves = [x.clone().requires_grad_() for x in (q, k, queue)]
    out = sampler(*leaves, None, T)
    assert out.stats["ring/outer_fraction"].item() == pytest.approx(u) and out.stats["ring/width"].item() == 111
    ref_leaves = [x.double().requires_grad_() for x in (q, k, queue)]
    ref = authors_moco_ring(*ref_leaves, T, u, 0.1)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    for g, h in zip(torch.autograd.grad(out.loss, leaves), torch.autograd.grad(ref, ref_leaves)):
        torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)


def test_full_ring_equals_uniform_infonce():
    torch.manual_seed(4)
    anchors, positives, pool = unit(torch.randn(4, 6)), unit(torch.randn(4, 6)), unit(torch.randn(30, 6))
    ring = RingSampler(1.0, 0.0)(anchors, positives, pool, None, 0.2).loss
    uniform = UniformSampler()(anchors, positives, pool, None, 0.2).loss
    assert math.isclose(ring.item(), uniform.item(), rel_tol=1e-6)


def test_ir_ring_trains_with_linear_annealing_and_logs_the_outer_fraction(tmp_path):
    """A real run of the authors' IR-Ring estimator (whole bank, 4,095 draws) with the code's linear
    policy: the outer fraction per epoch record is the policy's value at the epoch's steps (every step
    records its diagnostics here: log_every_steps=1; the record averages over the recorded steps)."""
    import json

    from cl_suite.engine.trainer import train
    from helpers import TINY

    # synthetic: 128 training images, batch 64 -> 2 steps per epoch; anneal over 2 epochs = 4 steps.
    cfg = compose_train(TINY + ["method=ir_ring", "dataset=synthetic", "sampler.anneal=linear",
                                "sampler.anneal_epochs=2", "trainer.epochs=3", "trainer.eval_at_init=false",
                                "trainer.log_every_steps=1",
                                "evaluation.linear.epochs=1"], tmp_path)
    final = train(cfg)
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    per_step = [anneal_outer_fraction("linear", 0.1, s, 4) for s in range(6)]  # 1.0, 0.7, 0.4, 0.1, 0.1, 0.1
    expected = [(per_step[2 * e] + per_step[2 * e + 1]) / 2 for e in range(3)]  # epoch means of the stat
    assert final["step"] == 6
    assert [r["diag/ring/outer_fraction"] for r in records] == pytest.approx(expected)
    assert all(math.isfinite(r["train/epoch_loss"]) for r in records)


# ---- the adaptive policy: adaptive_anneal_on_loss ----

class AuthorsAdaptivePolicy:
    """The Ring code's AdaptiveThresholdPolicy (init 1.0, min 0.1, max 1.0), restated, with the arguments its
    system passes: adaptive_anneal_on_loss lower_is_better, delta 0.01, window 10; adaptive_anneal_on_acc
    higher is better, delta 0.05, window 5."""

    def __init__(self, lower_is_better=True, delta=0.01, window=10):
        self.thres, self.metrics = 1.0, []
        self.lower_is_better, self.delta, self.window = lower_is_better, delta, window

    def record(self, metric):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no metrics: nan, as in the code
            record = np.mean(self.metrics[-self.window:])
        if metric > record:
            if self.lower_is_better:
                self.thres += self.delta
            else:
                self.thres -= self.delta
        elif metric < record:
            if self.lower_is_better:
                self.thres -= self.delta
            else:
                self.thres += self.delta
        self.thres = max(0.1, self.thres)
        self.thres = min(1.0, self.thres)
        self.metrics.append(metric)


AUTHORS_ACCURACY_POLICY = dict(lower_is_better=False, delta=0.05, window=5)


def adaptive_losses(n, seed):
    """Losses that drift down with noise and repeat now and then (ties with the window mean are rare but
    a repeated constant stretch makes them certain)."""
    rng = np.random.default_rng(seed)
    losses = [float(np.float32(5.0 - 0.01 * i + rng.normal(0, 0.05))) for i in range(n)]
    losses[40:55] = [losses[40]] * 15  # a flat stretch: equal to its window mean, u stays
    return losses


@pytest.mark.parametrize("anneal", ["adaptive_loss", "adaptive_accuracy"])
def test_adaptive_outer_fraction_follows_the_authors_policy_step_by_step_and_through_a_checkpoint(anneal):
    metrics = adaptive_losses(300, 0)
    if anneal == "adaptive_loss":
        authors, observe = AuthorsAdaptivePolicy(), "observe_loss"
    else:  # accuracies that rise with noise (the same series mirrored), with a flat stretch
        authors, observe = AuthorsAdaptivePolicy(**AUTHORS_ACCURACY_POLICY), "observe_accuracy"
        metrics = [100.0 - m * 10 for m in metrics]
    sampler = RingSampler(0.1, 0.1, anneal=anneal)
    resumed = None
    for step, metric in enumerate(metrics):
        assert sampler.current_outer_fraction() == authors.thres  # exact: the values decide integer borders
        getattr(sampler, observe)(metric)
        getattr(sampler, "observe_accuracy" if observe == "observe_loss" else "observe_loss")(metric)  # ignored
        authors.record(metric)
        if step == 150:  # a fresh sampler from the checkpointed state continues identically
            resumed = RingSampler(0.1, 0.1, anneal=anneal)
            resumed.load_state_dict(sampler.state_dict())
        elif resumed is not None:
            getattr(resumed, observe)(metric)
            assert resumed.current_outer_fraction() == sampler.current_outer_fraction()
    assert authors.thres < 1.0  # the improving metric narrowed the ring
    assert sampler.current_outer_fraction() == authors.thres


def test_adaptive_outer_fraction_stays_within_its_floor_and_one():
    sampler = RingSampler(0.3, 0.1, anneal="adaptive_loss")
    for loss in range(100, 0, -1):  # always lower than the window: narrows to the floor and stays
        sampler.observe_loss(float(loss))
    assert sampler.current_outer_fraction() == 0.3
    for loss in range(200):  # always higher: widens back to 1 and stays
        sampler.observe_loss(float(loss))
    assert sampler.current_outer_fraction() == 1.0
    assert "adaptive_state" not in RingSampler(0.1, 0.1, anneal="linear").state_dict()  # other rings: no new keys
    accuracy = RingSampler(0.3, 0.1, anneal="adaptive_accuracy")
    for value in range(30):  # always better (higher): narrows by 0.05 per evaluation to the floor
        accuracy.observe_accuracy(float(value))
    assert accuracy.current_outer_fraction() == 0.3


@pytest.mark.parametrize("position, value", [(0, 1.5), (0, 0.05), (0, float("nan")), (1, 2.5), (1, 11.0),
                                             (3, float("inf"))])
def test_a_corrupted_adaptive_state_is_refused_at_load(position, value):
    state = RingSampler(0.1, 0.1, anneal="adaptive_loss").state_dict()
    state["adaptive_state"][position] = value
    target = RingSampler(0.1, 0.1, anneal="adaptive_loss")
    with pytest.raises(RuntimeError, match=r"adaptive_state = .* is not a state of sampler.anneal=adaptive_loss"):
        target.load_state_dict(state)
    assert target.current_outer_fraction() == 1.0  # nothing of it was used


def test_adaptive_accuracy_needs_evaluations_during_training():
    from cl_suite.engine.validation import validate_train_config
    from cl_suite.errors import ConfigError

    cfg = compose_train(["method=moco_ring", "sampler.anneal=adaptive_accuracy", "trainer.eval_every_epochs=0"])
    with pytest.raises(ConfigError, match=r"sampler.anneal='adaptive_accuracy' follows the kNN accuracy .* "
                                          r"trainer.eval_every_epochs=0"):
        validate_train_config(cfg)


def test_ir_ring_trains_with_the_adaptive_policy_on_its_losses(tmp_path):
    """A real run: the loop reports each step's loss, and the outer fraction of every step is the policy's
    value after the steps before it (log_every_steps=1: every step's loss is logged and every step
    records the diagnostics, which each epoch record averages)."""
    import csv

    from cl_suite.engine.trainer import train
    from helpers import TINY

    cfg = compose_train(TINY + ["method=ir_ring", "dataset=synthetic", "sampler.anneal=adaptive_loss",
                                "trainer.epochs=3", "trainer.eval_at_init=false", "trainer.log_every_steps=1",
                                "evaluation.linear.epochs=1", "logger=csv"], tmp_path)
    assert train(cfg)["step"] == 6
    logged = {}
    with open(tmp_path / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            logged.setdefault(int(row["step"]), {})[row["key"]] = float(row["value"])
    authors, used = AuthorsAdaptivePolicy(), {}
    for step in range(1, 7):  # step s runs with the value after the losses of steps 1 .. s-1
        used[step] = authors.thres
        authors.record(logged[step]["train/loss"])
    for end in (2, 4, 6):  # an epoch record averages the outer fraction over its two (recorded) steps
        assert logged[end]["diag/ring/outer_fraction"] == pytest.approx((used[end - 1] + used[end]) / 2, abs=1e-6)
    assert authors.thres < 1.0  # the falling loss narrowed the ring


def test_moco_ring_trains_with_the_accuracy_policy_on_its_evaluations(tmp_path):
    """A real run evaluating every epoch: each epoch runs with the policy's value after the kNN top-1 of the
    evaluations before it (the last epoch's evaluation is the final one, after training)."""
    import json

    from cl_suite.engine.trainer import train
    from helpers import TINY

    cfg = compose_train(TINY + ["method=moco_ring", "dataset=synthetic", "sampler.anneal=adaptive_accuracy",
                                "sampler.outer_fraction=0.3", "method.queue_size=64", "trainer.epochs=4",
                                "trainer.eval_at_init=false", "trainer.eval_every_epochs=1",
                                "evaluation.linear.epochs=1"], tmp_path)
    assert train(cfg)["step"] == 8
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    authors = AuthorsAdaptivePolicy(**AUTHORS_ACCURACY_POLICY)
    for record in records:
        assert record["diag/ring/outer_fraction"] == pytest.approx(authors.thres, abs=1e-6)  # a float32 stat
        if "knn/top1" in record:
            authors.record(record["knn/top1"])
    assert [("knn/top1" in r) for r in records] == [True, True, True, False]
    # (seeded here: kNN 96.9, 93.8, 96.9, so u is 1, 1, 1, 0.95; the unit tests above cover every move)


def test_annealed_ring_under_torch_compile_does_not_recompile_every_step():
    """The annealed outer fraction changes at every step; the ring term runs eagerly so the compiled
    graphs stay few (it compiled a new graph per step before)."""
    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()  # reset() leaves the counters of earlier compilations
    sampler = RingSampler(0.1, 0.1, anneal="linear", anneal_epochs=1.0)
    compiled = torch.compile(sampler, backend="eager")
    anchors, pool = unit(torch.randn(8, 16)), unit(torch.randn(300, 16))
    for step in range(12):
        sampler.set_progress(step, 10, record_diagnostics=step % 5 == 0)
        eager = RingSampler(0.1, 0.1, anneal="linear", anneal_epochs=1.0)
        eager.set_progress(step, 10)
        assert math.isclose(compiled(anchors, anchors, pool, None, 0.1).loss.item(),
                            eager(anchors, anchors, pool, None, 0.1).loss.item(), rel_tol=1e-6)
    assert dynamo.utils.counters["stats"]["unique_graphs"] <= 6
    dynamo.reset()


@pytest.mark.parametrize("anneal", [None, "adaptive_loss"])
def test_neighbor_views_and_the_adaptive_ring_under_torch_compile_equal_eager(anneal):
    """The neighbour-views term traces (its hole width is a shape, not a tensor value), and the adaptive
    ring, whose outer fraction moves with the observed losses, runs its term eagerly: the compiled sampler
    gives the eager losses step after step, with few graphs."""
    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()
    settings = dict(outer_fraction=0.3, inner_fraction=0.2, anneal=anneal, neighbor_views=True)
    sampler, eager = RingSampler(**settings), RingSampler(**settings)
    compiled = torch.compile(sampler, backend="eager")
    torch.manual_seed(3)
    anchors, positives, pool = unit(torch.randn(8, 16)), unit(torch.randn(8, 16)), unit(torch.randn(200, 16))
    graphs = []
    for step in range(10):
        ours, theirs = compiled(anchors, positives, pool, None, 0.1).loss, eager(anchors, positives, pool, None, 0.1).loss
        assert math.isclose(ours.item(), theirs.item(), rel_tol=1e-6, abs_tol=1e-7)
        for s in (sampler, eager):
            s.observe_loss(10.0 - step if step % 3 else 20.0)  # moves u: narrower, and wider every third step
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    if anneal is not None:
        assert sampler.current_outer_fraction() == eager.current_outer_fraction() < 1.0
    assert graphs[3] == graphs[-1]  # after the first steps' checks, no step compiles anew
    dynamo.reset()
