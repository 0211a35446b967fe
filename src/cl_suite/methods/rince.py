"""RINCE: Ranking Info Noise Contrastive Estimation (Hoffmann et al., AAAI 2022), the CIFAR-100 setting of
its reference code (boschresearch/rince, branch ``cifar``): a MoCo-style key encoder and a labelled memory
bank, positives in ranks."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad
from cl_suite.errors import as_written
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, unit_projection
from cl_suite.methods.momentum import attach_key_encoder
from cl_suite.methods.queue import FeatureQueue
from cl_suite.models.heads import mlp
from cl_suite.objectives import ranked_infonce_loss

VARIANTS = ("in", "out", "out_in")


class RINCE(ContrastiveMethod):
    """Anchors are the query encoder's view-1 embeddings; the bank holds past keys of the momentum
    encoder with their fine labels (MoCo's queue, ``bank_size`` rows, random with label -1 at start).

    Ranks (the reference's ``get_similar_labels``), with per-rank temperatures t_r = t_min + (1 - s_r)(t_max - t_min)
    (``dynamic_temperature=false``: t_min for every rank; the reference always uses the dynamic one):
      rank 1 (similarity ``rank_similarities[0]``): the own key and bank entries of the same class;
      rank 2 (``rank_similarities[1]``, optional): bank entries of the same superclass (the data set's
      coarse labels, e.g. CIFAR-100's 20 superclasses, or ``class_groups``: lists of class ids).
      ``cumulative_ranks=true`` (the README config of the reference's ``cifar`` branch): rank 2's
      positives are same class plus same superclass; false (its ``imagenet100`` branch): superclass
      siblings only. Either way rank 2's negatives are the other superclasses.
    ``variant``: in (every rank "in"), out, or out_in (rank 1 out, later ranks in; the reference's
    README command for it passes ``--mixed_out_in_log``, which only renames the run: it trains RINCE-in).
    One rank with t_min = t_max is SupCon with a memory bank (the paper's SCL-in/out); with no label
    shared with the bank it is MoCo's InfoNCE. The key encoder is an EMA of the parameters (m=0.99),
    its BN buffers its own, with no shuffle BN by default (as the reference). The loss is
    ``cl_suite.objectives.ranked_infonce_loss``.
    """

    needs_labels = True

    def __init__(self, backbone: nn.Module, num_classes: int | None = None, coarse_of_class: torch.Tensor | None = None,
                 temperature_min: float = 0.1, temperature_max: float = 0.6,
                 rank_similarities: list[float] | tuple[float, ...] = (1.0, 0.75), variant: str = "in",
                 cumulative_ranks: bool = True, class_groups: list[list[int]] | None = None, bank_size: int = 8192,
                 dynamic_temperature: bool = True,
                 momentum: float = 0.99, projector_hidden_dims: list[int] | tuple[int, ...] = (2048,),
                 projector_dim: int = 128, projector_batch_norm: bool = False, shuffle_bn: bool = False):
        if not 0 < temperature_min <= temperature_max:
            raise ValueError(f"method.temperature_min={temperature_min}, method.temperature_max={temperature_max}: "
                             "expected 0 < temperature_min <= temperature_max")
        if variant not in VARIANTS:
            raise ValueError(f"method.variant={variant!r} is not one of {VARIANTS}")
        sims = list(rank_similarities)
        if not (1 <= len(sims) <= 2 and all(0 <= s <= 1 for s in sims) and sims == sorted(set(sims), reverse=True)):
            raise ValueError(f"method.rank_similarities={sims} is not allowed: expected one or two strictly "
                             "decreasing values in [0, 1] (same class, then same superclass), e.g. [1.0, 0.75]")
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 1:
            raise ValueError(f"method.bank_size={as_written(bank_size)} is not allowed: expected an integer >= 1")
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)
        attach_key_encoder(self, momentum, momentum, shuffle_bn)
        self.queue = FeatureQueue(bank_size, projector_dim, key="method.bank_size")
        spread = temperature_max - temperature_min if dynamic_temperature else 0.0
        self.temperatures = [temperature_min + (1 - s) * spread for s in sims]
        self.forms = ["out" if variant == "out" or (variant == "out_in" and r == 0) else "in" for r in range(len(sims))]
        self.cumulative_ranks = cumulative_ranks
        groups = self._group_table(len(sims), class_groups, coarse_of_class)
        if len(sims) == 2 and num_classes is not None and len(groups) != num_classes:
            raise ValueError(f"method.class_groups covers {len(groups)} classes but the data set has {num_classes}")
        self.register_buffer("group_of_class", groups, persistent=False)

    @staticmethod
    def _group_table(num_ranks: int, class_groups, coarse_of_class) -> torch.Tensor:
        if num_ranks == 1:
            return torch.zeros(0, dtype=torch.long)
        if class_groups is not None:
            members = [c for group in class_groups for c in group]
            if sorted(members) != list(range(len(members))):
                raise ValueError(f"method.class_groups={class_groups} is not allowed: every class id 0..C-1 must "
                                 "appear in exactly one group")
            table = torch.empty(len(members), dtype=torch.long)
            for g, group in enumerate(class_groups):
                table[list(group)] = g
            return table
        if coarse_of_class is None:
            raise ValueError("method.rank_similarities has a second rank (same superclass), but the data set has no "
                             "coarse labels: set method.class_groups (lists of class ids, one per superclass) or "
                             "method.rank_similarities=[1.0] (one rank: SupCon with a bank)")
        return coarse_of_class.clone().long()

    def rank_masks(self, labels: torch.Tensor, bank_labels: torch.Tensor) -> list[torch.Tensor]:
        """(n, K) positive masks per rank for anchors with ``labels`` against the bank (-1 = no label)."""
        known = bank_labels[None, :] >= 0
        same = known & (bank_labels[None, :] == labels[:, None])
        if len(self.temperatures) == 1:
            return [same]
        group = self.group_of_class[labels]
        bank_group = self.group_of_class[bank_labels.clamp(min=0)]
        same_group = known & (bank_group[None, :] == group[:, None])
        return [same, same_group if self.cumulative_ranks else same_group & ~same]

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        x1, x2 = views
        h1 = self.backbone(x1)
        q = unit_projection(self.projector, h1)
        k = self.key_encoder(x2)
        bank, bank_labels = self.queue.embeddings, self.queue.labels  # no copy: written after the step, as MoCo
        with torch.autocast(device_type=q.device.type, enabled=False):
            own, bank_logits = (q * k).sum(dim=1), q @ bank.float().T
        masks = self.rank_masks(labels, bank_labels)
        loss = ranked_infonce_loss(own, bank_logits, masks, self.temperatures, self.forms)
        memory = (gather_no_grad(k), gather_no_grad(labels)) if self.training else None  # enqueued after the step
        stats = {f"rince/rank{r + 1}_bank_positives": m.sum(dim=1).float().mean() for r, m in enumerate(masks)}
        return MethodOutput(loss=loss, features=h1.detach(), feature_labels=labels, stats=stats, memory=memory)

    def query_parameters(self):
        return [*self.backbone.parameters(), *self.projector.parameters()]

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        self.key_encoder.update(self.query_parameters(), step, total_steps)
        if memory is not None:
            self.queue.push(*memory)
