"""Checkpoints and run files, written so that a crash never leaves a half-written file behind.

A run's ``checkpoints/`` folder holds one ``step_<step>.pt`` per save (the newest
``trainer.keep_last_checkpoints`` are kept), ``last.pt`` (the newest; what ``resume=auto`` reads) and
``best.pt`` (the save with the best monitored metric). ``last.pt`` and ``best.pt`` are hard links to
step files: no extra copy on disk, and pruning a step file never removes the best one.

Loading a checkpoint never runs code: files are read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain data (dicts, lists, tuples, numbers, strings), so a crafted pickle (a planted
``last.pt`` that ``resume=auto`` would read, a file passed as ``resume=`` or ``checkpoint=``) is refused
before any of it runs. Saving converts what that loader cannot rebuild (numpy arrays and scalars,
OmegaConf nodes) into plain data, and refuses anything else. Each checkpoint carries a sha256 over its
whole content (tensor bytes included), checked on load: a bit flip on disk is refused like a truncated
file, naming the intact checkpoints beside it.
"""
from __future__ import annotations

import collections
import copy
import hashlib
import json
import os
import pickle
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cl_suite.errors import MissingPathError, UserError
from cl_suite.files import atomic_write
from cl_suite.paths import CHECKPOINT_DIR, LAST_CHECKPOINT as LAST

