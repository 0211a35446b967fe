"""Every negative sampler against an independent slow implementation of its paper's equation (Python
loops, float64), through the real SimCLR path; plus the limits between samplers, the reference codes'
traps (DCL's clamp on the sum-scale N_g, HCL's weights normalised by their mean, MoCHi's hard set over
unmasked candidates only), numerical stability and validation."""
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from cl_suite.objectives import HardLogRatio
from cl_suite.samplers import Contrast, DebiasedSampler, HardSampler, MixingSampler, RingSampler, UniformSampler
from helpers import simclr_on_raw_embeddings

T = 0.3


# ---- slow references: one anchor at a time, candidates = the 2B-2 other views (SimCLR) ----

def anchors_and_candidates(x1, x2):
    """Yield (s_pos, [s_j for the anchor's negatives]) per anchor, float64, with gradient."""
    z = torch.cat([x1, x2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, b = z.shape[0], x1.shape[0]
    for a in range(n):
        pos = (a + b) % n
        yield z[a] @ z[pos], [z[a] @ z[k] for k in range(n) if k not in (a, pos)]


def loss_from_negative_mass(x1, x2, negative_mass):
    total = 0.0
    items = list(anchors_and_candidates(x1, x2))
    for s_pos, s_neg in items:
        p = torch.exp(s_pos / T)
        total = total - torch.log(p / (p + negative_mass(s_pos, s_neg)))
    return total / len(items)


def dcl_mass(tau_plus, reweight=None):
    """N_g = max((R - tau+ N P) / (1 - tau+), N e^{-1/t}); R = sum_j n_j, or HCL's reweighted sum."""
    def mass(s_pos, s_neg):
        n_neg = len(s_neg)
        n = [torch.exp(s / T) for s in s_neg]
        r = sum(n) if reweight is None else reweight(s_neg, n)
        ng = (r - tau_plus * n_neg * torch.exp(s_pos / T)) / (1 - tau_plus)
        return torch.clamp(ng, min=n_neg * math.exp(-1 / T))
    return mass


def hcl_reweight(beta):
    def reweight(s_neg, n):  # w_j = exp(beta s_j / t); R = sum w n / mean w
        w = [torch.exp(beta * s / T) for s in s_neg]
        return sum(wj * nj for wj, nj in zip(w, n)) / (sum(w) / len(w))
    return reweight


def ring_mass(u, l):
    """The Ring code's rule: rank by descending similarity, O = int(u m), I = int(l O), keep ranks I..O-1."""
    def mass(s_pos, s_neg):
        ordered = sorted(s_neg, key=lambda s: s.item(), reverse=True)
        outer = ordered[:int(u * len(ordered))]
        return sum(torch.exp(s / T) for s in outer[int(l * len(outer)):])
    return mass


def run(sampler, x1, x2, seed=None):
    a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
    method = simclr_on_raw_embeddings(x1.shape[1], T)
    method.sampler = sampler
    if seed is not None:  # after building the method, whose (discarded) projector init draws numbers too
        torch.manual_seed(seed)
    out = method((a, b), labels=torch.zeros(x1.shape[0], dtype=torch.long))
    ga, gb = torch.autograd.grad(out.loss, (a, b))
    return out, ga, gb


def reference(mass, x1, x2):
    a, b = x1.double().requires_grad_(), x2.double().requires_grad_()
    loss = loss_from_negative_mass(a, b, mass)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss, ga, gb


def assert_matches(sampler, mass, x1, x2):
    out, g1, g2 = run(sampler, x1, x2)
    ref, h1, h2 = reference(mass, x1, x2)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    torch.testing.assert_close(g1.double(), h1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g2.double(), h2, rtol=1e-4, atol=1e-6)
    return out


@pytest.fixture
def views():
    torch.manual_seed(0)
    return torch.randn(6, 5), torch.randn(6, 5)


@pytest.mark.parametrize("tau_plus", [0.0, 0.05, 0.2])
def test_debiased_equals_the_dcl_equation(views, tau_plus):
    assert_matches(DebiasedSampler(tau_plus=tau_plus), dcl_mass(tau_plus), *views)


@pytest.mark.parametrize("beta, tau_plus", [(0.5, 0.1), (1.0, 0.0), (2.0, 0.2)])
def test_hard_equals_the_hcl_equation(views, beta, tau_plus):
    out = assert_matches(HardSampler(beta=beta, tau_plus=tau_plus), dcl_mass(tau_plus, hcl_reweight(beta)), *views)
    # Peaked weights use fewer effective negatives than the 10 candidates.
    assert out.stats["negatives/effective"] < 10


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 3.0])
def test_hcl_log_ratio_and_its_hand_written_gradient(beta):
    # HardLogRatio's backward is written by hand: check it against autograd's numerical gradient (float64),
    # with masked candidates more similar than every kept one (the shift must use the kept ones) and a row
    # with one kept candidate; the value against the two log-sum-exps it replaces, at t = 0.05 (exponents
    # up to 80 here: the float32 overflow the shift prevents is checked at t = 0.01 below).
    torch.manual_seed(1)
    sim = torch.rand(5, 7, dtype=torch.float64) * 2 - 1
    mask = torch.rand(5, 7) > 0.3
    mask[:, 0] = True
    mask[1] = False
    mask[1, 3] = True
    sim[~mask] = 1.0
    t = 0.05
    sim.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: HardLogRatio.apply(x, mask, t, beta), (sim,))
    x = (sim.detach() / t)
    expected = (torch.logsumexp(((1 + beta) * x).masked_fill(~mask, float("-inf")), dim=1)
                - torch.logsumexp((beta * x).masked_fill(~mask, float("-inf")), dim=1))
    torch.testing.assert_close(HardLogRatio.apply(sim.detach().float(), mask, t, beta).double(), expected,
                               rtol=1e-5, atol=1e-5)
    grad = torch.autograd.grad(HardLogRatio.apply(sim, mask, t, beta).sum(), sim)[0]
    assert grad[~mask].abs().max() == 0
    # a row without any candidate (NaN value) dropped by the caller: finite gradients, as logsumexp's
    empty = mask.clone()
    empty[2] = False
    value = HardLogRatio.apply(sim, empty, t, beta)
    kept = torch.where(empty.any(dim=1), value, torch.zeros_like(value))
    grad = torch.autograd.grad(kept.sum(), sim)[0]
    assert torch.isfinite(grad).all() and grad[2].abs().max() == 0


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_hcl_log_ratio_in_float32_is_exact_where_unshifted_exponentials_overflow(beta):
    # At t = 0.01 and cosines near 1, exp((1 + beta) s / t) is exp(150..400): inf in float32. The forward
    # pass shifts each row by its largest *unmasked* similarity; rows with masked candidates (the shift
    # must ignore them) and full rows, against float64 log-sum-exps, gradient against float64 autograd.
    torch.manual_seed(11)
    sim = 0.75 + 0.25 * torch.rand(4, 9, dtype=torch.float64)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, :3] = False
    mask[3, 4] = False
    t = 0.01
    leaf, sim64 = sim.float().requires_grad_(), sim.clone().requires_grad_()
    value = HardLogRatio.apply(leaf, mask, t, beta)
    x = sim64 / t
    ref = (torch.logsumexp(((1 + beta) * x).masked_fill(~mask, float("-inf")), dim=1)
           - torch.logsumexp((beta * x).masked_fill(~mask, float("-inf")), dim=1))
    torch.testing.assert_close(value.double(), ref.detach(), rtol=1e-5, atol=1e-4)
    weights = torch.arange(1.0, 5.0, dtype=torch.float64)  # a different upstream gradient per row
    (grad,) = torch.autograd.grad((value * weights.float()).sum(), leaf)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), sim64)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("u, l", [(1.0, 0.0), (0.7, 0.3), (0.5, 0.1), (0.35, 0.5)])
