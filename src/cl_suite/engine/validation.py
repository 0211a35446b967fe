"""Start-up checks of a training config: a wrong value fails in seconds, with the key, the value and
what is allowed, before any data is read or any model is built.

Five layers, cheapest first: the whole config at once (no nan or inf anywhere; no key that the
config files do not define, so ``+trainer.max_step=2`` is refused, not ignored: the known keys of the
groups without a ``_target_`` are read from conf/train.yaml and the group files it composes, never
listed here); the loop's own settings (trainer, probe, evaluation, seed, device, best_metric); every
``_target_`` group against its constructor's signature (unknown keys, wrong types, unset required
values: ``config_arguments``); ranges the constructors do not check early or do not name
(optimizer, scheduler, logger, dataset augmentation, the sampler's own values); combinations across
groups that cannot work (a backbone that shrinks the crop to nothing, a sampler asking for more
candidates than the framework has). ``validate_against_data`` adds the checks that need the data set's
size, once it is read. ``validate_evaluate_config`` and ``validate_evaluation_against_data`` do the
same for evaluate.py (conf/evaluate.yaml).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import typing
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import get_class, get_object
from omegaconf import DictConfig, OmegaConf

from cl_suite.data.loader import POSITIVE_PAIRS
from cl_suite.engine.config_arguments import ArgumentError, check_group_arguments, value_fits
from cl_suite.engine.logger import LOGGER_ARGUMENTS, check_logger_config
from cl_suite.engine.numerics import MODES as NONFINITE_MODES
from cl_suite.engine.optim import TRUST_DENOMINATORS
from cl_suite.engine.probe import PROBE_OPTIMIZERS, PROBE_SCHEDULES
from cl_suite.engine.precision import PRECISION_DTYPES
from cl_suite.errors import ConfigError, as_written
from cl_suite.paths import CONF_DIR

if TYPE_CHECKING:
    from cl_suite.data.augment import AugmentConfig

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The primary config files: the keys they define (composed without user overrides) are the known keys of
# the groups that have no ``_target_`` (trainer, probe, paths, evaluation, the top level).
# numpy's generators (np.random.seed, scikit-learn's random_state) take seeds in [0, 2**32 - 1]; torch's more.
MAX_SEED = 2**32 - 1


def _get(cfg: DictConfig, key: str) -> Any:
    return cfg.get(key.split(".")[-1])


def _int(cfg: DictConfig, key: str, minimum: int, allow_none: bool = False, maximum: int | None = None) -> None:
    value = _get(cfg, key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        allowed = (f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]") + (
            " or null" if allow_none else "")
        raise ConfigError(f"{key}={as_written(value)} is not allowed: expected {allowed}")


def _number(cfg: DictConfig, key: str, low: float = 0.0, high: float | None = None, low_open: bool = True,
            high_open: bool = False) -> None:
    """A number in the interval from ``low`` to ``high`` (open or closed ends as given)."""
    value = _get(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{key}={as_written(value)} is not allowed: expected a finite number in {interval}")


def _positive(cfg: DictConfig, key: str) -> None:
    _number(cfg, key, 0.0)


def _bool(cfg: DictConfig, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={as_written(value)} is not allowed: expected true or false")


def _choice(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {allowed}")


def _check_finite_numbers(value: Any, key: str = "") -> None:
    """No number anywhere in the config may be nan or inf: no setting of this suite means either, and
    both pass range checks written as ``x < 0`` (nan) or with no upper end (inf), then train to chance."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite_numbers(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}={as_written(value)} is not allowed: expected finite numbers (no nan or inf)")
            _check_finite_numbers(v, key)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={as_written(value)} is not allowed: expected a finite number (no nan or inf)")


def _defaults_groups(primary: DictConfig) -> list[str]:
    """The config groups a primary config's defaults list composes (``- dataset: digits`` -> dataset)."""
    groups = []
    for entry in primary.get("defaults") or []:
        if OmegaConf.is_dict(entry):  # a string entry is _self_ (or a config merged at the top level)
            for name in entry:  # "group", "override group", "optional group@package"
                name = str(name).split()[-1]
                name = name.split("@", 1)[1] if "@" in name else name.replace("/", ".")
                if not name.startswith(("hydra", "_")):
                    groups.append(name.split(".")[0])
    return groups


