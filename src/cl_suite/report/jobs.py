"""The jobs of a sweep, read back from their run dirs, including the ones that crashed or never ran."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cl_suite.sweeps import deleted_keys, override_values, parse_overrides, setting_changing_overrides
from cl_suite.files import load_untrusted_yaml, printable, read_json_object
from cl_suite.paths import CHECKPOINT_DIR, LAST_CHECKPOINT, REFUSED_FILE


@dataclass
class Job:
    """One job of a sweep. ``status`` is ``ok`` (final metrics written), ``failed`` (a run dir without
    final metrics: crashed, killed or still running) or ``not run`` (in the sweep's grid, no run dir)."""

    name: str
    overrides: dict[str, Any]
    choices: dict[str, str] = field(default_factory=dict)  # config-group options, e.g. {"method": "dcl"}
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "ok"
    reason: str = ""
    device: str | None = None  # "cuda" or "cpu": the training device (None: not recorded)
    processes: int | None = None  # training processes (DDP world size)
    published: dict[str, Any] | None = None  # the recipe's published number (see read_published)
    published_error: str = ""  # why the run config's published block was not usable
    # What the job ran with (job_settings): the group choices by group name ({"method": "dcl"}) and the
    # resolved config's values by dotted key ({"sampler.tau_plus": 0.1}), without the IGNORED keys.
    # Empty for a job made by hand: then its overrides are its settings.
    settings: dict[str, Any] = field(default_factory=dict)
    # False when only part of them is known (an unreadable config.yaml: its overrides and choices; a grid
    # point that never ran and has no twin: its overrides and what its whole sweep shares).
    settings_complete: bool = True
    run_dir: Path | None = None
    # Where a continuation changed the run's settings (metrics.json's setting_changes): (step, [change, ...])
    setting_changes: list[tuple[Any, list[str]]] = field(default_factory=list)
    # When the run last wrote its record (mtime of metrics.json, else of .hydra/config.yaml; None: no run
    # dir): which of two repeats of one run is the more recent (drop_repeats).
    finished: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def value(self, key: str) -> Any:
        """The job's value of a setting (None: the job's config has no such key), ``canonical``: a list
        is a tuple, so every value can key a dict or a set."""
        return canonical(self.settings[key] if key in self.settings else self.overrides.get(key))

    def keys(self) -> list[str]:
        """Its settings in a readable order: the command line's keys first, then the config's."""
        return list(self.settings or self.overrides)

    def knows(self, key: str) -> bool:
        """False where the job's value of ``key`` is unknown (``settings_complete``); a complete job
        without the key has the value None (tau_plus of SimCLR)."""
        return self.settings_complete or key in self.settings or key in self.overrides


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every run dir under ``sweep_dir`` (any depth: a sweep, or a folder of sweeps), then the grid
    points of ``multirun.yaml`` that have no run dir (the sweep was killed before reaching them)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {str(sweep_dir)!r} does not exist")
    run_dirs = sorted((p.parent.parent for p in sweep_dir.rglob("config.yaml") if p.parent.name == ".hydra"),
                      key=lambda p: _natural_key(p.relative_to(sweep_dir)))
    jobs = [read_job(run_dir, sweep_dir) for run_dir in run_dirs]
    return jobs + missing_grid_points(sweep_dir, jobs)


# Keys of a job's config that differ between jobs without being settings of the experiment, so the report
# never takes them for swept parameters nor lists them as fixed settings (a key is ignored when it is one
# of these or lies under one; group choices by their group name):
IGNORED_KEYS = (
    "hydra",  # Hydra's internals (job name and number, run/sweep dirs, timestamps); hydra/* group choices
    "paths",  # data and output folders
    "logger",  # the logger choice and its project, entity, group, name, tags, mode, run id
    "resume",  # how the run was started (auto, a checkpoint path), not what it ran
    "published",  # a recipe's published number: shown in its own column
    "trainer.device", "trainer.num_workers", "trainer.progress_bar", "trainer.log_every_steps",
    "trainer.checkpoint_every_epochs", "trainer.keep_last_checkpoints", "trainer.save_checkpoints",
    "trainer.profile_steps", "trainer.profile_warmup_steps",  # where it ran and what it wrote, not the numbers
)
# ... and any key whose last part names a file or folder (dataset.root, dataset.train_dir, a *_path).
IGNORED_LEAVES = ("root", "download", "dir", "path")
IGNORED_LEAF_SUFFIXES = ("_dir", "_path", "_file")


def is_ignored(key: str) -> bool:
    """True for a key that is no setting (``IGNORED_KEYS``, ``IGNORED_LEAVES``); the seed is not ignored:
    the report reads it as the replicate axis."""
    key = str(key)
    if any(key == p or key.startswith((p + ".", p + "/")) for p in IGNORED_KEYS):
        return True
    leaf = key.rsplit(".", 1)[-1]
    return leaf in IGNORED_LEAVES or leaf.endswith(IGNORED_LEAF_SUFFIXES)


class FrozenDict(dict):
    """A mapping inside a setting's value (``[{name: crop}]``): hashable like the tuples that lists
    become, so the report can group and compare it; never changed once made."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def canonical(value: Any) -> Any:
    """One spelling per value, so 0 (an override) and 0.0 (a config default) are the same setting, and a
    hashable one: a list (``method.projector_hidden_dims=[64]``, nested ``[[0, 1], [2, 3]]``) becomes a
    tuple and a mapping a ``FrozenDict``, so list-valued settings group, compare and plot like any other
    (``table.format_value`` shows them as the command line writes them, ``[64]``)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict((k, canonical(v)) for k, v in value.items())
    return value


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def job_settings(config: Any, choices: dict[str, str], overrides: dict[str, Any]) -> dict[str, Any]:
    """A job's settings: its group choices (``method: dcl``; ``None`` for an unselected optional group
    such as ``experiment``) and every value of its config by dotted key, as written (``"${...}"`` stays
    text), without the ``IGNORED_KEYS``. The override keys come first, in their order; an override the
    config does not show (``group@package``) keeps its value."""
    found = {**choices, **_flatten(config if isinstance(config, dict) else {})}
    settings = {k: found.get(k, v) for k, v in overrides.items() if not is_ignored(k)}
    settings.update((k, v) for k, v in found.items() if k not in settings and not is_ignored(k))
    return {k: canonical(v) for k, v in settings.items()}


def load_config(config_path: Path) -> tuple[Any, str]:
    """``(plain data, problem)`` of a run's ``config.yaml``. The file is untrusted: it is parsed as plain
    YAML, interpolations are never resolved (``${oc.env:...}`` stays text), nothing is instantiated."""
    try:
        return OmegaConf.to_container(load_untrusted_yaml(config_path), resolve=False), ""
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not raised
        return None, f"unreadable {config_path.name}: {type(err).__name__}: {_one_line(str(err))}"


def _plain(path: Path) -> Any:
    """A YAML file as plain data, interpolations left as text."""
    return OmegaConf.to_container(load_untrusted_yaml(path), resolve=False)


def read_choices(hydra_path: Path) -> dict[str, str | None]:
    """``hydra.runtime.choices`` of a run's ``hydra.yaml`` (read as plain data) without Hydra's own groups."""
    if not hydra_path.is_file():
        return {}
    try:
        data = _plain(hydra_path)
    except Exception:  # noqa: BLE001 - an unreadable record: no choices, the config's values still count
        return {}
    choices = ((data.get("hydra") or {}).get("runtime") or {}).get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, dict):
        return {}
    return {str(k): None if v is None else str(v) for k, v in choices.items() if not str(k).startswith("hydra")}


