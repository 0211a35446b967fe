"""Export a run's encoder as a backbone-only file: ``python -m cl_suite.export <run dir or .pt>``.

A training checkpoint holds the whole training state (the method's heads, queues and banks, the
optimizer, RNG states); the encoder is the ``backbone.*`` part of ``state["method"]``. Three formats:

``state_dict`` (default)
    ``{"format": "cl_suite.backbone", "version": 1, "header": {...}, "state_dict": {...}, "checksum": {...}}``:
    the suite's backbone module (``SmallConvNet``, ``CifarResNet``, ``TimmBackbone``), its state dict and a
    header of plain data (the backbone and data set config, the source run, checkpoint, step and sha256,
    the input size and normalisation). ``load_backbone(path)`` rebuilds the module from the header and
    loads it strictly; ``evaluate.py checkpoint=<file>`` evaluates it.
``torchvision``
    A plain state dict for ``torchvision.models.resnet<depth>`` without its classifier: the SSL encoder has
    none, so ``fc`` is not in the file and the model's ``fc`` must be ``nn.Identity()`` before
    ``load_state_dict(strict=True)``; a CIFAR-stem run also needs the 3x3/1 ``conv1`` and no max-pool.
    ``torchvision_resnet(depth, cifar_stem)`` builds exactly that model.
``timm``
    A plain state dict for ``timm.create_model(name, num_classes=0)`` (plus the same stem lines for a
    CIFAR-stem run). torchvision ResNets export to timm's ``resnet<depth>``: the key names and shapes are
    the same (checked at export, with a forward pass).

For the two library formats a ``<file>.json`` beside the file carries the header and the sha256 of the
tensors; ``evaluate.py`` and ``load_backbone`` need it (the ``.pt`` file is the library's own layout,
with no room for one). Every file is read with ``torch.load(weights_only=True)`` only, and checked
against its checksum: a damaged or crafted file is refused with an error naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cl_suite.engine import checkpoint as ckpt
from cl_suite.errors import UserError
from cl_suite.files import atomic_write

FORMATS = ("state_dict", "torchvision", "timm")
FORMAT_TAG = "cl_suite.backbone"  # the "format" value of a state_dict-format file
VERSION = 1
# The suite's backbone classes by the _target_ a config may name them with: the only classes a header
# may ask load_backbone to build (a header is read from a file that may come from anyone).
BACKBONE_CLASSES = {f"cl_suite.models.{module}{name}": name for name in ("CifarResNet", "SmallConvNet", "TimmBackbone")
                    for module in ("", "backbones.")}
# timm.create_model arguments that would read or download weights: never taken from a header.
_WEIGHT_SOURCE_KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "pretrained_file")
TORCHVISION_DEPTHS = (18, 34, 50, 101, 152)


class ExportError(UserError, ValueError):
    """A checkpoint that cannot be exported in the asked format, or an exported file that cannot be used.
    Names the file."""


@dataclasses.dataclass
class ExportedBackbone:
    """An exported file as read back: its format, header (plain data) and tensors."""

    path: Path
    format: str
    header: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


# ---- the library models ----

def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """The suite's CIFAR stem on a torchvision or timm ResNet: a 3x3/1 ``conv1`` and no max-pool."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_resnet(depth: int = 18, cifar_stem: bool = True) -> nn.Module:
    """``torchvision.models.resnet<depth>`` that a ``--format torchvision`` file loads into strictly: no
    classifier (``fc = nn.Identity()``: it returns the pooled features) and, with ``cifar_stem``, the
    3x3/1 ``conv1`` and no max-pool of the suite's CIFAR ResNets."""
    import torchvision

    if depth not in TORCHVISION_DEPTHS:
        raise ValueError(f"depth={depth}: torchvision has ResNets of depth {list(TORCHVISION_DEPTHS)}")
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    model.fc = nn.Identity()
    return apply_cifar_stem(model) if cifar_stem else model


