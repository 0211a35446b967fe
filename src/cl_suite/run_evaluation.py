"""Re-evaluate a finished run from its directory (its config, its checkpoint) or an exported backbone file
(``python -m cl_suite.export``) with the chosen protocols."""
from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra._internal.utils import _locate  # what instantiate uses to find a _target_ (get_object also logs)
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from cl_suite.distributed import resolve_device
from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.build import (UNIFORM_SAMPLER, DatasetFacts, build_augment_config, build_logger,
                                   build_method)
from cl_suite.engine.other_datasets import (build_dataset_for_evaluation, check_root_given, dataset_names,
                                            load_other_dataset, ood_augment_config, set_root)
from cl_suite.engine.probe import OnlineProbe
from cl_suite.engine.run_log import say
from cl_suite.engine.validation import ConfigError, validate_evaluate_config, validate_evaluation_against_data
from cl_suite.errors import MissingPathError, as_written
from cl_suite.files import load_untrusted_yaml, printable, read_json_object
from cl_suite.eval.protocols import (check_protocols, encode_split, encode_splits, knn_metrics, linear_metrics,
                                     lowshot_protocol_metrics, online_probe_metrics, ood_protocol_metrics,
                                     retrieval_protocol_metrics, transfer_protocol_metrics)
from cl_suite.sweeps import command_override


# Classes outside cl_suite that the suite's own config groups name (conf/optimizer): the only library
# _target_ a run config may hold. Exact names: a wildcard such as torch.optim.* would also reach
# torch.optim.sgd.torch.hub.load (Hydra locates a target attribute by attribute).
LIBRARY_TARGETS = frozenset({"torch.optim.SGD", "torch.optim.AdamW"})
# Where a run config may name a target, and what: the top of each config group (what engine/build.py
# instantiates, and each logger of logger=many), a class or function defined in that group's package (or
# one of LIBRARY_TARGETS for the optimizer). A _target_ anywhere else, inside a group's arguments, would
# have instantiate build that object too (a CSVLogger given as a backbone's argument writes a file
# wherever the config says): refused, even for the suite's own classes.
TARGET_SLOTS = {"dataset": ("cl_suite.data",), "backbone": ("cl_suite.models",), "method": ("cl_suite.methods",),
                "sampler": ("cl_suite.samplers",), "optimizer": ("cl_suite.engine.optim", *LIBRARY_TARGETS),
                "scheduler": ("cl_suite.engine.schedule",), "logger": ("cl_suite.engine.logger",)}


def _target_slot(key_path: str) -> tuple[str, ...] | None:
    """The targets allowed at ``key_path`` (``backbone._target_``, ``logger.loggers.csv._target_``), or None."""
    parts = key_path.split(".")
    if len(parts) == 2 and parts[0] in TARGET_SLOTS:
        return TARGET_SLOTS[parts[0]]
    if len(parts) == 4 and parts[:2] == ["logger", "loggers"]:
        return TARGET_SLOTS["logger"]
    return None


# Resolvers an interpolation in a run config may call: they only read (the environment, other keys,
# Hydra's own settings, the clock). oc.decode and oc.create are not among them: they build new config
# nodes from a string when resolved, which could carry a _target_ that the check below never saw.
SAFE_RESOLVERS = frozenset({"oc.env", "oc.select", "oc.deprecated", "oc.dict.keys", "oc.dict.values", "hydra",
                            "now"})


# What evaluate.py writes into a run folder by appending or by a library that follows links: a link there
# (planted in a run folder from someone else) would make it write to the link's target.
WRITTEN_IN_RUN = ("evaluate.log", "wandb")