def read_job(run_dir: Path, sweep_dir: Path) -> Job:
    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    task = [str(o) for o in _plain(overrides_path) or []] if overrides_path.is_file() else []
    overrides = override_values(task)
    choices = read_choices(run_dir / ".hydra" / "hydra.yaml")
    job = Job(name=printable(str(run_dir.relative_to(sweep_dir))) or ".", overrides=overrides,
              choices={k: v for k, v in choices.items() if v is not None}, run_dir=run_dir)
    config, problem = load_config(run_dir / ".hydra" / "config.yaml")
    job.published, job.published_error = (None, problem) if problem else published_block(config)
    changed = setting_changing_overrides(overrides, deleted_keys(task))
    if job.published is not None and changed:
        job.published, job.published_error = None, (f"the run changes the recipe's setting ({', '.join(changed)}), "
                                                     "so the recipe's number is not its reference")
    job.settings = job_settings(config, choices, overrides)
    job.settings_complete = not problem
    metrics_path = run_dir / "metrics.json"
    record = metrics_path if metrics_path.is_file() else run_dir / ".hydra" / "config.yaml"
    job.finished = record.stat().st_mtime
    if not metrics_path.is_file():
        job.status, job.reason = "failed", _refusal(run_dir) or "no metrics.json (crashed before its first checkpoint)"
        return job
    history = read_json_object(metrics_path)
    if history is None:
        job.status, job.reason = "failed", "metrics.json is not a readable run record"
        return job
    job.setting_changes = _setting_changes(history.get("setting_changes"))
    final = history.get("final") if isinstance(history.get("final"), dict) else {}
    if not final:
        epochs = [r for r in history.get("epochs") or [] if isinstance(r, dict)] if isinstance(
            history.get("epochs"), list) else []
        job.status = "failed"
        job.reason = f"no final metrics (last record: epoch {epochs[-1].get('epoch')!r:.20})" if epochs else (
            "no final metrics")
        checkpoints = run_dir / CHECKPOINT_DIR
        resumable = (checkpoints / LAST_CHECKPOINT).is_file() or any(checkpoints.glob("step_*.pt"))
        if resumable and epochs and epochs[-1].get("stopped_by_signal") is True:
            job.reason += ("; unfinished, not lost: stopped by a signal, its checkpoint continues it (the sweep's "
                           "command again, with SWEEP_DIR / hydra.sweep.dir of this sweep)")
        elif resumable:
            job.reason += "; ended without final metrics (crashed, or still running): see its train.log"
        return job
    job.metrics = {k: float(v) for k, v in final.items() if _is_number(v)}
    job.metrics.update(_compute_metrics(history, job))
    job.metrics.update(_final_evaluation(run_dir / "eval.json", final.get("step")))
    return job


