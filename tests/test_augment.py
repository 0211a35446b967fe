"""The batched augmentation must match torchvision's semantics op by op, and its randomness must be
per sample, at the configured rates, and reproducible from the generator's seed."""
from __future__ import annotations

import itertools
import math

import numpy as np

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cl_suite.data.augment import (
    AugmentConfig,
    TwoViewAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    eval_transform,
    gaussian_blur,
    normalize,
    resized_crop,
    rgb_to_grayscale,
    sample_crop_boxes,
    solarize,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _images(n: int, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1], with a few exactly grey pixels and saturated ones (edge cases
    of HSV and clamping)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g)
    x[:, :, 0, :4] = x[:, :1, 0, :4]  # grey pixels: max == min
    x[:, :, 1, :2] = 1.0
    x[:, :, 2, :2] = 0.0
    return x


def _uint8(n: int, c: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)


def _per_sample_reference(fn, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return torch.stack([fn(x[i], float(factors[i])) for i in range(len(x))])


def _torchvision_boxes(rrc: T.RandomResizedCrop, height: int, width: int, n: int) -> torch.Tensor:
    """``n`` boxes (top, left, h, w) from torchvision's own sampler (a Python loop, so keep n small)."""
    image = torch.zeros(3, height, width)
    params = [rrc.make_params([image]) for _ in range(n)]
    return torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in params])


def _config(**overrides) -> AugmentConfig:
    """Everything off (identity crop, no flip, no colour ops) unless overridden."""
    base = dict(
        crop_size=8,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter=dict(p=0.0),
        grayscale_p=0.0,
    )
    base.update(overrides)
    return AugmentConfig.from_dict(base, CIFAR_MEAN, CIFAR_STD)


def _unnormalize(v: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1)
    return v * std + mean


def _changed(view: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per sample: does the (un-normalised) view differ from the input image?"""
    diff = (_unnormalize(view) - images.float() / 255).abs().amax(dim=(1, 2, 3))
    return diff > 1e-4


# ------------------------------------------------------------------------------------------------
# Colour ops against torchvision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_blend_ops_match_torchvision(ours, theirs, channels):
    x = _images(12, c=channels)
    factors = torch.linspace(0.0, 2.0, 12)  # includes 0 and strong factors that clamp
    got = ours(x, factors)
    want = _per_sample_reference(theirs, x, factors)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_hue_matches_torchvision():
    x = _images(12)
    factors = torch.linspace(-0.5, 0.5, 12)
    want = _per_sample_reference(TF.adjust_hue, x, factors)
    torch.testing.assert_close(adjust_hue(x, factors), want, atol=1e-4, rtol=0)
    # A real HSV shift, not an approximation: the saturated red pixel goes to pure green at +1/3.
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    green = adjust_hue(red, torch.tensor([1 / 3])).flatten()
    torch.testing.assert_close(green, torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    # One channel: identity, as torchvision.
    g = _images(3, c=1)
    assert torch.equal(adjust_hue(g, torch.full((3,), 0.3)), g)


def test_grayscale_and_solarize_match_torchvision():
    x = _images(6)
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=1), atol=1e-6, rtol=0)
    for threshold in (0.0, 0.3, 0.5, 1.0):
        assert torch.equal(solarize(x, threshold), TF.solarize(x, threshold))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_gaussian_blur_matches_torchvision(kernel_size):
    x = _images(8)
    sigma = torch.linspace(0.1, 2.0, 8)
    got = gaussian_blur(x, sigma, kernel_size)
    want = torch.stack([TF.gaussian_blur(x[i], [kernel_size] * 2, [float(sigma[i])] * 2) for i in range(8)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_color_jitter_applies_ops_in_the_given_order():
    """Every one of the 24 orders, per sample, against torchvision's ops applied one after the other."""
    perms = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4)
    n = len(perms)
    x = _images(n, size=8, seed=1)
    b = torch.full((n,), 1.6)  # strong factors, so that the order changes the result (clamping)
    c = torch.full((n,), 0.3)
    s = torch.full((n,), 1.9)
    h = torch.full((n,), 0.27)
    apply = torch.arange(n) % 5 != 0  # a few samples outside RandomApply stay unchanged
    got = color_jitter(x, b, c, s, h, order=perms, apply=apply)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    factors = [b, c, s, h]
    for i in range(n):
        want = x[i]
        if apply[i]:
            for op in perms[i].tolist():
                want = ops[op](want, float(factors[op][i]))
        torch.testing.assert_close(got[i], want, atol=1e-4, rtol=0, msg=f"order {perms[i].tolist()}")
    # The test has teeth: with these factors the order matters.
    assert (got[1] - color_jitter(x[1:2], b[:1], c[:1], s[:1], h[:1], order=perms[:1])[0]).abs().max() > 1e-2


