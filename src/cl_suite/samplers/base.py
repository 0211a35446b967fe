"""The sampler interface: one positive and a set of candidate negatives per anchor -> a loss.

A framework (``cl_suite.methods``) decides where positives and candidates come from (the other view,
a queue, a memory bank); a sampler decides how the candidates become the negative term. Neither
knows about the other. All samplers write the loss per anchor as

    loss_a = -log( P_a / (P_a + N_a) ),  P_a = exp(s(a, a+)/t),

and differ only in the negative mass ``N_a`` (InfoNCE: the sum over candidates; DCL: debiased; ...).
A sampler returns ``log N_a`` (``NegativeTerm``), and the shared code evaluates
``softplus(log N_a - log P_a)`` (``cl_suite.objectives.infonce_from_log_mass``), which is exact also when
the loss is tiny. The positive is never a candidate, so no sampler can drop it. The equations themselves
live in ``cl_suite.objectives``; a sampler holds the settings, the random draws and the diagnostics.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cl_suite.errors import ConfigError
from cl_suite.objectives import infonce_from_log_mass, infonce_with_positive_logit

HISTOGRAM_BINS = 50  # similarity histograms over [-1, 1]


def config_value(target: type, node: Any, key: str) -> Any:
    """The value ``node`` (a config group: a DictConfig or mapping) sets for ``key``, or else the default of
    ``target``'s constructor argument ``key``: what the object built from ``node`` would get. For the
    start-up declarations (``NegativeSampler.check_candidates``, ``ContrastiveMethod.candidates_per_anchor``),
    which read a group's config before anything is built."""
    if key in node:
        return node[key]
    return inspect.signature(target).parameters[key].default


@dataclass
class Contrast:
    """Everything a sampler may look at for one batch of anchors (all fp32, on one device)."""

    anchors: torch.Tensor  # (A, D), L2-normalised
    candidates: torch.Tensor  # (M, D), L2-normalised pool of candidate negatives
    pos_sim: torch.Tensor  # (A,) cosine similarity of each anchor to its positive
    cand_sim: torch.Tensor  # (A, M) cosine similarities to the candidates
    mask: torch.Tensor  # (A, M) bool, True where candidate m is a negative for anchor a
    temperature: float
    # False on the steps that record no diagnostics: a sampler then skips what only the diagnostics read
    # (``NegativeTerm.weights``, ``extra_stats``); the loss must not depend on it.
    with_diagnostics: bool = True
    # Whether the diagnostics rank the positive among the candidates (``instance/top1``, ``top5``): False
    # where the anchor itself is a candidate (the Ring code's SimCLR forms), which would always outrank it.
    rank_positive: bool = True


@dataclass
class NegativeTerm:
    log_mass: torch.Tensor  # (A,) log N_a
    # (A, M) non-negative weight each candidate gets in N_a, for the diagnostics only (detached):
    # None = every unmasked candidate counts once (InfoNCE); ring: 0/1 kept; HCL: importance weights.
    # Only read when ``Contrast.with_diagnostics`` (a sampler may leave it None otherwise).
    weights: torch.Tensor | None = None
    extra_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # (A,) the numerator's logit, when it is not the positive's s+/t (Ring's neighbour views: the positive
    # joined by the closest candidates); the partition keeps the plain positive. None: s+/t.
    positive_logit: torch.Tensor | None = None


