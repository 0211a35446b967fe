"""SimCLR-style two-view augmentation as batched tensor operations on the images' own device.

Why this exists: a CIFAR-size data set fits in (GPU) memory as one uint8 ``(N, C, H, W)`` tensor, and a
per-image PIL pipeline in DataLoader workers caps an H100 at a small fraction of its throughput: PIL's
SimCLR augmentation makes roughly 300-650 images/s (2 views each) per CPU core, 5-10k images/s on 16
cores, while an H100 trains SimCLR on a CIFAR ResNet-18 at 30-60k images/s. Here every random parameter
is drawn per sample with one ``torch.Generator`` on the images' device, and every op is a batched tensor
op; samples that skip an op are handled with ``torch.where`` on per-sample masks, never by boolean
indexing, ``.item()`` or ``.nonzero()``. So a call never waits on the device and a run is reproducible
from the generator's seed.

Semantics follow torchvision (``transforms.v2`` on float tensors), op by op, so results stay
comparable with the literature (kornia's colour jitter differed and cost accuracy, kornia #691):

1. ``RandomResizedCrop``: area/aspect sampling as ``RandomResizedCrop.make_params`` (10 tries,
   log-uniform ratio, centre-crop fallback clamped to the ratio range); bilinear (or PIL's bicubic,
   ``crop_interpolation``) resize of the box with ``antialias`` as configured (torchvision v2's default
   is ``antialias=True``; it only matters when a crop is larger than the output, e.g. STL-10 96 -> 32,
   never for CIFAR 32 -> 32).
2. Horizontal flip (folded into the resize weights, so it costs nothing).
3. ``ColorJitter`` with probability ``jitter.p``: brightness, contrast, saturation and hue in a random
   order per sample; hue is a true RGB -> HSV -> RGB shift.
4. ``RandomGrayscale`` (3 channels kept).
5. Gaussian blur and solarize, each with its own probability per view (BYOL-style asymmetric recipes).
6. ``Normalize`` with the data set's mean/std.

Everything runs in float32 on [0, 1]. The PIL pipelines round to uint8 after every op; this one does
not, so it differs from PIL by at most about half a grey level per op (1/510), which is the
torchvision-tensor behaviour anyway.

Grayscale weights are torchvision's (0.2989, 0.587, 0.114), i.e. ITU-R 601-2 luma as torchvision
rounds it, so colour ops match ``torchvision.transforms.v2.functional`` to float precision.

Single-channel data (C = 1) is supported the way torchvision treats it: saturation, hue and grayscale
are identities (PIL behaviour), brightness and contrast apply as usual. Other channel counts raise.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "JitterConfig",
    "BlurConfig",
    "SolarizeConfig",
    "TwoViewAugment",
    "eval_transform",
    "sample_crop_boxes",
    "resized_crop",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "gaussian_blur",
    "solarize",
    "normalize",
]

# torchvision's luma weights (``_rgb_to_grayscale_image``); PIL uses 299/587/114 in integer arithmetic.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

# Number of (area, ratio) tries before RandomResizedCrop falls back to the centre crop, as torchvision.
_CROP_TRIES = 10


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_number(name: str, v: object) -> float:
    # Finite: nan passes every ``x < 0`` range check below, and inf is no strength, scale or probability.
    if not _is_number(v) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"augment config: {name} = {v!r} must be a finite number")
    return float(v)


def _check_prob(name: str, v: object) -> float:
    x = _check_number(name, v)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"augment config: {name} = {v!r} must be a probability in [0, 1]")
    return x


def _check_pair(name: str, v: object, what: str) -> tuple[float, float]:
    """A length-2 sequence of numbers (``what`` says what the two entries are, for the message)."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2:
        raise ValueError(f"augment config: {name} = {v!r} must be a list of 2 numbers ({what})")
    return (_check_number(f"{name}[0]", v[0]), _check_number(f"{name}[1]", v[1]))


def _check_per_view_probs(name: str, v: object) -> tuple[float, float]:
    p = _check_pair(name, v, "one probability per view: [view1, view2]")
    for i, x in enumerate(p):
        _check_prob(f"{name}[{i}]", x)
    return p


