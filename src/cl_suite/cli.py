"""The command-line entry points: ``python train.py`` / ``python -m cl_suite.train`` / ``cl-suite-train``
(and the same for evaluate: ``evaluate.py``, ``python -m cl_suite.evaluate``, ``cl-suite-evaluate``). The Hydra config tree is the package's own ``conf/``, so an installed suite
(``pip install .``, not editable) trains exactly as a checkout does."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import cl_suite.resolvers  # noqa: F401  (registers the suite's ${cl_suite.*:} resolvers before Hydra composes)
from cl_suite.errors import user_errors_without_traceback


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors_without_traceback
def _train(cfg: DictConfig) -> float:
    from cl_suite.engine.trainer import train

    final = train(cfg)
    # Returned for sweepers that optimise (e.g. Optuna): the headline linear top-1.
    return final["linear/top1"]


# Hydra plugins some config options need: (group, option) -> (plugin module, what to install). Hydra's
# own error for a missing plugin lists config search paths, not the package to install.
PLUGINS = {
    ("hydra/sweeper", "tau_plus_beta"): ("hydra_plugins.hydra_optuna_sweeper", 'pip install -e ".[optuna]"'),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[slurm]"'),
    ("hydra/launcher", "local"): ("hydra_plugins.hydra_submitit_launcher", 'pip install -e ".[slurm]"'),
}


def missing_plugin(argv: list[str]) -> str | None:
    """The install hint for a plugin that an override of ``argv`` needs and this environment lacks."""
    import importlib.util

    for arg, key, value in _overrides(argv):
        plugin = PLUGINS.get((key, value))
        if plugin is None:
            continue
        try:
            found = importlib.util.find_spec(plugin[0]) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return f"error: {arg} needs the Hydra plugin {plugin[0]}, which is not installed: {plugin[1]}"
    return None


def _overrides(argv: list[str]) -> list[tuple[str, str, str]]:
    """(argument, key without Hydra's +/++/~ prefix, value) of each ``key=value`` argument."""
    found = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep:
            found.append((arg, key.lstrip("+~"), value))
    return found


def logger_setting_under_debug(argv: list[str]) -> str | None:
    """``debug=fast logger.mode=offline``: the debug modes select ``logger=none``, which has no keys (Hydra
    would answer "Key 'mode' is not in struct"); say how to keep a logger in a debug run."""
    overrides = _overrides(argv)
    debug = next((arg for arg, key, value in overrides if key == "debug" and value not in ("null", "")), None)
    if debug is None or any(key == "logger" for _, key, _ in overrides):
        return None  # an explicit logger=<option> wins over the debug mode's logger=none
    for arg, key, _ in overrides:
        if key.startswith("logger."):
            options = loggers_with_setting(key.split(".")[1])
            choice = f"logger={options[0]}" if len(options) == 1 else "logger=<option>"
            which = f" ({', '.join(options)} {'has' if len(options) == 1 else 'have'} it)" if options else ""
            return (f"error: {arg} sets the logger, but {debug} turns the experiment logger off (logger=none, "
                    f"which has no settings). To log the debug run, choose the logger too{which}: "
                    f"{debug} {choice} {arg}")
    return None


def loggers_with_setting(name: str) -> list[str]:
    """The ``logger`` options (conf/logger/*.yaml) whose config has the top-level key ``name``."""
    from omegaconf import OmegaConf

    from cl_suite.paths import CONF_DIR

    return [path.stem for path in sorted((CONF_DIR / "logger").glob("*.yaml"))
            if name != "_target_" and name in OmegaConf.load(path)]


# Hydra's flags that print something and run no job.
INSPECTION_FLAGS = ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc",
                    "--version")


def launcher_without_its_setting(argv: list[str], script: str = "train.py") -> str | None:
    """``hydra/launcher=slurm|local`` launches a multirun's jobs only: without ``-m`` Hydra silently runs the
    one job in this process; and off a SLURM cluster submitit fails deep in its own code ("Could not detect
    srun")."""
    import shutil

    if any(arg.split("=", 1)[0] in INSPECTION_FLAGS for arg in argv):
        return None  # nothing runs: Hydra prints the config (--cfg hydra shows the launcher's settings)
    multirun = any(arg in ("-m", "--multirun") for arg in argv) or any(
        key == "hydra.mode" and value.upper() == "MULTIRUN" for _, key, value in _overrides(argv))
    for arg, key, value in _overrides(argv):
        if key != "hydra/launcher" or value not in ("slurm", "local"):
            continue
        if not multirun:
            return (f"error: {arg} launches the jobs of a multirun only; without -m this job would run here, in "
                    f"this process. Add -m (one job is a sweep of one): python {script} -m {arg} ...")
        if value == "slurm" and shutil.which("srun") is None:
            return (f"error: {arg} submits SLURM jobs, but there is no srun on PATH (not a SLURM login node). "
                    "Try the sweep here first with hydra/launcher=local (the same submitit code path)")
    return None


def train_main() -> None:
    """Pre-train an encoder: ``train.py method=simclr dataset=cifar10 backbone=resnet18``."""
    from cl_suite.distributed import worker_rank_hydra_overrides

    argv = sys.argv[1:]
    hint = missing_plugin(argv) or launcher_without_its_setting(argv) or logger_setting_under_debug(argv)
    if hint:
        sys.exit(hint)
    sys.argv.extend(worker_rank_hydra_overrides())
    _train()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@user_errors_without_traceback
def _evaluate(cfg: DictConfig) -> None:
    from cl_suite.run_evaluation import evaluate_run

    print(evaluation_lines(evaluate_run(cfg)))


def evaluation_lines(result: dict) -> str:
    """evaluate.py's console summary of ``result`` (eval.json's content): each protocol's metrics, the
    accuracies with two decimals, a recorded setting (low-shot kNN's k) as the whole number it is."""
    from cl_suite.report.table import RECORDED_SETTINGS_SUFFIXES

    lines = [f"{result['checkpoint']} (epoch {result['epoch']}, step {result['step']})"]
    for protocol, metrics in result["protocols"].items():
        lines.append(protocol)
        for key, value in metrics.items():
            shown = f"{int(value):8d}" if key.endswith(RECORDED_SETTINGS_SUFFIXES) else f"{value:8.2f}"
            lines.append(f"  {key:<36}{shown}")
    return "\n".join(lines)


def misplaced_dataset_override(argv: list[str]) -> str | None:
    """``dataset.root=...`` on evaluate.py's command line: the run's data set is not a config group there
    (Hydra would answer "Key 'dataset' is not in struct"); say which setting moves which data."""
    if any(arg.split("=", 1)[0] == "dataset" for arg in argv):
        return None  # an exported backbone evaluated on dataset=<option>: its keys can be overridden
    for arg in argv:
        if arg.startswith(("dataset.", "+dataset.")):
            return (f"error: {arg} is not an evaluate.py setting. The run's own data set is moved with "
                    "dataset_root=<dir>; OOD and transfer data sets with ood_root=<dir> / transfer_root=<dir> "
                    "(ood_dataset=image_files reads any folder of images, e.g. Tiny-ImageNet's val/)")
    return None


def evaluate_main() -> None:
    """Re-evaluate a run's checkpoint or an exported backbone: ``evaluate.py run=outputs/<date>/<time>``."""
    argv = sys.argv[1:]
    hint = (misplaced_dataset_override(argv) or missing_plugin(argv)
            or launcher_without_its_setting(argv, "evaluate.py"))
    if hint:
        sys.exit(hint)
    _evaluate()