def load_run_config(run_dir: Path, trusted: tuple[str, ...] = ()) -> DictConfig:
    """``<run>/.hydra/config.yaml``, after ``check_run_config``: a run folder can come from anyone (a
    shared outputs folder), and its config is instantiated. A run folder where a file evaluate.py writes
    is a symbolic link (``WRITTEN_IN_RUN``) is refused. ``trusted``: see ``check_run_config``."""
    path = run_dir / ".hydra" / "config.yaml"
    links = [name for name in WRITTEN_IN_RUN if (run_dir / name).is_symlink()]
    if links:
        raise ConfigError(f"run={str(run_dir)!r}: {', '.join(links)} is a symbolic link (to "
                          f"{os.readlink(run_dir / links[0])!r}); refused: evaluate.py writes there, and would write "
                          "to the link's target. Delete the link if the folder is yours")
    if not run_dir.is_dir():
        raise MissingPathError(f"run={str(run_dir)!r} does not exist: pass the folder of one run that train.py "
                               "wrote (outputs/<date>/<time>, or one job's folder of a sweep)")
    if not path.is_file():
        raise MissingPathError(f"run={str(run_dir)!r} has no .hydra/config.yaml: pass the folder of one run that "
                               "train.py wrote (outputs/<date>/<time>, or one job's folder of a sweep)")
    try:
        cfg = load_untrusted_yaml(path)  # YAML safe loading: tags cannot build Python objects
    except (ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a readable run config ({str(err)[:300]})") from None
    check_run_config(cfg, path, trusted)
    cfg.paths.output_dir = str(run_dir)  # was ${hydra:runtime.output_dir} of the training job
    return cfg


def check_run_config(cfg: DictConfig, path: Path, trusted: tuple[str, ...] = ()) -> None:
    """Refuse a run config that would make ``instantiate`` call anything but the suite's own classes.

    ``trusted`` (evaluate.py's ``trust_targets``): modules or full names of the user's own code (a method
    or backbone of their own) that a run config may name at the top of a group as well; the user vouches
    for them, and they are imported to be checked. Still only classes or functions defined there.

    Checked before anything is instantiated, at every depth (inside lists and ``_args_`` too), twice:
    as written, then with its interpolations resolved (a resolver can build a node, e.g. from the default
    of ``oc.select``, and a resolver's name can itself be computed). Refused, naming each key path:

    - a ``_target_`` anywhere but at the top of a config group, or one that is not a class or function
      defined in that group's package (``TARGET_SLOTS``; located by importing only cl_suite modules, so a
      path through a module's imports such as ``cl_suite.data.cifar.os.system`` is refused too) nor, for
      the optimizer, one of ``LIBRARY_TARGETS``; a ``_target_`` that is not a plain string, or is an
      interpolation;
    - an interpolation calling a resolver outside ``SAFE_RESOLVERS`` and the suite's own ``cl_suite.*``
      ones, or one whose resolver or key name is itself computed (``${${x}:...}``): the written check
      runs before resolution, so resolution only ever calls resolvers that read values.

    - Hydra's other instantiate keys (``_partial_``, ``_args_``, ``_recursive_``, ``_convert_``): no config
      of the suite writes them (a partial object in place of a data set fails later, unexplained).
    """
    problems: dict[str, str] = {}  # one line per key path, in the order found
    unresolvable: dict[str, str] = {}
    _check_written(OmegaConf.to_container(cfg, resolve=False), "", problems, trusted)
    if not problems:  # resolution only calls the resolvers allowed above: it reads, it never runs code
        _check_resolved(cfg, problems, unresolvable, trusted)
    if unresolvable and not problems:
        raise ConfigError(f"{path}: refused, values of this run config cannot be resolved:\n  "
                          + "\n  ".join(unresolvable.values()) + "\nDid train.py write this folder?")
    if problems:
        raise ConfigError(
            f"{path}: refused, this run config names code that evaluate.py does not run:\n  "
            + "\n  ".join(problems.values())
            + "\nAllowed: " + ", ".join(f"{group}._target_: " + " or ".join(map(_shown, allowed))
                                         for group, allowed in TARGET_SLOTS.items())
            + f"; interpolations through {', '.join(sorted(SAFE_RESOLVERS))} "
              "or cl_suite.* resolvers. Nothing was instantiated. Did train.py write this folder? (Code of your "
              f"own, a method, sampler, backbone, data set or logger: {_trust_hint(cfg, problems, trusted)})")


def _trust_hint(cfg: DictConfig, problems: dict[str, str], trusted: tuple[str, ...]) -> str:
    """``trust_targets=[...]``: the modules already trusted and those of the refused ``_target_`` values that
    name code outside the suite (written out, not interpolated), for the refusal's last line."""
    written = OmegaConf.to_container(cfg, resolve=False)
    modules = list(trusted)
    for key_path in problems:
        node: Any = written
        for part in key_path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (isinstance(node, str) and "." in node and "${" not in node and not node.startswith("cl_suite.")
                and node not in LIBRARY_TARGETS and node.rsplit(".", 1)[0] not in modules):
            modules.append(node.rsplit(".", 1)[0])
    return f"trust_targets=[{','.join(modules) or '<its module>'}]"


def _shown(allowed: str) -> str:
    return allowed if allowed in LIBRARY_TARGETS else allowed + ".*"


def _check_target(key_path: str, value: Any, problems: dict[str, str], trusted: tuple[str, ...]) -> None:
    allowed = _target_slot(key_path)
    if allowed is None:
        slots = ", ".join(f"{group}._target_" for group in TARGET_SLOTS)
        problem = (f"is not at the top of a config group: a _target_ may only be {slots} or "
                   "logger.loggers.<name>._target_")
    elif isinstance(value, str) and any(value == t or value.startswith(t + ".") for t in trusted):
        problem = _trusted_target_problem(value, trusted)
    else:
        problem = _target_problem(value, allowed)
    if problem:
        problems.setdefault(key_path, f"{key_path}: {value!r} {problem}")


INSTANTIATE_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")


def _check_written(node: Any, where: str, problems: dict[str, str], trusted: tuple[str, ...] = ()) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            key_path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                _check_target(key_path, value, problems, trusted)
            elif key in INSTANTIATE_KEYS:
                problems.setdefault(key_path, f"{key_path}: Hydra's {key} is not allowed in a run config (the "
                                              "suite's configs never write it)")
            _check_written(value, key_path, problems, trusted)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_written(value, f"{where}[{i}]", problems, trusted)
    elif isinstance(node, str):
        for start in (m.end() for m in re.finditer(r"\$\{", node)):
            name = _INTERPOLATION_NAME.match(node, start)
            if name is None:
                problems.setdefault(where, f"{where}: {node!r} has an interpolation with a computed name, "
                                           "which is not allowed")
            elif name.group(2) == ":" and name.group(1) not in SAFE_RESOLVERS and not name.group(1).startswith(
                    "cl_suite."):
                problems.setdefault(where, f"{where}: {node!r} calls the resolver {name.group(1)!r}, which is not "
                                           "allowed")


_INTERPOLATION_NAME = re.compile(r"\s*([\w.\-\[\]]+)\s*([:}])")  # a written key path or resolver name
_MAX_RESOLVED_VALUES = 100_000  # a config whose resolution goes on (a node that contains itself) is refused


def _check_resolved(cfg: DictConfig, problems: dict[str, str], unresolvable: dict[str, str],
                    trusted: tuple[str, ...] = ()) -> None:
    """The ``_target_`` values of ``cfg`` with its interpolations resolved, including nodes that only exist
    after resolution. A value that cannot be resolved (an interpolation of a missing key, ``???``) goes to
    ``unresolvable``, but for ``${hydra:...}`` values: Hydra's own record resolves only inside Hydra."""
    stack: list[tuple[Any, str]] = [(cfg, "")]
    visited = 0
    while stack:
        node, where = stack.pop()
        if isinstance(node, DictConfig | dict):
            keys = list(node.keys())
        elif isinstance(node, ListConfig | list | tuple):
            keys = list(range(len(node)))
        else:
            continue
        for key in keys:
            visited += 1
            if visited > _MAX_RESOLVED_VALUES:
                problems.setdefault("", f"{where}: resolving the config does not end (a node that contains "
                                        "itself?); refused")
                return
            key_path = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else str(key))
            try:
                value = node[key]
            except Exception as error:  # noqa: BLE001 - any failure to resolve is the same refusal
                written = str(node._get_node(key)._value())  # the value as the file writes it
                if "${hydra:" not in written:
                    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    unresolvable.setdefault(key_path,
                                            f"{key_path}: {printable(written)[:200]} ({printable(reason)[:200]})")
                continue
            if key == "_target_":
                _check_target(key_path, value, problems, trusted)
            elif key in INSTANTIATE_KEYS:
                problems.setdefault(key_path, f"{key_path}: Hydra's {key} is not allowed in a run config")
            stack.append((value, key_path))