@dataclass
class JitterConfig:
    """``RandomApply(ColorJitter(brightness, contrast, saturation, hue), p)``.

    Factors are drawn as torchvision does: uniform in ``[max(0, 1 - x), 1 + x]`` for brightness,
    contrast and saturation, uniform in ``[-hue, hue]`` for hue; 0 disables that op.
    """

    p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1

    def __post_init__(self) -> None:
        self.p = _check_prob("jitter.p", self.p)
        for name in ("brightness", "contrast", "saturation"):
            x = _check_number(f"jitter.{name}", getattr(self, name))
            if x < 0:
                raise ValueError(f"augment config: jitter.{name} = {x!r} must be >= 0")
            setattr(self, name, x)
        self.hue = _check_number("jitter.hue", self.hue)
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment config: jitter.hue = {self.hue!r} must be in [0, 0.5]")


@dataclass
class BlurConfig:
    """Gaussian blur with probability ``p[view]``; sigma uniform in ``sigma`` per sample, reflect padding."""

    p: tuple[float, float] = (0.0, 0.0)
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int = 3

    def __post_init__(self) -> None:
        self.p = _check_per_view_probs("blur.p", self.p)
        self.sigma = _check_pair("blur.sigma", self.sigma, "[sigma_min, sigma_max]")
        if not 0.0 < self.sigma[0] <= self.sigma[1]:
            raise ValueError(f"augment config: blur.sigma = {list(self.sigma)} must satisfy 0 < sigma_min <= sigma_max")
        k = self.kernel_size
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"augment config: blur.kernel_size = {k!r} must be an odd integer >= 1")


@dataclass
class SolarizeConfig:
    """Solarize (``x >= threshold -> 1 - x`` on [0, 1] images) with probability ``p[view]``."""

    p: tuple[float, float] = (0.0, 0.0)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        self.p = _check_per_view_probs("solarize.p", self.p)
        self.threshold = _check_number("solarize.threshold", self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"augment config: solarize.threshold = {self.threshold!r} must be in [0, 1]")