def _key_tree(node: Any) -> Any:
    """The keys of a plain config, nested; a value that is not a mapping is a leaf (True)."""
    if isinstance(node, dict):
        return {str(k): _key_tree(v) for k, v in node.items() if k != "defaults"}
    return True


def _merge_trees(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_trees(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else out.get(k, v)
    return out


def primary_key_tree(config_name: str) -> dict:
    """The known keys of ``conf/<config_name>.yaml`` as composed without user overrides, read from the
    files each time (a key added to a file is known at once): its own keys, and for each group of its
    defaults list either the union of its options' keys or, for a ``_target_`` group, None (its
    constructor's signature decides: ``config_arguments``)."""
    primary = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    plain = OmegaConf.to_container(primary, resolve=False)
    tree = {k: v for k, v in _key_tree(plain).items() if k != "hydra"}
    for group in _defaults_groups(primary):
        files = sorted((CONF_DIR / group).glob("*.yaml"))
        if files and all(f.read_text(encoding="utf-8").startswith("# @package _global_") for f in files):
            continue  # recipes (experiment=...) merge into the top level: no key of their own, theirs must be known
        options = [OmegaConf.to_container(OmegaConf.load(f), resolve=False) for f in files]
        if not options or any("_target_" in o or "defaults" in o for o in options):
            tree[group] = None
        else:
            merged: dict = {}
            for option in options:
                merged = _merge_trees(merged, _key_tree(option))
            tree[group] = merged
    return tree


def _unknown_key_message(keys: list[str], known: list[str]) -> str:
    """"<key> is not a setting", with the nearest known keys first (a typo's correction), then all of them."""
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}  # compare "max_step" with "max_steps", not whole paths
    near = difflib.get_close_matches(keys[0].rsplit(".", 1)[-1], list(by_leaf), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(by_leaf[k] for k in near)}? " if near else ""
    return (f"{', '.join(keys)} {'is not a setting' if len(keys) == 1 else 'are not settings'}, so nothing would "
            f"read {'it' if len(keys) == 1 else 'them'}; {hint}known keys: {', '.join(known) or '(none)'}")


def _check_known_keys(node: dict, tree: dict, source: str, prefix: str = "") -> None:
    """Every key of the plain config ``node`` must be in ``tree`` (``primary_key_tree``): a key added with
    ``+`` that nothing reads (``+trainer.max_step=2``, Hydra's own suggestion for a typo) would be ignored."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if key not in tree:
            known = [prefix + k for k in sorted(tree)]
            raise ConfigError(f"{name}={as_written(value)} is not allowed ({source} has no such key): "
                              + _unknown_key_message([name], known))
        sub = tree[key]
        if isinstance(sub, dict) and isinstance(value, dict):
            _check_known_keys(value, sub, source, f"{name}.")


def _check_plain_config(cfg: DictConfig, config_name: str) -> None:
    """The checks that walk the whole config: finite numbers, and no key the primary config lacks."""
    plain = OmegaConf.to_container(cfg, resolve=False)  # interpolations stay strings: nothing is resolved
    plain.pop("hydra", None)  # present only with compose(return_hydra_config=True): Hydra's own settings
    _check_finite_numbers(plain)
    _check_known_keys(plain, primary_key_tree(config_name), f"conf/{config_name}.yaml or a group file it composes")


def validate_train_config(cfg: DictConfig) -> AugmentConfig:
    """Every check that needs only the config (see the module docstring); raise ``ConfigError``. Returns
    the parsed augmentation settings, which the checks had to build anyway (the run uses this one)."""
    _check_plain_config(cfg, "train")
    _check_published(cfg.get("published"))
    _check_trainer(cfg)
    _check_evaluation(cfg.evaluation)
    try:
        _check_group_signatures(cfg)
    except ArgumentError as err:
        raise ConfigError(str(err)) from None
    _check_method_and_sampler_classes(cfg)
    augment = _check_dataset(cfg.dataset)
    _check_sampler_values(cfg)
    _check_method_sizes(cfg.method)
    _check_optimizer(cfg.optimizer)
    _check_scheduler(cfg)
    check_logger_config(cfg.logger)
    _check_backbone_input_size(cfg)
    _check_candidate_count(cfg)
    return augment


PUBLISHED_KEYS = ("value", "metric", "protocol", "source")
# The final numbers a published result can be compared with (``metrics.json`` "final": kNN, the linear
# probe, and the online probe's test accuracy, for numbers of an online classifier such as solo-learn's).
PUBLISHED_METRICS = (*(f"{p}/top{k}" for p in ("linear", "knn") for k in (1, 5)), "online_probe/test_top1",
                     "online_probe/test_top5")


def _check_published(block: Any) -> None:
    """``published`` (a recipe's published number, conf/experiment/) is null or exactly
    {value: percent, metric: one of PUBLISHED_METRICS, protocol: one line, source: one line}; nothing
    else reads it, so a typo here would only show as a wrong table in a report."""
    if block is None:
        return
    shape = ("expected null or a block with exactly the keys value (a number in [0, 100], in percent), "
             f"metric ({' | '.join(PUBLISHED_METRICS)}), protocol and source (one-line texts)")
    if not OmegaConf.is_dict(block):
        raise ConfigError(f"published={as_written(block)} is not allowed: {shape}")
    keys = [str(k) for k in block]
    if sorted(keys) != sorted(PUBLISHED_KEYS):
        missing = [f"published.{k}" for k in PUBLISHED_KEYS if k not in keys]
        unknown = [f"published.{k}" for k in keys if k not in PUBLISHED_KEYS]
        detail = "; ".join([f"missing {', '.join(missing)}"] * bool(missing)
                           + [f"unknown {', '.join(unknown)}"] * bool(unknown))
        raise ConfigError(f"published has keys {keys} ({detail}): {shape}")
    _number(block, "published.value", 0.0, 100.0, low_open=False)
    _choice(block, "published.metric", PUBLISHED_METRICS)
    for key in ("protocol", "source"):
        text = block[key]
        if not isinstance(text, str) or not text.strip() or "\n" in text:
            raise ConfigError(f"published.{key}={as_written(text)} is not allowed: expected a non-empty one-line text")


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
    _int(t, "trainer.overfit_batches", 0)
    _int(t, "trainer.profile_steps", 0)
    _int(t, "trainer.profile_warmup_steps", 0)
    _int(cfg, "seed", 0, maximum=MAX_SEED)
    _check_device(t, "trainer.device")
    if t.threads != "auto":
        try:
            _int(t, "trainer.threads", 1)
        except ConfigError:
            raise ConfigError(f"trainer.threads={as_written(t.threads)} is not allowed: expected auto (the cores "
                              "free of other work) or an integer >= 1") from None
    for key in ("eval_at_init", "compile", "sync_batchnorm", "data_on_device", "progress_bar", "save_checkpoints"):
        _bool(t, f"trainer.{key}")
    _choice(t, "trainer.precision", tuple(PRECISION_DTYPES))
    if t.precision == "fp16" and (str(t.device) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.precision='fp16' needs a CUDA device (its loss scaling is a CUDA GradScaler); "
                          "use trainer.precision=bf16 on the CPU")
    if t.channels_last not in ("auto", True, False):
        raise ConfigError(f"trainer.channels_last={as_written(t.channels_last)} is not allowed: expected auto, true "
                          "or false")
    _choice(t, "trainer.compile_mode", COMPILE_MODES)
    _choice(t, "trainer.positive_pairs", POSITIVE_PAIRS)
    if t.compile_mode != "default" and not t.compile:
        raise ConfigError(f"trainer.compile_mode={t.compile_mode} has no effect with trainer.compile=false (nothing is "
                          "compiled): add trainer.compile=true, or leave compile_mode at default")
    _choice(t, "trainer.nonfinite", NONFINITE_MODES)
    _choice(t, "trainer.best_mode", ("max", "min"))
    _check_best_metric(cfg)
    if t.sync_batchnorm and (str(t.device) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm has no CPU path)")
    if cfg.resume is not None and not isinstance(cfg.resume, str):
        raise ConfigError(f"resume={as_written(cfg.resume)} is not allowed: expected auto, null, a .pt file or a "
                          "run dir")
    if t.grad_clip is not None:
        _positive(t, "trainer.grad_clip")
    # nonfinite=skip stops once more than this share of the run's steps were skipped; 1 = never
    _number(t, "trainer.max_skipped_fraction", 0.0, 1.0, low_open=False)
    _positive(cfg.probe, "probe.lr")
    _number(cfg.probe, "probe.weight_decay", 0.0, low_open=False)
    _choice(cfg.probe, "probe.optimizer", PROBE_OPTIMIZERS)
    _choice(cfg.probe, "probe.schedule", PROBE_SCHEDULES)
    _number(cfg.probe, "probe.momentum", 0.0, 1.0, low_open=False, high_open=True)
    _int(cfg.probe, "probe.batch_size_reference", 1, allow_none=True)
    if cfg.probe.optimizer == "lars" and "lars" not in str(cfg.optimizer.get("_target_", "")).lower():
        raise ConfigError("probe.optimizer=lars takes its eta, clip_lr and trust_denominator from the run's LARS: "
                          f"it needs optimizer=lars (this run: {cfg.optimizer.get('_target_')})")


def _check_device(node: DictConfig, key: str) -> None:
    """auto, cpu, cuda or cuda:N, and a CUDA device only where it exists (torch's own errors for
    ``cuda:abc`` or a missing GPU do not name the setting, and come after the data is read)."""
    device = str(_get(node, key))
    index = re.fullmatch(r"cuda:(\d+)", device)
    if not (device in ("auto", "cpu", "cuda") or index):
        raise ConfigError(f"{key}={as_written(device)} is not allowed: expected auto, cpu, cuda or cuda:N (N a GPU "
                          "index)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={as_written(device)} is not allowed: CUDA is not available on this machine; "
                          f"use {key}=cpu or auto")
    if index and int(index[1]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"{key}={as_written(device)} is not allowed: this machine has {count} GPU(s), "
                          f"cuda:0 .. cuda:{count - 1}")


def best_metric_names(cfg: DictConfig) -> list[str]:
    """The metrics ``trainer.best_metric`` can pick (``Trainer._improves_best``): the evaluation's numbers
    (``engine.evaluation``: kNN and online probe at eval epochs and at the end, the linear probe at the
    end) and, when an eval epoch falls before the last, that epoch's training record."""
    from cl_suite.eval.knn import topk_accuracy

    accuracies = [f"top{k}" for k in inspect.signature(topk_accuracy).parameters["ks"].default]
    names = [f"{p}{a}" for p in ("knn/", "linear/", "online_probe/test_") for a in accuracies]
    t = cfg.trainer
    if t.eval_every_epochs and t.eval_every_epochs < t.epochs:
        names += ["train/epoch_loss", *(f"online_probe/train_{a}" for a in accuracies)]
    return names


def _check_best_metric(cfg: DictConfig) -> None:
    """A name no evaluation produces would leave best.pt unwritten without a word."""
    metric = cfg.trainer.best_metric
    if metric is None:
        return
    names = best_metric_names(cfg)
    # diag/<name>: the method's own epoch diagnostics (named by the method at run time), in mid-run records
    if isinstance(metric, str) and (metric in names or (metric.startswith("diag/") and "train/epoch_loss" in names)):
        return
    mid_run = "" if "train/epoch_loss" in names else (
        " (training numbers such as train/epoch_loss need trainer.eval_every_epochs between 1 and "
        "trainer.epochs - 1: they are compared at eval epochs only)")
    raise ConfigError(f"trainer.best_metric={as_written(metric)} is not allowed: this run never measures it, so "
                      f"best.pt would never be written; expected one of {', '.join(names)}"
                      f"{', or diag/<name>' if 'train/epoch_loss' in names else ''}, or null for no best.pt"
                      f"{mid_run}")


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
    if "embedding_snapshot" in e:
        _int(e, "evaluation.embedding_snapshot", 0)
    if "retrieval" in e:
        ks = e.retrieval.ks
        if not OmegaConf.is_list(ks) or not ks or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
            raise ConfigError(f"evaluation.retrieval.ks={as_written(ks)} is not allowed: expected a non-empty list of "
                              "integers >= 1")
    if "lowshot" in e:
        fractions = e.lowshot.fractions
        if not OmegaConf.is_list(fractions) or not fractions or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions) \
                or len(set(fractions)) != len(fractions):
            raise ConfigError(f"evaluation.lowshot.fractions={as_written(fractions)} is not allowed: expected a "
                              "non-empty list of distinct numbers in (0, 1], e.g. [0.01, 0.1]")
        if "draws" in e.lowshot:
            _int(e.lowshot, "evaluation.lowshot.draws", 1)
    if "ood" in e:
        from cl_suite.eval.protocols import OOD_SCORES

        _choice(e.ood, "evaluation.ood.score", tuple(OOD_SCORES))
        _int(e.ood, "evaluation.ood.k", 1)
        _positive(e.ood, "evaluation.ood.reg_covar")


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
    check_group_arguments("logger", cfg.logger, injected=LOGGER_ARGUMENTS)


def _check_dataset(d: DictConfig) -> AugmentConfig:
    from cl_suite.data.augment import AugmentConfig

    for key in ("mean", "std"):
        value = d.get(key)
        if not OmegaConf.is_list(value) or len(value) not in (1, 3) or not all(
                isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and math.isfinite(v) for v in value):
            raise ConfigError(f"dataset.{key}={as_written(value)} is not allowed: expected a list of 1 or 3 finite "
                              "numbers (one per image channel)")
    if any(v <= 0 for v in d.std):
        raise ConfigError(f"dataset.std={list(d.std)} is not allowed: every channel's std must be > 0")
    if "image_size" in d:
        _int(d, "dataset.image_size", 1)
    for key in d:  # split_seed, seed: numpy and scikit-learn take [0, 2**32 - 1] and do not name the key
        if str(key).endswith("seed"):
            _int(d, f"dataset.{key}", 0, maximum=MAX_SEED)
    try:
        return AugmentConfig.from_dict(OmegaConf.to_container(d.augment, resolve=True), mean=list(d.mean),
                                       std=list(d.std))
    except ValueError as err:  # its messages say "augment config: <key> ..."; name the full key
        unknown = re.fullmatch(r"augment config: unknown key\(s\) (.*); allowed: (.*)", str(err))
        if unknown:
            keys, allowed = unknown[1].split(", "), unknown[2].split(", ")
            raise ConfigError(_unknown_key_message([f"dataset.augment.{k}" for k in keys],
                                                   [f"dataset.augment.{k}" for k in allowed])) from None
        raise ConfigError(str(err).replace("augment config: ", "dataset.augment.", 1)) from None


def _check_sampler_values(cfg: DictConfig) -> None:
    """The sampler's own ranges, before the checks that combine it with other groups: otherwise a
    negative ``sampler.s1`` would be reported by the candidate-count check instead. Its constructor
    checks them; a sampler is small and stateless, so it is built once here and dropped."""
    from cl_suite.engine.build import instantiate_unwrapped

    try:
        sampler = instantiate_unwrapped(cfg.sampler, _convert_="all")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if getattr(sampler, "follows_accuracy", False) and not cfg.trainer.eval_every_epochs:
        raise ConfigError(f"sampler.anneal={as_written(cfg.sampler.get('anneal'))} follows the kNN accuracy of the "
                          "evaluations during training, but trainer.eval_every_epochs=0 runs none: set "
                          "trainer.eval_every_epochs=1 (the Ring code validates every epoch)")


def _check_method_sizes(m: DictConfig) -> None:
    """Sizes shared by several frameworks (a zero-width head or an empty queue would build and then fail
    or silently learn nothing); each framework checks its own other settings when it is built."""
    for key in ("projector_dim", "queue_size"):
        if key in m:
            _int(m, f"method.{key}", 1)
    if "num_negatives" in m:  # null where the constructor's annotation takes it (e.g. every bank row)
        _int(m, "method.num_negatives", 1, allow_none=_argument_takes_null(m, "num_negatives"))
    hidden = m.get("projector_hidden_dims")
    if hidden is not None and not (OmegaConf.is_list(hidden) and all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)):
        raise ConfigError(f"method.projector_hidden_dims={as_written(hidden)} is not allowed: expected a list of "
                          "integers >= 1 ([] for a linear head)")


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
            raise ConfigError(f"optimizer.betas={as_written(betas)} is not allowed: expected two numbers in [0, 1)")
    if "eta" in o:
        _positive(o, "optimizer.eta")
    if "clip_lr" in o:
        _bool(o, "optimizer.clip_lr")
    if "trust_denominator" in o:
        _choice(o, "optimizer.trust_denominator", TRUST_DENOMINATORS)
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
    if "warmup_prefix" in s:
        _bool(s, "scheduler.warmup_prefix")


