"""Train and evaluate from Python (a notebook, a script of one's own): the runs of ``train.py`` and
``evaluate.py``, with the same config tree, checks, run folders and records.

    from cl_suite import api

    run = api.train(["method=dcl", "sampler.tau_plus=0.1", "trainer.epochs=5"], run_dir="outputs/nb/dcl")
    run.metrics["linear/top1"]               # the final numbers train.py prints at the end
    api.evaluate(run.dir, ["protocol=[knn,retrieval]"])["protocols"]["knn"]
    encoder = api.load_encoder(run.dir)      # the trained backbone, in eval mode

Overrides are the command line's, one string each (``key=value``, ``group=option``, ``+key=value``). A
run folder written here is one that ``python evaluate.py run=<dir>``, ``python -m cl_suite.export`` and
the sweep report (``python -m cl_suite.report <folder of runs>``) read like any other: its ``.hydra/``
record holds the composed config, Hydra's settings and the overrides. A sweep is a loop over ``train``
with one ``run_dir`` per job under one folder; Hydra's ``-m`` sweeps, launchers and torchrun stay on the
command line. One job at a time in a process (``JobRunningError`` for a call from another thread meanwhile).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

import cl_suite.resolvers  # noqa: F401  (the ${cl_suite.*:} resolvers the config tree uses)
from cl_suite.engine.validation import ConfigError
from cl_suite.errors import UserError
from cl_suite.paths import CHECKPOINT_DIR

CONF_MODULE = "cl_suite.conf"  # the config tree, as cli.py's @hydra.main finds it (config_path="conf")


class JobRunningError(UserError, RuntimeError):
    """An api job was asked for while another one runs in this process, in another thread."""


# Hydra's settings (HydraConfig, GlobalHydra), the run log (train.log, the console) and torch's thread count
# are the process's: two jobs at once in threads would write into each other's. One at a time, then.
_ONE_JOB = threading.RLock()
_running: list[str] = []  # what runs now, outermost first: "api.train in thread 'MainThread'"


def _one_job(function):
    """``function`` runs alone among the api's jobs of this process (a nested call in the same thread is
    fine); a call from another thread meanwhile raises ``JobRunningError`` at once rather than waiting
    (a notebook that trains in a background thread would otherwise hang on its next call)."""

    @functools.wraps(function)
    def alone(*args, **kwargs):
        if not _ONE_JOB.acquire(blocking=False):
            raise JobRunningError(
                f"api.{function.__name__}: {_running[0] if _running else 'another api job'} is still running in "
                "this process, and an api job has "
                "Hydra's settings, the run log and torch's thread count to itself: call this when it has returned, "
                "or run jobs in parallel as processes (python train.py ... each, or a ProcessPoolExecutor)")
        _running.append(f"api.{function.__name__} in thread {threading.current_thread().name!r}")
        try:
            return function(*args, **kwargs)
        finally:
            _running.pop()
            _ONE_JOB.release()

    return alone


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished training run: its folder and its final numbers (``metrics.json``'s ``final``)."""

    dir: Path
    metrics: dict[str, float]