_SUBCONFIGS = {"jitter": JitterConfig, "blur": BlurConfig, "solarize": SolarizeConfig}
CROP_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass
class AugmentConfig:
    """Augmentation settings; the defaults are SimCLR's CIFAR recipe (as the DCL and HCL code:
    crop scale 0.08-1, flip 0.5, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2).

    ``crop_antialias`` is an addition to the usual knobs: torchvision v2's ``RandomResizedCrop``
    antialiases by default (and PIL always does); it changes nothing when crops are upsampled.
    ``crop_interpolation``: ``bilinear`` (torchvision's default) or ``bicubic`` (PIL's bicubic filter,
    a = -0.5, as solo-learn's and several other CIFAR recipes' ``RandomResizedCrop``; needs
    ``crop_antialias``, the only bicubic filter implemented).
    ``mean``/``std`` are per channel and come from the data set (see :meth:`from_dict`).
    """

    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_antialias: bool = True
    crop_interpolation: str = "bilinear"
    eval_crop_fraction: float = 1.0
    flip_p: float = 0.5
    jitter: JitterConfig = field(default_factory=JitterConfig)
    grayscale_p: float = 0.2
    blur: BlurConfig = field(default_factory=BlurConfig)
    solarize: SolarizeConfig = field(default_factory=SolarizeConfig)
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2023, 0.1994, 0.2010)

    def __post_init__(self) -> None:
        k = self.crop_size
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"augment config: crop_size = {k!r} must be an integer >= 1")
        self.crop_scale = _check_pair("crop_scale", self.crop_scale, "[scale_min, scale_max]")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment config: crop_scale = {[lo, hi]} must satisfy 0 < scale_min <= scale_max <= 1")
        self.crop_ratio = _check_pair("crop_ratio", self.crop_ratio, "[ratio_min, ratio_max]")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment config: crop_ratio = {[lo, hi]} must satisfy 0 < ratio_min <= ratio_max")
        if not isinstance(self.crop_antialias, bool):
            raise ValueError(f"augment config: crop_antialias = {self.crop_antialias!r} must be true or false")
        if self.crop_interpolation not in CROP_INTERPOLATIONS:
            raise ValueError(f"augment config: crop_interpolation = {self.crop_interpolation!r} must be one of "
                             f"{', '.join(CROP_INTERPOLATIONS)}")
        if self.crop_interpolation == "bicubic" and not self.crop_antialias:
            raise ValueError("augment config: crop_interpolation = 'bicubic' needs crop_antialias = true (the "
                             "bicubic filter here is PIL's, which always antialiases; torch's non-antialiased "
                             "bicubic, a = -0.75 with replicated borders, is not implemented)")
        f = _check_number("eval_crop_fraction", self.eval_crop_fraction)
        if not 0.0 < f <= 1.0:
            raise ValueError(f"augment config: eval_crop_fraction = {f!r} must be in (0, 1]")
        self.eval_crop_fraction = f
        self.flip_p = _check_prob("flip_p", self.flip_p)
        self.grayscale_p = _check_prob("grayscale_p", self.grayscale_p)
        for name, cls in _SUBCONFIGS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"augment config: {name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0:
                raise ValueError(f"augment config: {name} = {v!r} must be a non-empty list, one number per channel")
            setattr(self, name, tuple(_check_number(f"{name}[{i}]", x) for i, x in enumerate(v)))
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"augment config: mean has {len(self.mean)} entries but std has {len(self.std)}; "
                "both need one entry per channel"
            )
        if len(self.mean) not in (1, 3):
            raise ValueError(
                f"augment config: mean/std have {len(self.mean)} entries; only 1 or 3 channels are supported"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"augment config: std = {list(self.std)} must be > 0 in every channel")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def from_dict(cls, d: Mapping | None, mean: Sequence[float], std: Sequence[float]) -> "AugmentConfig":
        """Build from a plain dict or an OmegaConf node; ``mean``/``std`` come from the data set.

        Missing keys keep their defaults; unknown keys (at any level) are rejected by name, so a typo
        in a Hydra override cannot silently do nothing.
        """
        d = _to_plain(d if d is not None else {})
        if not isinstance(d, Mapping):
            raise ValueError(f"augment config must be a mapping, got {type(d).__name__}: {d!r}")
        allowed = {f.name for f in fields(cls)} - {"mean", "std"}
        if "mean" in d or "std" in d:
            raise ValueError("augment config: mean/std are not config keys here; they come from the data set")
        _reject_unknown(d, allowed, prefix="")
        kwargs = dict(d)
        for name, sub in _SUBCONFIGS.items():
            if name in kwargs:
                v = kwargs[name]
                if not isinstance(v, Mapping):
                    raise ValueError(f"augment config: {name} = {v!r} must be a mapping")
                _reject_unknown(v, {f.name for f in fields(sub)}, prefix=f"{name}.")
                kwargs[name] = sub(**v)
        return cls(**kwargs, mean=tuple(mean), std=tuple(std))