def _check_method_and_sampler_classes(cfg: DictConfig) -> None:
    """A method or sampler of one's own is called through its base class (the start-up checks call its
    ``candidates_per_anchor`` / ``check_candidates``, the loop its ``forward`` and ``negative_term``): one that
    is no subclass, or a sampler without ``negative_term``, would fail later with an AttributeError or a
    bare NotImplementedError."""
    from cl_suite.methods import SimCLR
    from cl_suite.methods.base import ContrastiveMethod
    from cl_suite.samplers.base import NegativeSampler

    classes = {}
    for group, base in (("method", ContrastiveMethod), ("sampler", NegativeSampler)):
        classes[group] = get_object(cfg[group]._target_)
        if not (isinstance(classes[group], type) and issubclass(classes[group], base)):
            raise ConfigError(f"{group}._target_={cfg[group]._target_!r} is not a subclass of "
                              f"{base.__module__}.{base.__name__}: a {group} of your own must subclass it")
    if cfg.trainer.positive_pairs == "same_class" and not issubclass(classes["method"], SimCLR):
        raise ConfigError(f"trainer.positive_pairs=same_class is not allowed with method._target_="
                          f"{cfg.method._target_!r}: the second view from another image of the class is offered for "
                          "the SimCLR family (simclr, dcl, hcl, ring, ...: in-batch pairs and nothing keyed on "
                          "the image index), as HCL's cifar100_true_label")
    if classes["sampler"].negative_term is NegativeSampler.negative_term:
        raise ConfigError(f"sampler._target_={cfg.sampler._target_!r} does not implement negative_term(ctx): a "
                          "sampler returns its negative term, a NegativeTerm with one log N_a per anchor")


