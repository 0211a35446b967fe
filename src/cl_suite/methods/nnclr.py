"""NNCLR (Dwibedi et al., ICCV 2021, "With a Little Help from My Friends") and the base it shares with
KMCLR: the positive of a view is looked up in a memory (a support set, or k-means prototypes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.distributed import gather_no_grad, gather_with_grad, get_rank
from cl_suite.errors import as_written
from cl_suite.losses import in_batch_negatives
from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.queue import FeatureQueue
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature, nearest_neighbours
from cl_suite.samplers.base import NegativeSampler


class LookedUpPositiveCLR(ContrastiveMethod):
    """Two views, projections ``z`` and predictions ``p = h(z)``; ``lookup(z)`` gives a constant positive.

    The loss is NNCLR's (Dwibedi et al. 2021, eq. 1) with the prediction head, as the reference
    (mwritescode/nnclr-cifar100, ``src/utils/training/loss.py``) computes it:

        L = 1/2 l(NN(z2), p1) + 1/2 l(NN(z1), p2),
        l(nn, p) = -1/B sum_i log exp(nn_i . p_i / t) / sum_k exp(nn_i . p_k / t)   (unit vectors)

    Row i of ``l`` is a looked-up neighbour; the softmax runs over the predictions of the other view.
    In the sampler interface: anchor = neighbour, positive = p_i, candidates = every other p_k of the
    global batch (all-gathered with gradients under DDP), so DCL/HCL/ring weighting applies here too.
    No gradient reaches the memory (the lookup is a constant); it flows through the predictions only.
    The backbone runs once per view (BN statistics over B images, as in the reference).
    """

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> int:
        """The predictions of the other view's B-1 other images."""
        return batch_size - 1

    @classmethod
    def candidates_source(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> str:
        return f"method={cls.__name__} with trainer.batch_size={batch_size} (the other view's B-1 predictions)"

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, temperature: float,
                 projector_hidden_dims: list[int] | tuple[int, ...], projector_dim: int,
                 predictor_hidden_dims: list[int] | tuple[int, ...]):
        super().__init__()
        self.backbone = backbone
        self.sampler = sampler
        self.temperature = checked_temperature(temperature)
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim, last_batch_norm=True)
        self.predictor = mlp(projector_dim, list(predictor_hidden_dims), projector_dim)

    def lookup(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(n, d) unit-norm positives for the raw projections ``z`` (no grad), and detached stats."""
        raise NotImplementedError

    def update_memory(self, z1: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        """Write the (all-gathered, detached) view-1 projections of a training step into the memory."""
        raise NotImplementedError

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        x1, x2 = views
        h1, h2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(h1).float(), self.projector(h2).float()
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():  # before this step's memory update: a batch is never its own neighbour
            # One lookup for both views: the memory is read once per step.
            neighbours, lookup_stats = self.lookup(torch.cat([z1, z2]).detach(), labels.repeat(2))
            nn1, nn2 = neighbours.chunk(2)
        out1 = self._contrast(nn2, p1, labels)
        out2 = self._contrast(nn1, p2, labels)
        stats = {k: (out1.stats[k] + out2.stats[k]) / 2 for k in out1.stats}
        if self.record_diagnostics:
            stats.update(lookup_stats)
        memory = None
        if self.training:  # the memory is written after the optimizer step, from view 1 (as the reference)
            memory = (gather_no_grad(z1.detach()), gather_no_grad(labels))
        return MethodOutput(loss=(out1.loss + out2.loss) / 2, features=torch.cat([h1, h2]).detach(),
                            feature_labels=labels.repeat(2), stats=stats, memory=memory)

    def _contrast(self, neighbours: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor):
        p = F.normalize(predictions.float(), dim=1)
        candidates = gather_with_grad(p)
        b = p.shape[0]
        mask = in_batch_negatives(b, candidates.shape[0], get_rank() * b, (0,), p.device)  # p_i: the positive
        return self.sampler(anchors=neighbours, positives=p, candidates=candidates, candidate_mask=mask,
                            temperature=self.temperature, anchor_labels=labels,
                            candidate_labels=gather_no_grad(labels))

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        if memory is not None:
            self.update_memory(*memory, step=step)


class SupportSet(FeatureQueue):
    """NNCLR's support set: the FIFO queue of raw projections (``embeddings``, what a checkpoint holds)
    plus ``normalised``, their L2-normalised rows, written for the pushed rows at push time and for every
    row after a state-dict load, so that a lookup does not re-normalise the whole set every step.

    ``normalised`` is a plain tensor attribute, not a buffer: it is derived, so it stays out of the
    checkpoint and out of DDP's per-step buffer broadcast (which already sends ``embeddings``); ``_apply``
    moves it with the module (``.to``, ``.cuda``). A row is normalised on its own (``F.normalize`` over its
    ``dim`` entries), so it gets the bits the whole-set normalisation of the lookup gave it before
    (checked on the CPU by tests/test_diagnostics_cost.py). Rows must be written only through ``push`` or
    ``load_state_dict``: an in-place write to ``embeddings`` would leave ``normalised`` stale.
    """

    def __init__(self, size: int, dim: int, key: str = "method.support_set_size"):
        super().__init__(size, dim, key)
        self.normalised = F.normalize(self.embeddings.float(), dim=1)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.normalised = fn(self.normalised)
        return self

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        start, count = self.ptr.clone(), min(embeddings.shape[0], len(self))
        super().push(embeddings, labels, indices)
        rows = (start + torch.arange(count, device=self.ptr.device)) % len(self)
        self.normalised[rows] = F.normalize(self.embeddings[rows].float(), dim=1).to(self.normalised.dtype)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.normalised = F.normalize(self.embeddings.detach().float(), dim=1).to(self.normalised)


class NNCLR(LookedUpPositiveCLR):
    """The positive is the nearest neighbour (cosine) of the projection in a support set: a FIFO queue of
    raw view-1 projections of past batches (as the reference's ``support_set.py``; the queue is a buffer,
    so it is in the checkpoint). The returned neighbour is the normalised queue row.

    ``neighbours=k > 1``: a neighbour drawn uniformly among the top k (NNCLR sec. 4.5, "sampling from
    the top-k"). Deviation from the reference, which starts from ``randn`` rows (random neighbours
    until the queue has filled): rows
    never written are never neighbours, and before the first write the positive is the view's own
    projection (so the first step is SimCLR with a predictor, not a random target).
    The stat ``nnclr/neighbour_same_class`` is how often the neighbour has the anchor's label. The
    selection NN(z, Q) is ``cl_suite.objectives.nearest_neighbours``.
    """

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, temperature: float = 0.1,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (2048, 2048), projector_dim: int = 256,
                 predictor_hidden_dims: list[int] | tuple[int, ...] = (4096,), support_set_size: int = 98304,
                 neighbours: int = 1):
        super().__init__(backbone, sampler, temperature, projector_hidden_dims, projector_dim, predictor_hidden_dims)
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 1 <= neighbours:
            raise ValueError(f"method.neighbours={as_written(neighbours)} is not allowed: expected an integer >= 1")
        self.support_set = SupportSet(support_set_size, projector_dim, key="method.support_set_size")
        self.neighbours = neighbours

    def lookup(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = F.normalize(z, dim=1)
        support = self.support_set.normalised.float()  # normalised at push time, not every step
        k = min(self.neighbours, len(self.support_set))
        pick = torch.randint(k, (z.shape[0], 1), device=z.device) if k > 1 else None  # one of the top k
        index = nearest_neighbours(z, support, self.support_set.valid_rows(), k, pick)
        empty = self.support_set.filled == 0
        positives = torch.where(empty, z, support[index])
        if not self.record_diagnostics:
            return positives, {}
        same = (self.support_set.labels[index] == labels) & (labels >= 0)
        return positives, {"nnclr/neighbour_same_class": torch.where(empty, 0.0, same.float().mean())}

    def update_memory(self, z1: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        self.support_set.push(z1, labels)
