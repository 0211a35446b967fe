"""Start-up checks of a training config: a wrong value fails in seconds, with the key, the value and
what is allowed, before any data is read or any model is built.

Four layers, cheapest first: the loop's own settings (trainer, probe, evaluation, seed); every
``_target_`` group against its constructor's signature (unknown keys, wrong types, unset required
values: ``config_arguments``); ranges the constructors do not check early or do not name
(optimizer, scheduler, logger, dataset augmentation); combinations across groups that cannot work
(a backbone that shrinks the crop to nothing, a sampler asking for more candidates than the framework
has). ``validate_against_data`` adds the checks that need the data set's size, once it is read.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl_suite.engine.config_arguments import ArgumentError, check_group_arguments
from cl_suite.samplers.ring import ring_width

PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NONFINITE_MODES = ("stop", "skip")
WANDB_MODES = ("auto", "online", "offline", "disabled")


class ConfigError(ValueError):
    """A config value that cannot work. The message names the key."""


def _get(cfg: DictConfig, key: str) -> Any:
    return cfg.get(key.split(".")[-1])


def _int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def _number(cfg: DictConfig, key: str, low: float = 0.0, high: float | None = None, low_open: bool = True,
            high_open: bool = False) -> None:
    """A number in the interval from ``low`` to ``high`` (open or closed ends as given)."""
    value = _get(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{key}={value!r} is not allowed: expected a number in {interval}")


def _positive(cfg: DictConfig, key: str) -> None:
    _number(cfg, key, 0.0)


def _bool(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not allowed: expected true or false")


def _choice(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def validate_train_config(cfg: DictConfig) -> None:
    """Every check that needs only the config (see the module docstring); raise ``ConfigError``."""
    _check_trainer(cfg)
    _check_evaluation(cfg.evaluation)
    try:
        _check_group_signatures(cfg)
    except ArgumentError as err:
        raise ConfigError(str(err)) from None
    _check_dataset(cfg.dataset)
    _check_method_sizes(cfg.method)
    _check_optimizer(cfg.optimizer)
    _check_scheduler(cfg)
    _check_logger(cfg.logger)
    _check_backbone_input_size(cfg)
    _check_candidate_count(cfg)


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    _int(t, "trainer.epochs", 1)
    _int(t, "trainer.max_steps", 1, allow_none=True)
    _int(t, "trainer.batch_size", 2)  # a contrastive batch of one image has no negatives
    _int(t, "trainer.log_every_steps", 1)
    _int(t, "trainer.eval_every_epochs", 0)
    _int(t, "trainer.checkpoint_every_epochs", 0)
    _int(t, "trainer.keep_last_checkpoints", 1)
    _int(t, "trainer.num_workers", 0)
    _int(cfg, "seed", 0)
    for key in ("eval_at_init", "compile", "sync_batchnorm", "data_on_device", "progress_bar"):
        _bool(t, f"trainer.{key}")
    _choice(t, "trainer.precision", PRECISIONS)
    if t.precision == "fp16" and (str(t.device) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.precision='fp16' needs a CUDA device (its loss scaling is a CUDA GradScaler); "
                          "use trainer.precision=bf16 on the CPU")
    if t.channels_last not in ("auto", True, False):
        raise ConfigError(f"trainer.channels_last={t.channels_last!r} is not allowed: expected auto, true or false")
    _choice(t, "trainer.compile_mode", COMPILE_MODES)
    _choice(t, "trainer.nonfinite", NONFINITE_MODES)
    _choice(t, "trainer.best_mode", ("max", "min"))
    if t.best_metric is not None and (not isinstance(t.best_metric, str) or "/" not in t.best_metric):
        raise ConfigError(f"trainer.best_metric={t.best_metric!r} is not allowed: expected a metric name such as "
                          "knn/top1 or linear/top1, or null for no best.pt")
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
    _number(cfg.probe, "probe.weight_decay", 0.0, low_open=False)


def _check_evaluation(e: DictConfig) -> None:
    _int(e, "evaluation.batch_size", 1)
    _int(e.knn, "evaluation.knn.k", 1)
    _positive(e.knn, "evaluation.knn.temperature")
    lin = e.linear
    _int(lin, "evaluation.linear.epochs", 1)
    _int(lin, "evaluation.linear.batch_size", 1)
    _positive(lin, "evaluation.linear.lr")
    _number(lin, "evaluation.linear.momentum", 0.0, 1.0, low_open=False, high_open=True)
    _number(lin, "evaluation.linear.weight_decay", 0.0, low_open=False)
    _bool(lin, "evaluation.linear.standardize")
    _bool(lin, "evaluation.linear.flip_augment")


def _check_group_signatures(cfg: DictConfig) -> None:
    # Imported here: build imports this module (for ConfigError).
    from cl_suite.engine.build import DATASET_SUITE_KEYS, DatasetFacts
    from cl_suite.engine.optim import SUITE_KEYS

    check_group_arguments("dataset", cfg.dataset, suite_keys=DATASET_SUITE_KEYS)
    check_group_arguments("backbone", cfg.backbone)
    check_group_arguments("sampler", cfg.sampler)
    injected = ("backbone", "sampler", *(f.name for f in dataclasses.fields(DatasetFacts)))
    check_group_arguments("method", cfg.method, injected=injected)
    check_group_arguments("optimizer", cfg.optimizer, injected=("params",), suite_keys=SUITE_KEYS)
    check_group_arguments("scheduler", cfg.scheduler, injected=("optimizer", "steps_per_epoch", "total_steps"))
    check_group_arguments("logger", cfg.logger, injected=("run_dir", "run_config", "run_id"))


def _check_dataset(d: DictConfig) -> None:
    from cl_suite.data.augment import AugmentConfig

    for key in ("mean", "std"):
        value = d.get(key)
        if not OmegaConf.is_list(value) or len(value) not in (1, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"dataset.{key}={value!r} is not allowed: expected a list of 1 or 3 numbers "
                              "(one per image channel)")
    if any(v <= 0 for v in d.std):
        raise ConfigError(f"dataset.std={list(d.std)} is not allowed: every channel's std must be > 0")
    if "image_size" in d:
        _int(d, "dataset.image_size", 1)
    try:
        AugmentConfig.from_dict(OmegaConf.to_container(d.augment, resolve=True), mean=list(d.mean), std=list(d.std))
    except ValueError as err:  # its messages say "augment config: <key> ..."; name the full key
        raise ConfigError(str(err).replace("augment config: ", "dataset.augment.", 1)) from None


def _check_method_sizes(m: DictConfig) -> None:
    """Sizes shared by several frameworks (a zero-width head or an empty queue would build and then fail
    or silently learn nothing); each framework checks its own other settings when it is built."""
    for key in ("projector_dim", "queue_size"):
        if key in m:
            _int(m, f"method.{key}", 1)
    if "num_negatives" in m:  # null: every bank row (instance recognition)
        _int(m, "method.num_negatives", 1, allow_none=_target_class(m) == "InstanceRecognition")
    hidden = m.get("projector_hidden_dims")
    if hidden is not None and not (OmegaConf.is_list(hidden) and all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
        raise ConfigError(f"method.projector_hidden_dims={hidden!r} is not allowed: expected a list of integers >= 1 "
                          "([] for a linear head)")


def _check_optimizer(o: DictConfig) -> None:
    _positive(o, "optimizer.lr")
    if "weight_decay" in o:
        _number(o, "optimizer.weight_decay", 0.0, low_open=False)
    if "momentum" in o:
        _number(o, "optimizer.momentum", 0.0, 1.0, low_open=False, high_open=True)
    if "betas" in o:
        betas = o.betas
        if not OmegaConf.is_list(betas) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"optimizer.betas={betas!r} is not allowed: expected two numbers in [0, 1)")
    if "eta" in o:
        _positive(o, "optimizer.eta")
    _int(o, "optimizer.batch_size_reference", 1, allow_none=True)
    _bool(o, "optimizer.exclude_bias_and_norm")


def _check_scheduler(cfg: DictConfig) -> None:
    s = cfg.scheduler
    if "warmup_epochs" in s:
        _number(s, "scheduler.warmup_epochs", 0.0, low_open=False)
        if s.warmup_epochs > cfg.trainer.epochs:
            raise ConfigError(f"scheduler.warmup_epochs={s.warmup_epochs} is longer than the run "
                              f"(trainer.epochs={cfg.trainer.epochs}): the learning rate would never reach its "
                              "peak; shorten the warm-up")
    if "min_lr_ratio" in s:
        _number(s, "scheduler.min_lr_ratio", 0.0, 1.0, low_open=False)


def _check_logger(lg: DictConfig) -> None:
    if "mode" in lg:
        _choice(lg, "logger.mode", WANDB_MODES)
    if "project" in lg and not (isinstance(lg.project, str) and lg.project):
        raise ConfigError(f"logger.project={lg.project!r} is not allowed: expected a non-empty name")


def _target_class(node: DictConfig) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def _check_backbone_input_size(cfg: DictConfig) -> None:
    """The training crop must survive the backbone's downsampling, or fit a fixed-size model."""
    crop = cfg.dataset.augment.crop_size
    backbone = cfg.backbone
    kind = _target_class(backbone)
    if kind == "SmallConvNet":
        stages = len(backbone.widths)
        needed = 2 ** (stages - 1)  # every stage after the first halves the map (2x2 max-pool)
        if crop < needed:
            raise ConfigError(
                f"dataset.augment.crop_size={crop} is too small for backbone.widths={list(backbone.widths)}: "
                f"{stages} stages halve the image {stages - 1} times, which needs crops of at least {needed} px; "
                "use fewer stages or larger crops")
    elif kind == "TimmBackbone" and "img_size" not in backbone:
        import timm

        pretrained = timm.models.get_pretrained_cfg(backbone.name) if timm.is_model(backbone.name) else None
        size = getattr(pretrained, "input_size", None)
        if pretrained is not None and getattr(pretrained, "fixed_input_size", False) and size and size[-1] != crop:
            raise ConfigError(
                f"backbone.name={backbone.name!r} takes {size[-1]}x{size[-1]} inputs only, but "
                f"dataset.augment.crop_size={crop}: set +backbone.img_size={crop} (timm resizes the position "
                f"embedding) or dataset.augment.crop_size={size[-1]}")