def test_color_jitter_op_off_is_identity():
    x = _images(4)
    order = torch.arange(4).expand(4, 4)
    assert torch.equal(color_jitter(x, None, None, None, None, order=order), x)
    ones = torch.ones(4)
    assert torch.equal(color_jitter(x, ones, ones, ones, None, order=order), x)


# ------------------------------------------------------------------------------------------------
# Random resized crop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size, out", [(32, 32), (96, 32), (20, 48)])
def test_resized_crop_matches_torchvision(size, out, antialias):
    x = _images(16, size=size)
    g = torch.Generator().manual_seed(3)
    boxes = sample_crop_boxes(16, size, size, (0.08, 1.0), (3 / 4, 4 / 3), g, "cpu")
    boxes[0] = torch.tensor([0, 0, size, size])  # whole image
    boxes[1] = torch.tensor([size - 2, size - 3, 2, 3])  # tiny box in the corner: border handling
    got = resized_crop(x, boxes, out, antialias=antialias)
    want = torch.stack(
        [TF.resized_crop(x[i], *boxes[i].tolist(), [out, out], antialias=antialias) for i in range(16)]
    )
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("size, out", [(32, 32), (96, 32), (20, 48)])
def test_bicubic_resized_crop_matches_pil(size, out):
    # solo-learn's crops: torchvision's RandomResizedCrop(BICUBIC) on PIL images, i.e. PIL's crop + resize
    # (a = -0.5, antialiased, a horizontal then a vertical pass, each rounded and clipped to 8 bits). Noise
    # images overshoot at every pixel, so the per-pass clip matters here; the 8-bit rounding stays.
    from PIL import Image

    x = _images(16, size=size)
    g = torch.Generator().manual_seed(4)
    boxes = sample_crop_boxes(16, size, size, (0.08, 1.0), (3 / 4, 4 / 3), g, "cpu")
    boxes[0] = torch.tensor([0, 0, size, size])
    boxes[1] = torch.tensor([size - 2, size - 3, 2, 3])
    if size > out:  # shrunk vertically, enlarged horizontally (PIL's vertical pass first), and the reverse
        boxes[2], boxes[3] = torch.tensor([0, 0, size, out // 2]), torch.tensor([0, 0, out // 2, size])
    as_uint8 = (x * 255).round().to(torch.uint8)
    got = resized_crop(as_uint8.float() / 255, boxes, out, interpolation="bicubic")
    for i in range(16):
        top, left, h, w = boxes[i].tolist()
        pil = Image.fromarray(as_uint8[i].permute(1, 2, 0).numpy()).crop(
            (left, top, left + w, top + h)).resize((out, out), Image.BICUBIC)
        pil_t = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
        assert (got[i] - pil_t).abs().max() <= 1.5 / 255, i  # PIL's two 8-bit roundings
    assert not torch.allclose(got, resized_crop(x, boxes, out), atol=1e-3)  # not the bilinear result
    # where nothing overshoots (a smooth image), it is torchvision's antialiased bicubic on float tensors
    smooth = torch.linspace(0.2, 0.8, size).repeat(2, 3, size, 1)
    want = torch.stack([TF.resized_crop(smooth[i], *boxes[i].tolist(), [out, out],
                                        interpolation=TF.InterpolationMode.BICUBIC, antialias=True) for i in range(2)])
    torch.testing.assert_close(resized_crop(smooth, boxes[:2], out, interpolation="bicubic"), want, atol=2e-5, rtol=0)


def test_resized_crop_identity_box_is_exact_and_flip_mirrors():
    x = _images(4, size=32)
    boxes = torch.tensor([[0, 0, 32, 32]] * 4)
    assert torch.equal(resized_crop(x, boxes, 32), x)
    flip = torch.tensor([True, False, True, False])
    got = resized_crop(x, boxes, 32, flip=flip)
    assert torch.equal(got[flip], x[flip].flip(-1))
    assert torch.equal(got[~flip], x[~flip])


def test_crop_sampler_statistics_match_torchvision():
    n = 20000
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(n, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), g, "cpu").double()
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    # Rounded boxes, so compare with the same bounds as torchvision's: |side - exact side| <= 0.5.
    area = h * w / 1024
    assert area.min() >= 0.05 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= (math.sqrt(0.08 * 1024 * 0.75) - 0.5) / (math.sqrt(0.08 * 1024 / 0.75) + 0.5)

    # Same distribution as torchvision's sampler (2000 draws; its Python loop is slow).
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(32)
    ref = _torchvision_boxes(rrc, 32, 32, 2000).double()
    ref_area = ref[:, 2] * ref[:, 3] / 1024
    assert abs(area.mean() - ref_area.mean()) < 0.02  # ~0.53 each; standard error ~0.007 for the reference
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.015
    assert abs((left + w / 2).mean() - (ref[:, 1] + ref[:, 3] / 2).mean()) < 0.4  # centred on average

    # On a large image rounding is negligible: area and ratio lie in the configured ranges.
    boxes = sample_crop_boxes(5000, 1000, 1000, (0.3, 0.6), (0.5, 2.0), g, "cpu").double()
    area = boxes[:, 2] * boxes[:, 3] / 1e6
    ratio = boxes[:, 3] / boxes[:, 2]
    assert area.min() > 0.3 - 2e-3 and area.max() < 0.6 + 2e-3
    assert ratio.min() > 0.5 - 2e-3 and ratio.max() < 2.0 + 2e-3


@pytest.mark.parametrize("height, width", [(32, 320), (320, 32), (40, 40)])
def test_crop_sampler_falls_back_like_torchvision(height, width):
    # Scale near 1 with a narrow ratio: no try can fit a long thin image, so every box is the fallback.
    scale, ratio = (0.95, 1.0), (3 / 4, 4 / 3)
    if height == width:
        scale, ratio = (1.0, 1.0), (2.0, 3.0)  # square image, wide-only ratio: cannot fit either
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(64, height, width, scale, ratio, g, "cpu")
    rrc = T.RandomResizedCrop(8, scale=scale, ratio=ratio)
    want = _torchvision_boxes(rrc, height, width, 1)[0]
    assert (boxes == want).all(), (boxes[0], want)


def test_crop_sampler_mixed_case_matches_torchvision():
    """8x8 with scale (0.9, 1) and ratio (0.5, 2): about half the samples find a box, many of them the
    whole image, and the rest fall back to the whole image; the mixture must be torchvision's."""

    def stats(b: torch.Tensor) -> tuple[float, float, float]:
        whole = ((b[:, 2] == 8) & (b[:, 3] == 8)).double().mean().item()
        return whole, (b[:, 2] * b[:, 3]).double().mean().item(), (b[:, 3] / b[:, 2]).double().mean().item()

    g = torch.Generator().manual_seed(0)
    ours = stats(sample_crop_boxes(20000, 8, 8, (0.9, 1.0), (0.5, 2.0), g, "cpu"))
    torch.manual_seed(0)
    rrc = T.RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(0.5, 2.0))
    theirs = stats(_torchvision_boxes(rrc, 8, 8, 3000))
    assert 0.3 < ours[0] < 0.7  # a real mixture
    assert abs(ours[0] - theirs[0]) < 0.045  # fraction of whole-image boxes (SE ~0.009)
    assert abs(ours[1] - theirs[1]) < 0.5  # mean area in pixels, ~59.8
    assert abs(ours[2] - theirs[2]) < 0.02  # mean aspect ratio, ~1.0


