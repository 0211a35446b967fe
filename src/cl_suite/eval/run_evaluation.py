"""Re-evaluate a finished run from its directory: its config, its checkpoint, the chosen protocols."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.build import (UNIFORM_SAMPLER, DatasetFacts, build_augment_config, build_dataset, build_logger,
                                   build_method)
from cl_suite.engine.probe import OnlineProbe
from cl_suite.engine.trainer import resolve_device
from cl_suite.eval.other_datasets import dataset_names, load_other_dataset, ood_augment_config
from cl_suite.eval.protocols import (check_protocols, encode_split, encode_splits, knn_metrics, linear_metrics,
                                     online_probe_metrics, ood_protocol_metrics, retrieval_protocol_metrics,
                                     transfer_protocol_metrics)


def load_run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run={str(run_dir)!r} has no .hydra/config.yaml: pass the directory train.py wrote")
    cfg = OmegaConf.load(path)
    cfg.paths.output_dir = str(run_dir)  # was ${hydra:runtime.output_dir} of the training job
    return cfg


def encoder_only(train_cfg: DictConfig) -> DictConfig:
    """The run's config with the uniform sampler in place of the trained one: evaluation only encodes,
    samplers hold no state (nothing of theirs is in a checkpoint), and so a run folder stays readable
    when a sampler's settings are renamed (the ring's percentiles became fractions)."""
    cfg = train_cfg.copy()
    cfg.sampler = OmegaConf.create({"_target_": UNIFORM_SAMPLER})
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
    """Run ``cfg.protocol`` on the run's checkpoint; write ``<run>/eval.json`` and the wandb summary.

    ``eval.json`` holds ``protocols`` (each protocol's metrics) and ``metrics`` (all of them, flat).
    Protocols evaluated earlier on the same checkpoint step and not re-run now are kept, so
    ``protocol=ood`` after ``protocol=[linear,knn]`` adds to the file instead of replacing it.
    """
    ood_names = dataset_names(cfg.ood_dataset, "ood_dataset")
    transfer_names = dataset_names(cfg.transfer_dataset, "transfer_dataset")
    protocols = check_protocols(cfg.protocol, ood_names, transfer_names)
    run_dir = Path(cfg.run)
    train_cfg = load_run_config(run_dir)
    if cfg.dataset_root is not None:
        train_cfg.dataset.root = cfg.dataset_root
    device = resolve_device(cfg.device)
    path = find_checkpoint(run_dir, cfg.checkpoint)
    state = ckpt.load_checkpoint(path, map_location=device)

    data = build_dataset(train_cfg.dataset)
    aug_cfg = build_augment_config(train_cfg.dataset)
    method = build_method(encoder_only(train_cfg), DatasetFacts.of(data, train_cfg.trainer.batch_size)).to(device)
    method.load_state_dict(state["method"])
    method.eval()
    probe = OnlineProbe(method.num_features, data.num_classes).to(device)
    probe.load_state_dict(state["probe"])
    torch.manual_seed(cfg.seed)
    ev = cfg.evaluation

    def encode(dataset, augment):
        return encode_splits(method.encode, dataset, augment, device, ev.batch_size)

    feats = encode(data, aug_cfg)
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        if protocol == "knn":
            results["knn"] = knn_metrics(feats, data.num_classes, ev.knn)
        elif protocol == "linear":
            results["linear"] = {**linear_metrics(feats, data.num_classes, ev.linear, cfg.seed),
                                 **online_probe_metrics(probe, feats)}
        elif protocol == "retrieval":
            results["retrieval"] = retrieval_protocol_metrics(feats, ev.retrieval)
        elif protocol == "ood":
            results["ood"] = {}
            for name in ood_names:
                other, other_aug = load_other_dataset(name, train_cfg, aug_cfg.crop_size)
                ood_test, _ = encode_split(method.encode, other.test, ood_augment_config(aug_cfg, other_aug),
                                           device, ev.batch_size)
                results["ood"].update(ood_protocol_metrics(feats, ood_test, name, ev.ood))
        elif protocol == "transfer":
            results["transfer"] = {}
            for name in transfer_names:
                other, other_aug = load_other_dataset(name, train_cfg, aug_cfg.crop_size)
                results["transfer"].update(transfer_protocol_metrics(encode(other, other_aug), other.num_classes,
                                                                     name, ev, cfg.seed))

    result = _merge_with_previous(run_dir / "eval.json", {
        "checkpoint": str(path), "epoch": state["epoch"], "step": state["step"],
        "evaluation": OmegaConf.to_container(ev, resolve=True),
        "datasets": {"ood": ood_names, "transfer": transfer_names}, "protocols": results})
    ckpt.write_json(run_dir / "eval.json", result)

    if cfg.wandb and state.get("wandb_run_id") and "WandbLogger" in str(train_cfg.logger.get("_target_")):
        logger = build_logger(train_cfg.logger, str(run_dir), train_cfg, run_id=state["wandb_run_id"])
        try:
            logger.log_summary({f"eval/{k}": v for k, v in result["metrics"].items()})
        finally:
            logger.finish()
    return result


def _merge_with_previous(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Keep the protocols of an earlier ``eval.json`` of the same checkpoint step that were not re-run."""
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("step") == result["step"] and previous.get("checkpoint") == result["checkpoint"]:
            result["protocols"] = {**previous.get("protocols", {}), **result["protocols"]}
    result["metrics"] = {k: v for metrics in result["protocols"].values() for k, v in metrics.items()}
    return result
