"""The contrastive objectives of the suite as pure functions of tensors.

Each function is one equation of one paper, named in its docstring; it holds no state, reads no
configuration, draws no random numbers (draws are arguments) and computes no diagnostics. The samplers
(``cl_suite.samplers``) and methods (``cl_suite.methods``) are thin modules around these functions: they
hold the settings, the queues and banks, the random draws and the diagnostics.

Notation: an anchor ``a`` has one positive with cosine similarity ``s+`` (``pos_sim``), ``M`` candidate
negatives with similarities ``s_j`` (``cand_sim``, (A, M)) of which ``mask`` (A, M) marks the ones that are
negatives of that anchor, and a temperature ``t``. Most objectives share the form

    loss_a = -log( P_a / (P_a + N_a) ),  P_a = exp(s+/t),

and differ only in the negative mass ``N_a``; the ``*_log_mass`` functions return ``log N_a`` (A,) and
``infonce_from_log_mass`` turns it into the loss.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from cl_suite.errors import as_written

# A finite stand-in for -inf in RINCE's masked logits: exp() of it is exactly 0 in fp32, and unlike -inf it
# keeps logsumexp and its gradient finite on rows with nothing unmasked (those rows are then dropped).
MASKED = -1.0e9


# --------------------------------------------------------------------------------------------- InfoNCE


def checked_temperature(temperature: float, key: str = "method.temperature") -> float:
    """A softmax temperature as a float; refused (naming ``key``) unless > 0. Every loss here divides
    similarities by it."""
    if not temperature > 0:
        raise ValueError(f"{key}={temperature} must be > 0")
    return float(temperature)

def infonce_from_log_mass(pos_sim: torch.Tensor, log_neg_mass: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive
    Coding", eq. 4) for one positive and a negative mass ``N_a`` given as its log, averaged over anchors:

        L = mean_a -log( exp(s+_a/t) / (exp(s+_a/t) + N_a) ) = mean_a softplus(log N_a - s+_a/t).

    The softplus form is exact also when the loss is tiny. With ``N_a`` the plain sum over the other
    2B - 2 views of a batch (``infonce_log_mass``) this is SimCLR's NT-Xent (Chen, Kornblith, Norouzi,
    Hinton, ICML 2020, eq. 1). ``pos_sim``, ``log_neg_mass``: (A,). Returns a scalar.
    """
    return F.softplus(log_neg_mass - pos_sim / temperature).mean()