def timm_model(name: str, cifar_stem: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **kwargs)`` (never downloads), with the suite's CIFAR stem
    if ``cifar_stem``: what a ``--format timm`` file loads into strictly."""
    import timm

    model = timm.create_model(name, num_classes=0, **kwargs)
    return apply_cifar_stem(model) if cifar_stem else model


# ---- reading an exported file ----

def read_export(path: str | Path, map_location: str | torch.device = "cpu") -> ExportedBackbone:
    """Read an exported backbone file (any format) without running code, and check it against its checksum.

    A ``state_dict``-format file carries its header and checksum; a ``torchvision``/``timm`` file needs the
    ``.json`` written beside it. Refused with an ``ExportError`` naming the file: unreadable, crafted (its
    pickle names anything but tensors and plain data), damaged (checksum), a training checkpoint, or not
    an export."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"exported backbone {str(path)!r}: no such file")
    data = _load_weights_only(path, map_location)
    if isinstance(data, dict) and data.get("format") == FORMAT_TAG:
        return _read_state_dict_format(path, data)
    if isinstance(data, dict) and "method" in data and "step" in data:
        from cl_suite.sweeps import command_override

        raise ExportError(f"{str(path)!r} is a training checkpoint, not an exported backbone: evaluate it with "
                          f"`python evaluate.py run=<its run dir> {command_override('checkpoint', path)}`, or "
                          f"export it first with `python -m cl_suite.export {shlex.quote(str(path))}`")
    if isinstance(data, dict) and data and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in data.items()):
        return _read_library_format(path, data)
    raise ExportError(f"{str(path)!r} is not an exported backbone (neither a cl_suite state_dict export nor a "
                      "plain state dict of tensors)")


def _load_weights_only(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            reason = ckpt._refusal_reason(err)
            if reason.startswith("it names the global"):
                raise ExportError(
                    f"exported backbone {str(path)!r} refused: its pickle holds more than tensors and plain data "
                    f"({reason}). Unpickling it could execute arbitrary code, and an export never needs to, so it "
                    "was not loaded. If you did not write this file, delete it.") from None
            raise ExportError(f"exported backbone {str(path)!r} cannot be read (truncated or damaged): "
                              f"{reason}") from None
        raise ExportError(f"exported backbone {str(path)!r} cannot be read (truncated or damaged): "
                          f"{type(err).__name__}: {err}") from None
    except Exception as err:  # torch raises several types for corrupt zip/pickle data
        raise ExportError(f"exported backbone {str(path)!r} cannot be read (truncated or damaged): "
                          f"{type(err).__name__}: {err}") from None


def _read_state_dict_format(path: Path, data: dict) -> ExportedBackbone:
    problem = ckpt._checksum_problem(data)
    if problem:
        raise ExportError(f"exported backbone {str(path)!r} is corrupted: "
                          f"{'it has no checksum' if problem == 'missing' else problem}; the file was not used. "
                          "Export it again from its run.")
    header, state = data.get("header"), data.get("state_dict")
    if data.get("version") != VERSION or not isinstance(header, dict) or not _is_tensor_dict(state):
        raise ExportError(f"exported backbone {str(path)!r}: version {data.get('version')!r} of the format is not "
                          f"version {VERSION}, or its header or state_dict is malformed")
    return ExportedBackbone(path, "state_dict", header, state)


def sidecar_path(path: Path) -> Path:
    """The ``.json`` beside an exported file: its header (and, for the library formats, its checksum)."""
    return path.with_suffix(".json")


def _read_library_format(path: Path, state: dict[str, torch.Tensor]) -> ExportedBackbone:
    side = sidecar_path(path)
    if not side.is_file():
        raise ExportError(f"{str(path)!r} is a plain state dict without its header {side.name} beside it: "
                          "cl_suite cannot tell which backbone it belongs to. Keep the .json that "
                          "`python -m cl_suite.export` wrote next to it, or export with --format state_dict")
    try:
        header = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"header {str(side)!r} of {str(path)!r} cannot be read: {err}") from None
    if not isinstance(header, dict) or header.get("format") not in FORMATS[1:]:
        raise ExportError(f"header {str(side)!r} is not the header of a torchvision or timm export "
                          f"(format {header.get('format') if isinstance(header, dict) else None!r})")
    actual = ckpt.state_digest(state)
    if header.get("sha256") != actual:
        raise ExportError(f"exported backbone {str(path)!r} is corrupted: its tensors do not match the sha256 in "
                          f"{side.name} (saved {str(header.get('sha256'))[:16]}..., content {actual[:16]}...); the "
                          "file was not used. Export it again from its run.")
    return ExportedBackbone(path, header["format"], header, state)


def _is_tensor_dict(node: Any) -> bool:
    return isinstance(node, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in node.items())


# ---- rebuilding the suite's backbone ----