@_one_job
def train_config(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> DictConfig:
    """The config ``train(overrides, run_dir)`` runs, composed as ``python train.py <overrides>`` composes it
    (``paths.output_dir`` is the run folder); to read or print, e.g. ``OmegaConf.to_yaml(...)``."""
    from cl_suite.engine.trainer import drop_outdated_published

    job = _compose_job("train", overrides, run_dir)
    cfg = _task_config(job)
    with _hydra_settings(job):
        drop_outdated_published(cfg)  # as train does: a recipe's number is not that of a run that changes its setting
    cfg.paths.output_dir = job.hydra.runtime.output_dir  # resolved: the job's Hydra settings are not set here
    return cfg


@_one_job
def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> Run:
    """Pre-train as ``python train.py <overrides>`` does, in this process; return the finished run.

    ``run_dir``: the run folder (default: ``outputs/<date>/<time>`` under the working directory, as
    train.py; a ``${...}`` in it is resolved once, as in ``hydra.run.dir``). A folder that holds a run
    continues it (``resume=auto``, as train.py), or, finished, only re-runs its final evaluation when the
    evaluation settings changed. A config that cannot work raises ``cl_suite.errors.ConfigError`` (a
    ``UserError``: its message is the whole story). A run stopped by a signal (SIGTERM, SIGINT) saves its
    checkpoint and raises ``SystemExit(128 + signal)``, as train.py exits: calling ``train`` again with the
    same ``run_dir`` continues it."""
    from cl_suite.engine.trainer import train as run_training

    job = _compose_job("train", overrides, run_dir)
    # As Hydra's run_job: the job's Hydra settings are readable (${hydra:...}, the .hydra/ record the
    # trainer writes, the recipe's published-number check) while the job runs, and only then.
    with _hydra_settings(job), _job_environment(job), _callers_random_state():
        final = run_training(_task_config(job))
    return Run(dir=Path(job.hydra.runtime.output_dir), metrics=dict(final))


@_one_job
def evaluate(run: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate as ``python evaluate.py run=<run> <overrides>`` does (``protocol=[linear,knn]``,
    ``checkpoint=best``, ``ood_dataset=...``); return what it writes to ``<run>/eval.json``: ``protocols``
    (each protocol's metrics), ``metrics`` (flat), the checkpoint, step and settings.

    ``run`` is a run folder (its last checkpoint), a checkpoint file in a run's ``checkpoints/``, or a
    backbone file of ``python -m cl_suite.export`` (evaluate.py's ``checkpoint=<file>``; ``dataset=<option>``
    may then choose the data set)."""
    from cl_suite.run_evaluation import evaluate_run

    overrides = _override_list(overrides)  # once: a generator is read here, not again when composing
    path = Path(run).expanduser()
    taken = ("run", "checkpoint") if path.is_file() else ("run",)
    given = [o for o in overrides if _key(o) in taken]
    if given:
        raise ConfigError(f"evaluate({str(run)!r}, {overrides}): {given[0]} names what to evaluate, which the "
                          "first argument already does (a run folder, a checkpoint in its checkpoints/, or an "
                          "exported backbone file)")
    job = _compose_job("evaluate", overrides)
    cfg = _task_config(job)
    run_of_file = path.parent.parent
    if path.is_file() and path.parent.name == CHECKPOINT_DIR and (run_of_file / ".hydra" / "config.yaml").is_file():
        cfg.run, cfg.checkpoint = str(run_of_file), str(path)  # evaluate.py run=<run> checkpoint=<file>
    elif path.is_file():  # an exported backbone: evaluate.py's checkpoint=<file> without run=
        cfg.checkpoint = str(path)
    else:
        cfg.run = str(path)
    with _job_environment(job), _callers_random_state():
        return evaluate_run(cfg)


def load_encoder(run: str | Path, checkpoint: str | None = None, trust_targets: Sequence[str] = ()):
    """The encoder of a run's checkpoint (``checkpoints/<checkpoint>.pt``, default ``last``, or a ``.pt``
    path), as the suite's backbone module with its trained weights, on the CPU, in eval mode: ``encoder(x)``
    gives ``(N, encoder.num_features)`` features of images normalised with the run's ``dataset.mean``/``std``.
    Read as ``python -m cl_suite.export`` reads it (weights only, checksum checked); ``trust_targets``:
    modules of a method of one's own (export's ``--trust-target``)."""
    from cl_suite.export import ExportError, checkpoint_backbone, resolve_source

    run = Path(run).expanduser()
    if run.is_file() and checkpoint is not None:
        raise ConfigError(f"checkpoint={checkpoint!r} names a checkpoint of a run folder, but {str(run)!r} is a "
                          "checkpoint file: pass the run folder with checkpoint=, or the file alone")
    try:
        path, _ = resolve_source(run, checkpoint)
    except ExportError:
        if not (run / ".hydra" / "config.yaml").is_file():
            raise
        # A run folder without that checkpoint: evaluate.py's reading of it says why (a run that saves none).
        from cl_suite.run_evaluation import find_checkpoint, load_run_config

        saves = load_run_config(run, tuple(trust_targets)).trainer.get("save_checkpoints", True)
        find_checkpoint(run, checkpoint or "last", bool(saves))
        raise
    return checkpoint_backbone(path, tuple(trust_targets)).backbone


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _is_sweep(override: str) -> bool:
    from hydra.errors import HydraException

    from cl_suite.sweeps import parse_overrides

    try:
        return parse_overrides([override])[0].is_sweep_override()
    except HydraException:  # not an override at all: composing says what is wrong with it
        return False


def _override_list(overrides: Sequence[str]) -> list[str]:
    """``overrides`` (a list, a tuple, a generator) as a list of strings; a string or a mapping is refused,
    saying how to write it."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides={overrides!r}: pass a list of overrides, one string each "
                          f"([{', '.join(repr(o) for o in overrides.split())}])")
    if isinstance(overrides, Mapping):
        raise ConfigError(f"overrides={dict(overrides)!r} is a mapping: pass a list of overrides, one string each, "
                          f"as on the command line ([{', '.join(repr(f'{key}=...') for key in overrides)}])")
    overrides = list(overrides)
    for override in overrides:
        if not isinstance(override, str):
            raise ConfigError(f"override {override!r} is not a string: write it as on the command line, e.g. "
                              "'trainer.epochs=5'")
    return overrides