def _target_problem(target: Any, allowed: tuple[str, ...]) -> str | None:
    """None if ``target`` may be instantiated where ``allowed`` (packages, or exact library names) applies,
    else why not."""
    if not isinstance(target, str):
        return "is not a dotted name"
    if "${" in target:
        return "is an interpolation: a _target_ must be written out"
    if target in LIBRARY_TARGETS:
        return None if target in allowed else f"is not allowed there (only {', '.join(allowed)})"
    if not target.startswith("cl_suite."):
        return "is not one of the suite's own targets nor an allowed library class"
    if not any(target.startswith(package + ".") for package in allowed):
        return f"is not allowed there (only {', '.join(_shown(p) for p in allowed)})"
    try:
        obj = _locate(target)  # imports cl_suite modules only: every candidate module is under cl_suite.
    except Exception:
        return "cannot be found in cl_suite"
    module = getattr(obj, "__module__", None) or ""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not any(
            module == package or module.startswith(package + ".") for package in allowed):
        return f"is not a class or function of the suite's config packages (it is {module or type(obj).__name__})"
    return None


def _trusted_target_problem(target: str, trusted: tuple[str, ...]) -> str | None:
    """None if ``target`` is a class or function defined in the trusted module (or is the trusted name)."""
    if "${" in target:
        return "is an interpolation: a _target_ must be written out"
    from hydra.utils import get_object

    try:
        obj = get_object(target)  # imports the user's module: they vouched for it with trust_targets
    except Exception as err:  # noqa: BLE001 - any import failure is the same refusal
        return f"cannot be imported ({type(err).__name__}: {str(err)[:200]})"
    module = getattr(obj, "__module__", None) or ""
    # the module a trusted full name lives in, or the trusted module itself
    roots = [t.rsplit(".", 1)[0] if target == t else t for t in trusted if target == t or target.startswith(t + ".")]
    if not (inspect.isclass(obj) or inspect.isfunction(obj)) or not any(
            module == root or module.startswith(root + ".") for root in roots):
        return (f"is not a class or function defined in the trusted {' or '.join(roots)} "
                f"(it is {module or type(obj).__name__})")
    return None