BEST = "best.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
# The temporary names of atomic_write (".<name>.<random>.tmp") and _atomic_link (".<name>.<pid>.link").
_TEMP_FILE = re.compile(r"^\.(step_\d+|last|best)\.pt\..+\.(tmp|link)$")
CHECKSUM = "checksum"  # the key of the checksum record in a saved state
_CHECKSUM_SCHEME = "sha256-v1"
# The numpy uint32 array of the numpy RNG state, as checkpoints saved before the conversion to plain data
# hold it: array, dtype and uint32 dtype class (numpy 1 names the rebuild function numpy.core...).
# Allowed only inside load_checkpoint's torch.load, not process-wide; nothing in these runs code.
_LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, (np._core.multiarray._reconstruct,
                         "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: unreadable, not ours, or from another model. Names the file."""


def _atomic_link(source: Path, path: Path) -> None:
    """Make ``path`` name the same file as ``source``, atomically (a hard link, or a copy where the file
    system has none), so ``path`` is never missing or half-written."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.link"
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` as plain data (see ``plain_state``) with its checksum under ``CHECKSUM``."""
    plain = plain_state(state)
    if CHECKSUM in plain:
        raise ValueError(f"a checkpoint state may not have a {CHECKSUM!r} key: save_checkpoint writes it")
    plain = {**plain, CHECKSUM: {"scheme": _CHECKSUM_SCHEME, "sha256": state_digest(plain)}}
    atomic_write(Path(path), lambda f: torch.save(plain, f))


_PLAIN_LEAVES = (torch.Tensor, bool, int, float, str, bytes, type(None), torch.dtype, torch.device)


def plain_state(node: Any, where: str = "state") -> Any:
    """``node`` with what ``torch.load(weights_only=True)`` cannot rebuild converted into plain data:
    numpy arrays become lists (``np.random.set_state`` takes the key as a list), numpy scalars Python
    numbers, OmegaConf nodes plain containers. Containers are copied only where something changed, so
    a ``state_dict``'s ``OrderedDict`` keeps its ``_metadata`` (module versions). Anything else is refused:
    a checkpoint that could not be loaded back safely is worse than a save that fails now."""
    if isinstance(node, _PLAIN_LEAVES):
        return node
    if isinstance(node, np.ndarray):
        return node.tolist()
    if isinstance(node, np.generic):
        return node.item()
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        converted = {key: plain_state(value, f"{where}[{key!r}]") for key, value in node.items()}
        if all(converted[key] is value for key, value in node.items()):
            return node
        out = collections.OrderedDict(converted) if isinstance(node, collections.OrderedDict) else converted
        if hasattr(node, "_metadata"):
            out._metadata = node._metadata
        return out
    if isinstance(node, (list, tuple)):
        converted = [plain_state(value, f"{where}[{i}]") for i, value in enumerate(node)]
        if all(a is b for a, b in zip(converted, node)):
            return node
        return converted if isinstance(node, list) else tuple(converted)
    raise CheckpointError(f"cannot save {where}: a {type(node).__module__}.{type(node).__qualname__} cannot be "
                          "loaded back without running code (checkpoints are read with weights_only=True); "
                          "store tensors, numbers, strings, lists and dicts")


def state_digest(state: Any) -> str:
    """sha256 over a canonical serialisation of ``state``: dict keys in sorted order, each value tagged
    with its type, tensors as dtype, shape and raw bytes (on the CPU). Independent of where the tensors
    live and of dict insertion order, so the saved and the loaded state hash the same."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest, node: Any) -> None:
    if isinstance(node, torch.Tensor):
        tensor = node.detach()
        digest.update(f"T{str(tensor.dtype)}{tuple(tensor.shape)};".encode())
        if tensor.numel():
            flat = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(flat.numpy()))
    elif isinstance(node, dict):
        digest.update(f"D{len(node)};".encode())
        for key in sorted(node, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, node[key])
    elif isinstance(node, (list, tuple)):
        digest.update(f"{'L' if isinstance(node, list) else 'U'}{len(node)};".encode())
        for value in node:
            _feed(digest, value)
    elif isinstance(node, str):
        data = node.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)};".encode() + data)
    elif isinstance(node, bytes):
        digest.update(f"B{len(node)};".encode() + node)
    elif isinstance(node, bool) or node is None:
        digest.update(f"{node!r};".encode())
    elif isinstance(node, int):
        digest.update(f"I{node};".encode())
    elif isinstance(node, float):
        digest.update(f"F{node.hex()};".encode())
    else:  # torch.dtype, torch.device: their repr is canonical
        digest.update(f"O{type(node).__qualname__}:{node!r};".encode())


def remove_stale_temp_files(folder: Path, older_than: float) -> list[Path]:
    """Delete the temporary files of saves that were killed half-way (``.step_<n>.pt.<random>.tmp``,
    ``.last.pt.<pid>.link``) and last modified before ``older_than`` (a ``time.time()``): a checkpoint
    folder has one writer, the run's main process, so any such file from before its current save is an
    orphan; a newer one may be another save's file in progress and is left alone."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if not _TEMP_FILE.match(path.name):
            continue
        try:
            if path.stat().st_mtime < older_than:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # gone meanwhile
            pass
    return removed


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(Path(path), lambda f: f.write(json.dumps(data, indent=2, sort_keys=False).encode()))


def step_checkpoints(folder: Path) -> list[Path]:
    """The ``step_<step>.pt`` files of a checkpoint folder, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_run_checkpoint(folder: Path, state: dict[str, Any], step: int, keep_last: int, best: bool = False) -> Path:
    """Write ``step_<step>.pt``, point ``last.pt`` (and, if ``best``, ``best.pt``) at it, then delete all
    but the ``keep_last`` newest step files. Each file is complete before any name points at it."""
    remove_stale_temp_files(folder, older_than=time.time())
    path = folder / f"step_{step:09d}.pt"
    save_checkpoint(path, state)
    _atomic_link(path, folder / LAST)
    if best:
        _atomic_link(path, folder / BEST)
    older = [p for p in step_checkpoints(folder) if p != path]
    for stale in older[: max(0, len(older) - (keep_last - 1))]:
        stale.unlink()
    return path


def other_checkpoints(path: Path) -> list[Path]:
    """The step checkpoints next to ``path`` that are other files (not hard links to it), newest first:
    where to go back to when ``path`` is damaged."""
    def same(a: Path) -> bool:
        try:
            return os.path.samefile(a, path)
        except OSError:
            return False

    return [p for p in reversed(step_checkpoints(path.parent)) if not same(p)]


def resolve_checkpoint(resume: str | Path) -> Path:
    """``resume`` is a checkpoint file or a run dir (then its ``checkpoints/last.pt``)."""
    path = Path(resume).expanduser()
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / LAST
        if not candidate.is_file():
            raise MissingPathError(f"resume={str(resume)!r} is a directory without {CHECKPOINT_DIR}/{LAST}: "
                                   "pass a run dir that saved a checkpoint, or a .pt file")
        return candidate
    if not path.is_file():
        raise MissingPathError(f"resume={str(resume)!r}: no such checkpoint file or run dir")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running any code in it, and check its checksum.

    Refused, with an error that names the file (and the intact checkpoints beside it, if any): a file
    that cannot be read (truncated, not a checkpoint); one whose pickle names anything but tensors and
    plain data (it would run code when unpickled: never loaded, whatever it holds); one whose content
    no longer matches its checksum (a bit flip on disk or in a copy). Checkpoints saved before checksums
    were added load with a warning that they cannot be verified.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise _unreadable(path, err) from err
        reason = _refusal_reason(err)
        if not reason.startswith("it names the global"):  # damaged pickle data rather than a foreign object
            raise _unreadable(path, err, reason) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} refused: its pickle holds more than tensors and plain data "
            f"({reason}). Unpickling such a file can execute arbitrary code, and a "
            "cl_suite checkpoint never needs to, so it was not loaded (and never is: checkpoints are read with "
            f"weights_only=True only). If you did not write this file, delete it.{_fallback_hint(path)}") from None
    except Exception as err:  # torch raises several types for corrupt zip/pickle data
        raise _unreadable(path, err) from err
    if not isinstance(state, dict) or "method" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a cl_suite training checkpoint (no 'method' "
                              f"state){_fallback_hint(path)}")
    problem = _checksum_problem(state)
    if problem == "missing":
        warnings.warn(f"checkpoint {str(path)!r} has no checksum (saved before checksums were added): its "
                      "content cannot be verified", stacklevel=2)
    elif problem:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: {problem}. A bit flip on disk or in a copy; "
                              f"the file was not used.{_fallback_hint(path)}")
    state.pop(CHECKSUM, None)
    return state


# What a training checkpoint holds besides its config: a checksum proves a file is intact, not that whoever
# computed it wrote a usable state, so the structure is checked before any of it is applied.
TRAINING_STATE_MAPPINGS = ("method", "probe", "optimizer", "probe_optimizer", "scheduler", "scaler", "history", "rng")


def check_training_state(path: Path, state: dict[str, Any]) -> None:
    """Refuse (``CheckpointError``, naming the file and the intact earlier checkpoints) a checkpoint whose
    parts are missing or of the wrong kind, or whose step is not a whole number >= 0."""
    problems = [f"'{key}' is missing" if key not in state else f"'{key}' is a {type(state[key]).__name__}, not a mapping"
                for key in TRAINING_STATE_MAPPINGS if not isinstance(state.get(key), dict)]
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        problems.append(f"its step {step!r:.40} is not a whole number >= 0")
    history = state.get("history")
    if isinstance(history, dict) and not isinstance(history.get("epochs", []), list):
        problems.append("its history's 'epochs' is not a list")
    if problems:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a usable training checkpoint: {'; '.join(problems)}"
                              f"{_fallback_hint(path)}")


def check_known_keys(path: Path, what: str, saved: dict, fresh: dict) -> None:
    """Refuse a saved state (``saved``) with keys this run's state of that part (``fresh``) lacks: an lr
    scheduler's ``load_state_dict`` sets any key as an attribute (an ``optimizer`` key replaced its
    optimizer, and the run failed at its first step)."""
    unknown = sorted(map(str, set(saved) - set(fresh)))
    if unknown:
        raise CheckpointError(f"checkpoint {str(path)!r}: its {what} state has keys this run's has not: "
                              f"{unknown[:5]}{_fallback_hint(path)}")


def applied_or_explained(path: Path, what: str, apply: Callable[[], Any]) -> Any:
    """``apply()`` (a ``load_state_dict`` of one part of a checkpoint); an error it raises on a state that
    does not fit this run (a wrong shape, a missing key, a foreign type) becomes a ``CheckpointError``."""
    try:
        return apply()
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r}: its {what} state does not fit this run "
                              f"({type(err).__name__}: {str(err)[:200]}){_fallback_hint(path)}") from None


def check_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, what: str) -> None:
    """Every tensor a restored ``optimizer`` keeps per parameter (momentum, Adam's moments) has that
    parameter's shape, or is a scalar (a step count): a file with other shapes would fail at the first step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise CheckpointError(f"checkpoint {str(path)!r}: its {what} state {key!r} has shape "
                                          f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)}"
                                          f"{_fallback_hint(path)}")