def _setting_changes(data: Any) -> list[tuple[Any, list[str]]]:
    """metrics.json's ``setting_changes`` (the trainer's list of ``{"step", "changes"}``), as data of an
    untrusted file: entries of another shape are skipped, every text escaped and cut."""
    if not isinstance(data, list):
        return []
    found = []
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("changes"), list):
            step = entry.get("step") if isinstance(entry.get("step"), int) else "?"
            found.append((step, [_one_line(printable(str(c))) for c in entry["changes"]][:20]))
    return found


def _refusal(run_dir: Path) -> str | None:
    """``refused at start-up: <reason>`` from the job's ``refused.txt`` (train.py writes it when it refuses
    the job's config), its first line only, escaped and cut (the file is untrusted)."""
    path = run_dir / REFUSED_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with path.open("rb") as f:
            text = f.read(2000).decode("utf-8", "replace")
    except OSError:
        return None
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"refused at start-up: {printable(first)[:300]}" if first else None


def _final_evaluation(path: Path, final_step: Any) -> dict[str, float]:
    """evaluate.py's numbers of the run's final checkpoint as ``eval/<key>``: its ``eval.json`` (the
    newest checkpoint's), used only when it was written at the final step (evaluated while the run was
    still training, it describes an earlier checkpoint) and when it is readable JSON."""
    evaluated = read_json_object(path) if path.is_file() else None
    if evaluated is None or evaluated.get("step") != final_step:
        return {}
    metrics = evaluated.get("metrics") if isinstance(evaluated.get("metrics"), dict) else {}
    return {f"eval/{k}": float(v) for k, v in metrics.items() if _is_number(v)}


PUBLISHED_KEYS = ("value", "metric", "protocol", "source")