def _candidates_per_anchor(cfg: DictConfig, bank_size: int | None = None) -> tuple[int, str] | None:
    """The number of candidate negatives each anchor of this framework has, and where they come from
    (None for frameworks whose count is not fixed by the config, or by ``bank_size`` once it is known)."""
    m, batch = cfg.method, cfg.trainer.batch_size
    kind = _target_class(m)
    if kind == "SimCLR" and m.get("form") == "ring_code":
        return 2 * batch, f"method=SimCLR (form=ring_code) with trainer.batch_size={batch} (all 2B views)"
    if kind == "SimCLR":
        return 2 * batch - 2, f"method=SimCLR with trainer.batch_size={batch} (2B-2 in-batch views)"
    if kind in ("NNCLR", "KMCLR"):
        return batch - 1, f"method={kind} with trainer.batch_size={batch} (the other view's B-1 predictions)"
    if kind == "MoCo":
        return m.queue_size, f"method.queue_size={m.queue_size}"
    if kind == "InstanceRecognition" and m.num_negatives is None:
        if bank_size is None:
            return None
        return bank_size, f"method.num_negatives=null (every row of the {bank_size}-image memory bank)"
    if kind in ("InstanceRecognition", "CMC"):
        # Rows drawn with replacement: the anchor's own row may be drawn and masked, so at most this many.
        return m.num_negatives, f"method.num_negatives={m.num_negatives}"
    return None


