"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): momentum key encoder + FIFO queue."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad
from cl_suite.errors import as_written
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, unit_projection
from cl_suite.methods.momentum import attach_key_encoder
from cl_suite.methods.queue import FeatureQueue
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature
from cl_suite.samplers.base import NegativeSampler, config_value


class MoCo(ContrastiveMethod):
    """Anchors are the query view's embeddings; the positive is the momentum encoder's key of the other
    view; the candidates are a FIFO queue of past keys (with their labels, for the diagnostics, and the
    data set indices of their images).

    The key encoder (backbone + projector) is an exponential moving average of the query encoder's
    parameters, ``key = m key + (1 - m) query`` after every optimizer step, with m rising from
    ``momentum`` to ``momentum_final`` on a cosine schedule (BYOL's schedule; equal values = constant
    MoCo momentum). Its BatchNorm buffers are its own (updated by its forward passes in train mode), as
    in MoCo. Under DDP the key batch is shuffled across processes before the key encoder (shuffle BN,
    MoCo sec. 3.3): otherwise BN statistics leak which key belongs to which query. The queue holds the
    all-gathered keys of every process (with their labels and indices), so all processes keep the same
    queue. Queue, labels, indices and pointer are buffers: a checkpoint restores them. ``symmetric``:
    also use view 2 as query against view 1's key and average the two losses (MoCo v3 style).

    ``queue_per_view`` (needs ``symmetric``): two queues of ``queue_size`` keys, ``queues[0]`` of view-1
    keys and ``queues[1]`` of view-2 keys, as solo-learn's mocov2plus (its ``queue`` of shape (2, dim,
    K)): q1 meets its positive k2 among past view-2 keys, q2 meets k1 among past view-1 keys, so a
    query's positive and negatives are keys of the same view. After the step each view's all-gathered
    keys go into its own queue (one pointer in solo-learn; here two that move together). Off: one queue
    that receives both views' keys (2B rows a step, view 2's then view 1's) and serves both directions.
    Either way each anchor meets ``queue_size`` keys. The state dicts differ (``queues.0.*``,
    ``queues.1.*`` instead of ``queue.*``), so a checkpoint of the other layout is refused at load.

    ``mask_same_image``: drop the queue entries computed from the anchor's own image (same data set
    index) from that anchor's candidates. A key of an image stays in the queue for ``queue_size /
    batch_size`` steps, so with a queue near the data set size, or across epochs, an anchor can meet an
    older key of itself: a positive counted as a negative, and for MoCHi hard negative mixing
    (Kalantidis et al., NeurIPS 2020) almost surely among its hardest negatives, i.e. mixed into its
    synthetic negatives. The mask removes these entries from the negative sum of the loss and from the
    hardest set alike, as the davidsvy/hard-negative-mixing implementation of MoCHi does (it sets their
    logits to -inf before choosing the hardest negatives). Off by default: plain MoCo (He et al.) keeps
    every queue entry as a negative. This step's own keys are the positives and are not yet in the
    queue, so only older keys are affected; rows never written (index -1) are never masked.
    """

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> int:
        """The queue: ``queue_size`` past keys."""
        return config_value(cls, method_cfg, "queue_size")

    @classmethod
    def candidates_source(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> str:
        return f"method.queue_size={config_value(cls, method_cfg, 'queue_size')}"

    def __init__(
        self,
        backbone: nn.Module,
        sampler: NegativeSampler,
        temperature: float = 0.2,
        projector_hidden_dims: list[int] | tuple[int, ...] = (2048,),
        projector_dim: int = 128,
        projector_batch_norm: bool = False,
        queue_size: int = 4096,
        momentum: float = 0.99,
        momentum_final: float = 0.99,
        symmetric: bool = False,
        shuffle_bn: bool = True,
        mask_same_image: bool = False,
        queue_per_view: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)
        attach_key_encoder(self, momentum, momentum_final, shuffle_bn)
        self.sampler = sampler
        self.temperature = checked_temperature(temperature)
        self.symmetric = symmetric
        if not isinstance(mask_same_image, bool):
            raise ValueError(f"method.mask_same_image={as_written(mask_same_image)} is not allowed: expected true "
                             "or false")
        self.mask_same_image = mask_same_image
        if not isinstance(queue_per_view, bool):
            raise ValueError(f"method.queue_per_view={as_written(queue_per_view)} is not allowed: expected true or "
                             "false")
        if queue_per_view and not symmetric:
            raise ValueError("method.queue_per_view=true is not allowed with method.symmetric=false: one queue per "
                             "query view (solo-learn's mocov2plus) needs both views as queries; set "
                             "method.symmetric=true, or method.queue_per_view=false (one queue)")
        self.queue_per_view = queue_per_view
        if queue_per_view:  # queues[v]: keys of view v + 1 (solo-learn's queue[v])
            self.queues = nn.ModuleList([FeatureQueue(queue_size, projector_dim) for _ in range(2)])
        else:
            self.queue = FeatureQueue(queue_size, projector_dim)

    def key_parameters(self):
        return list(self.key_encoder.parameters())

    def query_parameters(self):
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_encoder(x)

    def queue_for(self, query_view: int) -> FeatureQueue:
        """The queue whose keys the queries of view ``query_view`` (0 or 1) meet: the shared queue, or
        with ``queue_per_view`` the other view's, the view of their positive (solo-learn's mocov2plus)."""
        return self.queues[1 - query_view] if self.queue_per_view else self.queue

    def candidate_mask(self, indices: torch.Tensor | None, queue: FeatureQueue | None = None) -> torch.Tensor | None:
        """(A, K) bool, False on the rows of ``queue`` (default: view 1's queries' queue) of each anchor's
        own image (``mask_same_image``); None (every row a candidate) when masking is off."""
        if not self.mask_same_image:
            return None
        if indices is None:
            raise ValueError("method.mask_same_image=true needs the data set index of every image in the batch "
                             "(forward(views, labels, indices)); none was given")
        queue = self.queue_for(0) if queue is None else queue
        return queue.indices[None, :] != indices.to(queue.indices.device)[:, None]

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        x1, x2 = views
        h1 = self.backbone(x1)
        q1 = unit_projection(self.projector, h1)
        k2 = self.keys(x2)
        # The queue itself, not a copy: this step's keys are pushed after backward and the optimizer step
        # (after_step), so the loss sees the queue as it was; a write before backward would trip
        # autograd's version check rather than pass silently.
        queue = self.queue_for(0)
        candidates, candidate_labels = queue.embeddings, queue.labels
        mask = self.candidate_mask(indices, queue)  # both views of an image share its index: one mask per queue
        out = self.sampler(anchors=q1, positives=k2, candidates=candidates, candidate_mask=mask,
                           temperature=self.temperature, anchor_labels=labels, candidate_labels=candidate_labels)
        loss, stats, features, keys = out.loss, out.stats, h1, k2
        key_labels, key_indices = labels, indices
        if self.symmetric:
            h2 = self.backbone(x2)
            q2 = unit_projection(self.projector, h2)
            k1 = self.keys(x1)
            if self.queue_per_view:  # q2 meets past view-1 keys
                queue = self.queue_for(1)
                candidates, candidate_labels = queue.embeddings, queue.labels
                mask = self.candidate_mask(indices, queue)
            out2 = self.sampler(anchors=q2, positives=k1, candidates=candidates, candidate_mask=mask,
                                temperature=self.temperature, anchor_labels=labels,
                                candidate_labels=candidate_labels)
            loss = (loss + out2.loss) / 2
            features = torch.cat([h1, h2])
            if self.queue_per_view:  # (n, 2, dim): image i's view-1 and view-2 keys, one label and index each
                keys = torch.stack([k1, k2], dim=1)
            else:
                keys = torch.cat([k2, k1])
                key_labels = labels.repeat(2)
                key_indices = None if indices is None else indices.repeat(2)
            labels = labels.repeat(2)
        memory = None
        if self.training:  # enqueued after the optimizer step (after_step), so the loss saw the old queue
            if key_indices is None:
                key_indices = torch.full_like(key_labels, -1)
            # Labels and indices travel in one all-gather: (n, 2) rows, rank-major like the keys.
            tags = gather_no_grad(torch.stack([key_labels, key_indices.to(key_labels)], dim=1))
            memory = (gather_no_grad(keys), tags[:, 0], tags[:, 1])
        return MethodOutput(loss=loss, features=features.detach(), feature_labels=labels, stats=stats,
                            memory=memory)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return self.key_encoder.momentum_at(step, total_steps)

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        self.key_encoder.update(self.query_parameters(), step, total_steps)
        if memory is None:
            return
        if self.queue_per_view:  # each view's all-gathered keys into its own queue, at the same pointer
            keys, labels, indices = memory
            for view, queue in enumerate(self.queues):
                queue.push(keys[:, view], labels, indices)
        else:
            self.queue.push(*memory)