def build_backbone(backbone_cfg: dict[str, Any], where: str = "header") -> nn.Module:
    """The suite's backbone module from a backbone config of plain data (a header's ``backbone``), with
    random weights. Only the suite's own backbone classes, called directly (nothing is resolved or
    instantiated), and never with an argument that reads or downloads weights."""
    from cl_suite import models

    if not isinstance(backbone_cfg, dict):
        raise ExportError(f"{where}: its backbone config is not a mapping: {backbone_cfg!r:.120}")
    kwargs = dict(backbone_cfg)
    target = kwargs.pop("_target_", None)
    if target not in BACKBONE_CLASSES:
        raise ExportError(f"{where}: backbone _target_ {target!r} is not one of the suite's backbones "
                          f"({', '.join(sorted(set(f'cl_suite.models.{n}' for n in BACKBONE_CLASSES.values())))})")
    kwargs.pop("pretrained_file", None)  # the exported weights are loaded over whatever it would read
    sources = [k for k in _WEIGHT_SOURCE_KEYS if k in kwargs]
    if sources:
        raise ExportError(f"{where}: backbone settings {sources} would read or download weights; refused")
    for key, value in kwargs.items():
        if not _is_plain(value):
            raise ExportError(f"{where}: backbone.{key}={value!r:.80} is not plain data")
    try:
        return getattr(models, BACKBONE_CLASSES[target])(**kwargs)
    except (TypeError, ValueError) as err:
        raise ExportError(f"{where}: its backbone config {backbone_cfg} does not build a backbone: {err}") from None


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def backbone_of(export: ExportedBackbone) -> nn.Module:
    """The suite's backbone module of ``export`` with its weights (strict load), in eval mode."""
    backbone = build_backbone(export.header.get("backbone"), f"exported backbone {str(export.path)!r}")
    # The library formats hold the wrapped library model's state (the suite module's ``.net``).
    target = backbone if export.format == "state_dict" else backbone.net
    try:
        target.load_state_dict(export.state_dict, strict=True)
    except RuntimeError as err:
        details = "\n  ".join(str(err).splitlines()[1:4])
        raise ExportError(f"exported backbone {str(export.path)!r} does not fit the backbone its header describes "
                          f"({export.header.get('backbone')}):\n  {details}") from None
    return backbone.eval()


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder of an exported file, as the suite's backbone module with its weights, in eval mode:
    ``backbone = cl_suite.export.load_backbone("run/backbone_state_dict.pt")``; ``backbone(x)`` gives
    ``(N, backbone.num_features)`` features of images normalised as ``read_export(path).header["input"]`` says.
    Works for every format (``torchvision``/``timm`` files with their ``.json`` beside them)."""
    return backbone_of(read_export(path, map_location))


# ---- exporting ----

def resolve_source(source: str | Path, checkpoint: str | None = None) -> tuple[Path, Path]:
    """``(checkpoint file, run dir)`` of a run dir (its ``checkpoints/<checkpoint>.pt``, default last) or a
    ``.pt`` file (its run dir: the folder above ``checkpoints/``, else the file's folder)."""
    path = Path(source).expanduser()
    if path.is_dir():
        name = checkpoint or "last"
        file = path / ckpt.CHECKPOINT_DIR / f"{name}.pt"
        if not file.is_file():
            available = sorted(p.stem for p in (path / ckpt.CHECKPOINT_DIR).glob("*.pt"))
            raise ExportError(f"{str(path)!r} has no {ckpt.CHECKPOINT_DIR}/{name}.pt; available: {available or 'none'} "
                              "(pass a run dir that saved a checkpoint, or a .pt file)")
        return file, path
    if not path.is_file():
        raise ExportError(f"{str(source)!r}: no such run dir or checkpoint file")
    if checkpoint is not None:
        raise ExportError(f"--checkpoint {checkpoint} names a checkpoint of a run dir, but {str(source)!r} is a file")
    run_dir = path.parent.parent if path.parent.name == ckpt.CHECKPOINT_DIR else path.parent
    return path, run_dir


@dataclasses.dataclass
class CheckpointBackbone:
    """The encoder of a training checkpoint: the suite's backbone module with its weights, in eval mode."""

    backbone: nn.Module
    backbone_cfg: dict[str, Any]  # the run's backbone config (pretrained_file: None: the weights are loaded)
    weights: dict[str, torch.Tensor]  # the backbone's tensors (CPU copies)
    config: dict[str, Any]  # the whole run config the checkpoint holds
    state: dict[str, Any]  # the checkpoint itself


def checkpoint_backbone(path: Path, trusted: tuple[str, ...] = ()) -> CheckpointBackbone:
    """The encoder of the training checkpoint ``path``, read by ``engine.checkpoint.load_checkpoint``
    (weights only, checksum checked), rebuilt from the run config it holds (only the suite's backbone
    classes) and loaded strictly. ``trusted``: modules of the user's own method, imported to check that its
    representation is the backbone's."""
    state = ckpt.load_checkpoint(path)
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict):
        raise ExportError(f"checkpoint {str(path)!r} holds no run config (saved by an older cl_suite?): cannot tell "
                          "which backbone its weights belong to")
    _check_method_encodes_with_backbone(path, config, trusted)
    where = f"checkpoint {str(path)!r}"
    backbone_cfg = {k: v for k, v in config["backbone"].items() if k != "pretrained_file"}
    if "pretrained_file" in config["backbone"]:
        backbone_cfg["pretrained_file"] = None
    target = backbone_cfg.get("_target_")
    if isinstance(target, str) and target not in BACKBONE_CLASSES and not target.startswith("cl_suite."):
        raise ExportError(f"{where}: backbone._target_={target!r} is a backbone of your own; the export (and "
                          "api.load_encoder) rebuild only the suite's backbones (--trust-target covers a method of your "
                          "own, not a backbone): evaluate the run with evaluate.py "
                          f"trust_targets=[{target.rsplit('.', 1)[0]}], or load the checkpoint's backbone.* tensors "
                          "into your module")
    backbone = build_backbone(backbone_cfg, where)
    weights = {k[len("backbone."):]: v.detach().cpu().clone() for k, v in state["method"].items()
               if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        details = "\n  ".join(str(err).splitlines()[1:4])
        raise ExportError(f"{where}: its backbone weights do not fit its own backbone config:\n  {details}") from None
    backbone.eval()
    return CheckpointBackbone(backbone, backbone_cfg, weights, config, state)


def default_output(run_dir: Path, checkpoint: Path, fmt: str) -> Path:
    """``<run>/backbone_<format>.pt`` for ``last``, ``<run>/backbone_<format>_<checkpoint>.pt`` otherwise."""
    suffix = "" if checkpoint.name == ckpt.LAST else f"_{checkpoint.stem}"
    return run_dir / f"backbone_{fmt}{suffix}.pt"


def export_backbone(source: str | Path, fmt: str = "state_dict", out: str | Path | None = None,
                    checkpoint: str | None = None, trusted: tuple[str, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """Write the encoder of a run's checkpoint as a backbone-only file; return its path and header.
    ``trusted`` (``--trust-target``): modules of the user's own methods, imported to check that their
    representation is the backbone's.

    The checkpoint is read by ``engine.checkpoint.load_checkpoint`` (weights only, checksum checked). The
    exported tensors are loaded into the rebuilt suite backbone (strict), and for the library formats into
    the library model too, whose features must equal the suite backbone's on a test batch: a file is
    only written when the documented one-line load gives the same encoder."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {list(FORMATS)}")
    path, run_dir = resolve_source(source, checkpoint)
    out = Path(out).expanduser() if out is not None else default_output(run_dir, path, fmt)
    if out.suffix not in (".pt", ".pth"):
        raise ExportError(f"--out {str(out)!r}: name the file .pt or .pth (its header goes to the .json beside it)")
    if out.exists() and os.path.samefile(out, path):
        raise ExportError(f"--out {str(out)!r} is the checkpoint itself; choose another file")

    found = checkpoint_backbone(path, trusted)
    state, config, backbone, backbone_cfg, weights = (found.state, found.config, found.backbone, found.backbone_cfg,
                                                      found.weights)
    where = f"checkpoint {str(path)!r}"

    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    input_size = (dataset.get("augment") or {}).get("crop_size")
    header: dict[str, Any] = {
        "format": fmt,
        "backbone": backbone_cfg,
        "num_features": int(backbone.num_features),
        "input": {"size": input_size, "mean": dataset.get("mean"), "std": dataset.get("std"),
                  "eval_crop_fraction": (dataset.get("augment") or {}).get("eval_crop_fraction")},
        "dataset": dataset,
        "source": {"run": str(run_dir.resolve()), "checkpoint": str(path.resolve()), "step": state.get("step"),
                   "epoch": state.get("epoch"), "method": (config.get("method") or {}).get("_target_"),
                   "sha256": ckpt.state_digest(state)},  # = the checksum saved with it (load_checkpoint checked)
    }
    if fmt == "state_dict":
        tensors = weights
        header["load"] = f'cl_suite.export.load_backbone("{out.name}")'
        ckpt.save_checkpoint(out, {"format": FORMAT_TAG, "version": VERSION, "header": header, "state_dict": tensors})
    else:
        tensors = {k[len("net."):]: v for k, v in weights.items()}
        model, header["load"] = _library_model(fmt, backbone_cfg, where)
        _check_same_encoder(model, tensors, backbone, input_size, fmt, where)
        header["load"] += f'; model.load_state_dict(torch.load("{out.name}", weights_only=True))'
        header["sha256"] = ckpt.state_digest(tensors)
        atomic_write(out, lambda f: torch.save(tensors, f))
    ckpt.write_json(sidecar_path(out), header)
    return out, header


def _check_method_encodes_with_backbone(path: Path, config: dict, trusted: tuple[str, ...] = ()) -> None:
    """Refuse methods whose evaluated representation is more than ``backbone(x)`` (CMC: two encoders on
    the L and ab channels of Lab images): a backbone-only file would not be their encoder. Only the
    suite's methods and those of ``trusted`` modules are imported to tell."""
    from hydra.utils import get_class

    from cl_suite.methods.base import ContrastiveMethod

    target = (config.get("method") or {}).get("_target_")
    importable = isinstance(target, str) and any(target.startswith(prefix + ".")
                                                  for prefix in ("cl_suite.methods", *trusted))
    try:
        cls = get_class(target) if importable else None
    except Exception:
        cls = None
    if cls is None or not issubclass(cls, ContrastiveMethod):
        raise ExportError(f"checkpoint {str(path)!r}: method._target_={target!r} is not one of the suite's methods"
                          + ("" if importable else " (a method of your own: --trust-target <its module>)"))
    if cls.encode is not ContrastiveMethod.encode:
        raise ExportError(f"checkpoint {str(path)!r}: method {cls.__name__} does not evaluate the backbone's "
                          "features alone (its representation combines several encoders), so a backbone-only file "
                          "would not be its encoder; evaluate the run with evaluate.py instead")


def _library_model(fmt: str, backbone_cfg: dict, where: str) -> tuple[nn.Module, str]:
    """The torchvision or timm model of the export and the lines that build it (for the header)."""
    target = BACKBONE_CLASSES[backbone_cfg["_target_"]]
    stem = bool(backbone_cfg.get("cifar_stem", target == "CifarResNet"))
    stem_lines = "; model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity()"
    if target == "CifarResNet":
        depth = int(backbone_cfg.get("depth", 18))
        name = f"resnet{depth}"
    elif target == "TimmBackbone":
        name = backbone_cfg["name"]
        depth = int(name[len("resnet"):]) if name.startswith("resnet") and name[len("resnet"):].isdigit() else None
    else:
        raise ExportError(f"{where}: backbone {target} is the suite's own network, with no {fmt} counterpart; "
                          "export it with --format state_dict (load it with cl_suite.export.load_backbone)")
    if fmt == "torchvision":
        if depth not in TORCHVISION_DEPTHS:
            raise ExportError(f"{where}: timm model {name!r} has no torchvision counterpart (only timm's "
                              f"resnet{'/'.join(map(str, TORCHVISION_DEPTHS))} map exactly); export it with "
                              "--format timm or --format state_dict")
        model = torchvision_resnet(depth, stem)
        load = f"model = torchvision.models.resnet{depth}(); model.fc = nn.Identity()"
    else:
        kwargs = {k: v for k, v in backbone_cfg.items() if k not in ("_target_", "name", "cifar_stem", "depth",
                                                                     "zero_init_residual", "pretrained_file")}
        model = timm_model(name, stem, **kwargs)
        extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        load = f'model = timm.create_model("{name}", num_classes=0{extra})'
    if stem:
        stem_lines = stem_lines.replace("64", str(model.conv1.out_channels))
    return model, load + (stem_lines if stem else "")


def _check_same_encoder(model: nn.Module, tensors: dict, backbone: nn.Module, input_size: Any, fmt: str,
                        where: str) -> None:
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        details = "\n  ".join(str(err).splitlines()[1:4])
        raise ExportError(f"{where}: the backbone's weights do not map exactly onto the {fmt} model:\n  {details}\n"
                          "Export it with --format state_dict") from None
    size = int(input_size) if isinstance(input_size, int) and input_size > 0 else 32
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        expected, got = backbone(x), model(x).flatten(1)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ExportError(f"{where}: the {fmt} model with these weights does not compute the backbone's features "
                          "(another architecture under the same key names); export it with --format state_dict")
