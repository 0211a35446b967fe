"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020): two views, in-batch candidate negatives."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad, gather_with_grad, get_rank
from cl_suite.errors import as_written
from cl_suite.losses import in_batch_negatives, two_view_contrast
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, unit_projection
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature
from cl_suite.samplers.base import NegativeSampler, config_value


SIMCLR_FORMS = ("nt_xent", "ring_code", "ring_code_simclr")


class SimCLR(ContrastiveMethod):
    """Candidates are all 2B views of the global batch; the positive of a view is the other view of its
    image. ``form`` picks the anchors and which candidates are negatives:

    * ``nt_xent`` (SimCLR's NT-Xent): both views are anchors; the mask removes the anchor itself and its
      positive, leaving the 2B-2 negatives.
    * ``ring_code`` (the SimCLR and SimCLR-Ring losses of the Ring code, Wu et al. ICLR 2021): only view-1
      embeddings are anchors, and every one of the 2B similarities is a candidate, the anchor's
      self-similarity (1/t, the largest) and its positive included; with the ring sampler they are ranked
      with the rest and normally fall in the hole. The loss is LSE(s+/t, kept candidates) - s+/t with the
      positive prepended, as the code's ``self_negative``.
    * ``ring_code_simclr`` (the Ring code's SimCLR baseline, its class ``SimCLR``): view-1 anchors, and
      the partition is the LSE over the 2B similarities, which hold the positive once and the
      self-similarity: the candidates are the 2B views but the anchor's positive (it is the numerator),
      so with the uniform sampler the loss is the code's LSE_j(q_i . [q; k]_j / t) - s+/t exactly.
      (``ring_code`` with every candidate kept counts the positive twice, as SimCLRRing does.)

    Under DDP the candidates are all-gathered with gradients, so W processes x B/W images give the loss
    and gradients of one process x B images.

    ``concat_views``: one backbone call on both views (BN statistics over 2B images, as in the SimCLR
    TF code) or one call per view (over B images, as DCL/HCL/NNCLR do). The choice changes results.
    """

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> int:
        """2B-2 in-batch views (nt_xent); all 2B views with ``form=ring_code``, 2B-1 with ``ring_code_simclr``."""
        form = config_value(cls, method_cfg, "form")
        return {"ring_code": 2 * batch_size, "ring_code_simclr": 2 * batch_size - 1}.get(form, 2 * batch_size - 2)

    @classmethod
    def candidates_source(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> str:
        form = config_value(cls, method_cfg, "form")
        if form == "ring_code":
            return f"method={cls.__name__} (form=ring_code) with trainer.batch_size={batch_size} (all 2B views)"
        if form == "ring_code_simclr":
            return (f"method={cls.__name__} (form=ring_code_simclr) with trainer.batch_size={batch_size} (the 2B "
                    "views but the positive)")
        return f"method={cls.__name__} with trainer.batch_size={batch_size} (2B-2 in-batch views)"

    def __init__(
        self,
        backbone: nn.Module,
        sampler: NegativeSampler,
        temperature: float = 0.5,
        projector_hidden_dims: list[int] | tuple[int, ...] = (2048,),
        projector_dim: int = 128,
        projector_batch_norm: bool = True,
        concat_views: bool = False,
        form: str = "nt_xent",
    ):
        super().__init__()
        if form not in SIMCLR_FORMS:
            raise ValueError(f"method.form={as_written(form)} is not allowed: expected one of "
                             f"{', '.join(SIMCLR_FORMS)}")
        self.form = form
        self.backbone = backbone
        self.sampler = sampler
        self.temperature = checked_temperature(temperature)
        self.concat_views = concat_views
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor | None = None) -> MethodOutput:
        b = views[0].shape[0]
        h, z = embed_two_views(self.backbone, self.projector, views, self.concat_views)

        if self.form in ("ring_code", "ring_code_simclr"):
            view_labels = labels.repeat(2)
            candidates = gather_with_grad(z)  # rank-major, each rank's block laid out like z: [view 1; view 2]
            mask = None
            if self.form == "ring_code_simclr":  # anchor i's positive: this rank's view-2 row i
                mask = in_batch_negatives(b, candidates.shape[0], get_rank() * 2 * b + b, (0,), z.device)
            out = self.sampler(anchors=z[:b], positives=z[b:], candidates=candidates, candidate_mask=mask,
                               temperature=self.temperature, anchor_labels=labels,
                               candidate_labels=gather_no_grad(view_labels),
                               rank_positive=False)  # the anchor itself is a candidate here
            return MethodOutput(loss=out.loss, features=h.detach(), feature_labels=view_labels, stats=out.stats)
        out = two_view_contrast(z, self.sampler, self.temperature, labels)  # NT-Xent's layout (cl_suite.losses)
        return MethodOutput(loss=out.loss, features=h.detach(), feature_labels=labels.repeat(2), stats=out.stats)


def embed_two_views(backbone: nn.Module, projector: nn.Module, views: tuple[torch.Tensor, torch.Tensor],
                    concat_views: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features ``h`` and unit-norm fp32 projections ``z`` of both views, (2b, .) each, view-1
    rows first. ``concat_views``: one backbone call on both views (BN statistics over 2b images)."""
    x1, x2 = views
    h = backbone(torch.cat([x1, x2])) if concat_views else torch.cat([backbone(x1), backbone(x2)])
    return h, unit_projection(projector, h)
