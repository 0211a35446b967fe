"""Re-evaluate a finished run from its directory: its config, its checkpoint, the same protocols."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.build import build_augment_config, build_dataset, build_logger, build_method
from cl_suite.engine.evaluation import evaluate_encoder
from cl_suite.engine.probe import OnlineProbe
from cl_suite.engine.trainer import resolve_device


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run={str(run_dir)!r} has no .hydra/config.yaml: pass the directory train.py wrote")
    cfg = OmegaConf.load(path)
    cfg.paths.output_dir = str(run_dir)  # was ${hydra:runtime.output_dir} of the training job
    return cfg


def find_checkpoint(run_dir: Path, name: str) -> Path:
    path = Path(name)
    if path.suffix == ".pt" and path.is_file():
        return path
    path = run_dir / ckpt.CHECKPOINT_DIR / f"{name}.pt"
    if not path.is_file():
        available = sorted(p.stem for p in (run_dir / ckpt.CHECKPOINT_DIR).glob("*.pt"))
        raise FileNotFoundError(f"checkpoint={name!r}: {path} does not exist; available: {available}")
    return path


def evaluate_run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run)
    train_cfg = load_run_config(run_dir)
    if cfg.dataset_root is not None:
        train_cfg.dataset.root = cfg.dataset_root
    device = resolve_device(cfg.device)
    path = find_checkpoint(run_dir, cfg.checkpoint)
    state = ckpt.load_checkpoint(path, map_location=device)

    data = build_dataset(train_cfg.dataset)
    method = build_method(train_cfg, len(data.pretrain)).to(device)
    method.load_state_dict(state["method"])
    probe = OnlineProbe(method.num_features, data.num_classes).to(device)
    probe.load_state_dict(state["probe"])
    torch.manual_seed(cfg.seed)
    metrics = evaluate_encoder(method, probe, data, build_augment_config(train_cfg.dataset), device, cfg.evaluation,
                               with_linear=True, seed=cfg.seed)
    result = {"checkpoint": str(path), "epoch": state["epoch"], "step": state["step"],
              "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True), "metrics": metrics}
    ckpt.write_json(run_dir / "eval.json", result)

    if cfg.wandb and state.get("wandb_run_id") and "WandbLogger" in str(train_cfg.logger.get("_target_")):
        logger = build_logger(train_cfg.logger, str(run_dir), train_cfg, run_id=state["wandb_run_id"])
        try:
            logger.log_summary({f"eval/{k}": v for k, v in metrics.items()})
        finally:
            logger.finish()
    return result
