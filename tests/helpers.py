"""Shared test helpers: compose the real config tree, run the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "cl_suite" / "conf"  # (the checkout's conf/ links here)

# A few-second training run on digits: the settings every end-to-end test starts from.
TINY = [
    "logger=none",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.progress_bar=false",
    "trainer.eval_every_epochs=0",
    "backbone.widths=[8,16]",
    "method.projector_hidden_dims=[32]",
    "method.projector_dim=16",
    "evaluation.linear.epochs=5",
]


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir) if output_dir else "/nonexistent-output-dir"
    return cfg


def run_cli(script: str, args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=full_env, timeout=timeout,
                          capture_output=True, text=True)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


# Sampler options sized for a queue or bank (thousands of candidates), not for a batch's 2B-2.
QUEUE_SIZED_SAMPLERS = {"mochi"}
QUEUE_FRAMEWORKS = {"moco", "mochi", "moco_ring", "ir", "ir_ring", "ir_ball", "cmc", "cmc_ring"}


# Methods whose loss has several positives per anchor: the sampler group does not apply (uniform only).
SAMPLERLESS_METHODS = {"supcon", "rince", "supervised"}


def valid_pair(method: str, sampler: str) -> bool:
    if method in SAMPLERLESS_METHODS:
        return sampler == "uniform"
    return sampler not in QUEUE_SIZED_SAMPLERS or method in QUEUE_FRAMEWORKS


def tiny_overrides(method: str) -> list[str]:
    """TINY for ``method``: the supervised baseline has no projector to shrink."""
    return [o for o in TINY if not (method == "supervised" and o.startswith("method.projector"))]