def test_ring_equals_the_descending_rank_window(views, u, l):
    out = assert_matches(RingSampler(outer_fraction=u, inner_fraction=l), ring_mass(u, l), *views)
    kept = int(u * 10) - int(l * int(u * 10))
    assert out.stats["negatives/effective"].item() == pytest.approx(kept)


def test_mixing_equals_mochi_with_the_same_draws(views):
    x1, x2 = views
    n_hard, s1, s2 = 4, 3, 2
    out, g1, g2 = run(MixingSampler(n_hard=n_hard, s1=s1, s2=s2), x1, x2, seed=7)

    def mass(s_pos, s_neg, state={"a": 0}):  # noqa: B006 (the anchor counter of this one loss)
        a = state["a"]
        state["a"] += 1
        return sum(torch.exp(s / T) for s in s_neg) + synthetic[a]

    # Replay MoCHi's draws (same order as the sampler: i, j, alpha, then j', beta) in float64.
    z = torch.cat([x1, x2]).double()
    z_unit = z / z.norm(dim=1, keepdim=True)
    a1, a2 = x1.double().requires_grad_(), x2.double().requires_grad_()
    live = torch.cat([a1, a2])
    live = live / live.norm(dim=1, keepdim=True)
    n, b = z.shape[0], x1.shape[0]
    torch.manual_seed(7)
    i_idx, j_idx = torch.randint(n_hard, (n, s1)), torch.randint(n_hard, (n, s1))
    alpha = torch.rand(n, s1, 1).double()
    k_idx = torch.randint(n_hard, (n, s2))
    beta = 0.5 * torch.rand(n, s2, 1).double()
    synthetic = []
    for a in range(n):
        negatives = [k for k in range(n) if k not in (a, (a + b) % n)]
        hardest = sorted(negatives, key=lambda k: -(z_unit[a] @ z_unit[k]).item())[:n_hard]
        hard = z_unit[hardest].detach()
        total = 0.0
        for s in range(s1):
            h = alpha[a, s] * hard[i_idx[a, s]] + (1 - alpha[a, s]) * hard[j_idx[a, s]]
            total = total + torch.exp(live[a] @ (h / h.norm()) / T)
        for s in range(s2):
            h = beta[a, s] * z_unit[a].detach() + (1 - beta[a, s]) * hard[k_idx[a, s]]
            total = total + torch.exp(live[a] @ (h / h.norm()) / T)
        synthetic.append(total)
    ref = loss_from_negative_mass(a1, a2, mass)
    h1, h2 = torch.autograd.grad(ref, (a1, a2))
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(g1.double(), h1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g2.double(), h2, rtol=1e-4, atol=1e-6)
    assert out.stats["mixing/synthetic"].item() == s1 + s2


