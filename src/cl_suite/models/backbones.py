"""Encoders that map an image batch to one feature vector per image.

Every backbone here is an ``nn.Module`` with a ``num_features`` attribute and
``forward(x: (N, C, H, W)) -> (N, num_features)``; methods add their own heads on top. A backbone may
also have a classmethod ``check_input_size(cfg, crop_size)`` that start-up validation calls with the
``backbone`` config group and the training crop, to refuse a crop the model cannot take before any data
loads (a backbone without one is not checked).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from cl_suite.errors import ConfigError


def _use_cifar_stem(model: nn.Module) -> None:
    """Replace an ImageNet ResNet stem (7x7/2 conv + max-pool) by a 3x3/1 conv and no pool.

    The standard change for 32x32 images (SimCLR CIFAR variant, DCL/HCL, RINCE): with the ImageNet stem
    layer4 would see a 1x1 map. A 32x32 input then leaves a 4x4x512 map before pooling.
    """
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


class CifarResNet(nn.Module):
    """torchvision ResNet-18/50 with the CIFAR stem, without the classifier.

    ``flatten(1)`` after the pooling, not ``.squeeze()``: the latter breaks for a batch of one.
    """

    def __init__(self, depth: int = 18, cifar_stem: bool = True, zero_init_residual: bool = False):
        super().__init__()
        from torchvision.models import resnet18, resnet50  # here: torchvision costs ~2 s at import

        builders = {18: resnet18, 50: resnet50}
        if depth not in builders:
            raise ValueError(f"backbone.depth={depth} is not supported; allowed: {sorted(builders)}")
        net = builders[depth](weights=None, zero_init_residual=zero_init_residual)
        if cifar_stem:
            _use_cifar_stem(net)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


# timm.create_model arguments through which timm itself would download or read weights.
WEIGHT_SOURCE_KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class TimmBackbone(nn.Module):
    """Any ``timm`` model by name, as a pooled feature extractor (``num_classes=0``).

    Weights are never downloaded: ``pretrained_file`` may point to a local checkpoint. ``cifar_stem``
    applies the 3x3/1 stem surgery to timm ResNets (models with ``conv1`` and ``maxpool``).
    """

    def __init__(self, name: str, cifar_stem: bool = False, pretrained_file: str | None = None, **kwargs):
        super().__init__()
        import timm  # imported here: timm costs seconds at import and most runs do not need it

        sources = [k for k in WEIGHT_SOURCE_KEYS if k in kwargs]
        if sources:  # timm would download (pretrained, a URL or hub id in an overlay) or read a file itself
            raise ValueError(f"backbone.{sources[0]}={kwargs[sources[0]]!r:.80} is not allowed: weights are never "
                             "downloaded; pass a local file with backbone.pretrained_file=<path>")
        if not timm.is_model(name):
            raise ValueError(
                f"backbone.name={name!r} is not a timm model; list them with "
                "`python -c \"import timm; print(timm.list_models('*resnet*'))\"`"
            )
        if pretrained_file is not None:
            if not os.path.isfile(pretrained_file):
                raise FileNotFoundError(f"backbone.pretrained_file={pretrained_file!r} does not exist")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": os.path.abspath(pretrained_file)})
        net = timm.create_model(name, num_classes=0, **kwargs)
        if cifar_stem:
            if not (hasattr(net, "conv1") and hasattr(net, "maxpool")):
                raise ValueError(f"backbone.cifar_stem=true needs a ResNet-like model with conv1/maxpool, not {name!r}")
            _use_cifar_stem(net)
        self.num_features = net.num_features
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)

    @classmethod
    def check_input_size(cls, cfg, crop_size: int) -> None:
        """A model whose pretrained config fixes its input size (ViTs: position embeddings) takes only that
        size, unless ``img_size`` is given (timm then resizes the position embedding)."""
        if "img_size" in cfg:
            return
        import timm

        pretrained = timm.models.get_pretrained_cfg(cfg.name) if timm.is_model(cfg.name) else None
        size = getattr(pretrained, "input_size", None)
        if pretrained is not None and getattr(pretrained, "fixed_input_size", False) and size and size[-1] != crop_size:
            raise ConfigError(
                f"backbone.name={cfg.name!r} takes {size[-1]}x{size[-1]} inputs only, but "
                f"dataset.augment.crop_size={crop_size}: set +backbone.img_size={crop_size} (timm resizes the "
                f"position embedding) or dataset.augment.crop_size={size[-1]}")


class SmallConvNet(nn.Module):
    """A few conv-BN-ReLU blocks with pooling: trains at hundreds of images/s on a CPU.

    For the digits default run and the tests; ``widths`` sets the channels of each stage (each stage
    halves the resolution except the first).
    """

    def __init__(self, widths: tuple[int, ...] | list[int] = (32, 64, 128), in_channels: int = 3):
        super().__init__()
        if len(widths) == 0 or any(int(w) < 1 for w in widths):
            raise ValueError(f"backbone.widths={list(widths)} must be a non-empty list of positive ints")
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        self.net = nn.Sequential(*layers)
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @classmethod
    def check_input_size(cls, cfg, crop_size: int) -> None:
        """Every stage after the first halves the map (2x2 max-pool): the crop must survive them."""
        stages = len(cfg.widths)
        needed = 2 ** (stages - 1)
        if crop_size < needed:
            raise ConfigError(
                f"dataset.augment.crop_size={crop_size} is too small for backbone.widths={list(cfg.widths)}: "
                f"{stages} stages halve the image {stages - 1} times, which needs crops of at least {needed} px; "
                "use fewer stages or larger crops")
