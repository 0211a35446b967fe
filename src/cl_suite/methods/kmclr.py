"""KMCLR (mwritescode/nnclr-cifar100, "Beyond Single Instance Positives ..."): NNCLR whose positive is
the nearest prototype of an online k-means over the projections, instead of the nearest of ~10^5 stored
projections (400 vectors instead of 98,304: the reference's headline setting, on par with NNCLR in its
report)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.errors import as_written
from cl_suite.methods.nnclr import LookedUpPositiveCLR
from cl_suite.samplers.base import NegativeSampler

SKLEARN_BATCH_SIZE = 1024  # MiniBatchKMeans' default batch_size (sklearn >= 1.0), which the reference keeps

class OnlineKMeans(nn.Module):
    """Mini-batch k-means with scikit-learn's ``MiniBatchKMeans.partial_fit`` update, on the device.

    State (all buffers, so a checkpoint restores it, counts included: the reference's checkpoints
    restore the centres but not the counts):

    * ``centres`` (K, d) and ``counts`` (K,): a step assigns each point to its nearest centre (Euclidean)
      and moves each centre to the running mean of everything it was ever assigned,
      ``c <- (c n + sum x) / (n + m)``, ``n <- n + m`` (sklearn's count-based step sizes).
    * Random reassignment (sklearn, ``reassignment_ratio``): when a centre has never been assigned
      anything, or once sklearn's counter reaches ``10 K``, centres whose count is below
      ``ratio * max(count)`` jump to random points of the batch (at most half the batch, the lowest
      counts first) and get the smallest remaining count, so they are not reassigned again at once.
      The counter is sklearn's as the reference drives it: each ``partial_fit`` adds sklearn's
      ``_batch_size``, which is fixed at the object's first call (on the K initial points) to
      min(1024, K), whatever the real batch; so with K <= 1024 a reassignment is due on every 10th step
      (K = 400, batch 64: steps 10, 20, ...; counting the real points would make it every 63rd step).
      A reset starts a new counter, as the reference's new ``MiniBatchKMeans`` does.
    * ``recent`` (K, d): a FIFO of the latest projections (the reference's ``init_values``); on every
      ``reset_interval``-th step (1-based, as the reference's step counter: 0-based steps R-1, 2R-1, ...)
      the k-means restarts from it (centres = those points, the current batch included, counts 1: what
      sklearn's k-means++ on K points with K clusters gives), against drift of the embedding space.

    Everything runs on the device with no host synchronisation: the decisions are tensors used in
    ``torch.where``. Deviation: float32 centres (the reference keeps float64 on the CPU).
    """

    def __init__(self, num_prototypes: int, dim: int, reset_interval: int | None, reassignment_ratio: float = 0.01):
        super().__init__()
        if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, int) or num_prototypes < 2:
            raise ValueError(f"method.num_prototypes={as_written(num_prototypes)} is not allowed: expected an "
                             "integer >= 2")
        if reset_interval is not None and (not isinstance(reset_interval, int) or reset_interval < 1):
            raise ValueError(f"reset interval {as_written(reset_interval)} is not allowed: expected an integer >= 1 "
                             "or null")
        if not 0.0 <= reassignment_ratio < 1.0:
            raise ValueError(f"method.reassignment_ratio={reassignment_ratio} is not allowed: expected [0, 1)")
        self.reset_interval = reset_interval
        self.reassignment_ratio = float(reassignment_ratio)
        recent = torch.rand(num_prototypes, dim)  # the reference's uniform [0, 1) initial points
        self.register_buffer("recent", recent)
        self.register_buffer("centres", recent.clone())
        self.register_buffer("counts", torch.ones(num_prototypes, dtype=torch.float64))
        self.register_buffer("since_reassign", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_usage", torch.zeros(num_prototypes), persistent=False)

    @property
    def num_prototypes(self) -> int:
        return self.centres.shape[0]

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest centre (Euclidean, on the raw projections) for each row of ``x``."""
        return torch.cdist(x.float(), self.centres).argmin(dim=1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, step: int) -> None:
        """One ``partial_fit`` on the batch ``x`` (the same on every DDP process: ``x`` is all-gathered) at the
        0-based optimizer ``step``."""
        x = x.float()
        generator = torch.Generator(device=x.device).manual_seed(step)  # the same draws on every process
        self._remember(x, generator)
        if self.reset_interval is not None and (step + 1) % self.reset_interval == 0:
            self.centres.copy_(self.recent)
            self.counts.fill_(1.0)
            self.since_reassign.zero_()
        nearest = self.assign(x)
        k = self.num_prototypes
        added = torch.zeros(k, dtype=self.counts.dtype, device=x.device).index_add_(0, nearest, torch.ones_like(
            nearest, dtype=self.counts.dtype))
        sums = torch.zeros_like(self.centres).index_add_(0, nearest, x)
        total = self.counts + added
        self.centres.copy_(((self.centres * self.counts[:, None].float()) + sums) / total[:, None].float())
        self.counts.copy_(total)
        self.epoch_usage += added.float()
        self._reassign(x, generator)

    def _remember(self, x: torch.Tensor, generator: torch.Generator) -> None:
        k, b = self.num_prototypes, x.shape[0]
        if b < k:
            self.recent.copy_(torch.cat([self.recent[b:], x]))
        else:
            self.recent.copy_(x[torch.randperm(b, generator=generator, device=x.device)[:k]])

    def _reassign(self, x: torch.Tensor, generator: torch.Generator) -> None:
        if self.reassignment_ratio == 0:
            return
        k, b = self.num_prototypes, x.shape[0]
        self.since_reassign += min(SKLEARN_BATCH_SIZE, k)  # sklearn's _batch_size (class docstring)
        due = (self.counts == 0).any() | (self.since_reassign >= 10 * k)
        rank = torch.empty(k, dtype=torch.long, device=x.device)
        rank[self.counts.argsort()] = torch.arange(k, device=x.device)  # 0 = lowest count
        low = (self.counts < self.reassignment_ratio * self.counts.max()) & (rank < max(1, b // 2)) & due
        picks = torch.randperm(b, generator=generator, device=x.device)
        new_centres = x[picks[rank.clamp(max=b - 1)]]  # distinct points for the (at most b/2) low centres
        self.centres.copy_(torch.where(low[:, None], new_centres, self.centres))
        floor = self.counts.masked_fill(low, float("inf")).min()
        self.counts.copy_(torch.where(low, floor, self.counts))
        self.since_reassign.copy_(torch.where(due, 0, self.since_reassign))

    def usage(self) -> dict[str, float]:
        """Cluster usage since the last call (one epoch): prototypes used and the assignment entropy
        (nats; log K when all are used equally). Resets the tally."""
        total = self.epoch_usage.sum()
        if total == 0:
            return {}
        p = self.epoch_usage / total
        entropy = -(p * p.clamp(min=1e-12).log()).sum()
        used = (self.epoch_usage > 0).sum()
        self.epoch_usage.zero_()
        return {"kmeans/prototypes_used": used.item(), "kmeans/usage_entropy": entropy.item(),
                "kmeans/usage_entropy_max": float(torch.log(torch.tensor(float(self.num_prototypes))))}


class KMCLR(LookedUpPositiveCLR):
    """NNCLR's loss (``LookedUpPositiveCLR``) with the nearest k-means prototype as the positive.

    The prototype is assigned on the raw projection before this step's update and normalised in the
    loss. After each optimizer step the k-means takes one step on the all-gathered view-1 projections
    (``OnlineKMeans``). ``reset_interval_epochs`` (3 in the reference) restarts it from the latest
    projections; it is converted to steps with the run's steps per epoch.
    """

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, steps_per_epoch: int, temperature: float = 0.1,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (2048, 2048), projector_dim: int = 256,
                 predictor_hidden_dims: list[int] | tuple[int, ...] = (4096,), num_prototypes: int = 400,
                 reset_interval_epochs: float | None = 3, reassignment_ratio: float = 0.01):
        super().__init__(backbone, sampler, temperature, projector_hidden_dims, projector_dim, predictor_hidden_dims)
        if reset_interval_epochs is not None and not reset_interval_epochs > 0:
            raise ValueError(f"method.reset_interval_epochs={reset_interval_epochs} is not allowed: "
                             "expected a number > 0 or null (never reset)")
        reset = None if reset_interval_epochs is None else max(1, round(reset_interval_epochs * steps_per_epoch))
        self.kmeans = OnlineKMeans(num_prototypes, projector_dim, reset, reassignment_ratio)

    def lookup(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.normalize(self.kmeans.centres[self.kmeans.assign(z)], dim=1), {}

    def update_memory(self, z1: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        self.kmeans.step(z1, step)

    def epoch_diagnostics(self) -> dict[str, float]:
        return self.kmeans.usage()