# ------------------------------------------------------------------------------------------------
# The pipeline: rates, reproducibility, output
# ------------------------------------------------------------------------------------------------


def test_flip_rate():
    imgs = _uint8(4000)
    v1, v2 = TwoViewAugment(_config(flip_p=0.3))(imgs, torch.Generator().manual_seed(0))
    plain = normalize(imgs.float() / 255, CIFAR_MEAN, CIFAR_STD)
    for v in (v1, v2):
        is_flipped = (v - plain.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
        is_plain = (v - plain).abs().amax(dim=(1, 2, 3)) < 1e-5
        assert (is_flipped ^ is_plain).all()  # every sample is exactly one of the two
        assert abs(is_flipped.float().mean().item() - 0.3) < 0.04  # 5 standard errors


@pytest.mark.parametrize(
    "overrides, rates",
    [
        (dict(jitter=dict(p=0.3, brightness=0.4, contrast=0, saturation=0, hue=0)), (0.3, 0.3)),
        (dict(jitter=dict(p=0.7)), (0.7, 0.7)),
        (dict(grayscale_p=0.4), (0.4, 0.4)),
        # sigma >= 1: at sigma 0.1 the 3-tap kernel is the identity to 1e-20, so blur would look unapplied
        (dict(blur=dict(p=[0.9, 0.1], sigma=[1.0, 2.0])), (0.9, 0.1)),
        (dict(solarize=dict(p=[0.2, 0.6])), (0.2, 0.6)),
    ],
)
def test_ops_applied_at_configured_rate_per_view(overrides, rates):
    imgs = _uint8(3000)
    v1, v2 = TwoViewAugment(_config(**overrides))(imgs, torch.Generator().manual_seed(1))
    for v, rate in zip((v1, v2), rates):
        assert abs(_changed(v, imgs).float().mean().item() - rate) < 0.045  # > 5 standard errors


def test_grayscale_views_have_equal_channels():
    imgs = _uint8(500)
    v1, _ = TwoViewAugment(_config(grayscale_p=1.0))(imgs, torch.Generator().manual_seed(0))
    x = _unnormalize(v1)
    torch.testing.assert_close(x[:, 0], x[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, 1], x[:, 2], atol=1e-5, rtol=0)


def test_same_seed_same_views_different_seed_different_views():
    imgs = _uint8(64, size=32)
    aug = TwoViewAugment(
        AugmentConfig.from_dict({"blur": {"p": [1.0, 0.1]}, "solarize": {"p": [0.0, 0.2]}}, CIFAR_MEAN, CIFAR_STD)
    )
    a1, a2 = aug(imgs, torch.Generator().manual_seed(7))
    b1, b2 = aug(imgs, torch.Generator().manual_seed(7))
    c1, c2 = aug(imgs, torch.Generator().manual_seed(8))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1) and not torch.allclose(a2, c2)
    assert not torch.allclose(a1, a2)  # the two views are independent draws
    # Per sample: the crops differ between samples (not one draw for the batch, as torchvision v2 does).
    assert len(torch.unique(a1.flatten(1).mean(1))) == 64


