"""Instance recognition with a memory bank (Wu, Xiong, Yu, Lin, CVPR 2018), the Ring paper's IR base."""
from __future__ import annotations

import torch
from torch import nn

from cl_suite.distributed import gather_no_grad
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, unit_projection
from cl_suite.methods.memory_bank import MemoryBank
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature
from cl_suite.samplers.base import NegativeSampler, config_value


class InstanceRecognition(ContrastiveMethod):
    """Every training image is its own class. A memory bank keeps one normalised embedding per image;
    an anchor's positive is its own (stale) bank row and the loss is the softmax over the positive and
    the candidates (the non-parametric softmax the Ring code uses, not the binary NCE approximation of
    Wu et al. sec. 3.2). The candidates are either

    * ``num_negatives = n``: n bank rows drawn uniformly with replacement for the whole batch, the
      anchor's own row masked out; or
    * ``num_negatives = null``: every bank row, the anchor's own included, as the Ring code's IR-Ring and
      IR-Ball rank the whole bank (the own row is the closest and falls in the ring's hole). With
      ``sampler=ring sampler.num_samples=4095`` this is the authors' estimator: the ring over the whole
      bank, 4,095 negatives resampled from it with replacement. It costs a B x N similarity matrix and
      a top-k per step.

    After each optimizer step the batch's rows move by the bank's momentum rule (``MemoryBank``).

    Uses the first view only (one view per image, as IR). The bank (with the images' labels, for the
    diagnostics) is a buffer: checkpoints restore it. Under DDP every process updates its bank with
    the rows of all processes, so the banks stay identical.
    ``num_samples`` is the size of the pre-training split; the loop passes it in.
    """

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> int | None:
        """``num_negatives`` drawn rows (with replacement: the anchor's own row may be drawn and masked, so
        at most this many), or with ``num_negatives=null`` every row of the bank: the data set's size
        (None until it is known)."""
        drawn = config_value(cls, method_cfg, "num_negatives")
        return dataset_size if drawn is None else drawn

    @classmethod
    def candidates_source(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> str:
        drawn = config_value(cls, method_cfg, "num_negatives")
        if drawn is None:
            return f"method.num_negatives=null (every row of the {dataset_size}-image memory bank)"
        return f"method.num_negatives={drawn}"

    def __init__(
        self,
        backbone: nn.Module,
        sampler: NegativeSampler,
        num_samples: int,
        temperature: float = 0.07,
        projector_hidden_dims: list[int] | tuple[int, ...] = (),
        projector_dim: int = 128,
        projector_batch_norm: bool = False,
        num_negatives: int | None = 4096,
        bank_momentum: float = 0.5,
    ):
        super().__init__()
        if num_negatives is not None and not (isinstance(num_negatives, int) and num_negatives >= 1):
            raise ValueError(f"method.num_negatives={num_negatives} is not allowed: expected an integer >= 1 "
                             "(rows drawn per step) or null (every bank row)")
        self.backbone = backbone
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)
        self.sampler = sampler
        self.temperature = checked_temperature(temperature)
        self.num_negatives = num_negatives
        self.bank = MemoryBank(num_samples, projector_dim, bank_momentum)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor) -> MethodOutput:
        h = self.backbone(views[0])
        q = unit_projection(self.projector, h)
        rows = self.bank.embeddings
        if self.num_negatives is None:
            candidates, mask, candidate_labels = rows, None, self.bank.labels
        else:
            drawn = self.bank.draw(self.num_negatives, q.device)
            mask = drawn[None, :] != indices[:, None]  # the anchor's own row is never a negative
            candidates, candidate_labels = rows[drawn], self.bank.labels[drawn]
        # No copies of the bank: it is written after backward and the optimizer step (after_step);
        # a write before backward would trip autograd's version check rather than pass silently.
        out = self.sampler(anchors=q, positives=rows[indices], candidates=candidates,
                           candidate_mask=mask, temperature=self.temperature, anchor_labels=labels,
                           candidate_labels=candidate_labels)
        memory = None
        if self.training:  # the bank moves after the optimizer step
            memory = (gather_no_grad(indices), gather_no_grad(q.detach()), gather_no_grad(labels))
        return MethodOutput(loss=out.loss, features=h.detach(), feature_labels=labels, stats=out.stats,
                            memory=memory)

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        if memory is not None:
            self.bank.update(*memory)
