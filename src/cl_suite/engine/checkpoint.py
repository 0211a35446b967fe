"""Checkpoints and run files, written so that a crash never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda f: torch.save(state, f))


def write_json(path: str | Path, data: Any) -> None:
    _atomic_write(Path(path), lambda f: f.write(json.dumps(data, indent=2, sort_keys=False).encode()))


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
    """Load a checkpoint, turning a truncated or foreign file into an error that names it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for corrupt zip/pickle data
        raise RuntimeError(f"checkpoint {str(path)!r} cannot be read (truncated or not a cl_suite checkpoint): "
                           f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "method" not in state:
        raise RuntimeError(f"checkpoint {str(path)!r} is not a cl_suite training checkpoint (no 'method' state)")
    return state
