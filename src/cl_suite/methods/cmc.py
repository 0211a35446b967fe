"""Contrastive multiview coding, L / ab views (Tian, Krishnan, Isola, ECCV 2020), with memory banks.

Two criteria over the same drawn bank rows: the softmax (InfoNCE) form through the configured sampler,
and CMC's NCE loss (``cmc_nce_loss``, ``cmc_nce_log_z``), a binary classifier of data against noise.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.distributed import gather_no_grad
from cl_suite.errors import as_written
from cl_suite.methods.base import ContrastiveMethod, MethodOutput, unit_projection
from cl_suite.methods.memory_bank import MemoryBank
from cl_suite.models.heads import mlp
from cl_suite.objectives import checked_temperature
from cl_suite.samplers.base import Contrast, NegativeSampler, NegativeTerm, config_value, diagnostics
from cl_suite.samplers.uniform import UniformSampler

CRITERIA = ("softmax", "nce")
NCE_EPS = 1e-7  # CMC's NCE criterion adds it to both denominators (cmc_nce_loss)

# CIE Lab of sRGB as the CMC code gets it (``skimage.color.rgb2lab`` in its dataset.py): skimage's
# ``xyz_from_rgb`` and its D65 (2 degree) white point, which is not the RGB matrix's own white (its row
# sums, 0.950456 / 1 / 1.088754, OpenCV's), so pure white has a = -0.0025 there, as here. The CMC code
# rescales L to [-1, 1] and a, b by the ranges sRGB reaches.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_LAB_MEAN = torch.tensor([50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2])
_LAB_HALF_RANGE = torch.tensor([50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2])


def rgb_to_lab(rgb: torch.Tensor, rgb_to_xyz: torch.Tensor | None = None,
               white: torch.Tensor | None = None) -> torch.Tensor:
    """sRGB in [0, 1], (N, 3, H, W) -> CIE Lab (L in [0, 100]), batched, on the input's device.
    ``rgb_to_xyz``, ``white``: the constants already on that device (CMC keeps them as buffers, so a step
    copies nothing from the host); None: the module's CPU constants, copied over."""
    rgb_to_xyz = (_RGB_TO_XYZ if rgb_to_xyz is None else rgb_to_xyz).to(rgb)
    white = (_D65_WHITE if white is None else white).to(rgb)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", rgb_to_xyz, linear) / white[None, :, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


@torch.no_grad()
def cmc_nce_log_z(logits: torch.Tensor, num_samples: int) -> torch.Tensor:
    """log Z for CMC's NCE loss: ``Z = N * mean(exp(logits))`` over every entry of ``logits`` (the
    positives and the noise rows of all anchors) and, under DDP, of every process, so each process gets
    the same number. ``logits`` are s / T; the result is a constant (no gradient), as in CMC."""
    flat = logits.detach().flatten()
    local = torch.stack([torch.logsumexp(flat, dim=0), flat.new_tensor(float(flat.numel())).log()])
    log_sum_exp, log_count = gather_no_grad(local).view(-1, 2).unbind(dim=1)
    return torch.logsumexp(log_sum_exp, dim=0) - torch.logsumexp(log_count, dim=0) + math.log(num_samples)


def cmc_nce_loss(logits: torch.Tensor, log_z: torch.Tensor | float, num_samples: int) -> torch.Tensor:
    """CMC's NCE loss for one direction (Tian, Krishnan, Isola, ECCV 2020: the contrastive loss over a
    memory bank approximated by noise-contrastive estimation), with the binary NCE posterior of Wu et al.
    (CVPR 2018, sec. 3.2). ``logits`` (A, 1 + m): s / T of each anchor against its positive (column 0)
    and its m noise rows; ``log_z`` the fixed normaliser. With P(i|v) = exp(s/T) / Z and the uniform
    noise distribution Pn = 1/N over the N bank rows:

        h(i, v) = P(D=1 | i, v) = P(i|v) / (P(i|v) + m Pn)
        loss = -(1/A) sum_a [ log h(a+, a) + sum_k log(1 - h(k, a)) ]
             = -(1/A) sum_a [ log P(a+|a) / (P(a+|a) + m Pn + eps) + sum_k log m Pn / (P(k|a) + m Pn + eps) ]

    eps = ``NCE_EPS`` (1e-7) in both denominators and not in the noise numerator, as CMC. Evaluated in
    log space, ``log P = s/T - log Z``: the same number, without overflowing exp(s/T) at small T.
    """
    m = logits.shape[1] - 1
    noise_mass = m / num_samples  # m Pn
    log_c = math.log(noise_mass + NCE_EPS)
    log_p = logits - log_z
    log_h_positive = -F.softplus(log_c - log_p[:, 0])
    log_h_noise = math.log(noise_mass) - log_c - F.softplus(log_p[:, 1:] - log_c)
    return -(log_h_positive.sum() + log_h_noise.sum()) / logits.shape[0]