def infonce_log_mass(cand_sim: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The negative mass of InfoNCE (van den Oord et al. 2018, the denominator of eq. 4; SimCLR eq. 1):
    every unmasked candidate with weight one, ``log N_a = log sum_{j: mask[a, j]} exp(s_aj / t)``. (A,)."""
    # in place on the fresh quotient (its backward does not need it): one (A, M) copy less per step
    logits = (cand_sim / temperature).masked_fill_(~mask, float("-inf"))
    return torch.logsumexp(logits, dim=1)


# ------------------------------------------------------------------------------------------------- DCL

def debiased_log_mass(log_sum: torch.Tensor, pos_sim: torch.Tensor, mask: torch.Tensor, temperature: float,
                      tau_plus: float) -> torch.Tensor:
    """The debiased negative mass of DCL (Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased
    Contrastive Learning", NeurIPS 2020: the debiased objective's estimator of the true-negative mass,
    with one positive, M = 1), including the floor its reference code applies:

        N_g = max( (R - tau_plus * N * P) / (1 - tau_plus),  N e^{-1/t} ),

    where ``log_sum`` (A,) is log R, the (possibly re-weighted) sum over the N unmasked candidates of
    exp(s/t), P = exp(s+/t) and ``tau_plus`` the class prior (the chance a random candidate shares the
    anchor's class). The floor N e^{-1/t} is the smallest value the sum can take (all cosines -1) and
    acts on the sum-scale N_g. Computed in log space,
    log(R - c P) = log R + log(1 - exp(log(c P) - log R)), and clamped below at log N - 1/t; where the
    debiased sum would fall below the floor (or below zero) the floor holds. ``tau_plus = 0`` is
    InfoNCE. Returns log N_g (A,).
    """
    n = mask.sum(dim=1, dtype=log_sum.dtype)  # summed as floats: no int64 copy of the (A, M) mask
    log_floor = torch.log(n) - 1.0 / temperature
    if tau_plus == 0.0:
        return torch.maximum(log_sum, log_floor)  # the floor can only bind through rounding here
    log_false = math.log(tau_plus) + torch.log(n) + pos_sim / temperature  # log(tau_plus * N * P)
    ratio = torch.exp(log_false - log_sum)  # (tau_plus N P) / R
    # Computing the log only where the debiased sum is positive keeps NaN out of the other branch's gradient.
    safe = ratio < 1.0
    debiased = log_sum + torch.log1p(-torch.where(safe, ratio, torch.zeros_like(ratio))) - math.log1p(-tau_plus)
    return torch.where(safe, torch.maximum(debiased, log_floor), log_floor)


# ------------------------------------------------------------------------------------------------- HCL

def hard_log_mass(cand_sim: torch.Tensor, mask: torch.Tensor, pos_sim: torch.Tensor, temperature: float,
                  beta: float, tau_plus: float) -> torch.Tensor:
    """The hard-negative mass of HCL (Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard
    Negative Samples", ICLR 2021: the importance-sampling estimator of the negative term of its
    hard-negative objective), debiased as DCL (``debiased_log_mass``):

        R_a = sum_j w_j n_j / ((1/N) sum_j w_j),   w_j = exp(beta s_j / t),  n_j = exp(s_j / t),

    over the N unmasked candidates: the importance weights are normalised by their mean (so R keeps the
    scale of the plain sum, as the reference code computes it) and carry gradient. ``beta`` multiplies
    s/t, as in the reference code. In log space,
    log R = LSE((1 + beta) s/t) - LSE(beta s/t) + log N (``HardLogRatio``). beta = 0 is DCL;
    beta = tau_plus = 0 is InfoNCE. Returns log N_a (A,).
    """
    n = mask.sum(dim=1, dtype=cand_sim.dtype)  # exact below 2^24 candidates
    log_r = HardLogRatio.apply(cand_sim, mask, temperature, beta) + torch.log(n)
    return debiased_log_mass(log_r, pos_sim, mask, temperature, tau_plus)


class HardLogRatio(torch.autograd.Function):
    """``LSE_j((1 + beta) s_j / t) - LSE_j(beta s_j / t)`` over each row's unmasked candidates (A,), the
    log of HCL's sum_j w_j n_j / sum_j w_j, with its closed-form gradient

        d/ds_j = ((1 + beta) p_j - beta q_j) / t,   p = softmax((1 + beta) s/t),  q = softmax(beta s/t)

    (zero on masked candidates). Why not two ``torch.logsumexp``: each recomputes its exponentials in
    the backward pass and the masking and scaling are separate passes; here the forward pass computes
    the two exponentials once (shifted by the row's largest unmasked similarity, so no term exceeds 1)
    and the backward pass only combines them: a step at 1.4-1.5x InfoNCE's instead of 1.9-2.0x on the
    CPU (bench/hcl_estimator.py). The mask is applied after scaling by beta, so beta = 0 gives q
    uniform over the unmasked candidates (0 x -inf would be NaN)."""

    @staticmethod
    def forward(ctx, cand_sim: torch.Tensor, mask: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
        hidden = ~mask
        row_max = cand_sim.masked_fill(hidden, float("-inf")).amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # a row of nothing
        z = (cand_sim - row_max).mul_(1.0 / temperature)  # <= 0 on unmasked candidates
        log_w = (z * beta).masked_fill_(hidden, float("-inf"))
        w = torch.exp(log_w)  # exp(beta (s - max) / t), 0 where masked
        wn = torch.exp(log_w.add_(z))  # exp((1 + beta) (s - max) / t)
        sum_w, sum_wn = w.sum(dim=1), wn.sum(dim=1)
        ctx.save_for_backward(w, wn, sum_w, sum_wn)
        ctx.temperature, ctx.beta = temperature, beta
        # the shifts cancel but for max/t: (1 + beta) max/t - beta max/t
        return torch.log(sum_wn) - torch.log(sum_w) + row_max.squeeze(1) / temperature

    @staticmethod
    @torch.autograd.function.once_differentiable  # no second-order use; refused rather than wrong
    def backward(ctx, grad: torch.Tensor):
        w, wn, sum_w, sum_wn = ctx.saved_tensors
        t, beta = ctx.temperature, ctx.beta
        # A row with no unmasked candidate has w = wn = 0 and sums 0: its gradient is 0 (as logsumexp's),
        # not 0 x inf = NaN, so a caller that drops such rows (torch.where) keeps finite gradients.
        sum_w, sum_wn = (torch.where(s > 0, s, torch.ones_like(s)) for s in (sum_w, sum_wn))
        to_p = (grad * (1 + beta) / (t * sum_wn)).unsqueeze(1)  # (A, 1): (1 + beta)/t over p's normaliser
        to_q = (grad * beta / (t * sum_w)).unsqueeze(1)
        return torch.addcmul(wn * to_p, w, to_q, value=-1.0), None, None, None


def hard_weights(cand_sim: torch.Tensor, mask: torch.Tensor, temperature: float, beta: float) -> torch.Tensor:
    """HCL's normalised importance weights w_j / sum_k w_k, w_j = exp(beta s_j / t), over each anchor's
    unmasked candidates (Robinson et al. 2021, the weights of the estimator in ``hard_log_mass``). (A, M)."""
    return torch.softmax((beta * (cand_sim / temperature)).masked_fill(~mask, float("-inf")), dim=1)


# ------------------------------------------------------------------------------------------------ Ring

def ring_borders(outer_fraction: float, inner_fraction: float, count: int) -> tuple[int, int]:
    """(I, O) of the ring of Ring (Wu, Mosse, Zhuang, Yamins, Goodman, "Conditional Negative Sampling
    for Contrastive Learning of Visual Representations", ICLR 2021: the ring of candidates between an
    inner and an outer percentile of similarity) for ``count`` candidates ranked by descending
    similarity: the ring keeps ranks I .. O-1 with

        O = floor(u * count)   (the outer ball, clipped to the pool),   I = floor(l * O)   (the hole).

    Both products are IEEE double precision truncated toward zero, as in the reference code
    (``int(thres_outer * k)``, ``int(thres_inner * outer_size)``): u = 0.1 over 65,536 candidates keeps
    ranks 655 .. 6552; u = 0.29 over 100 gives O = 28 (0.29 * 100 is 28.999999999999996). The clip to
    the pool admits a u slightly above 1."""
    outer = min(int(outer_fraction * count), count)
    return int(inner_fraction * outer), outer


def ring_width(outer_fraction: float, inner_fraction: float, count: int) -> int:
    """How many of ``count`` candidates the ring of ``ring_borders`` keeps: O - I."""
    inner, outer = ring_borders(outer_fraction, inner_fraction, count)
    return outer - inner


def ring_borders_per_anchor(outer_fraction: float, inner_fraction: float,
                            counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ring_borders`` for a (A,) tensor of candidate counts: (I, O), each (A,) long. The float64
    products truncated toward zero are bit-identical to Python's ``int(u * m)``."""
    m = counts.double()
    outer = torch.minimum(torch.floor(outer_fraction * m), m)
    inner = torch.floor(inner_fraction * outer)
    return inner.long(), outer.long()


def ring_positions(inner: torch.Tensor, outer: torch.Tensor, max_outer: int) -> torch.Tensor:
    """(A, max_outer) bool: which of the ``max_outer`` best ranks of each anchor lie in its ring I .. O-1."""
    ranks = torch.arange(max_outer, device=inner.device)
    return (ranks[None, :] >= inner[:, None]) & (ranks[None, :] < outer[:, None])


def resampled_ranks(inner: torch.Tensor, outer: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Ranks drawn uniformly with replacement from each anchor's ring, I + floor(U (O - I)), for the
    given (A, k) uniforms U in [0, 1) (the draws of Ring's instance-discrimination estimator, whose
    negatives are k ring elements drawn per anchor). (A, k) long."""
    width = (outer - inner).to(uniforms.dtype)
    offsets = torch.floor(uniforms * width[:, None]).long()
    # U < 1, but U * width can round up to width: stay inside the ring.
    return inner[:, None] + torch.minimum(offsets, (outer - inner - 1).clamp(min=0)[:, None])


class RingSelection(NamedTuple):
    """The negatives Ring keeps per anchor: candidate indices ``index`` (A, K) and ``keep`` (A, K) bool
    (None: every column is kept), with the borders ``inner``, ``outer`` and candidate ``counts`` (A,), and
    ``ranked`` (A, max O): each anchor's closest candidates by rank (rank 0 first), the hole included."""

    index: torch.Tensor
    keep: torch.Tensor | None
    inner: torch.Tensor
    outer: torch.Tensor
    counts: torch.Tensor
    ranked: torch.Tensor


def ring_selection(cand_sim: torch.Tensor, mask: torch.Tensor, outer_fraction: float, inner_fraction: float,
                   uniforms: torch.Tensor | None = None) -> RingSelection:
    """The conditional negatives of Ring (Wu et al., ICLR 2021, ring discrimination: negatives drawn from
    the ring between the inner and the outer percentile of the anchor's similarity ranking). Each
    anchor's unmasked candidates are ranked by descending (detached) similarity, rank 0 the most
    similar, and the ring is ranks I .. O-1 of ``ring_borders_per_anchor``; selection is by rank, so
    exactly O - I candidates are kept even when similarities tie, and no gradient flows through it.

    ``uniforms`` None: every ring element once (``index`` = the candidates of the best
    floor(u M) ranks, ``keep`` = which of them lie in the ring). ``uniforms`` (A, k) in [0, 1): k ring
    elements drawn uniformly with replacement per anchor (``resampled_ranks``; ``index`` (A, k), ``keep``
    None). Every anchor's ring must hold at least one candidate when drawing.
    """
    n_cand = cand_sim.shape[1]
    counts = mask.sum(dim=1, dtype=torch.int32)  # no int64 copy of the (A, M) mask
    inner, outer = ring_borders_per_anchor(outer_fraction, inner_fraction, counts)
    # The ball of the largest count holds every anchor's ball; masked (-inf) candidates rank last.
    max_outer = min(int(outer_fraction * n_cand), n_cand)
    sim = cand_sim.detach().masked_fill(~mask, float("-inf"))
    best = sim.topk(max_outer, dim=1, sorted=True).indices  # (A, max_outer) candidate index by rank
    if uniforms is None:
        return RingSelection(best, ring_positions(inner, outer, max_outer), inner, outer, counts, best)
    return RingSelection(best.gather(1, resampled_ranks(inner, outer, uniforms)), None, inner, outer, counts, best)


def ring_log_mass(cand_sim: torch.Tensor, selection: RingSelection, temperature: float) -> torch.Tensor:
    """Ring's negative mass over the selected negatives (Wu et al. 2021): N_a = sum over the ring (or
    over the draws, a candidate drawn twice counting twice) of exp(s_aj / t). (A,)."""
    logits = cand_sim.gather(1, selection.index) / temperature  # gather first: the division on (A, k) only
    if selection.keep is not None:
        logits = logits.masked_fill(~selection.keep, float("-inf"))
    return torch.logsumexp(logits, dim=1)


NEIGHBOR_AGGREGATES = ("logsumexp", "mean")


def ring_neighbor_positive_logit(pos_sim: torch.Tensor, cand_sim: torch.Tensor, selection: RingSelection,
                                 inner_fraction: float, temperature: float, aggregate: str = "logsumexp"
                                 ) -> torch.Tensor:
    """The positive logit of Ring's neighbour-views variant (Wu et al. 2021; the Ring code's
    ``neighbor_views`` option of MoCoRing and NCERing, a Local-Aggregation-like objective): the anchor's
    positive logit p = s+/t joined by its I closest candidates, the ring's hole (ranks 0 .. I-1, every one
    of them, never resampled):

        logsumexp:  LSE(p, s_(1)/t, ..., s_(I)/t)        mean:  (p + sum_{r <= I} s_(r)/t) / (1 + I).

    Only the numerator changes: the partition keeps the plain positive, so the loss per anchor is
    LSE(p, ring) - (this), which can be negative. With I = 0 both forms are p. The hole's logits carry
    the gradient, as the positive's does. (A,)."""
    # every anchor's hole lies in the first floor(l * max O) ranks: I = floor(l * O) with O <= max O
    width = int(inner_fraction * selection.ranked.shape[1])
    logits = cand_sim.gather(1, selection.ranked[:, :width]) / temperature
    in_hole = ring_positions(torch.zeros_like(selection.inner), selection.inner, width)
    positive = pos_sim / temperature
    if aggregate == "logsumexp":
        hole = logits.masked_fill(~in_hole, float("-inf"))
        return torch.logsumexp(torch.cat([positive[:, None], hole], dim=1), dim=1)
    if aggregate == "mean":
        total = positive + torch.where(in_hole, logits, torch.zeros_like(logits)).sum(dim=1)
        return total / (1 + selection.inner).to(total.dtype)
    raise ValueError(f"aggregate={as_written(aggregate)} is not allowed: expected one of "
                     f"{', '.join(NEIGHBOR_AGGREGATES)}")


def infonce_with_positive_logit(pos_sim: torch.Tensor, log_neg_mass: torch.Tensor, positive_logit: torch.Tensor,
                                temperature: float) -> torch.Tensor:
    """The loss when the numerator's logit is not the partition's positive (Ring's neighbour views,
    ``ring_neighbor_positive_logit``): mean_a [ LSE(s+_a/t, log N_a) - positive_logit_a ], computed as
    softplus(log N_a - s+_a/t) + s+_a/t - positive_logit_a (exact; equal to ``infonce_from_log_mass`` when
    positive_logit = s+/t). Returns a scalar."""
    positive = pos_sim / temperature
    return (F.softplus(log_neg_mass - positive) + positive - positive_logit).mean()


# ----------------------------------------------------------------------------------------------- MoCHi

def hardest_candidates(cand_sim: torch.Tensor, mask: torch.Tensor, n_hard: int) -> torch.Tensor:
    """Indices (A, n_hard) of each anchor's ``n_hard`` most similar unmasked candidates, most similar
    first: MoCHi's set of hardest negatives (Kalantidis, Sariyildiz, Pion, Weinzaepfel, Larlus, "Hard
    Negative Mixing for Contrastive Learning", NeurIPS 2020, section "Mixing the hardest negatives").
    Masked candidates are never in the set: the slots of an anchor with fewer than ``n_hard`` unmasked
    candidates repeat its most similar one."""
    top = cand_sim.detach().masked_fill(~mask, float("-inf")).topk(n_hard, dim=1)
    return torch.where(torch.isfinite(top.values), top.indices, top.indices[:, :1])


def mixing_synthetics(anchors: torch.Tensor, hard: torch.Tensor,
                      pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                      anchor_mixes: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """MoCHi's synthetic negatives (Kalantidis et al., NeurIPS 2020, sections "Mixing the hardest
    negatives" and "Mixing for even harder negatives"), from each anchor's hard set ``hard`` (A, n_hard, D):

        type 1:  h_k  = normalize(alpha_k n_i + (1 - alpha_k) n_j),   alpha_k in (0, 1),
        type 2:  h'_k = normalize(beta_k q + (1 - beta_k) n_j),       beta_k in (0, 0.5),

    with n_i, n_j hard negatives and q the anchor (query), which weighs less than half in h'.
    ``pairs`` = (i, j, alpha): (A, s1) indices into the hard set and (A, s1, 1) coefficients;
    ``anchor_mixes`` = (j, beta): (A, s2) indices and (A, s2, 1) coefficients (None: no synthetics of
    that type). Returns [type 1 (A, s1, D), type 2 (A, s2, D)], leaving out an absent type; the
    synthetics are constants (no gradient)."""
    anchors, hard = anchors.detach(), hard.detach()

    def pick(idx: torch.Tensor) -> torch.Tensor:  # (A, count, D)
        return hard.gather(1, idx[..., None].expand(-1, -1, hard.shape[-1]))

    synthetics = []
    with torch.no_grad():
        if pairs is not None:
            first, second, alpha = pairs
            synthetics.append(F.normalize(alpha * pick(first) + (1 - alpha) * pick(second), dim=-1))
        if anchor_mixes is not None:
            other, beta = anchor_mixes
            synthetics.append(F.normalize(beta * anchors[:, None, :] + (1 - beta) * pick(other), dim=-1))
    return synthetics


def mixing_log_mass(cand_sim: torch.Tensor, mask: torch.Tensor, anchors: torch.Tensor,
                    synthetics: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """MoCHi's negative mass (Kalantidis et al. 2020): the InfoNCE sum over the real candidates plus
    exp(q . h / t) over the anchor's synthetics h (``mixing_synthetics``); gradient reaches the
    synthetic terms through the anchor q only. (A,)."""
    parts = [(cand_sim / temperature).masked_fill(~mask, float("-inf"))]
    parts += [torch.einsum("ad,asd->as", anchors, h) / temperature for h in synthetics]
    return torch.logsumexp(torch.cat(parts, dim=1), dim=1)


# ---------------------------------------------------------------------------------------------- SupCon

def supervised_contrastive_loss(anchors: torch.Tensor, candidates: torch.Tensor, anchor_labels: torch.Tensor,
                                candidate_labels: torch.Tensor, contrast_mask: torch.Tensor,
                                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon's L^sup_out (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan,
    "Supervised Contrastive Learning", NeurIPS 2020, eq. 2; the summation outside the log, the form the
    paper recommends over L^sup_in of eq. 3), in fp32 log-space:

        L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t) )

    ``contrast_mask`` (n, M) is A(i): the candidates anchor i is contrasted with (not itself, not an
    empty bank row); P(i) are those of them with the anchor's label. Anchors without any positive are
    left out of the mean. Returns the loss and the mean |P(i)|.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        logits = (anchors.float() @ candidates.float().T) / temperature
        logits = logits.masked_fill(~contrast_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = contrast_mask & (candidate_labels[None, :] == anchor_labels[:, None])
        count = positive.sum(dim=1)
        per_anchor = -torch.where(positive, log_prob, 0.0).sum(dim=1) / count.clamp(min=1)
        has_positive = count > 0
        loss = (per_anchor * has_positive).sum() / has_positive.sum().clamp(min=1)
    return loss, count.float().mean()


# ----------------------------------------------------------------------------------------------- RINCE

def ranked_infonce_loss(own_logit: torch.Tensor, bank_logits: torch.Tensor, rank_masks: list[torch.Tensor],
                        temperatures: list[float], forms: list[str], min_ratio: float = 1e-7) -> torch.Tensor:
    """RINCE (Hoffmann, Behrmann, Gall, Brox, Noroozi, "Ranking Info Noise Contrastive Estimation:
    Boosting Contrastive Learning via Ranked Positives", AAAI 2022: the ranked InfoNCE terms, one per
    rank of positives, in their "in" and "out" forms), as its reference code computes it: the mean over
    ranks r of

        in:   l_r = -log( sum_{p in P_r} e_p / (sum_{p in P_r} e_p + sum_{n in N_r} e_n) ), mean over rows
        out:  l_r = -log( e_p / (e_p + sum_{n in N_r} e_n) ),                    mean over (row, p) pairs

    with e_j = exp(s_j / t_r). ``own_logit`` (n,) is the cosine of each anchor to its own key (a rank-1
    positive only); ``bank_logits`` (n, K) the cosines to the bank; ``rank_masks[r]`` (n, K) marks the
    bank's positives of rank r. The negatives of rank r are the bank entries in no mask of ranks 1..r
    (so lower ranks are negatives of higher ones, never the reverse). Rows (in) or pairs (out) whose
    positive probability is <= ``min_ratio`` are dropped: rows with no positive of that rank, and
    extremely hard positives (which get no gradient, as in the reference code); a rank with nothing left
    adds 0.
    """
    with torch.autocast(device_type=bank_logits.device.type, enabled=False):
        own_logit, bank_logits = own_logit.float(), bank_logits.float()
        seen = torch.zeros_like(rank_masks[0])
        terms = []
        for r, (mask, t, form) in enumerate(zip(rank_masks, temperatures, forms)):
            seen = seen | mask
            pos = (bank_logits / t).masked_fill(~mask, MASKED)
            if r == 0:
                pos = torch.cat([own_logit[:, None] / t, pos], dim=1)
            log_neg = torch.logsumexp((bank_logits / t).masked_fill(seen, MASKED), dim=1)
            if form == "in":
                losses = F.softplus(log_neg - torch.logsumexp(pos, dim=1))
            else:
                losses = F.softplus(log_neg[:, None] - pos)
            valid = losses < -math.log(min_ratio)
            terms.append(torch.where(valid, losses, 0.0).sum() / valid.sum().clamp(min=1))
        return torch.stack(terms).mean()


# ----------------------------------------------------------------------------------------------- NNCLR

def nearest_neighbours(queries: torch.Tensor, support: torch.Tensor, valid: torch.Tensor, k: int = 1,
                       pick: torch.Tensor | None = None) -> torch.Tensor:
    """NNCLR's positive selection NN(z, Q) (Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little
    Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021,
    sec. 3.2, the nearest neighbour of z in the support set Q): for unit-norm ``queries`` (n, d) and
    ``support`` (Q, d), the index (n,) of the most similar (cosine) support row among the ``valid`` (Q,)
    ones. With ``k > 1`` the row is the ``pick`` (n, 1)-th (0-based) of the k most similar (the paper's
    sampling from the top-k, sec. 4.5); ``pick`` None takes the most similar.
    """
    sim = (queries @ support.T).masked_fill(~valid, float("-inf"))
    top = sim.topk(k, dim=1).indices  # (n, k)
    if pick is None:
        pick = torch.zeros_like(top[:, :1])
    return top.gather(1, pick).squeeze(1)
