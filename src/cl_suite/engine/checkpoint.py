"""Checkpoints and run files, written so that a crash never leaves a half-written file behind.

A run's ``checkpoints/`` folder holds one ``step_<step>.pt`` per save (the newest
``trainer.keep_last_checkpoints`` are kept), ``last.pt`` (the newest; what ``resume=auto`` reads) and
``best.pt`` (the save with the best monitored metric). ``last.pt`` and ``best.pt`` are hard links to
step files: no extra copy on disk, and pruning a step file never removes the best one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, not ours, or from another model. Names the file."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``.

    ``os.replace`` is atomic on POSIX: readers see the old file or the new one, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files owner-only; give run files the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def write_json(path: str | Path, data: Any) -> None:
    _atomic_write(Path(path), lambda f: f.write(json.dumps(data, indent=2, sort_keys=False).encode()))


def step_checkpoints(folder: Path) -> list[Path]:
    """The ``step_<step>.pt`` files of a checkpoint folder, oldest step first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_run_checkpoint(folder: Path, state: dict[str, Any], step: int, keep_last: int, best: bool = False) -> Path:
    """Write ``step_<step>.pt``, point ``last.pt`` (and, if ``best``, ``best.pt``) at it, then delete all
    but the ``keep_last`` newest step files. Each file is complete before any name points at it."""
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
            raise FileNotFoundError(f"resume={str(resume)!r} is a directory without {CHECKPOINT_DIR}/{LAST}: "
                                    "pass a run dir that saved a checkpoint, or a .pt file")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"resume={str(resume)!r}: no such checkpoint file or run dir")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint, turning a truncated or foreign file into an error that names it (and the
    intact checkpoints beside it, if any)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for corrupt zip/pickle data
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (truncated or not a cl_suite checkpoint): "
                              f"{type(err).__name__}: {err}{_fallback_hint(path)}") from err
    if not isinstance(state, dict) or "method" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a cl_suite training checkpoint (no 'method' "
                              f"state){_fallback_hint(path)}")
    return state


def _fallback_hint(path: Path) -> str:
    others = other_checkpoints(path)
    if not others:
        return ""
    return (f"\nThe file was left as it is. Earlier checkpoints of this run: {', '.join(p.name for p in others)}; "
            f"continue from the newest with resume={others[0]}")


# Config keys whose values decide the shapes of the saved tensors (or what they mean): a checkpoint
# saved under other values cannot be loaded into this run's model (or optimizer: SGD has no Adam moments).
_MODEL_KEYS = ("method._target_", "backbone", "dataset.name", "optimizer._target_")
# Keys whose change loads fine but breaks an exact continuation (data order, schedule, step <-> epoch).
_CONTINUATION_KEYS = ("seed", "trainer.batch_size", "trainer.epochs", "dataset", "optimizer", "scheduler")


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
