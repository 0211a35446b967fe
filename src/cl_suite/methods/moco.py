"""MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): momentum key encoder + FIFO queue."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad
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
            raise ValueError(f"method.mask_same_image={mask_same_image!r} is not allowed: expected true or false")
        self.mask_same_image = mask_same_image
        self.queue = FeatureQueue(queue_size, projector_dim)

    def key_parameters(self):
        return list(self.key_encoder.parameters())

    def query_parameters(self):
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_encoder(x)

    def candidate_mask(self, indices: torch.Tensor | None) -> torch.Tensor | None:
        """(A, K) bool, False on the queue rows of each anchor's own image (``mask_same_image``); None
        (every row a candidate) when masking is off."""
        if not self.mask_same_image:
            return None
        if indices is None:
            raise ValueError("method.mask_same_image=true needs the data set index of every image in the batch "
                             "(forward(views, labels, indices)); none was given")
        return self.queue.indices[None, :] != indices.to(self.queue.indices.device)[:, None]

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        x1, x2 = views
        h1 = self.backbone(x1)
        q1 = unit_projection(self.projector, h1)
        k2 = self.keys(x2)
        # The queue itself, not a copy: this step's keys are pushed after backward and the optimizer step
        # (after_step), so the loss sees the queue as it was; a write before backward would trip
        # autograd's version check rather than pass silently.
        candidates, candidate_labels = self.queue.embeddings, self.queue.labels
        mask = self.candidate_mask(indices)  # both views of an image share its index: one mask serves both
        out = self.sampler(anchors=q1, positives=k2, candidates=candidates, candidate_mask=mask,
                           temperature=self.temperature, anchor_labels=labels, candidate_labels=candidate_labels)
        loss, stats, features, keys = out.loss, out.stats, h1, k2
        key_indices = indices
        if self.symmetric:
            h2 = self.backbone(x2)
            q2 = unit_projection(self.projector, h2)
            k1 = self.keys(x1)
            out2 = self.sampler(anchors=q2, positives=k1, candidates=candidates, candidate_mask=mask,
                                temperature=self.temperature, anchor_labels=labels,
                                candidate_labels=candidate_labels)
            loss = (loss + out2.loss) / 2
            features, keys = torch.cat([h1, h2]), torch.cat([k2, k1])
            labels = labels.repeat(2)
            key_indices = None if indices is None else indices.repeat(2)
        memory = None
        if self.training:  # enqueued after the optimizer step (after_step), so the loss saw the old queue
            if key_indices is None:
                key_indices = torch.full_like(labels, -1)
            # Labels and indices travel in one all-gather: (n, 2) rows, rank-major like the keys.
            tags = gather_no_grad(torch.stack([labels, key_indices.to(labels)], dim=1))
            memory = (gather_no_grad(keys), tags[:, 0], tags[:, 1])
        return MethodOutput(loss=loss, features=features.detach(), feature_labels=labels, stats=stats,
                            memory=memory)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return self.key_encoder.momentum_at(step, total_steps)

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        self.key_encoder.update(self.query_parameters(), step, total_steps)
        if memory is not None:
            self.queue.push(*memory)
