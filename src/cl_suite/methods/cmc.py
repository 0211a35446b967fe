"""Contrastive multiview coding, L / ab views (Tian, Krishnan, Isola, ECCV 2020), with memory banks."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.engine.distributed import gather_no_grad
from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.methods.memory_bank import MemoryBank
from cl_suite.models.heads import mlp
from cl_suite.samplers.base import NegativeSampler

# CIE Lab of sRGB (D65 white). The CMC code rescales L to [-1, 1] and a, b by the ranges sRGB reaches.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_D65_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_LAB_MEAN = torch.tensor([50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2])
_LAB_HALF_RANGE = torch.tensor([50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2])


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (N, 3, H, W) -> CIE Lab (L in [0, 100]), batched, on the input's device."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", _RGB_TO_XYZ.to(rgb), linear) / _D65_WHITE.to(rgb)[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


class CMC(ContrastiveMethod):
    """Two views of one image: its lightness L and its colour ab. An L encoder and an ab encoder (two
    copies of the configured backbone, each behind a 1x1 convolution that maps 1 or 2 input channels to
    the 3 the backbone expects, instead of CMC's half-width networks) embed them; each view has a
    memory bank (one row per image, momentum update as IR). The loss is CMC's two-way cross-view loss:
    L anchors against the ab bank (positive: the image's own ab row; candidates: ``num_negatives``
    drawn rows, own row masked) plus ab anchors against the L bank. The representation is the
    concatenation of both encoders' features (CMC's evaluation).

    The views come from the first augmented RGB view (CMC augments, then splits the channels): the
    normalisation ``mean``/``std`` of the data set (``${dataset.mean}``) is undone before converting.
    ``num_samples`` is the size of the pre-training split; the loop passes it in.
    """

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, num_samples: int, mean: list[float],
                 std: list[float], temperature: float = 0.07,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (), projector_dim: int = 128,
                 num_negatives: int = 4096, bank_momentum: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"method.temperature={temperature} must be > 0")
        if not (isinstance(num_negatives, int) and num_negatives >= 1):
            raise ValueError(f"method.num_negatives={num_negatives} is not allowed: expected an integer >= 1")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"method.mean/std={mean}/{std}: CMC's Lab views need 3-channel RGB statistics")
        self.backbone = backbone  # the L encoder
        self.ab_backbone = copy.deepcopy(backbone)
        self.l_stem, self.ab_stem = nn.Conv2d(1, 3, 1), nn.Conv2d(2, 3, 1)
        head = dict(in_dim=backbone.num_features, hidden_dims=list(projector_hidden_dims), out_dim=projector_dim,
                    batch_norm=False)
        self.l_projector, self.ab_projector = mlp(**head), mlp(**head)
        self.sampler = sampler
        self.temperature, self.num_negatives = float(temperature), num_negatives
        self.register_buffer("rgb_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(std).view(1, 3, 1, 1))
        self.bank_l = MemoryBank(num_samples, projector_dim, bank_momentum)
        self.bank_ab = MemoryBank(num_samples, projector_dim, bank_momentum)
        self._pending = None

    @property
    def num_features(self) -> int:
        return 2 * self.backbone.num_features

    def _lab_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = (images.float() * self.rgb_std + self.rgb_mean).clamp(0, 1)
        lab = (rgb_to_lab(rgb) - _LAB_MEAN.to(rgb)[None, :, None, None]) / _LAB_HALF_RANGE.to(rgb)[None, :, None, None]
        return self.backbone(self.l_stem(lab[:, :1])), self.ab_backbone(self.ab_stem(lab[:, 1:]))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._lab_features(images), dim=1)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor) -> MethodOutput:
        h_l, h_ab = self._lab_features(views[0])
        z_l = F.normalize(self.l_projector(h_l).float(), dim=1)
        z_ab = F.normalize(self.ab_projector(h_ab).float(), dim=1)
        drawn = self.bank_l.draw(self.num_negatives, z_l.device)  # the same rows of both banks
        mask = drawn[None, :] != indices[:, None]  # the image's own rows are never negatives
        common = dict(candidate_mask=mask, temperature=self.temperature, anchor_labels=labels,
                      candidate_labels=self.bank_l.labels[drawn])
        ab_rows, l_rows = self.bank_ab.embeddings, self.bank_l.embeddings
        l_vs_ab = self.sampler(anchors=z_l, positives=ab_rows[indices].clone(), candidates=ab_rows[drawn].clone(),
                               **common)
        ab_vs_l = self.sampler(anchors=z_ab, positives=l_rows[indices].clone(), candidates=l_rows[drawn].clone(),
                               **common)
        if self.training:  # the banks move after the optimizer step
            self._pending = tuple(gather_no_grad(t) for t in (indices, z_l.detach(), z_ab.detach(), labels))
        return MethodOutput(loss=l_vs_ab.loss + ab_vs_l.loss, features=torch.cat([h_l, h_ab], dim=1).detach(),
                            feature_labels=labels, stats=l_vs_ab.stats)

    @torch.no_grad()
    def on_train_step_end(self, step: int, total_steps: int) -> None:
        if self._pending is None:
            return
        indices, z_l, z_ab, labels = self._pending
        self._pending = None
        self.bank_l.update(indices, z_l, labels)
        self.bank_ab.update(indices, z_ab, labels)
