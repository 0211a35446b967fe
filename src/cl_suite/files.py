"""Files of runs and sweeps, which may come from anyone: written atomically (never through a link planted
at the name), their names shown as one line, their YAML records read without expanding aliases."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import yaml
from omegaconf import OmegaConf

MAX_YAML_BYTES = 16 * 2**20  # a run's .hydra/ records are kilobytes
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` into a temporary file in ``path``'s folder, fsync, then rename it over ``path``.

    ``os.replace`` is atomic on POSIX: readers see the old file or the new one, never a mix, and a crash
    leaves the old one. It also replaces a symbolic link at ``path`` instead of writing to the link's
    target, as ``open(path, "w")`` would (a link planted in a shared run or sweep folder)."""
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file or folder name) as ``\\xNN``: a name read
    from disk goes into messages, logs, tables and CSV files, where it must not start a line of its own."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def load_untrusted_yaml(path: str | Path) -> Any:
    """``OmegaConf.load(path)`` after refusing (``ValueError``, naming the file) what no file Hydra writes
    holds: YAML anchors and aliases (nested aliases expand a few lines into billions of nodes, the
    "billion laughs", and the readers hang) and files above ``MAX_YAML_BYTES``. YAML tags cannot build
    objects either way: OmegaConf parses with a safe loader."""
    path = Path(path)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, more than a run record ever holds; refused")
    text = path.read_text(encoding="utf-8")
    for token in yaml.scan(text):
        if isinstance(token, (yaml.AliasToken, yaml.AnchorToken)):
            raise ValueError(f"{path}: YAML anchors and aliases are not allowed in a run record (Hydra never "
                             "writes them, and nested aliases can expand without bound); refused")
    return OmegaConf.load(path)


def read_json_object(path: Path) -> dict | None:
    """A JSON object from a run folder (metrics.json, eval.json), or None when the file is not one: cut
    short, not UTF-8, nested past the parser's depth, or a JSON value other than an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