def encoder_only(train_cfg: DictConfig) -> DictConfig:
    """The run's config with the uniform sampler in place of the trained one: evaluation only encodes,
    samplers hold no state (nothing of theirs is in a checkpoint), and so a run folder stays readable
    when a sampler's settings are renamed (the ring's percentiles became fractions). A backbone's
    ``pretrained_file`` is dropped: the checkpoint holds the weights, and the run folder may come from
    anyone."""
    cfg = train_cfg.copy()
    cfg.sampler = OmegaConf.create({"_target_": UNIFORM_SAMPLER})
    if "pretrained_file" in cfg.backbone:  # the checkpoint's weights replace it; never read a file it names
        cfg.backbone.pretrained_file = None
    return cfg


def find_checkpoint(run_dir: Path, name: str, save_checkpoints: bool = False) -> Path:
    """``save_checkpoints``: the run's ``trainer.save_checkpoints``, which says why a run has no checkpoint."""
    path = Path(name)
    if path.suffix == ".pt" and path.is_file():
        return path
    path = run_dir / ckpt.CHECKPOINT_DIR / f"{name}.pt"
    if not path.is_file():
        available = sorted(p.stem for p in (run_dir / ckpt.CHECKPOINT_DIR).glob("*.pt"))
        hint = f"available: {available}" if available else (
            f"the run has no checkpoint yet: it stopped (refused or crashed) before its first one, or is still in "
            f"its first epochs; see {run_dir / 'train.log'}" if save_checkpoints else
            "the run saved no checkpoint (trainer.save_checkpoints=false, e.g. debug=fast)")
        raise MissingPathError(f"checkpoint={name!r}: {path} does not exist; {hint}")
    return path