def _to_plain(d: object) -> object:
    """OmegaConf nodes -> plain containers (resolving interpolations); anything else unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # omegaconf is a dependency, but the module must not need it for plain dicts
        return d
    if isinstance(d, (DictConfig, ListConfig)):
        return OmegaConf.to_container(d, resolve=True)
    return d


def _reject_unknown(d: Mapping, allowed: set[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise ValueError(
            f"augment config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"allowed: {', '.join(prefix + k for k in sorted(allowed))}"
        )


# ----------------------------------------------------------------------------------------------------
# Per-op functions: batched, float images in [0, 1] of shape (N, C, H, W), per-sample factors (N,)
# ----------------------------------------------------------------------------------------------------


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    """(N,) factors -> (N, 1, 1, 1) so they broadcast over an image batch."""
    return f.reshape(-1, 1, 1, 1)


def _check_channels(x: torch.Tensor) -> int:
    c = x.shape[-3]
    if c not in (1, 3):
        raise ValueError(f"colour ops need 1 or 3 channels, got an image batch of shape {tuple(x.shape)}")
    return c


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB batch, shape (N, 1, H, W); a 1-channel batch is returned as is."""
    if _check_channels(x) == 1:
        return x
    r, g, b = x.unbind(dim=-3)
    # Same operation order as torchvision, so results agree bit for bit on the CPU.
    return r.mul(GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(-3)


def _blend(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``clamp(f * x + (1 - f) * ref, 0, 1)`` with per-sample ``f``."""
    f = _per_sample(f)
    return (x * f + ref * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * factor)`` per sample (torchvision ``adjust_brightness`` on float images)."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def _contrast_reference(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the grayscale image, (N, 1, 1, 1): what contrast blends towards."""
    return rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the grayscale image, per sample (torchvision ``adjust_contrast``)."""
    return _blend(x, _contrast_reference(x), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image, per sample (torchvision ``adjust_saturation``); identity for C = 1."""
    if _check_channels(x) == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV in [0, 1], the same formulas as torchvision's ``_rgb_to_hsv`` (PIL's algorithm)."""
    r, g, _ = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    # Where max == min, hue and saturation are 0; replacing the denominators by 1 avoids NaN there.
    eqc = maxc == minc
    ones = torch.ones_like(maxc)
    chroma = maxc - minc
    s = chroma / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, chroma).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / divisor).unbind(dim=-3)
    max_is_r = maxc == r
    max_is_g = (maxc == g) & ~max_is_r
    max_is_b = ~max_is_r & ~max_is_g
    h = (bc - gc) * max_is_r + (rc + 2.0 - bc) * max_is_g + (gc + 4.0 - rc) * max_is_b
    h = (h * (1.0 / 6.0) + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB as torchvision's ``_hsv_to_rgb``; the sector lookup is a ``torch.where`` chain
    instead of a gather from a small index table, so nothing is copied from the host."""
    h, s, v = hsv.unbind(dim=-3)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int32).remainder(6)
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((s * f + (1.0 - s)) * v).clamp(0.0, 1.0)
    # Sector i -> (r, g, b): 0 (v,t,p), 1 (q,v,p), 2 (p,v,t), 3 (p,q,v), 4 (t,p,v), 5 (v,p,q).
    r = torch.where((i == 0) | (i == 5), v, torch.where(i == 1, q, torch.where(i == 4, t, p)))
    g = torch.where((i == 1) | (i == 2), v, torch.where(i == 0, t, torch.where(i == 3, q, p)))
    b = torch.where((i == 3) | (i == 4), v, torch.where(i == 2, t, torch.where(i == 5, q, p)))
    return torch.stack((r, g, b), dim=-3)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Shift the HSV hue by ``factor`` (in [-0.5, 0.5], per sample); identity for C = 1."""
    if _check_channels(x) == 1:
        return x
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0:1] + _per_sample(factor)).remainder(1.0)
    return _hsv_to_rgb(torch.cat((h, hsv[:, 1:]), dim=1))


def _blend_slot(x: torch.Tensor, op: torch.Tensor, factors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Apply each sample's blend op ``op`` (0 brightness, 1 contrast, 2 saturation) where ``active``.

    All three are ``clamp(f * x + (1 - f) * ref)`` with a different reference image (0, the mean of
    the grayscale image, the grayscale image), so one blend with a per-sample reference and factor does
    whichever op each sample needs; inactive samples get factor 1, which is the exact identity.
    """
    f = factors.gather(1, op.unsqueeze(1)).squeeze(1)
    f = torch.where(active, f, 1.0)
    gray = rgb_to_grayscale(x)
    op4 = _per_sample(op)
    ref = torch.where(op4 == 1, gray.mean(dim=(-3, -2, -1), keepdim=True), gray)
    ref = torch.where(op4 == 0, 0.0, ref)
    return _blend(x, ref, f)