def _compose_job(config_name: str, overrides: Sequence[str], run_dir: str | Path | None = None) -> DictConfig:
    """The job's whole config, Hydra's node included, with ``hydra.runtime.output_dir`` set as Hydra's
    ``run_job`` sets it (for ``train``: ``run_dir``, else the resolved ``hydra.run.dir``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from cl_suite.cli import logger_setting_under_debug, misplaced_dataset_override

    overrides = _override_list(overrides)
    for override in overrides:
        if override in ("-m", "--multirun") or _key(override) in ("hydra/launcher", "hydra/sweeper") or (
                _key(override) == "hydra.mode" and override.partition("=")[2].strip().upper() == "MULTIRUN"):
            raise ConfigError(f"{override}: sweeps and launchers are train.py's (python train.py -m ...); from "
                              "Python, call train() once per job, each with its own run_dir")
    if run_dir is not None and any(_key(o) == "hydra.run.dir" for o in overrides):
        raise ConfigError(f"run_dir={str(run_dir)!r} and the override hydra.run.dir both name the run folder: pass one")
    swept = [override for override in overrides if _is_sweep(override)]
    if swept:
        raise ConfigError(f"{swept[0]}: a sweep value (a,b / range() / choice()) needs train.py -m; from Python, "
                          "call train() once per value, each with its own run_dir")
    # train.py's and evaluate.py's own hints for an override Hydra would only call unknown
    hint = logger_setting_under_debug(overrides) if config_name == "train" else misplaced_dataset_override(overrides)
    if hint:
        raise ConfigError(hint.removeprefix("error: "))
    # hydra.mode=RUN as Hydra's own run adds it (the record's hydra.mode and overrides.hydra say RUN)
    mode = [] if any(_key(o) == "hydra.mode" for o in overrides) else ["hydra.mode=RUN"]
    # A caller's own Hydra (inside a Hydra app, after hydra.initialize()) is set aside while this composes.
    global_hydra = GlobalHydra.instance()
    callers = global_hydra.hydra
    global_hydra.clear()
    try:
        # The config module, as the CLI's @hydra.main names it: the record's config source is the same.
        with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
            job = compose(config_name=config_name, overrides=overrides + mode, return_hydra_config=True)
    except HydraException as error:  # a mistyped key or option, a value of the wrong type
        message = str(error).split("\nConfig search path:")[0]  # Hydra's search path: the package's own conf/
        raise ConfigError(f"{config_name} overrides {overrides}: {message}") from None
    finally:
        global_hydra.hydra = callers
        GlobalHydra.set_instance(global_hydra)  # initialize's exit put a copy of the cleared one in its place
    try:
        if run_dir is not None:  # in hydra.run.dir's place: resolved once, as Hydra's run_job resolves it
            with read_write(job.hydra):
                job.hydra.run.dir = str(run_dir)
        with _hydra_settings(job):  # for ${hydra:...} in the folder's name
            folder = OmegaConf.select(job, "hydra.run.dir")
    except OmegaConfBaseException as error:  # a ${...} in the name that does not resolve
        given = f"run_dir={str(run_dir)!r}" if run_dir is not None else "hydra.run.dir"
        raise ConfigError(f"{given}: {str(error).splitlines()[0]} (a ${{...}} in the run folder's name is an "
                          "interpolation, as in hydra.run.dir)") from None
    if job.hydra.job.chdir:
        raise ConfigError("hydra.job.chdir=true: an api job runs in this process's working directory (Hydra's chdir "
                          "would move the caller's); relative paths in the config are read from "
                          f"{os.getcwd()!r}. Drop the override, or run python train.py with it")
    output_dir = os.path.abspath(os.path.expanduser(str(folder)))
    with read_write(job.hydra), open_dict(job.hydra):
        job.hydra.run.dir = output_dir  # the record says where the run went, as hydra.run.dir=<dir> would
        job.hydra.runtime.output_dir = output_dir
    return job


@contextlib.contextmanager
def _hydra_settings(job: DictConfig):
    """The job's Hydra settings (``HydraConfig``) inside the block; the caller's (none, or its own Hydra
    app's) after it."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        hydra_config.set_config(job)
        yield
    finally:
        hydra_config.cfg = before


@contextlib.contextmanager
def _job_environment(job: DictConfig):
    """As Hydra's ``run_job``: the environment variables of ``hydra.job.env_set`` are set while the job
    runs; the caller's values (or their absence) are back after it."""
    with _hydra_settings(job):  # a ${hydra:...} in a value
        wanted = {str(k): str(v) for k, v in OmegaConf.to_container(job.hydra.job.env_set, resolve=True).items()}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _callers_random_state():
    """A job seeds the process's global generators (Python's, NumPy's, torch's CPU and CUDA ones) with its
    ``seed``, as train.py and evaluate.py do; the caller's states are back after it, so a notebook's own
    draws do not depend on whether (or how long) a job ran in between."""
    from cl_suite.engine.trainer import rng_states, set_rng_states

    states = rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


def _task_config(job: DictConfig) -> DictConfig:
    """The job's own config: Hydra's node removed, as Hydra's ``run_job`` hands it to the task."""
    task = copy.deepcopy(job)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