def evaluate_run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.protocol`` on the run's checkpoint; write ``<run>/eval.json`` (``eval_json_path``: the
    newest checkpoint's; ``eval_best.json`` for ``checkpoint=best`` ...) and the wandb summary.

    The file holds the checkpoint, its step and epoch, the data set, ``protocols`` (each protocol's
    metrics), ``settings`` (per protocol, the evaluation settings, seed and data sets with their
    ``*_root`` folders that produced them) and ``metrics`` (all numbers, flat). Protocols evaluated
    earlier on the same checkpoint, step and data set and not re-run now are kept with their settings,
    so ``protocol=ood`` after ``protocol=[linear,knn]`` adds to the file instead of replacing it.

    Without ``run``, ``checkpoint`` is a backbone file of ``python -m cl_suite.export`` (see
    ``exported_backbone``): the same protocols (the linear one without the online probe, which is not
    exported), results in ``<file stem>.eval.json`` beside it, no wandb.
    """
    validate_evaluate_config(cfg)
    ood_names = dataset_names(cfg.ood_dataset, "ood_dataset")
    transfer_names = dataset_names(cfg.transfer_dataset, "transfer_dataset")
    if "image_files" in transfer_names:
        raise ConfigError("transfer_dataset=image_files is not allowed: its images have no labels to fit and score "
                          "a linear probe on; use an image folder with class folders (transfer_dataset=imagefolder "
                          "transfer_root=<dir with train/ and test/>)")
    protocols = check_protocols(cfg.protocol, ood_names, transfer_names)
    check_root_given(ood_names if "ood" in protocols else [], cfg.ood_root, "ood_root", "ood_dataset")
    check_root_given(transfer_names if "transfer" in protocols else [], cfg.transfer_root, "transfer_root",
                     "transfer_dataset")
    device = resolve_device(cfg.device)
    if cfg.run is None:
        path, export, train_cfg = exported_backbone(cfg)
        state, run_dir, eval_json = None, None, path.with_name(f"{path.stem}.eval.json")
    else:
        if OmegaConf.select(cfg, "dataset") is not None:
            raise ConfigError("dataset= is for an exported backbone file (checkpoint=<file> without run=): a run "
                              "dir is evaluated on its own data set (dataset_root= moves it)")
        run_dir = Path(cfg.run)
        train_cfg = load_run_config(run_dir, trusted_targets(cfg))
        path = find_checkpoint(run_dir, cfg.checkpoint, bool(train_cfg.trainer.get("save_checkpoints", True)))
        state, eval_json = _load_training_checkpoint(path, device), eval_json_path(run_dir, path)
    set_root(train_cfg.dataset, cfg.dataset_root, "dataset_root")
    own = train_cfg.dataset.get("name")
    if "ood" in protocols and own in ood_names and cfg.ood_root is None:
        raise ConfigError(f"ood_dataset={own} is the run's own data set: its test images are in-distribution, so "
                          "the AUROC would be 50 by construction; name another data set (or an image folder "
                          "with ood_dataset=image_files ood_root=<dir>)")

    data = build_dataset_for_evaluation(train_cfg.dataset, "dataset_root", train_cfg.dataset.get("name"))
    validate_evaluation_against_data(cfg, data, protocols)
    aug_cfg = build_augment_config(train_cfg.dataset)
    if state is None:
        from cl_suite.export import backbone_of

        encoder, probe = backbone_of(export).to(device), None
        source = export.header.get("source") if isinstance(export.header.get("source"), dict) else {}
        step, epoch = source.get("step"), source.get("epoch")
    else:
        method = build_method(encoder_only(train_cfg), DatasetFacts.of(data, train_cfg.trainer.batch_size)).to(device)
        method.load_state_dict(state["method"])
        method.eval()
        encoder = method.encode
        probe = OnlineProbe(method.num_features, data.num_classes).to(device)
        probe.load_state_dict(state["probe"])
        step, epoch = state["step"], state["epoch"]
    torch.manual_seed(cfg.seed)
    ev = cfg.evaluation

    def encode(dataset, augment):
        return encode_splits(encoder, dataset, augment, device, ev.batch_size)

    feats = encode(data, aug_cfg)
    results: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        if protocol == "knn":
            results["knn"] = knn_metrics(feats, data.num_classes, ev.knn)
        elif protocol == "linear":
            results["linear"] = {**linear_metrics(feats, data.num_classes, ev.linear, cfg.seed),
                                 **(online_probe_metrics(probe, feats) if probe is not None else {})}
        elif protocol == "retrieval":
            results["retrieval"] = retrieval_protocol_metrics(feats, ev.retrieval)
        elif protocol == "ood":
            results["ood"] = {}
            for name in ood_names:
                other, other_aug = load_other_dataset(name, train_cfg, aug_cfg.crop_size, cfg.ood_root, "ood_root")
                ood_test, _ = encode_split(encoder, other.test, ood_augment_config(aug_cfg, other_aug),
                                           device, ev.batch_size)
                results["ood"].update(ood_protocol_metrics(feats, ood_test, name, ev.ood))
        elif protocol == "transfer":
            results["transfer"] = {}
            for name in transfer_names:
                other, other_aug = load_other_dataset(name, train_cfg, aug_cfg.crop_size, cfg.transfer_root,
                                                      "transfer_root")
                validate_evaluation_against_data(cfg, other, ["knn"], "transfer_dataset")  # its kNN votes too
                results["transfer"].update(transfer_protocol_metrics(encode(other, other_aug), other.num_classes,
                                                                     name, ev, cfg.seed))
        elif protocol == "lowshot":
            results["lowshot"] = lowshot_protocol_metrics(feats, data.num_classes, ev, cfg.seed)

    evaluation = OmegaConf.to_container(ev, resolve=True)
    # per data set: a later call with another data set (and its own root) adds to these (_merge_data_sets)
    other_data = {"ood": {"ood_dataset": ood_names, "ood_root": {name: cfg.ood_root for name in ood_names}},
                  "transfer": {"transfer_dataset": transfer_names,
                               "transfer_root": {name: cfg.transfer_root for name in transfer_names}}}
    settings = {p: {"evaluation": evaluation, "seed": cfg.seed, "dataset_root": cfg.dataset_root,
                    **other_data.get(p, {})} for p in results}
    result = _merge_with_previous(eval_json, {
        "checkpoint": str(path), "epoch": epoch, "step": step, "dataset": train_cfg.dataset.get("name"),
        "protocols": results, "settings": settings})
    ckpt.write_json(eval_json, result)

    # An exported backbone (state None) has no run, so no wandb run to write into.
    wandb_cfg = _wandb_logger_config(train_cfg.logger) if state is not None and cfg.wandb else None
    if wandb_cfg is not None and state.get("wandb_run_id"):
        wandb_cfg = wandb_cfg.copy()
        with open_dict(wandb_cfg):
            wandb_cfg.join_sweep = False  # evaluate.py -m over runs: its sweep is not the runs' own
        logger = build_logger(wandb_cfg, str(run_dir), train_cfg, run_id=state["wandb_run_id"])
        try:
            prefix = "eval" if eval_json.name == EVAL_JSON else f"eval_{path.stem}"  # eval_best/...
            logger.log_summary({f"{prefix}/{k}": v for k, v in result["metrics"].items()})
        finally:
            logger.finish()
    return result


def _wandb_logger_config(logger: DictConfig) -> DictConfig | None:
    """The run's wandb logger config: ``logger=wandb``'s node, or the wandb entry of ``logger=many``
    (with the group the MultiLogger gave it); None when the run did not log to wandb."""
    if "WandbLogger" in str(logger.get("_target_")):
        return logger
    entry = OmegaConf.select(logger, "loggers.wandb") if "MultiLogger" in str(logger.get("_target_")) else None
    if entry is None or "WandbLogger" not in str(entry.get("_target_")):
        return None
    entry = entry.copy()
    if logger.get("group") is not None and "group" in entry:
        entry.group = logger.group
    return entry


def _load_training_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """``load_checkpoint``; a backbone file of cl_suite.export named with ``run=`` gets told how to evaluate it."""
    try:
        return ckpt.load_checkpoint(path, map_location=device)
    except ckpt.CheckpointError as err:
        from cl_suite.export import ExportError, read_export

        try:
            read_export(path)
        except ExportError:
            raise err from None  # not an export either: the checkpoint's own error stands
        raise ConfigError(f"checkpoint={str(path)!r} is an exported backbone, not a training checkpoint: "
                          "evaluate it without run=: python evaluate.py "
                          f"{command_override('checkpoint', path)}") from None


def exported_backbone(cfg: DictConfig):
    """``(path, export, config)`` for ``checkpoint=<exported backbone file>`` without ``run=``.

    The file is read and checked by ``cl_suite.export.read_export`` (weights only, checksum). There is no
    run config: the data set is the one the file's header names (the source run's ``dataset`` config), or
    ``dataset=<conf/dataset option>`` from the command line; ``paths.data_dir`` is evaluate.yaml's (for
    ``ood_dataset``/``transfer_dataset``). The header is untrusted like a run config: the config built from
    it passes ``check_run_config`` before anything is instantiated.
    """
    from cl_suite.export import read_export

    name = cfg.checkpoint
    path = Path(str(name)).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint={name!r} without run=: expected an exported backbone file (python -m "
                          "cl_suite.export <run dir>), but there is no such file. To evaluate a run's checkpoint, "
                          "pass run=<run dir>")
    export = read_export(path)
    if OmegaConf.select(cfg, "dataset") is not None:
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    else:
        dataset = export.header.get("dataset")
        if not isinstance(dataset, dict) or not dataset:
            raise ConfigError(f"exported backbone {str(path)!r} names no data set in its header: pass one with "
                              "dataset=<conf/dataset option>, e.g. dataset=cifar10")
    config = OmegaConf.create({"dataset": dataset, "backbone": export.header.get("backbone"),
                               "paths": {"data_dir": cfg.paths.data_dir}})
    check_run_config(config, path)
    return path, export, config


def trusted_targets(cfg: DictConfig) -> tuple[str, ...]:
    """evaluate.py's ``trust_targets``: a list of dotted names of the user's own modules or classes."""
    names = cfg.get("trust_targets") or []
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if not isinstance(n, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", n)
           or n == "cl_suite" or n.startswith("cl_suite.")]
    if bad:
        raise ConfigError(f"trust_targets={as_written(names)} is not allowed: expected dotted names of your own "
                          f"modules or classes (e.g. trust_targets=[mymethods]), not {bad!r}")
    return tuple(names)


EVAL_JSON = "eval.json"


def eval_json_path(run_dir: Path, checkpoint: Path) -> Path:
    """Where a run's evaluation goes: ``eval.json`` for its newest checkpoint (``last``, or the step file
    ``last.pt`` links to), the numbers the report shows beside the run's final ones; ``eval_<name>.json``
    for any other (``eval_best.json``), so that evaluating ``best.pt`` never stands in for the last
    epoch's numbers."""
    last = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
    if last.is_file() and os.path.samefile(checkpoint, last):
        return run_dir / EVAL_JSON
    return run_dir / f"eval_{checkpoint.stem}.json"


