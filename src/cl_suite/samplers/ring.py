"""Conditional negatives in a ring: Ring (Wu, Mosse, Zhuang, Yamins, Goodman, "Conditional Negative
Sampling for Contrastive Learning of Visual Representations", ICLR 2021).

The ring of an anchor is defined on its m candidates ranked by descending similarity (rank 0 = the
most similar) by two fractions, the paper's outer fraction u and inner fraction l:

    O = floor(u * m)        the "outer ball": the O closest candidates
    I = floor(l * O)        the hole: the I closest of those
    ring = ranks I .. O-1   (O - I candidates)

Both products are taken in IEEE double precision and truncated, exactly as the Ring code does
(``int(thres_outer * k)``, ``int(thres_inner * outer_size)``): so u = 0.1 over 65,536 queue keys keeps
ranks 655 .. 6552 (5,898 keys), over a 50,000-image bank ranks 500 .. 4999, and u = 0.29 over 100
candidates gives O = 28, not 29 (0.29 * 100 is 28.999999999999996 in double precision). ``inner_fraction = 0`` is the
code's "ball" variant (the O closest, no hole). Selection is by rank: exactly O - I candidates are kept
even when similarities tie. No gradient flows through the selection; the kept logits carry it.

Two estimators of the negative mass (the loss is -log P / (P + N) with the positive P = exp(s+/t)):

* every ring element once (MoCo-Ring, eq. for the conditional NCE with the ring as the support):
  N = sum over the ring of exp(s/t);
* ``num_samples = k``: k ring elements drawn uniformly with replacement per anchor (IR-Ring, whose code
  draws k - 1 = 4,095 of them): N = sum over the draws of exp(s/t).

Neighbour views (``neighbor_views=true``, the Ring code's option of the same name, off in every public
config): the numerator's positive logit p is joined by the anchor's I closest candidates, the ring's hole,
as LSE(p, hole) (``neighbor_aggregate=logsumexp``) or mean(p, hole) (``mean``); the partition keeps the
plain positive, so the loss LSE(p, ring) - LSE(p, hole) pulls the nearest neighbours closer, a
Local-Aggregation-like objective (``ring_neighbor_positive_logit``). The code exposes the choice as
``logsumexp_inner`` but passes ``logsumexp_inner or True``, so it always runs the log-sum-exp form; the
mean is its unreachable branch, offered here as written. The hole needs ``inner_fraction > 0``: the code's
Ball variant takes its neighbours from the ball with a separate fraction, which is not implemented.

The outer fraction can be annealed from 1 (every candidate) down to u, as the code's threshold policies
do, indexed by the optimizer step s with A = int(anneal_epochs * steps_per_epoch) annealing steps
(``anneal_outer_fraction``); the inner fraction stays constant, as in the code. The code's two adaptive
policies move u instead by a metric (``adapt_outer_fraction``), starting from 1, within [u_final, 1]:

* ``anneal=adaptive_loss`` (``adaptive_anneal_on_loss``): after every optimizer step, 0.01 wider when the
  step's loss is above the mean of the previous 10 losses, 0.01 narrower when below (a host sync and,
  under DDP, an all-reduce of the loss per step);
* ``anneal=adaptive_accuracy`` (``adaptive_anneal_on_acc``): after every evaluation during training (the
  kNN monitor's top-1, every ``trainer.eval_every_epochs``; the code validates every epoch), 0.05
  narrower when the accuracy is above the mean of the previous 5, 0.05 wider when below.

Their state (u and the last losses or accuracies) is a buffer: checkpoints restore it.

The rank window, the draws' mapping to ranks and the negative mass are ``ring_borders``,
``ring_selection`` and ``ring_log_mass`` of ``cl_suite.objectives``; this module holds the settings, the
annealing, the random draws and the diagnostics.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from cl_suite.errors import ConfigError, as_written
from cl_suite.objectives import (NEIGHBOR_AGGREGATES, ring_log_mass, ring_neighbor_positive_logit, ring_selection,
                                 ring_width)
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm, config_value

ANNEAL_SCHEDULES = ("linear", "step", "exponential", "adaptive_loss", "adaptive_accuracy")
ANNEAL_START = 1.0  # the code's init_thres: annealing starts from the whole candidate pool
# The code's AdaptiveThresholdPolicy as its system builds it for each flag: (lower_is_better, delta, window).
ADAPTIVE_POLICIES = {"adaptive_loss": (True, 0.01, 10), "adaptive_accuracy": (False, 0.05, 5)}


def adapt_outer_fraction(outer: float, previous: list[float], metric: float, final: float, delta: float,
                         window: int, lower_is_better: bool) -> float:
    """One update of the Ring code's ``AdaptiveThresholdPolicy``: the outer fraction after a new ``metric``,
    given the metrics recorded before it. Against the mean of the last ``window`` of those (numpy's
    mean, as the code), a worse metric (higher loss, lower accuracy) widens the ring by ``delta`` ("make
    the problem easier"), a better one narrows it, an equal one leaves it; then it is clipped to
    [final, 1] (the code's floor is 0.1, its ``min_thres``, whatever ``thres_outer`` says: the same at
    the default u = 0.1). The first metric has nothing before it (the code's mean of nothing is nan,
    and both comparisons are false): no move. The same float operations as the code, so the integer
    borders are the code's."""
    if previous:
        reference = float(np.mean(previous[-window:]))
        worse = metric > reference if lower_is_better else metric < reference
        better = metric < reference if lower_is_better else metric > reference
        if worse:
            outer += delta
        elif better:
            outer -= delta
    return min(ANNEAL_START, max(final, outer))


def anneal_outer_fraction(schedule: str | None, final: float, step: int, anneal_steps: int,
                          step_size: float = 0.1, decay: float = 0.1) -> float:
    """The outer fraction at optimizer step ``step`` (0-based), moving from 1.0 to ``final`` over the first
    ``anneal_steps`` steps and staying at ``final`` afterwards. The values are the Ring code's threshold
    policies, computed with the same floating-point operations (they decide integer borders):

    * ``linear``: the ``anneal_steps`` points of linspace(final, 1, anneal_steps) in reverse order, i.e.
      (anneal_steps - 1 - s) * ((1 - final) / (anneal_steps - 1)) + final, and 1.0 exactly at s = 0;
    * ``step``: the values of arange(final, 1 + step_size, step_size) (numpy's arange: final + i * d with
      d = (final + step_size) - final and ceil((1 + step_size - final) / step_size) values), largest first,
      each held for int(anneal_steps / number of values) steps; with 0.1 steps from 0.1 that is 1.0, 0.9,
      ..., 0.1 (floating-point values such as 0.30000000000000004 included);
    * ``exponential``: (1 - final) exp(-decay s) + final, a decay per step (it is within 1% of ``final``
      after about 50 steps with the default decay 0.1, whatever ``anneal_steps`` is);
    * None: ``final`` throughout.
    """
    if schedule is None or step >= anneal_steps:
        return final
    if schedule == "linear":
        if anneal_steps == 1:
            return final
        index = anneal_steps - 1 - step  # position in the increasing linspace
        return ANNEAL_START if index == anneal_steps - 1 else index * ((ANNEAL_START - final) / (anneal_steps - 1)) + final
    if schedule == "step":
        n_values = math.ceil((ANNEAL_START + step_size - final) / step_size)
        hold = int(anneal_steps / n_values)
        if hold == 0 or step >= n_values * hold:
            return final
        delta = (final + step_size) - final
        return final + (n_values - 1 - step // hold) * delta
    if schedule == "exponential":
        return (ANNEAL_START - final) * math.exp(-decay * step) + final
    raise ValueError(f"sampler.anneal={as_written(schedule)} is not allowed: expected null or one of "
                     f"{', '.join(ANNEAL_SCHEDULES)}")


class RingSampler(NegativeSampler):
    """Keep, per anchor, the candidates in its similarity ring (module docstring: the rank arithmetic, the
    two estimators, the annealing). The paper's defaults u = l = 0.1 (over a queue or bank);
    its SimCLR-Ring uses u = 0.5, l = 0.1. u = 1, l = 0 keeps every candidate (InfoNCE).

    ``num_samples``: None = use every ring element once (MoCo-Ring); k = draw k ring elements uniformly
    with replacement per anchor (IR-Ring: 4,095), from torch's global generator (seeded and checkpointed).
    ``anneal``: None (constant) | ``linear`` | ``step`` | ``exponential`` over ``anneal_epochs`` epochs
    (``anneal_step_size`` for ``step``, ``anneal_decay`` per step for ``exponential``) | ``adaptive_loss``
    | ``adaptive_accuracy`` (the metric-driven policies: module docstring; the loop reports each step's
    loss, ``observe_loss``, or each evaluation's kNN top-1, ``observe_accuracy``).
    ``neighbor_views``: the positive joined by the hole (module docstring), aggregated by
    ``neighbor_aggregate`` (``logsumexp``, what the code always runs, or ``mean``).
    """

    def __init__(self, outer_fraction: float = 0.1, inner_fraction: float = 0.1, num_samples: int | None = None,
                 anneal: str | None = None, anneal_epochs: float = 100.0, anneal_step_size: float = 0.1,
                 anneal_decay: float = 0.1, neighbor_views: bool = False, neighbor_aggregate: str = "logsumexp"):
        super().__init__()
        if not 0.0 < outer_fraction <= 1.0:
            raise ValueError(f"sampler.outer_fraction={outer_fraction} is not allowed: expected a fraction in (0, 1] "
                             "(the share of each anchor's closest candidates inside the ring's outer border)")
        if not 0.0 <= inner_fraction < 1.0:
            raise ValueError(f"sampler.inner_fraction={inner_fraction} is not allowed: expected a fraction in [0, 1) "
                             "(the share of the outer ball left out as the hole; 0 = the ball variant)")
        if num_samples is not None and not (isinstance(num_samples, int) and not isinstance(num_samples, bool)
                                            and num_samples >= 1):
            raise ValueError(f"sampler.num_samples={num_samples} is not allowed: expected null (every ring element "
                             "once) or an integer >= 1 (draws with replacement per anchor)")
        if anneal is not None and anneal not in ANNEAL_SCHEDULES:
            raise ValueError(f"sampler.anneal={as_written(anneal)} is not allowed: expected null (constant) or one of "
                             f"{', '.join(ANNEAL_SCHEDULES)} (the Ring code's threshold policies)")
        if not (math.isfinite(anneal_epochs) and anneal_epochs >= 0):
            raise ValueError(f"sampler.anneal_epochs={anneal_epochs} is not allowed: expected a finite number >= 0")
        if not (math.isfinite(anneal_step_size) and anneal_step_size > 0):
            raise ValueError(f"sampler.anneal_step_size={anneal_step_size} is not allowed: expected a finite number > 0")
        if not (math.isfinite(anneal_decay) and anneal_decay > 0):
            raise ValueError(f"sampler.anneal_decay={anneal_decay} is not allowed: expected a finite number > 0")
        if not isinstance(neighbor_views, bool):
            raise ValueError(f"sampler.neighbor_views={as_written(neighbor_views)} is not allowed: expected true or "
                             "false")
        if neighbor_aggregate not in NEIGHBOR_AGGREGATES:
            raise ValueError(f"sampler.neighbor_aggregate={as_written(neighbor_aggregate)} is not allowed: expected "
                             f"one of {', '.join(NEIGHBOR_AGGREGATES)}")
        if neighbor_views and inner_fraction == 0.0:
            raise ValueError("sampler.neighbor_views=true with sampler.inner_fraction=0.0 is not allowed: the "
                             "neighbours are the ring's hole (the closest floor(l floor(u m)) candidates), and with "
                             "l = 0 there is none; set inner_fraction > 0 (the Ring code's Ball variant, which takes "
                             "them from the ball with a separate fraction, is not implemented)")
        self.outer_fraction = float(outer_fraction)
        self.inner_fraction = float(inner_fraction)
        self.num_samples = num_samples
        self.anneal = anneal
        self.anneal_epochs = float(anneal_epochs)
        self.anneal_step_size = float(anneal_step_size)
        self.anneal_decay = float(anneal_decay)
        self.neighbor_views = neighbor_views
        self.neighbor_aggregate = neighbor_aggregate
        self._checked_counts = False
        if anneal in ADAPTIVE_POLICIES:
            # [u, number of metrics kept, the last `window` metrics oldest first]. The Python list is what the
            # steps read (no device read per step); the buffer, written at each update, is what checkpoints
            # save and restore (only such rings have it: other checkpoints keep their keys).
            self._adaptive_values = [ANNEAL_START] + [0.0] * (1 + ADAPTIVE_POLICIES[anneal][2])
            self.register_buffer("adaptive_state", torch.tensor(self._adaptive_values, dtype=torch.float64))
        if anneal is not None:
            _run_annealed_ring_eagerly()

    @classmethod
    def check_candidates(cls, sampler_cfg, count: int, source: str) -> None:
        """The ring (at its final, narrowest outer fraction: annealing only widens it) must keep at least
        one of the ``count`` candidates: ``ring_width`` >= 1."""
        outer = config_value(cls, sampler_cfg, "outer_fraction")
        inner = config_value(cls, sampler_cfg, "inner_fraction")
        if ring_width(outer, inner, count) < 1:
            raise ConfigError(f"sampler.outer_fraction={outer} and sampler.inner_fraction={inner} keep no negative "
                              f"out of the {count} candidates of {source} (the ring keeps ranks floor(l floor(u m)) "
                              ".. floor(u m) - 1): raise the outer fraction, lower the inner one or use more "
                              "candidates")

    @property
    def follows_loss(self) -> bool:
        """Whether the loop must report each step's loss (``observe_loss``)."""
        return self.anneal == "adaptive_loss"

    @property
    def follows_accuracy(self) -> bool:
        """Whether the loop must report each evaluation's accuracy (``observe_accuracy``)."""
        return self.anneal == "adaptive_accuracy"

    def observe_loss(self, loss: float) -> None:
        """After an optimizer step: move the outer fraction by the step's (global batch) loss."""
        if self.follows_loss:
            self._adapt(float(loss))

    def observe_accuracy(self, accuracy: float) -> None:
        """After an evaluation during training: move the outer fraction by its accuracy."""
        if self.follows_accuracy:
            self._adapt(float(accuracy))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint's adaptive state must be one this policy can have written (a checkpoint is untrusted
        input): finite, u in [outer_fraction, 1], a whole count of at most the window's metrics."""
        state = state_dict.get(prefix + "adaptive_state")
        if self.anneal in ADAPTIVE_POLICIES and isinstance(state, torch.Tensor) and state.shape == (
                self.adaptive_state.shape):
            values = state.detach().double().cpu()
            count = float(values[1])
            window = ADAPTIVE_POLICIES[self.anneal][2]
            if not (bool(torch.isfinite(values).all()) and self.outer_fraction <= float(values[0]) <= ANNEAL_START
                    and count == int(count) and 0 <= count <= window):
                error_msgs.append(f"{prefix}adaptive_state = {values.tolist()} is not a state of sampler.anneal="
                                  f"{self.anneal} (expected finite values, u in [{self.outer_fraction}, 1] and a "
                                  f"count of 0 .. {window} metrics)")
                return
            self._adaptive_values = values.tolist()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _adapt(self, metric: float) -> None:
        lower_is_better, delta, window = ADAPTIVE_POLICIES[self.anneal]
        state = self._adaptive_values
        previous = state[2:2 + int(state[1])]
        outer = adapt_outer_fraction(state[0], previous, metric, self.outer_fraction, delta, window, lower_is_better)
        recent = (previous + [metric])[-window:]
        self._adaptive_values = [outer, float(len(recent)), *recent] + [0.0] * (window - len(recent))
        self.adaptive_state.copy_(torch.tensor(self._adaptive_values, dtype=torch.float64))

    def current_outer_fraction(self) -> float:
        if self.anneal is None:  # not reading the step keeps torch.compile from guarding on it
            return self.outer_fraction
        if self.anneal in ADAPTIVE_POLICIES:
            return self._adaptive_values[0]
        anneal_steps = int(self.anneal_epochs * self.steps_per_epoch)
        return anneal_outer_fraction(self.anneal, self.outer_fraction, self.step, anneal_steps,
                                     self.anneal_step_size, self.anneal_decay)

    def _check_counts(self, counts: torch.Tensor) -> None:
        """One host sync, on the first batch, with the final (narrowest) ring: annealing only widens it."""
        smallest = int(counts.min())
        if ring_width(self.outer_fraction, self.inner_fraction, smallest) < 1:
            raise ValueError(
                f"sampler.outer_fraction={self.outer_fraction} and sampler.inner_fraction={self.inner_fraction} "
                f"keep no negative for an anchor with {smallest} candidates (ranks floor(l floor(u m)) .. "
                f"floor(u m) - 1): raise the outer fraction, lower the inner one or use more candidates "
                "(a larger batch, queue or bank)")
        self._checked_counts = True

    def negative_term(self, ctx: Contrast) -> NegativeTerm:
        if self.anneal is None:
            return self._ring_term(ctx, self.outer_fraction)
        return _eager_annealed_ring_term(self, ctx)

    def _ring_term(self, ctx: Contrast, outer_fraction: float) -> NegativeTerm:
        if not self._checked_counts:
            self._check_counts(ctx.mask.sum(dim=1))
        uniforms = None
        if self.num_samples is not None:
            uniforms = torch.rand(ctx.cand_sim.shape[0], self.num_samples, device=ctx.cand_sim.device,
                                  dtype=torch.float64)
        selection = ring_selection(ctx.cand_sim, ctx.mask, outer_fraction, self.inner_fraction, uniforms)
        log_mass = ring_log_mass(ctx.cand_sim, selection, ctx.temperature)
        positive_logit = None
        if self.neighbor_views:
            positive_logit = ring_neighbor_positive_logit(ctx.pos_sim, ctx.cand_sim, selection, self.inner_fraction,
                                                          ctx.temperature, self.neighbor_aggregate)
        if not ctx.with_diagnostics:  # the weights and stats below are read by the diagnostics only
            return NegativeTerm(log_mass=log_mass, positive_logit=positive_logit)
        if selection.keep is not None:
            weights = torch.zeros_like(ctx.mask).scatter_(1, selection.index, selection.keep).float()
        else:
            weights = torch.zeros_like(ctx.cand_sim, dtype=torch.float32).scatter_add_(
                1, selection.index, torch.ones_like(selection.index, dtype=torch.float32))
        width = (selection.outer - selection.inner).float()
        return NegativeTerm(
            log_mass=log_mass,
            positive_logit=positive_logit,
            weights=weights,
            extra_stats={"ring/kept_fraction": (width / selection.counts.clamp(min=1)).mean(),
                         "ring/width": width.mean(),
                         # torch.full is a device fill; torch.tensor(x, device=cuda) would copy from the host
                         "ring/outer_fraction": torch.full((), outer_fraction, device=ctx.cand_sim.device)},
        )


def _annealed_ring_term(sampler: RingSampler, ctx: Contrast) -> NegativeTerm:
    """The annealed ring runs eagerly: its outer fraction (and with it the top-k size) changes from step
    to step, which under torch.compile would recompile the graph at every step."""
    return sampler._ring_term(ctx, sampler.current_outer_fraction())


_eager_annealed_ring_term = _annealed_ring_term


def _run_annealed_ring_eagerly() -> None:
    """Wrap the annealed term in ``torch.compiler.disable`` once, when the first annealed ring is built:
    the wrapper imports ``torch._dynamo``, 1.8 s of every run's start-up (CPU), which only annealing needs."""
    global _eager_annealed_ring_term
    if _eager_annealed_ring_term is _annealed_ring_term:
        _eager_annealed_ring_term = torch.compiler.disable(_annealed_ring_term)