def test_output_shape_dtype_device_and_normalisation():
    imgs = _uint8(10, size=32)
    cfg = AugmentConfig.from_dict({"crop_size": 24}, CIFAR_MEAN, CIFAR_STD)
    v1, v2 = TwoViewAugment(cfg)(imgs, torch.Generator().manual_seed(0))
    for v in (v1, v2):
        assert v.shape == (10, 3, 24, 24) and v.dtype == torch.float32 and v.device == imgs.device
        x = _unnormalize(v)
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
    # With every op off, a view is exactly the normalised image.
    v1, _ = TwoViewAugment(_config(crop_size=32))(imgs, torch.Generator().manual_seed(0))
    mean, std = torch.tensor(CIFAR_MEAN).reshape(1, 3, 1, 1), torch.tensor(CIFAR_STD).reshape(1, 3, 1, 1)
    want = (imgs.float() / 255 - mean) / std
    torch.testing.assert_close(v1, want, atol=1e-6, rtol=0)


def test_single_channel_data():
    imgs = _uint8(50, c=1)
    cfg = AugmentConfig.from_dict({"crop_size": 8, "blur": {"p": [0.5, 0.5]}}, (0.5,), (0.25,))
    v1, v2 = TwoViewAugment(cfg)(imgs, torch.Generator().manual_seed(0))
    assert v1.shape == (50, 1, 8, 8) and torch.isfinite(v1).all()


def test_input_checks():
    aug = TwoViewAugment(AugmentConfig())
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 3, 32, 32), g)
    with pytest.raises(ValueError, match="1 channels but"):
        aug(_uint8(2, c=1), g)


# ------------------------------------------------------------------------------------------------
# Evaluation transform
# ------------------------------------------------------------------------------------------------