def _same_file(a: Any, b: str) -> bool:
    if a == b:
        return True
    try:
        return isinstance(a, str) and os.path.samefile(a, b)
    except OSError:  # one of them is gone
        return False


def _merge_with_previous(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Keep the protocols (with the settings each ran with) of an earlier evaluation file of the same
    checkpoint, step and data set that were not re-run now; anything else in it is replaced."""
    if path.is_file():
        previous = read_json_object(path) or {}  # a damaged or crafted file: replaced, never half-used
        same = all(previous.get(k) == result[k] for k in ("step", "dataset")) and _same_file(
            previous.get("checkpoint"), result["checkpoint"])  # best.pt may be last.pt's hard link
        if same and isinstance(previous.get("protocols"), dict) and isinstance(previous.get("settings"), dict):
            kept = {p: m for p, m in previous["protocols"].items() if p not in result["protocols"]
                    and isinstance(previous["settings"].get(p), dict)}  # files before settings: not kept
            for protocol in _PER_DATA_SET.keys() & result["protocols"].keys() & previous["protocols"].keys():
                _merge_data_sets(protocol, previous, result)
            result["protocols"] = {**kept, **result["protocols"]}
            result["settings"] = {**{p: previous["settings"][p] for p in kept}, **result["settings"]}
        elif not same and isinstance(previous.get("protocols"), dict) and previous["protocols"]:
            dropped = [p for p in previous["protocols"] if p not in result["protocols"]]
            if dropped:  # they described another data set, checkpoint or step: said, not silently lost
                say(f"{path.name}: the earlier results of {', '.join(map(str, dropped))} (data set "
                    f"{printable(str(previous.get('dataset')))[:60]}, step {printable(str(previous.get('step')))[:20]}) "
                    "are replaced: they were computed on another data set, checkpoint or step")
    result["metrics"] = {k: v for metrics in result["protocols"].values() for k, v in metrics.items()}
    return result


# protocol -> its settings that name the data sets and their folders
_PER_DATA_SET = {"ood": ("ood_dataset", "ood_root"), "transfer": ("transfer_dataset", "transfer_root")}


def _merge_data_sets(protocol: str, previous: dict[str, Any], result: dict[str, Any]) -> None:
    """Keep the numbers of the data sets an earlier ``ood``/``transfer`` evaluation of the same checkpoint
    covered and this one did not (SVHN, then a folder of Tiny-ImageNet with its own ``ood_root``), when
    everything else it ran with was the same; otherwise this call's entry replaces the earlier one. The
    earlier file is untrusted: an entry of any other shape is replaced, never half-used."""
    names_key, roots_key = _PER_DATA_SET[protocol]
    metrics, settings = result["protocols"][protocol], result["settings"][protocol]
    old_metrics, old_settings = previous["protocols"][protocol], previous["settings"].get(protocol)
    if not (isinstance(old_metrics, dict) and isinstance(old_settings, dict)):
        return
    names, roots = old_settings.get(names_key), old_settings.get(roots_key)
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and isinstance(roots, dict)
            and set(roots) == set(names) and all(r is None or isinstance(r, str) for r in roots.values())):
        return  # another shape (a file written before roots were kept per data set): replaced

    def others(node: dict) -> dict:
        return {k: v for k, v in node.items() if k not in (names_key, roots_key)}

    if others(old_settings) != others(settings):
        return  # other evaluation settings, seed or data folder: not comparable, replaced
    earlier = [n for n in names if n not in settings[names_key]]
    kept = {k: v for k, v in old_metrics.items() for n in earlier if k.startswith(f"{protocol}/{n}/")}
    result["protocols"][protocol] = {**kept, **metrics}
    settings[names_key] = earlier + settings[names_key]
    settings[roots_key] = {**{n: roots[n] for n in earlier}, **settings[roots_key]}
