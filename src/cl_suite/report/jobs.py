"""The jobs of a sweep, read back from their run dirs, including the ones that crashed or never ran."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cl_suite.sweeps import override_values, parse_overrides


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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


def read_job(run_dir: Path, sweep_dir: Path) -> Job:
    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    overrides = override_values(list(OmegaConf.load(overrides_path))) if overrides_path.is_file() else {}
    hydra_path = run_dir / ".hydra" / "hydra.yaml"
    choices = {}
    if hydra_path.is_file():
        choices = dict(OmegaConf.select(OmegaConf.load(hydra_path), "hydra.runtime.choices") or {})
    job = Job(name=str(run_dir.relative_to(sweep_dir)) or ".", overrides=overrides,
              choices={k: str(v) for k, v in choices.items() if not str(k).startswith("hydra")})
    job.published, job.published_error = read_published(run_dir / ".hydra" / "config.yaml")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        job.status, job.reason = "failed", "no metrics.json (crashed before its first checkpoint)"
        return job
    history = json.loads(metrics_path.read_text())
    final = history.get("final") or {}
    if not final:
        epochs = history.get("epochs") or []
        job.status = "failed"
        job.reason = f"no final metrics (last record: epoch {epochs[-1].get('epoch')})" if epochs else "no final metrics"
        return job
    job.metrics = {k: float(v) for k, v in final.items() if _is_number(v)}
    job.metrics.update(_compute_metrics(history, job))
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        evaluated = json.loads(eval_path.read_text()).get("metrics", {})
        job.metrics.update({f"eval/{k}": float(v) for k, v in evaluated.items() if _is_number(v)})
    return job


PUBLISHED_KEYS = ("value", "metric", "protocol", "source")


def read_published(config_path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(block, problem)``: the run config's top-level ``published`` block that recipes set::

        published: {value: 84.26, metric: linear/top1, protocol: "...", source: "..."}

    ``(None, "")`` when there is none (or ``published: null``). The file is untrusted: it is parsed
    as plain YAML data, interpolations are never resolved and nothing is instantiated; a block that
    is not of this form gives ``(None, "<what is wrong>")`` for the report to show, never an error.
    """
    try:
        data = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)  # "${...}" stays text
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not raised
        return None, f"unreadable {config_path.name}: {type(err).__name__}: {_one_line(str(err))}"
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
    epochs = [e for e in history.get("epochs") or [] if isinstance(e, dict)
              and _is_number(e.get("epoch_time_s")) and _is_number(e.get("images_per_s"))]
    seconds = sum(e["epoch_time_s"] for e in epochs)
    if seconds > 0:
        out["time/wall_s"] = seconds
        out["time/images_per_s"] = sum(e["epoch_time_s"] * e["images_per_s"] for e in epochs) / seconds
    return out


def missing_grid_points(sweep_dir: Path, jobs: list[Job]) -> list[Job]:
    """Grid points of the basic sweeper's ``multirun.yaml`` that no job dir matches (status ``not run``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    cfg = OmegaConf.load(path)
    if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_")):
        return []  # e.g. Optuna: no fixed grid to compare against
    task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    task += [f"{k}={v}" for k, v in params.items()]
    seen = [job.overrides for job in jobs]
    missing = []
    (grid,) = BasicSweeper.split_arguments(parse_overrides(task), None)
    for number, point in enumerate(grid):  # the job number Hydra would have given it
        values = override_values(point)
        if values not in seen:
            missing.append(Job(name=f"{number} (no dir)", overrides=values, status="not run",
                               reason="no run dir: the sweep ended before this job started"))
    return missing


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _natural_key(path: Path) -> list:
    """Job dirs 0, 1, ..., 10 in numeric order, not 0, 1, 10, 2."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]