def color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor | None,
    contrast: torch.Tensor | None,
    saturation: torch.Tensor | None,
    hue: torch.Tensor | None,
    order: torch.Tensor,
    apply: torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's ``ColorJitter`` with explicit per-sample parameters, batched.

    Factors are (N,) tensors, or None for an op that is off. ``order`` is int (N, 4), a permutation of
    0..3 per sample (0 brightness, 1 contrast, 2 saturation, 3 hue), applied left to right as
    torchvision's ``fn_idx``. ``apply`` (bool (N,)) leaves the other samples unchanged (RandomApply).

    Without host sync, each position would need all four ops computed for every sample; hue (the HSV
    round trip) is by far the most expensive, and each sample uses it exactly once. So the blends that
    come before hue run as 3 masked slots, then hue once for everyone, then 3 masked slots for the
    blends after it: 6 cheap blends and 1 hue instead of 4 of each.
    """
    n = x.shape[0]
    c = _check_channels(x)
    ones = torch.ones(n, dtype=x.dtype, device=x.device)
    if apply is None:
        apply = torch.ones(n, dtype=torch.bool, device=x.device)
    blends = (brightness, contrast, saturation if c == 3 else None)  # saturation is the identity for C = 1
    # Position of hue in each sample's order, and the order of the three blend ops without it: sort the
    # positions with hue's moved to the end (stable), then read the op ids at the first three.
    pos = torch.arange(4, device=x.device).expand(n, 4)
    hue_slot = torch.where(order == 3, pos, 0).sum(dim=1)
    blend_pos = torch.where(order == 3, 4, pos).argsort(dim=1, stable=True)[:, :3]
    blend_order = order.gather(1, blend_pos)
    if any(f is not None for f in blends):
        factors = torch.stack([f if f is not None else ones for f in blends], dim=1)  # (N, 3), column = op id
        factors = torch.where(apply.unsqueeze(1), factors, 1.0)
        for slot in range(3):  # blends before hue
            x = _blend_slot(x, blend_order[:, slot], factors, active=hue_slot > slot)
    if hue is not None and c == 3:
        x = torch.where(_per_sample(apply), adjust_hue(x, hue), x)
    if any(f is not None for f in blends):
        for slot in range(3):  # blends after hue
            x = _blend_slot(x, blend_order[:, slot], factors, active=hue_slot <= slot)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Gaussian blur with a per-sample ``sigma`` (N,), square ``kernel_size``, reflect padding.

    The kernel is torchvision's (``_get_gaussian_kernel1d``); the 2-D blur is done separably with one
    grouped (depthwise) convolution per direction, each group carrying its own sample's kernel.
    """
    if kernel_size == 1:
        return x
    n, c, h, w = x.shape
    half = kernel_size // 2
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    t = torch.linspace(-lim, lim, steps=kernel_size, dtype=x.dtype, device=x.device)
    kernel = torch.softmax(-(t / sigma.reshape(-1, 1).to(x.dtype)).pow(2), dim=1)  # (N, k), rows sum to 1
    # (N*C, k): one kernel per (sample, channel) group (expand, not repeat_interleave, which may sync)
    kernel = kernel.unsqueeze(1).expand(n, c, kernel_size).reshape(n * c, kernel_size)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.reshape(n * c, 1, 1, kernel_size), groups=n * c)  # along width
    y = F.conv2d(y, kernel.reshape(n * c, 1, kernel_size, 1), groups=n * c)  # along height
    return y.reshape(n, c, h, w)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x >= threshold -> 1 - x`` (torchvision ``solarize`` on float images)."""
    return torch.where(x >= threshold, 1.0 - x, x)


@functools.lru_cache(maxsize=16)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean/std as (1, C, 1, 1) tensors on ``device``, created once: the copy to the device is a
    host-to-device transfer, which must not happen on every call of the hot path."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    return m, s


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, as torchvision ``Normalize``."""
    m, s = _channel_stats(tuple(float(v) for v in mean), tuple(float(v) for v in std), x.device)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------------
