"""Shared test helpers: compose the real config tree, run the real CLI, and the small models and samplers
several test modules (and the torchrun scripts) build on."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from cl_suite.methods import SimCLR
from cl_suite.samplers import UniformSampler

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



def refused_at_the_first_step(overrides: list[str], run_dir: Path, message: str) -> None:
    """A config of ``overrides`` passes the start-up checks, and its run stops at the first step with a
    ConfigError matching ``message`` (code of one's own that only shows its mistake when it runs)."""
    import pytest

    from cl_suite.engine.trainer import train
    from cl_suite.engine.validation import ConfigError, validate_train_config

    cfg = compose_train(overrides + ["trainer.max_steps=1"], run_dir)
    validate_train_config(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg)

def trained_run(run: Path, overrides: list[str]) -> dict:
    """A tiny run trained in process into ``run`` (TINY + ``overrides``, no evaluation at step 0), with the
    ``.hydra/config.yaml`` that train.py's Hydra writes and evaluate.py reads; returns its final numbers."""
    from cl_suite.engine.trainer import train

    train_cfg = compose_train(TINY + ["trainer.eval_at_init=false", *overrides], run)
    final = train(train_cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(train_cfg, run / ".hydra" / "config.yaml")
    return final


def evaluate_in_process(run: Path, *overrides: str) -> dict:
    """evaluate.py's entry (``run_evaluation.evaluate_run``) on ``run`` with the real evaluate config."""
    from cl_suite.run_evaluation import evaluate_run

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=[f"run={run}", *overrides])
    return evaluate_run(cfg)


@contextlib.contextmanager
def user_module(folder: Path, monkeypatch, name: str, source: str):
    """``source`` as the module ``name`` in ``folder``, importable inside the block only: what a user's own
    file of classes is (``_target_=<name>.<Class>``), without touching the suite."""
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    try:
        yield folder
    finally:
        sys.modules.pop(name, None)


def run_cli(script: str, args: list[str], timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
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


class RawFeatures(nn.Module):
    """A 'backbone' that passes its input through, so the test controls the embeddings."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def simclr_on_raw_embeddings(dim, temperature):
    method = SimCLR(RawFeatures(dim), UniformSampler(), temperature=temperature)
    method.projector = nn.Identity()  # the loss then sees normalize(x) directly
    return method


class RecordingSampler(UniformSampler):
    """Uniform InfoNCE that keeps what it was given."""

    def forward(self, anchors, positives, candidates, candidate_mask, temperature, **labels):
        self.seen = dict(positives=positives, candidates=candidates, mask=candidate_mask)
        return super().forward(anchors, positives, candidates, candidate_mask, temperature, **labels)


class LinearBackbone(nn.Module):
    """A BatchNorm-free backbone (BN statistics are per process by design), for 1- vs 2-process checks."""

    def __init__(self, in_dim=12, num_features=10):
        super().__init__()
        self.num_features = num_features
        self.linear = nn.Linear(in_dim, num_features)

    def forward(self, x):
        return torch.relu(self.linear(x.flatten(1)))


def one_step(method, x1, x2, labels, rank, world, steps=1):
    """``steps`` training steps (the same batch each time) of ``method`` + online probe on this process's
    share of the global batch (DDP when ``world`` > 1); returns the model's state after the last step."""
    from torch.nn.parallel import DistributedDataParallel

    from cl_suite.engine.pretrainer import Pretrainer
    from cl_suite.engine.probe import OnlineProbe

    model = Pretrainer(method, OnlineProbe(method.num_features, 3))
    train_model = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    local = slice(rank * len(x1) // world, (rank + 1) * len(x1) // world)
    for step in range(steps):
        opt.zero_grad()
        out, probe_loss, _ = train_model((x1[local], x2[local]), labels[local], torch.arange(len(x1))[local])
        (out.loss + probe_loss).backward()
        opt.step()
        method.after_step(out.memory, step, 10)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