def test_synthetics_are_unit_norm_detached_and_send_no_gradient_to_the_candidates():
    # A queue-like pool (a leaf of its own, unlike SimCLR's candidates = anchors) with a ragged mask.
    torch.manual_seed(1)
    t, s1, s2 = 0.5, 3, 4
    anchors = F.normalize(torch.randn(4, 6), dim=1).requires_grad_()
    positives = F.normalize(torch.randn(4, 6), dim=1)
    candidates = F.normalize(torch.randn(12, 6), dim=1).requires_grad_()
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, 5:7] = False
    sampler = MixingSampler(n_hard=5, s1=s1, s2=s2)
    torch.manual_seed(9)
    out = sampler(anchors, positives, candidates, mask, t)
    g_anchors, g_candidates = torch.autograd.grad(out.loss, (anchors, candidates))

    # The same draws again, then a loss in which only the real terms can reach the candidates.
    torch.manual_seed(9)
    ctx = Contrast(anchors.detach(), candidates.detach(), (anchors * positives).sum(1).detach(),
                   (anchors @ candidates.T).detach(), mask, t)
    synthetics = sampler.synthetic_negatives(ctx, s1, s2)
    assert [h.shape for h in synthetics] == [(4, s1, 6), (4, s2, 6)]
    for h in synthetics:
        assert not h.requires_grad
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(h.shape[:2]))
    h = torch.cat(synthetics, dim=1)
    real = (anchors @ candidates.T / t).masked_fill(~mask, float("-inf"))
    fake = torch.einsum("ad,asd->as", anchors, h) / t
    ref = F.softplus(torch.logsumexp(torch.cat([real, fake], 1), 1) - (anchors * positives).sum(1) / t).mean()
    r_anchors, r_candidates = torch.autograd.grad(ref, (anchors, candidates))
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-6)
    torch.testing.assert_close(g_candidates, r_candidates, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_anchors, r_anchors, rtol=1e-5, atol=1e-7)


def test_the_hard_set_skips_masked_candidates():
    # n_hard = 1: every type-1 synthetic is the hardest *unmasked* candidate (alpha c + (1 - alpha) c = c).
    torch.manual_seed(2)
    anchors = F.normalize(torch.randn(3, 5), dim=1)
    candidates = F.normalize(torch.randn(8, 5), dim=1)
    sim = anchors @ candidates.T
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[torch.arange(3), sim.argmax(1)] = False  # hide each anchor's most similar candidate
    expected = candidates[sim.masked_fill(~mask, float("-inf")).argmax(1)]
    ctx = Contrast(anchors, candidates, torch.ones(3), sim, mask, 0.1)
    (type1,) = MixingSampler(n_hard=1, s1=4, s2=0).synthetic_negatives(ctx, 4, 0)
    torch.testing.assert_close(type1, expected[:, None, :].expand(-1, 4, -1))