def _check_candidate_count(cfg: DictConfig, bank_size: int | None = None) -> None:
    """A sampler that needs more candidates than the framework gives would fail at the first step."""
    found = _candidates_per_anchor(cfg, bank_size)
    if found is None:
        return
    count, source = found
    s, kind = cfg.sampler, _target_class(cfg.sampler)
    if kind == "MixingSampler" and (s.s1 or s.s2) and s.n_hard > count:
        raise ConfigError(f"sampler.n_hard={s.n_hard} is larger than the {count} candidate negatives per anchor of "
                          f"{source}: lower sampler.n_hard or use more candidates")
    if kind == "RingSampler" and ring_width(s.outer_fraction, s.inner_fraction, count) < 1:
        raise ConfigError(f"sampler.outer_fraction={s.outer_fraction} and sampler.inner_fraction={s.inner_fraction} "
                          f"keep no negative out of the {count} candidates of {source} (the ring keeps ranks "
                          "floor(l floor(u m)) .. floor(u m) - 1): raise the outer fraction, lower the inner one "
                          "or use more candidates")


def validate_against_data(cfg: DictConfig, data) -> None:
    """Checks that need the data set (its size): run right after it is read, before any model is built."""
    train = len(data.train)
    if cfg.evaluation.knn.k > train:
        raise ConfigError(f"evaluation.knn.k={cfg.evaluation.knn.k} is larger than the {train} labelled training "
                          f"images of dataset={data.name}: the kNN monitor would fail after training; lower it")
    pretrain = len(data.pretrain)
    if cfg.trainer.batch_size > pretrain:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the {pretrain} training images "
                          f"of dataset={data.name}")
    _check_candidate_count(cfg, bank_size=pretrain)  # a whole-bank framework's count is the data set size
