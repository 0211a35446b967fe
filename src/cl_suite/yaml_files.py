"""Reading YAML files that may come from anyone: the records of other people's runs and sweeps."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

MAX_YAML_BYTES = 16 * 2**20  # a run's .hydra/ records are kilobytes


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