def test_mixing_types_start_at_their_epochs():
    torch.manual_seed(3)
    anchors = F.normalize(torch.randn(4, 6), dim=1)
    positives = F.normalize(torch.randn(4, 6), dim=1)
    pool = F.normalize(torch.randn(16, 6), dim=1)
    sampler = MixingSampler(n_hard=4, s1=3, s2=2, start_epoch1=1.0, start_epoch2=2.0)
    uniform = UniformSampler()(anchors, positives, pool, None, 0.2).loss
    for epoch, synthetic in [(0.0, 0), (0.99, 0), (1.0, 3), (1.5, 3), (2.0, 5), (7.0, 5)]:
        sampler.set_progress(round(epoch * 100), steps_per_epoch=100)  # the loop sets the progress per step
        out = sampler(anchors, positives, pool, None, 0.2)
        assert out.stats["mixing/synthetic"].item() == synthetic
        if synthetic == 0:
            assert out.loss.item() == pytest.approx(uniform.item(), rel=1e-6)
        else:  # more negatives, larger loss
            assert out.loss.item() > uniform.item()


def test_mixing_under_torch_compile_compiles_no_graph_for_the_progress_alone():
    """The training progress changes at every step; the graph sees only the active (s1, s2), computed in
    set_progress, so within a phase (the same types active) no step compiles a new graph. Read inside
    the graph, the fractional epoch was guarded on (a second graph at step 1, before dynamo made it
    symbolic) and the graph's count grew with the progress, not with what the sampler does."""
    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()
    torch.manual_seed(0)
    sampler = MixingSampler(n_hard=4, s1=3, s2=2, start_epoch1=1.0, start_epoch2=2.0)
    compiled = torch.compile(sampler, backend="eager")
    anchors, pool = F.normalize(torch.randn(4, 6), dim=1), F.normalize(torch.randn(16, 6), dim=1)
    synthetics, graphs = [], []
    for step in range(16):  # 4 steps per epoch: types 1 and 2 start at steps 4 and 8
        sampler.set_progress(step, 4, record_diagnostics=True)
        synthetics.append(compiled(anchors, anchors, pool, None, 0.2).stats["mixing/synthetic"].item())
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert synthetics == [0] * 4 + [3] * 4 + [5] * 8
    # step 4 mixes first (and checks the candidate counts once: a graph break), step 5 without the check
    assert graphs[0] == graphs[3] and graphs[5] == graphs[7] and graphs[8] == graphs[15], graphs
    dynamo.reset()


# ---- ragged masks (a queue with same-image entries masked): N is counted per anchor ----

def direct_reference(mass, anchors, positives, candidates, mask):
    """The slow per-anchor loop on already-normalised inputs, float64; N_a = that anchor's unmasked count."""
    a, p, c = (x.detach().double().requires_grad_() for x in (anchors, positives, candidates))
    total = 0.0
    for i in range(a.shape[0]):
        s_pos = a[i] @ p[i]
        s_neg = [a[i] @ c[j] for j in range(c.shape[0]) if mask[i, j]]
        pos = torch.exp(s_pos / T)
        total = total - torch.log(pos / (pos + mass(s_pos, s_neg)))
    loss = total / a.shape[0]
    return (loss, *torch.autograd.grad(loss, (a, p, c)))


def ragged_batch(seed, n_anchors=5, n_candidates=40, dim=6):
    torch.manual_seed(seed)
    anchors = F.normalize(torch.randn(n_anchors, dim), dim=1)
    positives = F.normalize(anchors + 0.5 * torch.randn(n_anchors, dim), dim=1)
    candidates = F.normalize(torch.randn(n_candidates, dim), dim=1)
    mask = torch.ones(n_anchors, n_candidates, dtype=torch.bool)
    for i in range(n_anchors):  # row i loses 3 i candidates at random places
        mask[i, torch.randperm(n_candidates)[:3 * i]] = False
    return anchors, positives, candidates, mask