def test_eval_transform_identity_and_centre_crop():
    imgs = _uint8(4, size=32)
    out = eval_transform(imgs, AugmentConfig())
    assert torch.equal(out, normalize(imgs.float() / 255, CIFAR_MEAN, CIFAR_STD))

    # 40 -> centre 32 at fraction 0.8: a pure crop, no resize.
    imgs = _uint8(4, size=40)
    out = eval_transform(imgs, AugmentConfig(eval_crop_fraction=0.8))
    assert torch.equal(out, normalize(imgs[:, :, 4:36, 4:36].float() / 255, CIFAR_MEAN, CIFAR_STD))

    # STL-10-like: 96 -> centre 84 -> 32, against torchvision CenterCrop + antialiased Resize.
    imgs = _uint8(4, size=96)
    out = eval_transform(imgs, AugmentConfig(eval_crop_fraction=0.875))
    ref = TF.resize(TF.center_crop(imgs.float() / 255, [84, 84]), [32, 32], antialias=True)
    torch.testing.assert_close(out, normalize(ref, CIFAR_MEAN, CIFAR_STD), atol=1e-5, rtol=0)


def test_second_images_are_the_second_views_source_with_the_same_random_draws():
    """Oracle positives (trainer.positive_pairs=same_class): view 2 is augmented from ``second_images`` with
    exactly the draws view 2 would have had, and view 1 is unchanged."""
    cfg = AugmentConfig.from_dict({"blur": {"p": [1.0, 0.1]}, "solarize": {"p": [0.0, 0.2]}}, CIFAR_MEAN, CIFAR_STD)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    others = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    aug = TwoViewAugment(cfg)
    v1, v2 = aug(images, torch.Generator().manual_seed(4), others)
    assert torch.equal(v1, aug(images, torch.Generator().manual_seed(4))[0])
    assert torch.equal(v2, aug(others, torch.Generator().manual_seed(4))[1])
    with pytest.raises(ValueError, match="second_images must match images"):
        aug(images, torch.Generator(), others[:3])


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


def test_config_defaults_are_simclr_cifar():
    cfg = AugmentConfig.from_dict({}, CIFAR_MEAN, CIFAR_STD)
    assert cfg.crop_size == 32 and cfg.crop_scale == (0.08, 1.0) and cfg.flip_p == 0.5
    assert (cfg.jitter.p, cfg.jitter.brightness, cfg.jitter.hue) == (0.8, 0.4, 0.1)
    assert cfg.grayscale_p == 0.2 and cfg.blur.p == (0.0, 0.0) and cfg.solarize.p == (0.0, 0.0)


def test_config_from_omegaconf():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"crop_scale": [0.2, 1.0], "blur": {"p": [1.0, 0.1], "kernel_size": 5}})
    cfg = AugmentConfig.from_dict(node, CIFAR_MEAN, CIFAR_STD)
    assert cfg.crop_scale == (0.2, 1.0) and cfg.blur.p == (1.0, 0.1) and cfg.blur.kernel_size == 5