def read_published(config_path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(block, problem)``: the run config's top-level ``published`` block that recipes set::

        published: {value: 84.26, metric: linear/top1, protocol: "...", source: "..."}

    ``(None, "")`` when there is none (or ``published: null``). The file is untrusted: it is parsed
    as plain YAML data, interpolations are never resolved and nothing is instantiated; a block that
    is not of this form gives ``(None, "<what is wrong>")`` for the report to show, never an error.
    """
    data, problem = load_config(config_path)
    return (None, problem) if problem else published_block(data)


def published_block(data: Any) -> tuple[dict[str, Any] | None, str]:
    """``read_published`` of a config already read as plain data."""
    block = data.get("published") if isinstance(data, dict) else None
    if block is None:
        return None, ""
    if not isinstance(block, dict):
        return None, f"published must be a mapping with keys {', '.join(PUBLISHED_KEYS)}, not {_one_line(repr(block))}"
    problems = []
    unknown = [str(k) for k in block if k not in PUBLISHED_KEYS]
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(PUBLISHED_KEYS)})")
    value = block.get("value")
    if not _is_number(value):
        problems.append(f"value must be a finite number (percent), not {_one_line(repr(value))}")
    metric = block.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        problems.append(f"metric must be a suite metric key such as linear/top1, not {_one_line(repr(metric))}")
    for key in ("protocol", "source"):
        if block.get(key) is not None and not isinstance(block[key], str):
            problems.append(f"{key} must be one line of text, not {_one_line(repr(block[key]))}")
    if problems:
        return None, "malformed published block: " + "; ".join(problems)
    return {"value": float(value), "metric": metric.strip(), "protocol": _one_line(block.get("protocol") or ""),
            "source": _one_line(block.get("source") or "")}, ""


def _one_line(text: str, limit: int = 200) -> str:
    """Untrusted text for a one-line table cell or message: whitespace collapsed, shortened."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compute_metrics(history: dict, job: Job) -> dict[str, float]:
    """``time/wall_s`` (training seconds) and ``time/images_per_s`` of the run, and the job's device and
    process count, from the trainer's ``compute`` record; runs written before it existed give the
    epoch records' time and throughput, with the device unknown."""
    compute = history.get("compute")
    out = {}
    if isinstance(compute, dict):
        out = {k: float(compute[k]) for k in ("time/wall_s", "time/images_per_s") if _is_number(compute.get(k))}
        if compute.get("device") in ("cpu", "cuda"):
            job.device = compute["device"]
        processes = compute.get("processes")
        if isinstance(processes, int) and not isinstance(processes, bool) and processes >= 1:
            job.processes = processes
        return out
    epochs = [(e["epoch_time_s"], _epoch_throughput(e)) for e in history.get("epochs") or [] if isinstance(e, dict)
              and _is_number(e.get("epoch_time_s")) and _is_number(_epoch_throughput(e))]
    seconds = sum(time for time, _ in epochs)
    if seconds > 0:
        out["time/wall_s"] = seconds
        out["time/images_per_s"] = sum(time * rate for time, rate in epochs) / seconds
    return out


def _epoch_throughput(record: dict):
    """An epoch record's images/s: ``train/epoch_images_per_s``, or ``images_per_s`` in older runs."""
    return record.get("train/epoch_images_per_s", record.get("images_per_s"))


# Which of two repeats of one run is used: an ok job before a failed one before a grid point that never ran.
STATUS_RANK = {"ok": 2, "failed": 1, "not run": 0}


def run_signature(job: Job, seed_key: str = "seed") -> str | None:
    """What makes two jobs repeats of one run: the same settings (``Job.settings``, IGNORED_KEYS left
    out: run dirs, logger names) and the same seed. None (never a repeat) for a job without a seed (its
    runs are random, so independent) or whose settings are not all known."""
    if not job.settings_complete or job.value(seed_key) is None:
        return None
    values = {k: job.value(k) for k in [*job.keys(), seed_key]}
    return repr(sorted((k, v) for k, v in values.items() if v is not None))  # None: as a missing key


def drop_repeats(jobs: list[Job], seed_key: str = "seed") -> tuple[list[Job], list[tuple[Job, Job]]]:
    """``(jobs, [(left out, the job used instead)])``: one job per (settings, seed). A folder holding the
    same sweep twice (rerun into multirun/) has each seed twice; counting both would double ``n``,
    shrink the std and break the seed pairing of the comparison, though the second run only repeats the
    first. Used: the ok job before a failed one before a grid point that never ran, then the most recent
    (``Job.finished``, then the later folder). The job used takes the place of the first of its repeats, so
    the configurations keep the order of the grid (its first is the default baseline)."""
    used: dict[str, tuple[tuple, Job]] = {}
    for index, job in enumerate(jobs):
        signature = run_signature(job, seed_key)
        if signature is None:
            continue
        rank = (STATUS_RANK.get(job.status, 0), -math.inf if job.finished is None else job.finished, index)
        if signature not in used or rank > used[signature][0]:
            used[signature] = (rank, job)
    kept, left_out, placed = [], [], set()
    for job in jobs:
        signature = run_signature(job, seed_key)
        if signature is None:
            kept.append(job)
            continue
        instead = used[signature][1]
        if signature not in placed:
            placed.add(signature)
            kept.append(instead)
        if instead is not job:
            left_out.append((job, instead))
    return kept, left_out


def missing_grid_points(sweep_dir: Path, jobs: list[Job]) -> list[Job]:
    """Grid points of the basic sweeper's ``multirun.yaml`` files (the sweep's, or each sweep's of a
    folder of sweeps) that no job dir of that sweep matches (status ``not run``)."""
    sweep_dir = Path(sweep_dir)
    files = sorted(sweep_dir.rglob("multirun.yaml"), key=lambda p: _natural_key(p.relative_to(sweep_dir)))
    missing = []
    for path in files:
        sweep = path.parent
        own = [job for job in jobs if job.run_dir is None or _is_under(job.run_dir, sweep)]
        prefix = "" if sweep == sweep_dir else f"{sweep.relative_to(sweep_dir).as_posix()}/"
        missing += _missing_in_sweep(path, own, prefix)
    return missing


def _is_under(path: Path, folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
    except ValueError:
        return False
    return True


def _settings_of_grid_point(values: dict[str, Any], jobs: list[Job]) -> tuple[dict[str, Any], bool]:
    """``(settings, complete)`` of a grid point that never ran: the settings of a job of its sweep with
    the same overrides but the seed (complete), else only what every job of the sweep shares, and
    nothing of that when the point picks a config group option that no job ran (``method=hcl`` where only
    SimCLR ran: HCL's preset brings its own sampler, a recipe everything); its overrides on top."""
    ran = [job for job in jobs if job.settings and job.settings_complete]
    twin = next((job for job in ran if {k: v for k, v in job.overrides.items() if k != "seed"}
                 == {k: v for k, v in values.items() if k != "seed"}), None)
    groups = {k for job in ran for k in job.choices}
    new_option = any(k in groups and all(job.choices.get(k) != str(v) for job in ran) for k, v in values.items())
    if twin is not None:
        base = dict(twin.settings)
    elif ran and not new_option:
        base = {k: v for k, v in ran[0].settings.items() if all(repr(j.settings.get(k)) == repr(v) for j in ran)}
    else:
        base = {}
    own = {k: canonical(v) for k, v in values.items() if not is_ignored(k)}
    return {**own, **{k: v for k, v in base.items() if k not in own}}, twin is not None


MAX_GRID = 100_000  # grid points a sweep's multirun.yaml may expand to when the report lists jobs not run


def _missing_in_sweep(path: Path, jobs: list[Job], prefix: str) -> list[Job]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    hydra = (_plain(path) or {}).get("hydra") or {}  # as text: an interpolation is never resolved
    if ((hydra.get("job") or {}).get("name")) == "evaluate":
        return []  # an evaluate.py -m over run folders, not a grid of training jobs
    sweeper = hydra.get("sweeper") or {}
    if "BasicSweeper" not in str(sweeper.get("_target_")):
        return []  # e.g. Optuna: no fixed grid to compare against
    task = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    task += [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    seen = [job.overrides for job in jobs]
    missing = []
    parsed = parse_overrides(task)
    size = 1
    for override in parsed:
        if override.is_sweep_override():
            size *= sum(1 for _ in itertools.islice(override.sweep_iterator(), MAX_GRID + 1))
        if size > MAX_GRID:
            return []  # a crafted (or enormous) grid: not expanded to list the jobs that never ran
    (grid,) = BasicSweeper.split_arguments(parsed, None)
    for number, point in enumerate(grid):  # the job number Hydra would have given it
        values = override_values(point)
        if values not in seen:
            settings, complete = _settings_of_grid_point(values, jobs)
            missing.append(Job(name=f"{prefix}{number} (no dir)", overrides=values, status="not run",
                               reason="no run dir: the sweep ended before this job started",
                               settings=settings, settings_complete=complete))
    return missing


def _is_number(value) -> bool:
    """A finite number a float can hold (a 400-digit integer in a crafted file is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False



def _natural_key(path: Path) -> list:
    """Job dirs 0, 1, ..., 10 in numeric order, not 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]
