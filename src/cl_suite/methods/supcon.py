"""SupCon: supervised contrastive learning (Khosla et al., NeurIPS 2020)."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad, gather_with_grad, get_rank
from cl_suite.errors import as_written
from cl_suite.losses import in_batch_negatives
from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.queue import FeatureQueue
from cl_suite.methods.simclr import embed_two_views
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature, supervised_contrastive_loss


class SupCon(ContrastiveMethod):
    """Two views of every image as in SimCLR; every other view with the anchor's label is a positive:
    in the global batch (all-gathered with gradients under DDP) and, with ``bank_size > 0``, in a FIFO
    memory bank of detached projections of past batches with their labels (more positives per anchor
    at small batch sizes; 0 = the paper's batch-only loss). With all labels distinct it is SimCLR's
    NT-Xent. Khosla's code also scales the loss by t / base_t (0.07 / 0.07 = 1 in the paper); here the
    loss is the equation as written (``cl_suite.objectives.supervised_contrastive_loss``, L_out). Needs a
    label for every pre-training image.
    """

    needs_labels = True

    def __init__(self, backbone: nn.Module, temperature: float = 0.1,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (2048,), projector_dim: int = 128,
                 projector_batch_norm: bool = True, concat_views: bool = False, bank_size: int = 0):
        super().__init__()
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 0:
            raise ValueError(f"method.bank_size={as_written(bank_size)} is not allowed: expected an integer >= 0 (0 "
                             "= no bank)")
        self.backbone = backbone
        self.temperature = checked_temperature(temperature)
        self.concat_views = concat_views
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)
        self.bank = FeatureQueue(bank_size, projector_dim, key="method.bank_size") if bank_size else None

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        b = views[0].shape[0]
        h, z = embed_two_views(self.backbone, self.projector, views, self.concat_views)
        view_labels = labels.repeat(2)
        candidates, candidate_labels = gather_with_grad(z), gather_no_grad(view_labels)
        mask = in_batch_negatives(2 * b, candidates.shape[0], get_rank() * 2 * b, (0,), z.device)  # not itself
        if self.bank is not None:
            candidates = torch.cat([candidates, self.bank.embeddings])
            candidate_labels = torch.cat([candidate_labels, self.bank.labels])
            mask = torch.cat([mask, self.bank.valid_rows().expand(2 * b, -1)], dim=1)
        loss, positives = supervised_contrastive_loss(z, candidates, view_labels, candidate_labels, mask,
                                                      self.temperature)
        memory = None
        if self.training and self.bank is not None:  # the bank moves after the optimizer step
            memory = (gather_no_grad(z[:b].detach()), gather_no_grad(labels))
        return MethodOutput(loss=loss, features=h.detach(), feature_labels=view_labels,
                            stats={"supcon/positives_per_anchor": positives.detach()}, memory=memory)

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        if memory is not None:
            self.bank.push(*memory)