# Random resized crop
# ----------------------------------------------------------------------------------------------------


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """Draw ``n`` crop boxes as torchvision's ``RandomResizedCrop`` does; int64 (n, 4) ``top, left, h, w``.

    Per sample: up to 10 tries of (area fraction uniform in ``scale``, log-aspect uniform in
    ``log(ratio)``); the first try whose rounded box fits is used, placed uniformly; if none fits, the
    centre crop of the whole image clamped to the ratio range. All 10 tries are drawn for every sample
    and the first valid one is picked with a min-reduction, so there is no data-dependent control flow.
    The box arithmetic is in float64, like torchvision's Python floats (so rounding ties agree).
    """
    dt = torch.float64
    area_frac = torch.empty(n, _CROP_TRIES, dtype=dt, device=device).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, _CROP_TRIES, dtype=dt, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    place = torch.rand(n, 2, dtype=dt, device=device, generator=generator)
    target_area = area_frac * (height * width)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))  # round-half-to-even, like Python's round()
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    tries = torch.arange(_CROP_TRIES, device=device).expand(n, -1)
    first = torch.where(fits, tries, _CROP_TRIES).amin(dim=1)  # _CROP_TRIES where no try fits
    found = first < _CROP_TRIES
    pick = first.clamp(max=_CROP_TRIES - 1).unsqueeze(1)
    w = w.gather(1, pick).squeeze(1)
    h = h.gather(1, pick).squeeze(1)

    # Fallback: centre crop with the aspect ratio clamped to the allowed range (static numbers).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(found, w, float(fb_w))
    h = torch.where(found, h, float(fb_h))
    # Uniform integer positions in [0, size - box]; floor(u * count) with u in [0, 1), as randint would.
    top = torch.floor(place[:, 0] * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(place[:, 1] * (width - w + 1)).clamp(max=width - w)
    top = torch.where(found, top, float((height - fb_h) // 2))
    left = torch.where(found, left, float((width - fb_w) // 2))
    return torch.stack((top, left, h, w), dim=1).to(torch.int64)


def _cubic(d: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel at distance ``d >= 0`` (support 2), with PIL's a = -0.5."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _resize_weights(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, antialias: bool,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Per-sample 1-D resampling matrices (N, out_size, in_size) for the window [start, start+length).

    Row ``o`` holds the weights with which output pixel ``o`` reads the input pixels. For ``bilinear``
    these are exactly the taps of PyTorch's bilinear ``interpolate(align_corners=False)`` on the cropped
    window: a triangle filter centred at ``(o + 0.5) * scale`` (in window pixels, pixel centres at
    ``k + 0.5``), widened to ``scale`` input pixels when ``antialias`` and downscaling
    (``_upsample_bilinear2d_aa``, i.e. PIL's filter), restricted to the window and renormalised.
    Restricting + renormalising is what the edge clamping of the non-antialiased kernel amounts to, so
    one formula covers both. ``bicubic`` (antialiased only): the same with PIL's cubic kernel (a = -0.5,
    support 2 window pixels, widened by the scale when downscaling), as ``_upsample_bicubic2d_aa``.
    """
    scale = length.to(torch.float32) / out_size  # (N,) input pixels per output pixel
    support = torch.clamp(scale, min=1.0) if antialias else torch.ones_like(scale)
    out_pos = torch.arange(out_size, dtype=torch.float32, device=start.device) + 0.5
    centre = out_pos.unsqueeze(0) * scale.unsqueeze(1)  # (N, out) in window coordinates
    k = torch.arange(in_size, dtype=torch.float32, device=start.device) + 0.5 - start.to(torch.float32).unsqueeze(1)
    # k: (N, in) input pixel centres in window coordinates
    dist = (k.unsqueeze(1) - centre.unsqueeze(2)).abs() / support.reshape(-1, 1, 1)
    wts = _cubic(dist) if interpolation == "bicubic" else (1.0 - dist).clamp_(min=0.0)
    inside = (k >= 0) & (k < length.to(torch.float32).unsqueeze(1))  # (N, in): pixel lies in the window
    wts = wts * inside.unsqueeze(1)
    return wts / wts.sum(dim=2, keepdim=True)


def resized_crop(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Crop each sample's box (``top, left, h, w``; int (N, 4)) and resize it to ``size x size``.

    Bilinear: equal to torchvision ``resized_crop(img, top, left, h, w, [size, size], BILINEAR,
    antialias)`` per sample, up to float rounding. Bicubic: PIL's ``crop(box).resize(BICUBIC)`` (what
    torchvision runs on PIL images), its two passes in PIL's order, each clipped to [0, 1], without its
    rounding to 8 bits. ``flip`` (bool (N,)) then mirrors those samples horizontally.
    Implemented as two batched matrix products with per-sample separable resampling matrices
    (``rows @ image @ cols^T``): one call for any mix of box sizes, exact at the box borders, and
    the flip is just the column matrix read backwards.
    """
    n, c, h, w = x.shape
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], h, size, antialias, interpolation)  # (N, size, H)
    cols = _resize_weights(boxes[:, 1], boxes[:, 3], w, size, antialias, interpolation)  # (N, size, W)
    if flip is not None:
        cols = torch.where(flip.reshape(-1, 1, 1), cols.flip(1), cols)
    if interpolation == "bilinear":  # non-negative weights: the result stays in [0, 1]
        return rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)
    # The cubic kernel's negative lobes overshoot at edges. PIL resamples in two passes into 8-bit images,
    # so each pass is clipped to [0, 1]; so here (without the 8-bit rounding). PIL runs the horizontal pass
    # first, but the vertical one first for a box it shrinks vertically and enlarges horizontally.
    across = (x @ cols.transpose(1, 2).unsqueeze(1)).clamp_(0.0, 1.0)
    out = (rows.unsqueeze(1) @ across).clamp_(0.0, 1.0)
    vertical_first = (boxes[:, 2] > size) & (boxes[:, 3] < size)
    if not torch.compiler.is_compiling() and x.device.type == "cpu" and not bool(vertical_first.any()):
        return out  # the common case on the CPU (on a GPU the check would wait for the device)
    down = (rows.unsqueeze(1) @ x).clamp_(0.0, 1.0)
    other = (down @ cols.transpose(1, 2).unsqueeze(1)).clamp_(0.0, 1.0)
    return torch.where(vertical_first.reshape(-1, 1, 1, 1), other, out)


# ----------------------------------------------------------------------------------------------------
# The pipelines
# ----------------------------------------------------------------------------------------------------


def _check_images(images: torch.Tensor, config: AugmentConfig) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != config.channels:
        raise ValueError(
            f"images have {images.shape[1]} channels but the augment config's mean/std have {config.channels}"
        )


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi, generator=generator)


class TwoViewAugment:
    """Two independently augmented views of a uint8 image batch, on the batch's device.

    ``view1, view2 = TwoViewAugment(config)(images, generator)``; ``generator`` must live on the
    images' device. Both views are processed as one batch of 2N (half the kernel launches); per-view
    probabilities (blur, solarize) are applied per half. ``second_images`` (same shape): the second
    view is augmented from these instead (oracle positives: another image of the same class).
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, images: torch.Tensor, generator: torch.Generator,
                 second_images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        _check_images(images, cfg)
        if second_images is not None and (second_images.shape != images.shape or second_images.dtype != images.dtype
                                          or second_images.device != images.device):
            raise ValueError(f"second_images must match images: got {second_images.dtype} "
                             f"{tuple(second_images.shape)} on {second_images.device}, images are {images.dtype} "
                             f"{tuple(images.shape)} on {images.device}")
        if torch.device(generator.device).type != images.device.type:
            raise ValueError(
                f"generator is on {generator.device} but the images are on {images.device}; "
                "create it with torch.Generator(device=images.device)"
            )
        n = images.shape[0]
        # Autocast off: under bf16/fp16 autocast the resize matmuls would lose a grey level or more.
        with torch.autocast(device_type=images.device.type, enabled=False):
            pair = images.repeat(2, 1, 1, 1) if second_images is None else torch.cat([images, second_images])
            x = pair.to(torch.float32).div_(255.0)
            out = self._augment(x, generator, n)
        return out[:n], out[n:]

    def _augment(self, x: torch.Tensor, g: torch.Generator, n: int) -> torch.Tensor:
        cfg = self.config
        m, c, height, width = x.shape  # m = 2n: view 1 is x[:n], view 2 is x[n:]
        dev = x.device
        jit = cfg.jitter

        # Every random number is drawn up front, always in the same order and amount, so switching
        # one op off does not change the randomness of the others.
        boxes = sample_crop_boxes(m, height, width, cfg.crop_scale, cfg.crop_ratio, g, dev)
        flip = torch.rand(m, device=dev, generator=g) < cfg.flip_p
        jitter_on = torch.rand(m, device=dev, generator=g) < jit.p
        fb = _uniform(m, max(0.0, 1 - jit.brightness), 1 + jit.brightness, g, dev)
        fc = _uniform(m, max(0.0, 1 - jit.contrast), 1 + jit.contrast, g, dev)
        fs = _uniform(m, max(0.0, 1 - jit.saturation), 1 + jit.saturation, g, dev)
        fh = _uniform(m, -jit.hue, jit.hue, g, dev)
        order = torch.rand(m, 4, device=dev, generator=g).argsort(dim=1)  # a uniform permutation per sample
        gray_on = torch.rand(m, device=dev, generator=g) < cfg.grayscale_p
        blur_u = torch.rand(m, device=dev, generator=g)
        sigma = _uniform(m, cfg.blur.sigma[0], cfg.blur.sigma[1], g, dev)
        solarize_u = torch.rand(m, device=dev, generator=g)

        # 1-2. Random resized crop and horizontal flip in one resampling.
        x = resized_crop(x, boxes, cfg.crop_size, flip=flip, antialias=cfg.crop_antialias,
                         interpolation=cfg.crop_interpolation)

        # 3. Colour jitter; an op whose strength is 0 is off, as in torchvision (factor None).
        if jit.p > 0:
            x = color_jitter(
                x,
                brightness=fb if jit.brightness > 0 else None,
                contrast=fc if jit.contrast > 0 else None,
                saturation=fs if jit.saturation > 0 else None,
                hue=fh if jit.hue > 0 else None,
                order=order,
                apply=jitter_on,
            )

        # 4. Grayscale, 3 channels kept.
        if cfg.grayscale_p > 0 and c == 3:
            x = torch.where(_per_sample(gray_on), rgb_to_grayscale(x).expand_as(x), x)

        # 5. Blur and solarize with a probability per view.
        if max(cfg.blur.p) > 0:
            blur_on = torch.cat((blur_u[:n] < cfg.blur.p[0], blur_u[n:] < cfg.blur.p[1]))
            x = torch.where(_per_sample(blur_on), gaussian_blur(x, sigma, cfg.blur.kernel_size), x)
        if max(cfg.solarize.p) > 0:
            sol_on = torch.cat((solarize_u[:n] < cfg.solarize.p[0], solarize_u[n:] < cfg.solarize.p[1]))
            x = torch.where(_per_sample(sol_on), solarize(x, cfg.solarize.threshold), x)

        # 6. Normalise.
        return normalize(x, cfg.mean, cfg.std)


def eval_transform(images: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Deterministic evaluation view: centre crop of ``eval_crop_fraction`` of the stored image,
    bilinear resize (antialiased) to ``crop_size`` unless the sizes already match, normalise.

    uint8 (N, C, H, W) -> float32 (N, C, crop_size, crop_size) on the same device. The crop offset
    rounds like torchvision's ``center_crop``.
    """
    _check_images(images, config)
    _, _, h, w = images.shape
    ch = max(1, int(round(config.eval_crop_fraction * h)))
    cw = max(1, int(round(config.eval_crop_fraction * w)))
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    x = images[:, :, top : top + ch, left : left + cw].to(torch.float32).div_(255.0)
    size = config.crop_size
    if (ch, cw) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x, config.mean, config.std)
