"""What a Hydra sweep varied: parsed with Hydra's own override grammar, shared by wandb and the report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def parse_overrides(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def override_key(override) -> str:
    """``sampler.tau_plus``, ``method`` (a group), ``+extra.key``'s ``extra.key``; ``group@pkg`` as written."""
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def override_values(overrides: list[str]) -> dict[str, Any]:
    """``{key: typed value}`` of one job's overrides (``["seed=1", "method=dcl"]`` -> ``{"seed": 1, ...}``).

    Hydra-internal keys (``hydra.*``) and deletions (``~key``) are left out.
    """
    out = {}
    for override in parse_overrides(overrides):
        key = override_key(override)
        if key.startswith("hydra.") or override.is_delete():
            continue
        value = override.value()
        out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


# Command-line overrides after which a recipe's published number no longer describes the run: another data
# set, augmentation, model, objective, optimizer, schedule, length, read-out protocol or online probe (the
# solo_* recipes publish the online probe's number; study.sh sets published=null for its grids instead).
# Where the data lies and how it is read do not count.
SETTING_GROUPS = ("dataset", "backbone", "method", "sampler", "optimizer", "scheduler", "evaluation", "debug")
SETTING_KEYS = ("trainer.epochs", "trainer.batch_size", "trainer.max_steps", "trainer.overfit_batches",
                "trainer.positive_pairs")
SETTING_PREFIXES = ("dataset.", "backbone.", "method.", "sampler.", "optimizer.", "scheduler.",
                    "evaluation.knn.", "evaluation.linear.", "probe.")
DATA_LOCATION_KEYS = ("dataset.root", "dataset.download", "dataset.verify_integrity", "dataset.cache",
                      "dataset.num_workers", "dataset.in_memory", "dataset.train_dir", "dataset.test_dir",
                      "dataset.pretrain_dir")


def deleted_keys(overrides: list[str]) -> list[str]:
    """The keys one job's deletions remove (``~method.temperature``; ``hydra.*`` left out), which
    ``override_values`` leaves out: the run then takes the constructor's default for them."""
    keys = [override_key(o) for o in parse_overrides(overrides) if o.is_delete()]
    return [k for k in keys if not k.startswith("hydra.")]


def setting_changing_overrides(overrides: dict[str, Any], deleted: list[str] | tuple = ()) -> list[str]:
    """The overrides (``key=value``) of ``overrides`` and the ``deleted`` keys (``~key``, see
    ``deleted_keys``) that change what a recipe's published number measured; ``dataset.root`` (where the
    data is), ``seed``, loggers and the like do not. A deleted recipe value (``~dataset.augment.blur``)
    changes the setting as much as an overridden one: the run uses a default instead."""
    def changes(key: str) -> bool:
        key = key.lstrip("+~")
        if key in DATA_LOCATION_KEYS:
            return False
        return key in SETTING_GROUPS or key in SETTING_KEYS or key.startswith(SETTING_PREFIXES) or key in (
            "evaluation.knn", "evaluation.linear", "probe")

    return [f"{k}={v}" for k, v in overrides.items() if changes(k)] + [f"~{k}" for k in deleted if changes(k)]


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys a Hydra multirun swept, from its ``multirun.yaml``: command-line sweeps (``a=1,2``,
    ``range(...)``, ``glob(...)``) and ``hydra.sweeper.params`` (sweeps kept in a config, Optuna).
    """
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    from cl_suite.files import load_untrusted_yaml  # a sweep folder may come from anyone

    cfg = load_untrusted_yaml(path)
    keys = [override_key(o) for o in parse_overrides(list(OmegaConf.select(cfg, "hydra.overrides.task") or []))
            if o.is_sweep_override()]
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    keys += [str(k) for k in params]
    return list(dict.fromkeys(k for k in keys if not k.startswith("hydra.")))


def current_sweep_job() -> tuple[str, dict[str, Any]] | None:
    """``(sweep dir, {swept key: this job's value})`` when called inside a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    values = override_values(list(hydra_cfg.overrides.task))
    keys = swept_keys(Path(hydra_cfg.sweep.dir)) or list(values)
    return str(hydra_cfg.sweep.dir), {k: values[k] for k in keys if k in values}


def command_override(key: str, value: Any) -> str:
    """``key=value`` as one shell word that Hydra reads back as the string ``str(value)``: for commands the
    suite prints (``python evaluate.py run=<dir>``) that a user pastes as they are. Plain where Hydra's
    grammar reads the plain form back unchanged, else a quoted Hydra string (``run='/runs/a,b'``, which
    would otherwise be a sweep); shell-quoted where the shell would split or expand it."""
    import re

    from hydra.errors import HydraException

    text = str(value)
    try:
        plain = parse_overrides([f"{key}={text}"])[0]
        if not plain.is_sweep_override() and plain.value() == text:
            return _shell_word(f"{key}={text}")
    except HydraException:
        pass
    # In a quoted Hydra string a backslash escapes only a run of backslashes before a quote or the end.
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return _shell_word(f"{key}='{escaped}'")


def _shell_word(word: str) -> str:
    """``word`` as one word for a POSIX shell: as it is where nothing in it is special to the shell, else in
    double quotes where nothing in it is special inside them (``"run='/runs/a,b'"``), else shlex's quoting."""
    import shlex

    if shlex.quote(word) == word:
        return word
    if not any(c in word for c in '"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)