@pytest.mark.parametrize("sampler, mass", [
    (DebiasedSampler(tau_plus=0.2), dcl_mass(0.2)),
    (HardSampler(beta=1.5, tau_plus=0.1), dcl_mass(0.1, hcl_reweight(1.5))),
    (RingSampler(outer_fraction=0.7, inner_fraction=0.3), ring_mass(0.7, 0.3)),
    (RingSampler(outer_fraction=0.1, inner_fraction=0.1), ring_mass(0.1, 0.1)),
    (RingSampler(outer_fraction=0.3, inner_fraction=0.15, num_samples=None), ring_mass(0.3, 0.15)),
], ids=["dcl", "hcl", "ring0.7-0.3", "ring0.1-0.1", "ring0.3-0.15"])
def test_ragged_masks_match_the_equation_per_anchor(sampler, mass):
    anchors, positives, candidates, mask = ragged_batch(5)
    leaves = [x.clone().requires_grad_() for x in (anchors, positives, candidates)]
    out = sampler(*leaves, mask, T)
    grads = torch.autograd.grad(out.loss, leaves)
    ref, *ref_grads = direct_reference(mass, anchors, positives, candidates, mask)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    for g, h in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)


def test_dcl_clamp_binds_for_some_anchors_and_not_others():
    anchors, _, candidates, mask = ragged_batch(6)
    positives = anchors.clone()
    positives[3:] = F.normalize(torch.randn(2, 6), dim=1)  # anchors 0-2: P = e^{1/t} (clamped); 3-4: not
    tau_plus = 0.5
    term = DebiasedSampler(tau_plus).negative_term(
        Contrast(anchors, candidates, (anchors * positives).sum(1), anchors @ candidates.T, mask, T))
    n = mask.sum(1).double()
    floor = torch.log(n) - 1 / T
    assert torch.allclose(term.log_mass[:3].double(), floor[:3], rtol=0, atol=1e-5)
    assert (term.log_mass[3:].double() > floor[3:] + 0.1).all()
    leaves = [x.clone().requires_grad_() for x in (anchors, positives, candidates)]
    out = DebiasedSampler(tau_plus)(*leaves, mask, T)
    ref, *ref_grads = direct_reference(dcl_mass(tau_plus), anchors, positives, candidates, mask)
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    for g, h in zip(torch.autograd.grad(out.loss, leaves), ref_grads):
        torch.testing.assert_close(g.double(), h, rtol=1e-4, atol=1e-6)


def test_dcl_at_a_debiased_sum_of_exactly_zero_takes_the_floor_with_finite_gradients():
    # R = tau_plus N P exactly (here in float32: log R = 0, log(tau_plus N P) = log 0.5 + log 1 + s+/t = 0):
    # the debiased sum is 0, not positive, so the floor N e^{-1/t} holds and no log(0) enters the gradient.
    from cl_suite.objectives import debiased_log_mass

    log_sum = torch.zeros(1, requires_grad=True)
    pos_sim = torch.tensor([-math.log(0.5)], dtype=torch.float32, requires_grad=True)
    mask = torch.ones(1, 1, dtype=torch.bool)
    log_mass = debiased_log_mass(log_sum, pos_sim, mask, 1.0, 0.5)
    assert log_mass.item() == -1.0  # log(1 * e^{-1/t}) at t = 1
    grads = torch.autograd.grad(log_mass.sum(), (log_sum, pos_sim))
    assert all(torch.isfinite(g).all() and g.abs().max() == 0 for g in grads)