class CMC(ContrastiveMethod):
    """Two views of one image: its lightness L and its colour ab. An L encoder and an ab encoder (two
    copies of the configured backbone, each behind a 1x1 convolution that maps 1 or 2 input channels to
    the 3 the backbone expects, instead of CMC's half-width networks) embed them; each view has a
    memory bank (one row per image, momentum update as IR). The loss is CMC's two-way cross-view loss:
    L anchors against the ab bank (positive: the image's own ab row) plus ab anchors against the L bank,
    summed. The representation is the concatenation of both encoders' features (CMC's evaluation).

    ``num_negatives`` bank rows are drawn uniformly with replacement once per step and shared by every
    anchor and both directions (the same row indices of both banks). ``criterion`` picks the loss:

    - ``softmax`` (default): the configured sampler's loss over the drawn rows, the anchor's own row
      masked out of its candidates (with ``sampler=uniform``: CMC's softmax form).
    - ``nce``: CMC's NCE loss (``cmc_nce_loss``): P(i|v) = exp(s/T) / Z, h = P / (P + m Pn + eps) with
      m = ``num_negatives`` noise rows, Pn = 1/N (N = ``num_samples``), eps = 1e-7. Each direction has
      its own normaliser, Z_l for the L anchors (against the ab bank) and Z_ab for the ab anchors: on
      the first training step Z = N * mean(exp(s/T)) over that step's positive and noise scores (of all
      processes under DDP), the Monte Carlo estimate of Wu et al. (sec. 3.2), then fixed for the rest of
      training. Z_l and Z_ab are buffers (``z_l``, ``z_ab``; -1 until set), so a checkpoint keeps them.
      The noise rows are draws from Pn over the whole bank: an anchor's own row drawn as noise stays a
      noise sample (not masked), as NCE's noise distribution and CMC have it. Unlike CMC, which draws
      m rows per anchor, the m rows are shared by the batch, as in the softmax form; each anchor's loss
      is still over m independent uniform draws. The sampler only supplies the diagnostics here, so it
      must be ``sampler=uniform``. An evaluation-mode call before the first training step normalises by
      its own batch's estimate and keeps nothing.

    The views come from the first augmented RGB view (CMC augments, then splits the channels): the
    normalisation ``mean``/``std`` of the data set (``${dataset.mean}``) is undone before converting.
    ``num_samples`` is the size of the pre-training split; the loop passes it in.
    """

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> int:
        """``num_negatives`` rows drawn from the other view's bank (with replacement: the anchor's own row
        may be drawn and masked, so at most this many)."""
        return config_value(cls, method_cfg, "num_negatives")

    @classmethod
    def candidates_source(cls, method_cfg, batch_size: int, dataset_size: int | None = None) -> str:
        return f"method.num_negatives={config_value(cls, method_cfg, 'num_negatives')}"

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, num_samples: int, mean: list[float],
                 std: list[float], temperature: float = 0.07,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (), projector_dim: int = 128,
                 num_negatives: int = 4096, bank_momentum: float = 0.5,
                 criterion: Literal["softmax", "nce"] = "softmax"):
        super().__init__()
        if criterion not in CRITERIA:
            raise ValueError(f"method.criterion={as_written(criterion)} is not allowed: expected one of "
                             f"{', '.join(CRITERIA)}")
        if criterion == "nce" and not isinstance(sampler, UniformSampler):
            kind = type(sampler).__name__
            raise ValueError(f"method.criterion=nce cannot be used with sampler={kind.removesuffix('Sampler').lower()} "
                             f"({kind}): CMC's NCE loss scores the positive and the drawn noise rows itself "
                             "(binary noise-contrastive estimation, Pn = 1/N), there is no negative term for a "
                             "sampler to shape; allowed: sampler=uniform with method.criterion=nce, or "
                             "method.criterion=softmax")
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
        self.temperature, self.num_negatives = checked_temperature(temperature), num_negatives
        self.register_buffer("rgb_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("rgb_std", torch.tensor(std).view(1, 3, 1, 1))
        # The Lab constants on the model's device, so that a step copies nothing from the host; not
        # persistent: they are constants, not state (the checkpoint keys stay as they were).
        for name, value in (("rgb_to_xyz", _RGB_TO_XYZ), ("d65_white", _D65_WHITE), ("lab_mean", _LAB_MEAN),
                            ("lab_half_range", _LAB_HALF_RANGE)):
            self.register_buffer(name, value.clone(), persistent=False)
        self.bank_l = MemoryBank(num_samples, projector_dim, bank_momentum)
        self.bank_ab = MemoryBank(num_samples, projector_dim, bank_momentum)
        self.criterion = criterion
        if criterion == "nce":  # only then: a softmax run's state_dict keeps its keys
            self.register_buffer("z_l", torch.tensor(-1.0, dtype=torch.float64))
            self.register_buffer("z_ab", torch.tensor(-1.0, dtype=torch.float64))
        self._z_known = False  # a cache of "z_l and z_ab are set", so that the check syncs once

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._z_known = False

    @property
    def num_features(self) -> int:
        return 2 * self.backbone.num_features

    def _lab_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = (images.float() * self.rgb_std + self.rgb_mean).clamp(0, 1)
        lab = rgb_to_lab(rgb, self.rgb_to_xyz, self.d65_white)
        lab = (lab - self.lab_mean.to(rgb)[None, :, None, None]) / self.lab_half_range.to(rgb)[None, :, None, None]
        return self.backbone(self.l_stem(lab[:, :1])), self.ab_backbone(self.ab_stem(lab[:, 1:]))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._lab_features(images), dim=1)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                indices: torch.Tensor) -> MethodOutput:
        h_l, h_ab = self._lab_features(views[0])
        z_l = unit_projection(self.l_projector, h_l)
        z_ab = unit_projection(self.ab_projector, h_ab)
        drawn = self.bank_l.draw(self.num_negatives, z_l.device)  # the same rows of both banks
        if self.criterion == "nce":
            loss, stats = self._nce(z_l, z_ab, indices, drawn, labels)
        else:
            ab_rows, l_rows = self.bank_ab.embeddings, self.bank_l.embeddings
            mask = drawn[None, :] != indices[:, None]  # the image's own rows are never negatives
            common = dict(candidate_mask=mask, temperature=self.temperature, anchor_labels=labels,
                          candidate_labels=self.bank_l.labels[drawn])
            l_vs_ab = self.sampler(anchors=z_l, positives=ab_rows[indices],
                                   candidates=ab_rows[drawn], **common)
            ab_vs_l = self.sampler(anchors=z_ab, positives=l_rows[indices],
                                   candidates=l_rows[drawn], **common)
            loss, stats = l_vs_ab.loss + ab_vs_l.loss, l_vs_ab.stats
        memory = None
        if self.training:  # the banks move after the optimizer step
            memory = tuple(gather_no_grad(t) for t in (indices, z_l.detach(), z_ab.detach(), labels))
        return MethodOutput(loss=loss, features=torch.cat([h_l, h_ab], dim=1).detach(), feature_labels=labels,
                            stats=stats, memory=memory)

    def _nce(self, z_l: torch.Tensor, z_ab: torch.Tensor, indices: torch.Tensor, drawn: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both directions of CMC's NCE loss, summed; the sampler's diagnostics of the L direction."""
        n = len(self.bank_l)
        with torch.autocast(device_type=z_l.device.type, enabled=False):
            sims = {}
            for view, anchors, bank in (("l", z_l, self.bank_ab), ("ab", z_ab, self.bank_l)):
                positives, noise = bank.embeddings[indices], bank.embeddings[drawn]
                sims[view] = ((anchors * positives).sum(dim=1), anchors @ noise.T, noise)
            logits = {view: torch.cat([pos[:, None], neg], dim=1) / self.temperature
                      for view, (pos, neg, _) in sims.items()}
            if not self._z_known:
                self._z_known = bool((self.z_l > 0) & (self.z_ab > 0))  # once per run (and after a load)
            if self._z_known:
                log_z = {"l": self.z_l.log(), "ab": self.z_ab.log()}
            else:
                log_z = {view: cmc_nce_log_z(x, n).double() for view, x in logits.items()}
                if self.training:
                    self.z_l.copy_(log_z["l"].exp())
                    self.z_ab.copy_(log_z["ab"].exp())
                    self._z_known = True
            log_z = {view: value.to(logits[view].dtype) for view, value in log_z.items()}
            losses = {view: cmc_nce_loss(x, log_z[view], n) for view, x in logits.items()}
        if not self.record_diagnostics:
            return losses["l"] + losses["ab"], {}
        pos_sim, cand_sim, noise = sims["l"]
        # Every drawn row is a noise sample (the own row included), so the diagnostics mask nothing.
        ctx = Contrast(z_l.detach(), noise, pos_sim.detach(), cand_sim.detach(),
                       torch.ones_like(cand_sim, dtype=torch.bool), self.temperature)
        extra = {f"nce/{key}_{view}": value.detach() for view in logits for key, value in (
            ("loss", losses[view]), ("log_z", log_z[view]),
            ("p_positive", (logits[view][:, 0] - log_z[view]).exp().mean()))}
        # log_mass is not read by the diagnostics; the InfoNCE mass of the noise rows fills it.
        term = NegativeTerm(log_mass=torch.logsumexp(logits["l"][:, 1:].detach(), dim=1), extra_stats=extra)
        return losses["l"] + losses["ab"], diagnostics(ctx, term, labels, self.bank_l.labels[drawn])

    @torch.no_grad()
    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        if memory is None:
            return
        indices, z_l, z_ab, labels = memory
        self.bank_l.update(indices, z_l, labels)
        self.bank_ab.update(indices, z_ab, labels)