@dataclass
class SamplerOutput:
    loss: torch.Tensor  # scalar: mean over anchors
    # detached per-step diagnostics (device tensors); empty on a step that records none
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class NegativeSampler(nn.Module):
    """Base class. Subclasses implement ``negative_term``.

    Similarities are computed in fp32 with autocast off, whatever the training precision: logsumexp
    over thousands of candidates at temperatures of 0.05-0.5 loses most of its mantissa in bf16, and
    the ring's ranks and exp(beta * s / t) of the other samplers are just as sensitive.

    Training progress is set by the training loop before every step (``set_progress``), for samplers
    with a schedule (ring annealing, HCL's beta annealing, MoCHi start epochs): ``step`` (optimizer
    steps taken), ``steps_per_epoch`` and ``epoch`` (a float: 3.5 = half-way through the fourth epoch).

    ``record_diagnostics`` (set with the progress): whether this step computes the per-step diagnostics
    (``SamplerOutput.stats``). The loop sets it only on the steps whose diagnostics it records (its log
    steps and the last step of each epoch): the similarity histograms, effective sample size and
    false-negative rate over the whole (A, M) matrix cost about as much as the loss itself. On the
    other steps ``stats`` is empty and the loss and its gradient are the same. Outside the loop it
    stays True. Under ``torch.compile`` the flag is a guarded module attribute: two graphs, one per value.
    """

    @classmethod
    def check_candidates(cls, sampler_cfg: Any, count: int, source: str) -> None:
        """The start-up check of this sampler against the ``count`` candidate negatives each anchor has
        (the method's ``ContrastiveMethod.candidates_per_anchor``; ``source`` says where they come from, in
        words, for the message): raise ``ConfigError`` naming the sampler key, its value and what would
        work. Called with the sampler group's config (``sampler_cfg``), before anything is built, once
        with the config alone and again once the data set's size is known. The default accepts any
        count >= 1: every candidate can be used."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.steps_per_epoch = 1
        self.epoch = 0.0
        self.record_diagnostics = True

    def set_progress(self, step: int, steps_per_epoch: int, record_diagnostics: bool = True) -> None:
        self.step = int(step)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = self.step / self.steps_per_epoch
        self.record_diagnostics = bool(record_diagnostics)

    def forward(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor,  # (A, D), L2-normalised; row a is anchor a's positive
        candidates: torch.Tensor,
        candidate_mask: torch.Tensor | None,
        temperature: float,
        anchor_labels: torch.Tensor | None = None,  # (A,) class labels (-1 unknown), diagnostics only
        candidate_labels: torch.Tensor | None = None,  # (M,)
        rank_positive: bool = True,  # diagnostics only: see ``Contrast.rank_positive``
    ) -> SamplerOutput:
        # Casting alone is not enough: autocast would run the matmul in bf16/fp16 again.
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            anchors, positives, candidates = anchors.float(), positives.float(), candidates.float()
            pos_sim = (anchors * positives).sum(dim=1)
            cand_sim = anchors @ candidates.T
            if candidate_mask is None:
                candidate_mask = torch.ones_like(cand_sim, dtype=torch.bool)
            ctx = Contrast(anchors, candidates, pos_sim, cand_sim, candidate_mask, float(temperature),
                           with_diagnostics=self.record_diagnostics, rank_positive=rank_positive)
            term = self.negative_term(ctx)
            check_term(self, term, tuple(cand_sim.shape))
            if term.positive_logit is None:
                loss = infonce_from_log_mass(pos_sim, term.log_mass, temperature)
            else:
                loss = infonce_with_positive_logit(pos_sim, term.log_mass, term.positive_logit, temperature)
        if not self.record_diagnostics:
            return SamplerOutput(loss=loss)
        stats = diagnostics(ctx, term, anchor_labels, candidate_labels)
        return SamplerOutput(loss=loss, stats=stats)

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        raise NotImplementedError

    # Whether the loop must report each optimizer step's loss (``observe_loss``: a host sync per step).
    follows_loss = False

    def observe_loss(self, loss: float) -> None:
        """After each optimizer step, when ``follows_loss``: the step's loss (over the global batch), for a
        schedule that follows it (the ring's ``anneal=adaptive_loss``)."""

    # Whether the loop must report each evaluation's kNN top-1 during training (``observe_accuracy``).
    follows_accuracy = False

    def observe_accuracy(self, accuracy: float) -> None:
        """After each evaluation during training, when ``follows_accuracy``: its kNN top-1 (%), for a
        schedule that follows it (the ring's ``anneal=adaptive_accuracy``)."""


def class_name(obj: object) -> str:
    """``module.Class`` of ``obj``: how a config's ``_target_`` names it."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def check_term(sampler: NegativeSampler, term: Any, shape: tuple[int, int]) -> None:
    """What ``negative_term`` returned must be a ``NegativeTerm`` with one log mass per anchor and, if set,
    one positive logit per anchor and one weight per (anchor, candidate): a (A, 1) or scalar log mass
    would broadcast against the (A,) positives into a loss that is silently wrong. Shapes only (no host
    sync)."""
    if not isinstance(term, NegativeTerm):
        raise ConfigError(f"sampler._target_={class_name(sampler)!r}: negative_term returned {type(term).__name__}; "
                          "expected cl_suite.samplers.base.NegativeTerm(log_mass=<(A,) log N_a>)")
    if not isinstance(term.log_mass, torch.Tensor) or tuple(term.log_mass.shape) != shape[:1]:
        got = tuple(term.log_mass.shape) if isinstance(term.log_mass, torch.Tensor) else type(term.log_mass).__name__
        raise ConfigError(f"sampler._target_={class_name(sampler)!r}: negative_term returned log_mass of shape {got}; "
                          f"expected {shape[:1]}, one log N_a per anchor")
    if term.positive_logit is not None and (not isinstance(term.positive_logit, torch.Tensor)
                                            or tuple(term.positive_logit.shape) != shape[:1]):
        got = (tuple(term.positive_logit.shape) if isinstance(term.positive_logit, torch.Tensor)
               else type(term.positive_logit).__name__)
        raise ConfigError(f"sampler._target_={class_name(sampler)!r}: negative_term returned positive_logit of shape "
                          f"{got}; expected {shape[:1]}, one logit per anchor, or None")
    if term.weights is not None and tuple(term.weights.shape) != shape:
        raise ConfigError(f"sampler._target_={class_name(sampler)!r}: negative_term returned weights of shape "
                          f"{tuple(term.weights.shape)}; expected {shape} (anchors x candidates) or None")


@torch.no_grad()
def diagnostics(ctx: Contrast, term: NegativeTerm, anchor_labels: torch.Tensor | None,
                candidate_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-step diagnostics as device tensors (no host sync): similarity means and histograms, how many
    negatives the sampler effectively uses, and on labelled data the false-negative rate.

    ``negatives/effective`` is the effective sample size (sum w)^2 / sum w^2 of each anchor's weights,
    averaged over anchors: the candidate count for InfoNCE, the kept count for the ring, fewer for
    peaked HCL weights. ``negatives/false_negative_rate`` is the share of that weight on candidates of
    the anchor's own class (unlabelled anchors and candidates are left out).

    ``instance/top1`` and ``instance/top5`` (%, with ``ctx.rank_positive``): the instance-discrimination
    accuracy MoCo's and MoCHi's code print, the share of anchors whose positive is more similar than every
    candidate, or than all but at most four; over the framework's candidates (the mask), whatever the
    sampler keeps, and without MoCHi's synthetic negatives. A tie goes to the positive.
    """
    mask = ctx.mask.float()
    weights = mask if term.weights is None else term.weights.detach().float() * mask
    total = weights.sum(dim=1)
    ess = total.square() / weights.square().sum(dim=1).clamp(min=1e-30)
    n_candidates = mask.sum(dim=1)
    stats = {
        "sim/positive_mean": ctx.pos_sim.mean(),
        "sim/negative_mean": (ctx.cand_sim * mask).sum() / mask.sum().clamp(min=1),
        "negatives/effective": ess.mean(),
        "negatives/effective_fraction": (ess / n_candidates.clamp(min=1)).mean(),
        # histc ignores values outside [min, max]: masked entries are moved out of range instead of being
        # dropped by boolean indexing (a host sync); the clamp keeps 1 + rounding error in range.
        "hist/positive": torch.histc(ctx.pos_sim.clamp(-1, 1), bins=HISTOGRAM_BINS, min=-1, max=1),
        "hist/negative": torch.histc(torch.where(ctx.mask, ctx.cand_sim.clamp(-1, 1), 2.0), bins=HISTOGRAM_BINS,
                                     min=-1, max=1),
        **{k: v.detach() for k, v in term.extra_stats.items()},
    }
    if ctx.rank_positive:
        outranking = ((ctx.cand_sim > ctx.pos_sim[:, None]) & ctx.mask).sum(dim=1)  # candidates above the positive
        stats["instance/top1"] = (outranking == 0).float().mean() * 100
        stats["instance/top5"] = (outranking < 5).float().mean() * 100
    if anchor_labels is not None and candidate_labels is not None:
        same = (anchor_labels[:, None] == candidate_labels[None, :]) & (anchor_labels[:, None] >= 0)
        known = (candidate_labels[None, :] >= 0) & (anchor_labels[:, None] >= 0)
        labelled_weight = (weights * known).sum()
        stats["negatives/false_negative_rate"] = (weights * same).sum() / labelled_weight.clamp(min=1e-30)
    return stats