def test_hcl_weights_are_normalised_by_their_mean_not_their_sum():
    # All candidates equally similar: w is constant, so R = sum w n / mean w = N e^{s/t} for any beta
    # (a sum-normalised R would be e^{s/t}, N times too small, and the loss a lot smaller).
    anchors = F.normalize(torch.randn(3, 4), dim=1)
    candidate = F.normalize(torch.randn(1, 4), dim=1)
    candidates = candidate.expand(50, -1).contiguous()
    out = HardSampler(beta=3.0, tau_plus=0.0)(anchors, anchors, candidates, None, 0.2)
    s = (anchors @ candidate.T).squeeze(1)
    expected = F.softplus(math.log(50) + s / 0.2 - 1 / 0.2).mean()
    assert math.isclose(out.loss.item(), expected.item(), rel_tol=1e-5)
    # ... and the diagnostic weights are normalised per row: uniform here, 50 effective negatives.
    assert out.stats["negatives/effective"].item() == pytest.approx(50.0, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_accuracy_is_the_positives_rank_among_the_unmasked_candidates(seed):
    """instance/top1 and top5: per anchor, count the unmasked candidates more similar than its positive
    (a slow loop); top-1 when none is, top-5 when at most four are; the same for every sampler."""
    anchors, positives, candidates, mask = ragged_batch(seed, n_anchors=8, n_candidates=30)  # 30 .. 9 candidates
    positives = F.normalize(anchors + (seed + 1) * 0.4 * torch.randn_like(anchors), dim=1)  # some win, some lose
    ranks = []
    for a in range(8):
        p = float(anchors[a] @ positives[a])
        ranks.append(sum(1 for j in range(30) if mask[a, j] and float(anchors[a] @ candidates[j]) > p))
    top1 = 100 * sum(r == 0 for r in ranks) / 8
    top5 = 100 * sum(r < 5 for r in ranks) / 8
    for sampler in (UniformSampler(), HardSampler(beta=1.0, tau_plus=0.1), RingSampler(0.5, 0.1)):
        stats = sampler(anchors, positives, candidates, mask, T).stats
        assert stats["instance/top1"].item() == pytest.approx(top1) and stats["instance/top5"].item() == pytest.approx(top5)
    assert 0 < top5 and top1 < 100  # the case is not trivial
    assert "instance/top1" not in UniformSampler()(anchors, positives, candidates, mask, T, rank_positive=False).stats


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_hcl_effective_negatives_are_the_ess_of_its_importance_weights_per_anchor(beta):
    # negatives/effective = mean over anchors of (sum w)^2 / sum w^2, w_j = exp(beta s_j / t) over the
    # anchor's unmasked candidates (README: "HCL: the effective sample size of its weights"); ragged mask.
    anchors, positives, candidates, mask = ragged_batch(8)
    out = HardSampler(beta=beta, tau_plus=0.1)(anchors, positives, candidates, mask, T)
    sim = (anchors @ candidates.T).double()
    ess = []
    for a in range(sim.shape[0]):
        w = torch.exp(beta * sim[a][mask[a]] / T)
        ess.append((w.sum() ** 2 / (w ** 2).sum()).item())
    assert out.stats["negatives/effective"].item() == pytest.approx(sum(ess) / len(ess), rel=1e-5)
    fraction = sum(e / mask[a].sum().item() for a, e in enumerate(ess)) / len(ess)
    assert out.stats["negatives/effective_fraction"].item() == pytest.approx(fraction, rel=1e-5)


# ---- limits between samplers ----

@pytest.mark.parametrize("sampler, other", [
    (DebiasedSampler(tau_plus=0.0), UniformSampler()),
    (HardSampler(beta=0.0, tau_plus=0.1), DebiasedSampler(tau_plus=0.1)),
    (HardSampler(beta=0.0, tau_plus=0.0), UniformSampler()),  # fails if HCL's weights were sum-normalised
    (RingSampler(outer_fraction=1.0, inner_fraction=0.0), UniformSampler()),
    (MixingSampler(n_hard=4, s1=0, s2=0), UniformSampler()),
])
def test_limits_reduce_to_the_simpler_sampler(views, sampler, other):
    a, ga, gb = run(sampler, *views)
    b, ha, hb = run(other, *views)
    assert math.isclose(a.loss.item(), b.loss.item(), rel_tol=1e-6, abs_tol=1e-7)
    torch.testing.assert_close(ga, ha, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb, hb, rtol=1e-5, atol=1e-7)


def test_dcl_clamp_binds_when_the_debiased_sum_would_go_below_its_floor():
    torch.manual_seed(2)
    x = torch.randn(5, 4)
    # Identical views: P = e^{1/t} is the largest term, so with tau_plus = 0.9 the debiased sum is negative.
    out, _, _ = run(DebiasedSampler(tau_plus=0.9), x, x.clone())
    n_neg = 8
    expected = math.log(1 + n_neg * math.exp(-1 / T) / math.exp(1 / T))  # -log(P / (P + N e^{-1/t}))
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-5)
    assert_matches(DebiasedSampler(tau_plus=0.9), dcl_mass(0.9), x, x.clone())


# ---- ring specifics ----

