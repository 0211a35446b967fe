"""The sweep table: one row per configuration (swept values without the seed), mean +- std over seeds."""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_suite.report.jobs import Job

DEFAULT_METRICS = ("linear/top1", "knn/top1")


def lower_is_better(metric: str) -> bool:
    """Losses and false-positive rates are minimised; every other metric (accuracy, mAP, AUROC) maximised."""
    return "loss" in metric or "fpr" in metric


def swept_parameters(jobs: list[Job], seed_key: str) -> list[str]:
    """Override keys whose value differs between jobs (a key missing from a job counts as a value),
    in the order the jobs list them; ``seed_key`` is the replicate axis, not a parameter."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return [k for k in keys if k != seed_key and len({repr(job.overrides.get(k)) for job in jobs}) > 1]


def default_metrics(jobs: list[Job]) -> list[str]:
    """The headline accuracies, then every number ``evaluate.py`` added (``eval/*``), as present."""
    present = list(dict.fromkeys(k for job in jobs for k in job.metrics))
    return [m for m in DEFAULT_METRICS if m in present] + [m for m in present if m.startswith("eval/")]


@dataclass
class ConfigRow:
    """One configuration of the sweep and its jobs (its seeds)."""

    values: dict[str, Any]
    jobs: list[Job] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> (mean, std, n)
    best: set[str] = field(default_factory=set)  # metrics on which this row is the best

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if not job.ok]


def summarize(jobs: list[Job], metrics: list[str], seed_key: str = "seed") -> tuple[list[str], list[ConfigRow]]:
    """``(swept parameters, rows)``: jobs grouped by their swept values, statistics over the ok jobs.

    std is the sample standard deviation (n - 1), NaN for a single seed. The best row of each metric
    (highest mean; lowest for losses and FPR) is marked; ties mark every tied row.
    """
    params = swept_parameters(jobs, seed_key)
    rows: dict[str, ConfigRow] = {}
    for job in jobs:
        values = {k: job.overrides.get(k) for k in params}
        rows.setdefault(repr(values), ConfigRow(values)).jobs.append(job)
    for row in rows.values():
        for metric in metrics:
            xs = [job.metrics[metric] for job in row.jobs if job.ok and metric in job.metrics]
            if xs:
                row.stats[metric] = (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs))
    for metric in metrics:
        means = [row.stats[metric][0] for row in rows.values() if metric in row.stats]
        if means:
            target = min(means) if lower_is_better(metric) else max(means)
            for row in rows.values():
                if metric in row.stats and row.stats[metric][0] == target:
                    row.best.add(metric)
    return params, list(rows.values())


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt_stat(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "-"
    mean, std, _ = stat
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _jobs_cell(row: ConfigRow) -> str:
    ok = len(row.jobs) - len(row.failed)
    cell = f"{ok}/{len(row.jobs)}"
    if row.failed:
        cell += " (" + ", ".join(f"{job.name}: {job.status}" for job in row.failed) + ")"
    return cell


def markdown_table(params: list[str], rows: list[ConfigRow], metrics: list[str]) -> str:
    header = [*params, "jobs ok", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_fmt_value(row.values[p]) for p in params] + [_jobs_cell(row)]
        for metric in metrics:
            text = _fmt_stat(row.stats.get(metric))
            cells.append(f"**{text}**" if metric in row.best else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(sweep_dir: Path, jobs: list[Job], params: list[str], rows: list[ConfigRow],
                    metrics: list[str], plots: list[Path], seed_key: str = "seed") -> str:
    failed = [job for job in jobs if not job.ok]
    parts = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(jobs)} jobs: {len(jobs) - len(failed)} ok, {len(failed)} failed or not run. "
        f"Swept: {', '.join(params) or '(nothing but seeds)'}. Cells: mean ± sample std over the ok jobs "
        "(seeds) of a configuration; **bold** = best mean (lowest for losses and FPR, else highest).",
        "",
        markdown_table(params, rows, metrics),
    ]
    if failed:
        parts += ["", "## Failed jobs", "", "| job | status | swept values | reason |", "|---|---|---|---|"]
        for job in failed:
            swept = " ".join(f"{k}={_fmt_value(job.overrides[k])}" for k in [*params, seed_key] if k in job.overrides)
            parts.append(f"| {job.name} | {job.status} | `{swept}` | {job.reason} |")
    if plots:
        parts += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def write_tables(sweep_dir: Path, jobs: list[Job], params: list[str], rows: list[ConfigRow], metrics: list[str],
                 plots: list[Path], seed_key: str = "seed") -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` (one row per configuration) and ``report_jobs.csv`` (one per job)."""
    paths = {"markdown": sweep_dir / "report.md", "csv": sweep_dir / "report.csv",
             "jobs_csv": sweep_dir / "report_jobs.csv"}
    paths["markdown"].write_text(markdown_report(sweep_dir, jobs, params, rows, metrics, plots, seed_key))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*params, "jobs_ok", "jobs_total", "failed_jobs",
                         *[f"{m} {s}" for m in metrics for s in ("mean", "std", "n", "best")]])
        for row in rows:
            stats = []
            for metric in metrics:
                mean, std, n = row.stats.get(metric, (math.nan, math.nan, 0))
                stats += [mean, std, n, metric in row.best]
            writer.writerow([*[row.values[p] for p in params], len(row.jobs) - len(row.failed), len(row.jobs),
                             " ".join(job.name for job in row.failed), *stats])
    keys = list(dict.fromkeys([*params, seed_key, *(k for job in jobs for k in job.overrides)]))
    with paths["jobs_csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["job", "status", "reason", *keys, *metrics])
        for job in jobs:
            writer.writerow([job.name, job.status, job.reason, *[job.overrides.get(k, "") for k in keys],
                             *[job.metrics.get(m, "") for m in metrics]])
    return paths