def _check_backbone_input_size(cfg: DictConfig) -> None:
    """The training crop must survive the backbone's downsampling, or fit a fixed-size model: the
    backbone class's own ``check_input_size`` (models/backbones.py), where it has one."""
    check = getattr(get_class(cfg.backbone._target_), "check_input_size", None)
    if check is not None:
        check(cfg.backbone, cfg.dataset.augment.crop_size)


def _argument_takes_null(node: DictConfig, key: str) -> bool:
    """Whether the constructor named by ``node._target_`` annotates its argument ``key`` as taking None."""
    init = get_class(node._target_).__init__
    try:
        hint = typing.get_type_hints(init).get(key)
    except Exception:  # an annotation this Python cannot evaluate: as config_arguments, judge nothing
        return True
    return hint is not None and value_fits(None, hint)


def _check_candidate_count(cfg: DictConfig, bank_size: int | None = None) -> None:
    """A sampler that needs more candidates than the framework gives would fail at the first step.

    Neither side is known here by name: the method's class declares its candidates per anchor
    (``ContrastiveMethod.candidates_per_anchor``, None: nothing to check yet) and the sampler's class
    checks itself against that count (``NegativeSampler.check_candidates``), both from their config
    groups, before anything is built; ``bank_size`` is the data set's size once it is read."""
    method_cls, batch = get_class(cfg.method._target_), cfg.trainer.batch_size
    count = method_cls.candidates_per_anchor(cfg.method, batch, bank_size)
    if count is None:
        return
    source = method_cls.candidates_source(cfg.method, batch, bank_size)
    get_class(cfg.sampler._target_).check_candidates(cfg.sampler, count, source)