def test_ring_keeps_the_documented_fraction_of_4096_candidates():
    torch.manual_seed(3)
    anchors = F.normalize(torch.randn(8, 16), dim=1)
    queue = F.normalize(torch.randn(4096, 16), dim=1)
    out = RingSampler(0.1, 0.1)(anchors, anchors, queue, None, 0.1)
    assert out.stats["ring/kept_fraction"].item() == pytest.approx((409 - 40) / 4096)  # ranks 40..408


# ---- stability and validation ----

@pytest.mark.parametrize("sampler", [UniformSampler(), DebiasedSampler(0.1), HardSampler(1.0, 0.1),
                                     RingSampler(0.1, 0.1), RingSampler(0.1, 0.1, num_samples=4095),
                                     MixingSampler(256, 64, 64)], ids=lambda s: type(s).__name__)
def test_low_temperature_many_candidates_bf16_autocast_stays_finite(sampler):
    torch.manual_seed(4)
    anchors = F.normalize(torch.randn(16, 64), dim=1).requires_grad_()
    positives = F.normalize(anchors.detach() + 0.3 * torch.randn(16, 64), dim=1)
    queue = F.normalize(torch.randn(16384, 64), dim=1)
    queue[:50] = F.normalize(anchors.detach()[:1] + 0.01 * torch.randn(50, 64), dim=1)  # very hard negatives
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sampler(anchors.to(torch.bfloat16), positives.to(torch.bfloat16), queue.to(torch.bfloat16), None, 0.05)
    (grad,) = torch.autograd.grad(out.loss, anchors)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("make, message", [
    (lambda: DebiasedSampler(tau_plus=1.0), "sampler.tau_plus=1.0"),
    (lambda: DebiasedSampler(tau_plus=-0.1), "sampler.tau_plus=-0.1"),
    (lambda: HardSampler(beta=-1.0), "sampler.beta=-1.0"),
    (lambda: HardSampler(tau_plus=1.5), "sampler.tau_plus=1.5"),
    (lambda: RingSampler(outer_fraction=1.01), "sampler.outer_fraction=1.01"),
    (lambda: RingSampler(inner_fraction=1.0), "sampler.inner_fraction=1.0"),
    (lambda: RingSampler(anneal_epochs=-1.0), "sampler.anneal_epochs=-1.0"),
    (lambda: MixingSampler(n_hard=0), "sampler.n_hard=0"),
    (lambda: MixingSampler(s1=-1), "sampler.s1=-1"),
])
def test_bad_sampler_settings_name_the_key(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_n_hard_larger_than_the_candidates_is_a_clear_error():
    anchors = F.normalize(torch.randn(3, 4), dim=1)
    with pytest.raises(ValueError, match="sampler.n_hard=64 is larger than the 10 candidates"):
        MixingSampler(n_hard=64)(anchors, anchors, F.normalize(torch.randn(10, 4), dim=1), None, 0.1)
    # exactly as many unmasked candidates as the hard set is allowed (the hard set is all of them)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[:, :2] = False
    pool = F.normalize(torch.randn(12, 4), dim=1)
    out = MixingSampler(n_hard=10, s1=2, s2=2)(anchors, anchors, pool, mask, 0.1)
    assert torch.isfinite(out.loss) and out.stats["mixing/synthetic"].item() == 4


def test_false_negative_rate_counts_same_class_weight():
    anchors = F.normalize(torch.randn(2, 4), dim=1)
    candidates = F.normalize(torch.randn(6, 4), dim=1)
    out = UniformSampler()(anchors, anchors, candidates, None, 0.5, anchor_labels=torch.tensor([0, 1]),
                           candidate_labels=torch.tensor([0, 0, 1, 2, 2, -1]))
    # anchor 0: 2 of 5 labelled candidates share its class; anchor 1: 1 of 5 -> 3 / 10
    assert out.stats["negatives/false_negative_rate"].item() == pytest.approx(0.3)
    # an unlabelled anchor (-1) is left out, also against the unlabelled candidates (-1 == -1 is no class)
    out = UniformSampler()(anchors, anchors, candidates, None, 0.5, anchor_labels=torch.tensor([0, -1]),
                           candidate_labels=torch.tensor([0, 0, 1, -1, -1, 2]))
    assert out.stats["negatives/false_negative_rate"].item() == pytest.approx(0.5)  # anchor 0: 2 of 4


# ---- DCL / HCL presets against a transcription of the authors' criterion ----
#
# chingyaoc/DCL main.py ``train`` and joshr17/HCL image/main.py ``criterion``, restated: both views' unit
# projections stacked view 1 first; the (2B, 2B) matrix of exp(s/t); a boolean mask built per row i < B
# that drops columns i and i + B, the same mask repeated for rows B..2B-1; ``masked_select`` of it
# reshaped to (2B, 2B-2); pos = exp(<z1_i, z2_i>/t) duplicated for both views; with N = 2B-2,
# HCL's 'hard' estimator computes imp = exp(beta log neg), R = sum(imp neg) / mean(imp), DCL's the plain
# sum (HCL at beta = 0); Ng = (R - tau_plus N pos) / (1 - tau_plus) clamped below at N e^{-1/t}; loss =
# mean(-log(pos / (pos + Ng))). Probability space, as they compute it (safe at t = 0.5 in float64).

def authors_dcl_hcl_criterion(out_1, out_2, t, tau_plus, beta):
    b = out_1.shape[0]
    out = torch.cat([out_1, out_2])
    neg = torch.exp(out @ out.T / t)
    half = torch.ones(b, 2 * b, dtype=torch.bool)
    for i in range(b):
        half[i, i] = False
        half[i, i + b] = False
    neg = neg.masked_select(torch.cat([half, half])).view(2 * b, -1)
    pos = torch.exp((out_1 * out_2).sum(dim=-1) / t)
    pos = torch.cat([pos, pos])
    n = 2 * b - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    clamped = ng < n * np.e ** (-1 / t)
    ng = torch.clamp(ng, min=n * np.e ** (-1 / t))
    return (-torch.log(pos / (pos + ng))).mean(), clamped


def preset_simclr_on_raw_embeddings(overrides, dim):
    """The method the trainer builds for ``overrides`` (its sampler and temperature from the composed
    preset), with the backbone and projector replaced by the identity so the test controls the embeddings."""
    from cl_suite.engine.build import DatasetFacts, build_method
    from helpers import RawFeatures, compose_train

    cfg = compose_train(overrides)
    method = build_method(cfg, DatasetFacts(num_samples=100, num_classes=10))
    method.backbone, method.projector = RawFeatures(dim), torch.nn.Identity()
    return method, cfg


def spread_views(seed, b=6, dim=8):
    """Two views of b random images (in 8 dimensions, cosines of other images near 0): the second half's
    views nearly coincide (P close to e^{1/t}), the first half's second view is an unrelated point, so at
    tau_plus 0.3 the clamp binds for the second half's anchors and not for the first half's."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(b, dim, generator=g)
    x2 = x1 + 0.05 * torch.randn(b, dim, generator=g)
    x2[: b // 2] = torch.randn(b // 2, dim, generator=g)
    return x1, x2


@pytest.mark.parametrize("overrides, tau_plus, beta", [
    (["method=dcl"], 0.1, 0.0),
    (["method=dcl", "sampler.tau_plus=0.3"], 0.3, 0.0),
    (["method=dcl", "sampler.tau_plus=0"], 0.0, 0.0),
    (["method=hcl"], 0.1, 1.0),
    (["method=hcl", "sampler.tau_plus=0.3", "sampler.beta=0.5"], 0.3, 0.5),
    (["method=hcl", "sampler.beta=2.0"], 0.1, 2.0),
])
def test_dcl_and_hcl_presets_equal_the_authors_criterion(overrides, tau_plus, beta):
    method, cfg = preset_simclr_on_raw_embeddings(overrides, dim=8)
    t = cfg.method.temperature
    assert t == 0.5 and cfg.sampler.tau_plus == tau_plus and cfg.sampler.get("beta", 0.0) == beta
    bound = set()
    for seed in range(3):
        x1, x2 = spread_views(seed)
        a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = method((a, b), labels=torch.zeros(x1.shape[0], dtype=torch.long))
        ga, gb = torch.autograd.grad(out.loss, (a, b))
        c, d = x1.double().requires_grad_(), x2.double().requires_grad_()
        ref, clamped = authors_dcl_hcl_criterion(F.normalize(c, dim=1), F.normalize(d, dim=1), t, tau_plus, beta)
        ha, hb = torch.autograd.grad(ref, (c, d))
        assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
        torch.testing.assert_close(ga.double(), ha, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gb.double(), hb, rtol=1e-4, atol=1e-6)
        bound |= set(clamped.tolist())
    if tau_plus >= 0.3:  # both branches of the clamp are exercised
        assert bound == {True, False}