@pytest.mark.parametrize(
    "d, message",
    [
        ({"jitter": {"hue": 0.7}}, r"jitter\.hue = 0\.7 must be in \[0, 0\.5\]"),
        ({"jitter": {"brightness": -0.1}}, r"jitter\.brightness = -0\.1 must be >= 0"),
        ({"jitter": {"p": 1.5}}, r"jitter\.p = 1\.5 must be a probability"),
        ({"jitter": {"brigthness": 0.4}}, r"unknown key\(s\) jitter\.brigthness"),
        ({"colour": 1}, r"unknown key\(s\) colour; allowed: blur, crop_antialias"),
        ({"crop_interpolation": "nearest"}, r"crop_interpolation = 'nearest' must be one of bilinear, bicubic"),
        ({"crop_interpolation": "bicubic", "crop_antialias": False}, r"'bicubic' needs crop_antialias = true"),
        ({"flip_p": -0.1}, r"flip_p = -0\.1"),
        ({"crop_scale": [0.5, 0.2]}, r"crop_scale = \[0\.5, 0\.2\] must satisfy 0 < scale_min"),
        ({"crop_scale": [0.0, 1.0]}, r"crop_scale"),
        ({"crop_scale": [0.5, 1.2]}, r"crop_scale"),
        ({"crop_ratio": [2.0, 1.0]}, r"crop_ratio = \[2\.0, 1\.0\]"),
        ({"crop_size": 0}, r"crop_size = 0 must be an integer >= 1"),
        ({"blur": {"kernel_size": 4}}, r"blur\.kernel_size = 4 must be an odd integer"),
        ({"blur": {"p": [0.5]}}, r"blur\.p = \[0\.5\] must be a list of 2"),
        ({"blur": {"p": 0.5}}, r"blur\.p = 0\.5 must be a list of 2"),
        ({"solarize": {"p": [0.0, 2.0]}}, r"solarize\.p\[1\] = 2\.0"),
        ({"eval_crop_fraction": 0}, r"eval_crop_fraction = 0"),
        ({"mean": [0.5]}, r"mean/std .* come from the data set"),
    ],
)
def test_config_errors_name_the_key(d, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig.from_dict(d, CIFAR_MEAN, CIFAR_STD)


def test_config_mean_std_length_checked():
    with pytest.raises(ValueError, match="mean has 3 entries but std has 1"):
        AugmentConfig.from_dict({}, CIFAR_MEAN, (0.2,))


# ------------------------------------------------------------------------------------------------
# CUDA: runs on the device without host synchronisation
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync():
    imgs = _uint8(256, size=32).cuda()
    cfg = AugmentConfig.from_dict({"blur": {"p": [1.0, 0.1]}, "solarize": {"p": [0.0, 0.2]}}, CIFAR_MEAN, CIFAR_STD)
    aug = TwoViewAugment(cfg)
    g = torch.Generator(device="cuda").manual_seed(0)
    aug(imgs, g)  # first call: caches mean/std on the device (one host-to-device copy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        v1, v2 = aug(imgs, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert v1.device == imgs.device and v1.shape == (256, 3, 32, 32)
    with pytest.raises(ValueError, match="generator is on cpu"):
        aug(imgs, torch.Generator())
    # The crop is the same computation on both devices.
    x = _images(8, size=32).cuda()
    boxes = torch.tensor([[0, 0, 32, 32], [3, 5, 20, 17]] * 4, device="cuda")
    on_cpu = resized_crop(x.cpu(), boxes.cpu(), 32)
    torch.testing.assert_close(resized_crop(x, boxes, 32).cpu(), on_cpu, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# The whole pipeline against torchvision's ops on the same random draws
# ------------------------------------------------------------------------------------------------


def _torchvision_two_views(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Both views (2N, C, S, S) from torchvision.transforms.v2.functional, sample by sample, in torchvision's
    pipeline order (RandomResizedCrop, flip, RandomApply(ColorJitter) with its factor ranges and a random
    order per sample, RandomGrayscale, blur and solarize with one probability per view, Normalize). The random
    numbers are drawn from ``g`` in the order the batched code documents (the boxes by ``sample_crop_boxes``,
    checked against torchvision's sampler separately); every other choice is made here."""
    n, _, height, width = images.shape
    m, jit = 2 * n, cfg.jitter

    def uniform(lo, hi):
        return torch.empty(m).uniform_(lo, hi, generator=g)

    boxes = sample_crop_boxes(m, height, width, cfg.crop_scale, cfg.crop_ratio, g, "cpu")
    flip = torch.rand(m, generator=g) < cfg.flip_p
    jitter_on = torch.rand(m, generator=g) < jit.p
    fb = uniform(max(0.0, 1 - jit.brightness), 1 + jit.brightness)
    fc = uniform(max(0.0, 1 - jit.contrast), 1 + jit.contrast)
    fs = uniform(max(0.0, 1 - jit.saturation), 1 + jit.saturation)
    fh = uniform(-jit.hue, jit.hue)
    order = torch.rand(m, 4, generator=g).argsort(dim=1)
    gray_on = torch.rand(m, generator=g) < cfg.grayscale_p
    blur_u = torch.rand(m, generator=g)
    sigma = uniform(cfg.blur.sigma[0], cfg.blur.sigma[1])
    solarize_u = torch.rand(m, generator=g)

    ops = [(TF.adjust_brightness, fb, jit.brightness), (TF.adjust_contrast, fc, jit.contrast),
           (TF.adjust_saturation, fs, jit.saturation), (TF.adjust_hue, fh, jit.hue)]
    out = []
    for i in range(m):
        view = 0 if i < n else 1
        x = images[i % n].float() / 255
        x = TF.resized_crop(x, *boxes[i].tolist(), [cfg.crop_size] * 2, antialias=cfg.crop_antialias)
        if flip[i]:
            x = TF.horizontal_flip(x)
        if jitter_on[i]:
            for op in order[i].tolist():
                fn, factor, strength = ops[op]
                if strength > 0:
                    x = fn(x, float(factor[i]))
        if gray_on[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if blur_u[i] < cfg.blur.p[view]:
            x = TF.gaussian_blur(x, [cfg.blur.kernel_size] * 2, [float(sigma[i])] * 2)
        if solarize_u[i] < cfg.solarize.p[view]:
            x = TF.solarize(x, cfg.solarize.threshold)
        out.append(TF.normalize(x, list(cfg.mean), list(cfg.std)))
    return torch.stack(out)


@pytest.mark.parametrize("crop_size, antialias", [(12, True), (20, False)])
def test_two_view_pipeline_matches_torchvision_on_the_same_draws(crop_size, antialias):
    """Every op on, with distinct strengths, per-view probabilities and a non-default kernel and threshold:
    catches a wrong factor range, a shared jitter order, ops in the wrong order, a sigma or kernel or
    threshold that is not the configured one, and draws shared between the views."""
    cfg = AugmentConfig.from_dict(
        {"crop_size": crop_size, "crop_antialias": antialias, "flip_p": 0.5, "grayscale_p": 0.3,
         "jitter": {"p": 0.8, "brightness": 0.3, "contrast": 0.6, "saturation": 0.9, "hue": 0.35},
         "blur": {"p": [0.7, 0.3], "sigma": [0.4, 2.5], "kernel_size": 5},
         "solarize": {"p": [0.3, 0.6], "threshold": 0.35}},
        CIFAR_MEAN, CIFAR_STD)
    imgs = _uint8(40, size=16, seed=4)
    v1, v2 = TwoViewAugment(cfg)(imgs, torch.Generator().manual_seed(11))
    want = _torchvision_two_views(imgs, cfg, torch.Generator().manual_seed(11))
    got = torch.cat((v1, v2))
    # 1e-3 after normalisation (std ~0.2) is ~2e-4 on [0, 1]: float rounding of 7 chained ops, not a mistake.
    for i in range(len(got)):
        torch.testing.assert_close(got[i], want[i], atol=1e-3, rtol=0, msg=f"sample {i}")


def test_crop_positions_are_uniform_over_every_valid_offset():
    """A 4x4 box in an 8x8 image has 5 positions per axis, as torchvision's randint(0, 8 - 4 + 1): each is
    drawn about 1/5 of the time, the last one included."""
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(20000, 8, 8, (0.25, 0.25), (1.0, 1.0), g, "cpu")
    assert (boxes[:, 2:] == 4).all()
    for axis in (0, 1):
        counts = torch.bincount(boxes[:, axis], minlength=5).double() / len(boxes)
        assert len(counts) == 5
        assert (counts - 0.2).abs().max() < 0.015, counts  # SE 0.003


def test_eval_transform_centre_crop_offset_rounds_like_torchvision():
    """35 -> 32 leaves 3 pixels: torchvision's center_crop puts round(1.5) = 2 of them above and to the left."""
    imgs = _uint8(3, size=35)
    cfg = AugmentConfig(eval_crop_fraction=32 / 35)
    want = TF.center_crop(imgs.float() / 255, [32, 32])
    assert torch.equal(eval_transform(imgs, cfg), normalize(want, CIFAR_MEAN, CIFAR_STD))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "cifar10_jpg", "digits", "imagefolder", "stl10",
                                     "synthetic"])
def test_every_training_data_set_takes_the_crop_filter_from_the_command_line(dataset):
    """``dataset.augment.crop_interpolation=bicubic`` (README) without a ``+``: every data set config holds
    the crop's filter and antialias settings, at the augmentation's defaults."""
    from cl_suite.data.augment import AugmentConfig
    from cl_suite.engine.build import build_augment_config
    from helpers import compose_train

    default = build_augment_config(compose_train([f"dataset={dataset}"]).dataset)
    assert (default.crop_interpolation, default.crop_antialias) == (AugmentConfig.crop_interpolation,
                                                                    AugmentConfig.crop_antialias)
    bicubic = build_augment_config(compose_train([f"dataset={dataset}", "dataset.augment.crop_interpolation=bicubic"]
                                                 ).dataset)
    no_antialias = build_augment_config(compose_train([f"dataset={dataset}", "dataset.augment.crop_antialias=false"]
                                                      ).dataset)
    assert (bicubic.crop_interpolation, no_antialias.crop_antialias) == ("bicubic", False)