def _unreadable(path: Path, err: Exception, reason: str | None = None) -> CheckpointError:
    """``reason`` replaces the text of torch's weights-only errors, which advise ``weights_only=False``."""
    return CheckpointError(f"checkpoint {str(path)!r} cannot be read (truncated or not a cl_suite checkpoint): "
                           f"{type(err).__name__}: {reason or err}{_fallback_hint(path)}")


def _refusal_reason(err: Exception) -> str:
    """What the file asked for, from torch's weights-only error (the rest of that message suggests
    ``weights_only=False``, which is exactly what must not be done with such a file)."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it names the global {found.group(1)}"
    found = re.search(r"Unsupported operand \d+", text) or re.search(r"WeightsUnpickler error: *(\S[^\n]*)", text)
    return found.group(0 if found.re.groups == 0 else 1).strip() if found else "a pickle instruction it does not allow"


def _checksum_problem(state: dict) -> str | None:
    """None when ``state`` matches its saved checksum, "missing" when it has none, else what is wrong."""
    record = state.get(CHECKSUM)
    if record is None:
        return "missing"
    if not isinstance(record, dict) or record.get("scheme") != _CHECKSUM_SCHEME or not isinstance(
            record.get("sha256"), str):
        return f"its checksum record is not a {_CHECKSUM_SCHEME} record ({record!r:.80})"
    actual = state_digest({k: v for k, v in state.items() if k != CHECKSUM})
    if actual != record["sha256"]:
        return (f"its content does not match the checksum saved with it (sha256 saved {record['sha256'][:16]}..., "
                f"content {actual[:16]}...)")
    return None


def _is_intact(path: Path) -> bool:
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS), warnings.catch_warnings():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and "method" in state and _checksum_problem(state) in (None, "missing")


def _fallback_hint(path: Path) -> str:
    """Where to go on from: the other step checkpoints of the folder that load and match their checksum
    (each is read once more here: only on the way to an error)."""
    others = [p for p in other_checkpoints(path) if _is_intact(p)]
    if not others:
        return ""
    return (f"\nThe file was left as it is. Intact earlier checkpoints of this run: "
            f"{', '.join(p.name for p in others)}; continue from the newest with resume={others[0]} "
            f"(or evaluate it with checkpoint={others[0]})")


# Config keys whose values decide the shapes of the saved tensors (or what they mean): a checkpoint
# saved under other values cannot be loaded into this run's model (or optimizer: SGD has no Adam moments).
_MODEL_KEYS = ("method._target_", "backbone", "dataset.name", "optimizer._target_", "probe.optimizer")
# Keys whose change loads fine but breaks an exact continuation (data order, schedule, step <-> epoch).
# (trainer.max_steps is not one: it stops a run early without changing its schedule, so a run split into
# max_steps pieces continues exactly.)
_CONTINUATION_KEYS = ("seed", "trainer.batch_size", "trainer.epochs", "trainer.positive_pairs", "dataset", "optimizer",
                      "scheduler", "method", "sampler", "probe")
# Keys that say which objective a run trains: with resume=auto (the run folder's own checkpoint) a change
# means the folder is being reused by another configuration, not continued.
_OBJECTIVE_KEYS = ("method", "sampler", "trainer.positive_pairs")


# Settings added after checkpoints were first written, with the value those checkpoints were trained with:
# (the group, the group's _target_ must end with this (None: any), the defaults).
_ADDED_DEFAULTS = (
    ("probe", None, {"optimizer": "adamw", "momentum": 0.9, "batch_size_reference": None, "schedule": "constant"}),
    ("optimizer", "LARS", {"clip_lr": False, "trust_denominator": "update_norm"}),
    ("scheduler", "warmup_cosine", {"warmup_prefix": True}),
    ("method", "MoCo", {"queue_per_view": False}),
    ("trainer", None, {"positive_pairs": "same_image"}),
)


def with_added_defaults(saved: dict, current: dict) -> dict:
    """``saved`` (a checkpoint's config) with the settings added since it was written filled in with the
    values it was trained with, where this run's config (``current``) has them, so a resume compares like
    with like (no "changed" warning for them)."""
    out = copy.deepcopy(saved)
    for group, target, defaults in _ADDED_DEFAULTS:
        old, new = out.get(group), current.get(group)
        if isinstance(old, dict) and isinstance(new, dict) and (
                target is None or str(old.get("_target_", "")).endswith(target)):
            out[group] = {**{k: v for k, v in defaults.items() if k in new}, **old}
    return out


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def config_differences(saved: dict, current: dict, keys: tuple[str, ...]) -> list[str]:
    """``key: checkpoint X, this run Y`` for every leaf under ``keys`` that differs."""
    lines = []
    for key in keys:
        a, b = _flatten(_lookup(saved, key), key), _flatten(_lookup(current, key), key)
        for leaf in sorted(set(a) | set(b)):
            if leaf.endswith("pretrained_file"):  # only read at construction; the saved weights win
                continue
            if a.get(leaf) != b.get(leaf):
                lines.append(f"{leaf}: checkpoint {a.get(leaf)!r}, this run {b.get(leaf)!r}")
    return lines


def check_same_model(path: Path, saved: dict, current: dict) -> None:
    """Refuse a checkpoint of another method, backbone or data set before ``load_state_dict`` would
    answer with a wall of missing and unexpected keys."""
    differences = config_differences(saved, current, _MODEL_KEYS)
    if differences:
        raise CheckpointError(
            f"checkpoint {str(path)!r} belongs to a different model, data set or optimizer:\n  " + "\n  ".join(differences)
            + "\nRun with the checkpoint's settings, or start fresh: resume=null or another run dir "
              "(hydra.run.dir=...). Nothing was overwritten.")


def check_same_objective(path: Path, saved: dict, current: dict, written: dict) -> None:
    """Refuse, under ``resume=auto``, a run folder's checkpoint trained with another method or sampler
    setting: a command (or a sweep job) that reuses a folder would otherwise continue, or only re-evaluate,
    another run's weights and relabel them with its own settings. ``resume=<path>`` continues on purpose.
    A value that follows another setting by interpolation in this run's config (``written``, unresolved:
    HCL's ``anneal_epochs: ${trainer.epochs}``) changes with it, as when a run is extended, and is left to
    the continuation warning."""
    differences = [line for line in config_differences(saved, current, _OBJECTIVE_KEYS)
                   if not _is_interpolation(_lookup(written, line.split(":", 1)[0]))]
    if differences:
        raise CheckpointError(
            f"this run folder already holds a run with another objective (its checkpoint {str(path)!r}):\n  "
            + "\n  ".join(differences)
            + "\nA run folder belongs to one configuration: run in another folder (hydra.run.dir=..., or "
              "hydra.sweep.dir=... for a sweep), or continue this checkpoint with the new settings on purpose: "
              f"resume={path}. Nothing was overwritten.")


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def continuation_differences(saved: dict, current: dict) -> list[str]:
    """Settings that changed since the checkpoint and make the continuation differ from the original run."""
    return config_differences(saved, current, _CONTINUATION_KEYS)


def load_state_or_explain(module: torch.nn.Module, state: dict, path: Path, part: str, saved: dict,
                          current: dict) -> None:
    """``module.load_state_dict(state)``; on a shape or key mismatch, an error naming the config keys that
    differ from the checkpoint's, and only the first few tensors."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        differences = config_differences(saved, current, ("method", "backbone", "dataset"))
        details = "\n  ".join(str(err).splitlines()[1:4])
        raise CheckpointError(
            f"checkpoint {str(path)!r}: its {part} state does not fit this run's model.\n"
            + ("Settings that differ from the checkpoint's:\n  " + "\n  ".join(differences) + "\n" if differences
               else "")
            + f"First mismatches:\n  {details}\nRun with the checkpoint's settings, or start fresh (resume=null)."
        ) from None