def validate_against_data(cfg: DictConfig, data) -> None:
    """Checks that need the data set (its size): run right after it is read, before any model is built."""
    if not bool((data.train.labels >= 0).any()):
        raise ConfigError(f"dataset={data.name} has no labelled training images: a run's kNN and linear evaluation "
                          "need them (dataset=image_files is for evaluate.py's OOD protocol only)")
    labels = data.train.labels[data.train.labels >= 0].unique()
    if len(labels) < 2:
        raise ConfigError(f"dataset={data.name} has one class ({data.classes[int(labels[0])]!r}) in its labelled "
                          "training images: its kNN, linear and probe accuracies would be 100% by construction; "
                          "expected at least 2 classes (an image folder: one sub-folder per class in each split)")
    _check_neighbour_counts(cfg.evaluation, data, ("knn",))
    pretrain = len(data.pretrain)
    if cfg.trainer.batch_size > pretrain:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the {pretrain} training images "
                          f"of dataset={data.name}")
    _check_candidate_count(cfg, bank_size=pretrain)  # a whole-bank framework's count is the data set size
    batches = pretrain // cfg.trainer.batch_size
    if cfg.trainer.overfit_batches > batches:
        raise ConfigError(f"trainer.overfit_batches={cfg.trainer.overfit_batches} is more than the {batches} batches of "
                          f"{cfg.trainer.batch_size} images in dataset={data.name}: expected an integer in [0, {batches}]")


