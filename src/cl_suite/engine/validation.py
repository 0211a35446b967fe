"""Start-up checks of a training config: a wrong value fails in seconds, with the key, the value and
what is allowed, before any data is read or any model is built."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A config value that cannot work. The message names the key."""


def _int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False) -> None:
    value = cfg.get(key.split(".")[-1])
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _positive(cfg: DictConfig, key: str) -> None:
    value = cfg.get(key.split(".")[-1])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}={value!r} is not allowed: expected a number > 0")


def validate_train_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    _int(t, "trainer.epochs", 1)
    _int(t, "trainer.max_steps", 1, allow_none=True)
    _int(t, "trainer.batch_size", 2)  # a contrastive batch of one image has no negatives
    _int(t, "trainer.log_every_steps", 1)
    _int(t, "trainer.eval_every_epochs", 0)
    _int(t, "trainer.checkpoint_every_epochs", 0)
    _int(t, "trainer.num_workers", 0)
    _int(cfg, "seed", 0)
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r} is not one of {PRECISIONS}")
    if t.precision == "fp16" and (str(t.device) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.precision='fp16' needs a CUDA device (its loss scaling is a CUDA GradScaler); "
                          "use trainer.precision=bf16 on the CPU")
    if t.channels_last not in ("auto", True, False):
        raise ConfigError(f"trainer.channels_last={t.channels_last!r} is not allowed: expected auto, true or false")
    if t.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode={t.compile_mode!r} is not one of {COMPILE_MODES}")
    if t.sync_batchnorm and (str(t.device) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm has no CPU path)")
    if cfg.resume is not None and not isinstance(cfg.resume, str):
        raise ConfigError(f"resume={cfg.resume!r} is not allowed: expected auto, null, a .pt file or a run dir")
    if t.grad_clip is not None:
        _positive(t, "trainer.grad_clip")
    device = str(t.device)
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"trainer.device={device!r} is not allowed: expected auto, cpu, cuda or cuda:N")
    _positive(cfg.probe, "probe.lr")
    e = cfg.evaluation
    _int(e, "evaluation.batch_size", 1)
    _int(e.knn, "evaluation.knn.k", 1)
    _positive(e.knn, "evaluation.knn.temperature")
    _int(e.linear, "evaluation.linear.epochs", 1)
    _int(e.linear, "evaluation.linear.batch_size", 1)
    _positive(e.linear, "evaluation.linear.lr")
    _positive(cfg.optimizer, "optimizer.lr")