def _check_neighbour_counts(e: DictConfig, data, protocols, setting: str = "dataset") -> None:
    """A k larger than the training split it searches cannot be honoured (kNN votes come from labelled
    images only); refused here rather than clamped, so the recorded k is the k used. ``setting`` names the
    data set in the message (``transfer_dataset``: evaluate.py's transfer protocol)."""
    labelled = int((data.train.labels >= 0).sum())
    if "knn" in protocols and e.knn.k > labelled:
        raise ConfigError(f"evaluation.knn.k={e.knn.k} is larger than the {labelled} labelled training images of "
                          f"{setting}={data.name}: expected an integer in [1, {labelled}]; lower it")
    if "ood" in protocols and e.ood.score == "knn" and e.ood.k > len(data.train):
        raise ConfigError(f"evaluation.ood.k={e.ood.k} is larger than the {len(data.train)} training images of "
                          f"dataset={data.name}: expected an integer in [1, {len(data.train)}]; lower it")


def validate_evaluate_config(cfg: DictConfig) -> None:
    """evaluate.py's own settings (conf/evaluate.yaml), before the run's checkpoint or data are read."""
    _check_plain_config(cfg, "evaluate")
    _check_evaluation(cfg.evaluation)
    _int(cfg, "seed", 0, maximum=MAX_SEED)
    _check_device(cfg, "device")
    _bool(cfg, "wandb")


def validate_evaluation_against_data(cfg: DictConfig, data, protocols, setting: str = "dataset") -> None:
    """evaluate.py's checks that need the run's data set (or a ``setting=transfer_dataset``), right after it is read."""
    _check_neighbour_counts(cfg.evaluation, data, protocols, setting)
