"""The sweep table: one row per configuration (swept values without the seed), mean +- std over seeds,
each configuration against a baseline (``report.stats``), the published number of a recipe, and the
compute a run took."""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_suite.errors import UserError
from cl_suite.files import atomic_write
from cl_suite.report.jobs import Job, canonical, drop_repeats, is_ignored
from cl_suite.report.stats import Comparison, baseline_comparison, compare

DEFAULT_METRICS = ("linear/top1", "knn/top1")
# Numbers evaluate.py records beside its metrics that are settings, not results (the k a low-shot kNN used):
# not in the default columns nor compared (``--metric`` still shows one).
RECORDED_SETTINGS_SUFFIXES = ("/knn_k",)


def lower_is_better(metric: str) -> bool:
    """Losses and false-positive rates are minimised; every other metric (accuracy, mAP, AUROC) maximised."""
    return "loss" in metric or "fpr" in metric


# Which of two group choices that always change together (method=dcl brings sampler=debiased, a recipe
# brings its data set) is the swept parameter: the first in this order, then the others as the jobs list them.
GROUP_ORDER = ("experiment", "method", "dataset", "backbone", "optimizer", "scheduler", "sampler", "evaluation",
               "debug")
# The fixed settings report.md lists besides the group choices and the command line's values.
FIXED_KEYS = ("trainer.epochs", "trainer.max_steps", "trainer.batch_size", "optimizer.lr")


def _differs(jobs: list[Job], key: str) -> bool:
    return len({repr(job.value(key)) for job in jobs if job.knows(key)}) > 1


def _follows(jobs: list[Job], key: str, by: list[str]) -> bool:
    """True when the jobs that agree on every key of ``by`` agree on ``key`` too (by the non-empty)."""
    if not by:
        return False
    seen: dict[str, str] = {}
    for job in jobs:
        if job.knows(key) and all(job.knows(k) for k in by):
            signature = repr([job.value(k) for k in by])
            if seen.setdefault(signature, repr(job.value(key))) != repr(job.value(key)):
                return False
    return True


def group_keys(jobs: list[Job]) -> list[str]:
    """The config groups of the jobs (``method``, ``dataset``, ...), in ``GROUP_ORDER``."""
    found = list(dict.fromkeys(k for job in jobs for k in job.choices if not is_ignored(k)))
    found += [k for job in jobs for k in job.settings if k in GROUP_ORDER and k not in found]
    return sorted(dict.fromkeys(found), key=lambda k: (GROUP_ORDER.index(k) if k in GROUP_ORDER else len(GROUP_ORDER),
                                                        found.index(k)))


def analyse_settings(jobs: list[Job], seed_key: str) -> tuple[list[str], dict[str, list[str]]]:
    """``(swept parameters, {setting: the swept groups it follows})`` from what every job ran with (its
    resolved config and group choices, ``Job.settings``), whatever set it: an override, a config default
    or a recipe. A setting is swept when its value differs between jobs (a key missing from a job counts
    as a value). Not a parameter of its own: ``seed_key`` (the replicate axis), the ``IGNORED_KEYS`` of
    ``report.jobs``, and a setting that only follows the swept groups (``sampler`` with ``method``,
    ``method.*`` with ``method``, a recipe's values with ``experiment``): those are "followed" settings.
    Order: the command line's keys as the jobs list them, then the config's."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.keys()))
    differing = [k for k in keys if k != seed_key and not is_ignored(k) and _differs(jobs, k)]
    groups = [k for k in group_keys(jobs) if k in differing]
    kept_groups: list[str] = []
    followed: dict[str, list[str]] = {}
    for key in groups:
        if _follows(jobs, key, kept_groups):
            followed[key] = list(kept_groups)
        else:
            kept_groups.append(key)
    swept = []
    for key in differing:
        if key in groups:
            if key in kept_groups:
                swept.append(key)
        elif _follows(jobs, key, kept_groups):
            followed[key] = list(kept_groups)
        else:
            swept.append(key)
    return swept, followed


def swept_parameters(jobs: list[Job], seed_key: str) -> list[str]:
    """The swept parameters of ``analyse_settings``."""
    return analyse_settings(jobs, seed_key)[0]


def job_seeds(jobs: list[Job], seed_key: str) -> list:
    seeds = {repr(job.value(seed_key)): job.value(seed_key) for job in jobs if job.value(seed_key) is not None}
    numbers = sorted(s for s in seeds.values() if isinstance(s, (int, float)))
    return numbers + sorted((s for s in seeds.values() if not isinstance(s, (int, float))), key=str)


def fixed_settings(jobs: list[Job], params: list[str], seed_key: str = "seed") -> list[tuple[str, str, str]]:
    """``[(setting, value, note)]`` held the same in every job whose value is known (the note counts the
    others: an unreadable config.yaml, a grid point that never ran): the group choices (an unselected
    optional group such as ``experiment`` left out), ``FIXED_KEYS`` (epochs, batch size, learning rate),
    the other values the command line set in every job (``dataset.image_size=32``), and the seeds."""
    command_line = [k for job in jobs for k in job.overrides]
    keys = list(dict.fromkeys([*group_keys(jobs), *FIXED_KEYS, *command_line]))
    out = []
    for key in keys:
        if key in params or key == seed_key or is_ignored(key):
            continue
        knowing = [job for job in jobs if job.knows(key)]
        values = {repr(job.value(key)) for job in knowing}
        if len(values) == 1 and knowing[0].value(key) is not None:
            unknown = len(jobs) - len(knowing)  # an unreadable config.yaml, a grid point that never ran
            out.append((key, format_value(knowing[0].value(key)), f"unknown for {unknown} jobs" if unknown else ""))
    seeds = job_seeds(jobs, seed_key)
    if seeds:
        name = "seeds" if seed_key == "seed" else f"{seed_key} (replicates)"
        out.append((name, ", ".join(format_value(s) for s in seeds), ""))
    return out


def followed_settings(jobs: list[Job], seed_key: str = "seed") -> list[tuple[str, list[str]]]:
    """The readable part of ``analyse_settings``' followed settings: group choices, ``FIXED_KEYS`` and
    the command line's keys that change with the swept groups (``sampler`` with ``method``)."""
    _, followed = analyse_settings(jobs, seed_key)
    readable = {*group_keys(jobs), *FIXED_KEYS, *(k for job in jobs for k in job.overrides)}
    return [(k, by) for k, by in followed.items() if k in readable]


def default_metrics(jobs: list[Job]) -> list[str]:
    """The headline accuracies, then every number ``evaluate.py`` added (``eval/*``), then any other
    metric a recipe's published number refers to, as present."""
    present = list(dict.fromkeys(k for job in jobs for k in job.metrics))
    metrics = [m for m in DEFAULT_METRICS if m in present] + [
        m for m in present if m.startswith("eval/") and not m.endswith(RECORDED_SETTINGS_SUFFIXES)]
    published = [job.published["metric"] for job in jobs if job.published]
    return metrics + [m for m in dict.fromkeys(published) if m in present and m not in metrics]


class BaselineError(UserError, ValueError):
    """``--baseline`` names no configuration of the sweep, or more than one."""


class MetricError(UserError, ValueError):
    """``--metric`` names a metric that no job has (a typo would otherwise be a column of ``-``)."""


def check_metrics(jobs: list[Job], metrics: list[str]) -> None:
    """Raise ``MetricError`` for a metric that no job has, naming the ones they have (the closest first).
    Not when no job has any metric (every job failed or never ran): the report still lists them."""
    import difflib

    present = list(dict.fromkeys(k for job in jobs for k in job.metrics))
    missing = [m for m in metrics if m not in present]
    if not present or not missing:
        return
    ordered = list(dict.fromkeys([*default_metrics(jobs), *present]))
    close = list(dict.fromkeys(c for m in missing for c in difflib.get_close_matches(m, present, n=2)))
    shown = list(dict.fromkeys([*close, *ordered]))[:12]
    more = f" (and {len(ordered) - len(shown)} more)" if len(ordered) > len(shown) else ""
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    these = "this metric" if len(missing) == 1 else "these metrics"
    raise MetricError(f"--metric {', '.join(missing)}: no job has {these}{hint}; the jobs have: "
                      f"{', '.join(shown)}{more}")


@dataclass
class ConfigRow:
    """One configuration of the sweep and its jobs (its seeds)."""

    values: dict[str, Any]
    jobs: list[Job] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # metric -> (mean, std, n)
    best: set[str] = field(default_factory=set)  # metrics on which this row has the best mean
    bold: set[str] = field(default_factory=set)  # metrics on which it is best beyond noise (see mark_best)
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # metric -> versus the baseline
    is_baseline: bool = False
    published: dict[str, Any] | None = None  # the recipe's published number (jobs.read_published)
    published_note: str = ""  # e.g. the jobs of this configuration disagree on it
    images_per_s: float = math.nan  # mean over the ok jobs that recorded it
    hours: float = math.nan  # device-hours of one run (wall time x processes), mean over the ok jobs
    hours_unit: str = ""  # GPU-h or CPU-h

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if not job.ok]

    @property
    def ok_jobs(self) -> list[Job]:
        return [job for job in self.jobs if job.ok]

    def label(self, params: list[str]) -> str:
        return " ".join(f"{k}={format_value(self.values[k])}" for k in params) or "(all jobs)"


def summarize(jobs: list[Job], metrics: list[str], seed_key: str = "seed",
              baseline: list[str] | None = None) -> tuple[list[str], list[ConfigRow]]:
    """``(swept parameters, rows)``: jobs grouped by their swept values, statistics over the ok jobs,
    each row compared with the baseline row (``select_baseline``) on every metric. Repeats of one run
    (same settings and seed, ``jobs.drop_repeats``) count once; a metric no job has is a ``MetricError``.

    std is the sample standard deviation (n - 1), NaN for a single seed. ``best`` marks the best mean
    of each metric (highest; lowest for losses and FPR; ties mark every tied row), ``bold`` the best
    means that the comparison with the baseline supports (``mark_best``).
    """
    jobs = drop_repeats(jobs, seed_key)[0]
    check_metrics(jobs, metrics)
    params = swept_parameters(jobs, seed_key)
    rows: dict[str, ConfigRow] = {}
    for job in jobs:
        values = {k: job.value(k) for k in params}
        rows.setdefault(repr(values), ConfigRow(values)).jobs.append(job)
    for row in rows.values():
        for metric in metrics:
            xs = [job.metrics[metric] for job in row.ok_jobs if metric in job.metrics]
            if xs:
                row.stats[metric] = (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs))
        _summarize_compute(row)
        _summarize_published(row)
    rows_list = list(rows.values())
    if not rows_list:
        return params, rows_list
    base = select_baseline(params, rows_list, baseline)
    base.is_baseline = True
    for row in rows_list:
        for metric in metrics:
            if row is base:
                if metric in row.stats:
                    row.comparisons[metric] = baseline_comparison(row.stats[metric][2])
                continue
            row.comparisons[metric] = compare(seed_values(row, metric, seed_key), seed_values(base, metric, seed_key),
                                              lower_is_better(metric))
    for metric in metrics:
        means = [row.stats[metric][0] for row in rows_list if metric in row.stats]
        if means:
            target = min(means) if lower_is_better(metric) else max(means)
            for row in rows_list:
                if metric in row.stats and row.stats[metric][0] == target:
                    row.best.add(metric)
        mark_best(rows_list, metric, seed_key)
    return params, rows_list


def mark_best(rows: list[ConfigRow], metric: str, seed_key: str = "seed") -> None:
    """Bold a best mean only when the comparison with the baseline backs it: a configuration whose
    verdict is "better", or the baseline itself when every other configuration is "worse". Never with
    a single configuration (nothing to be best against), and never for a configuration or against a
    baseline with fewer than two distinct seeds: a single-seed sweep (or the same seed run twice, by jobs
    whose settings are not all known, so not taken for repeats) has no spread to tell a difference from
    noise."""
    having = [row for row in rows if metric in row.stats]
    if len(having) < 2:
        return
    base = next((row for row in rows if row.is_baseline), None)
    if base is None or distinct_seeds(base, metric, seed_key) < 2:
        return
    for row in having:
        if metric not in row.best or distinct_seeds(row, metric, seed_key) < 2:
            continue
        if row.is_baseline:
            backed = all(other.comparisons[metric].verdict == "worse" for other in having if other is not row)
        else:
            backed = row.comparisons[metric].verdict == "better"
        if backed:
            row.bold.add(metric)


def distinct_seeds(row: ConfigRow, metric: str, seed_key: str) -> int:
    """How many different seeds the row's ok jobs with the metric ran (a job without a seed: its own)."""
    return len({repr(job.value(seed_key)) if job.value(seed_key) is not None else ("job", job.name)
                for job in row.ok_jobs if metric in job.metrics})


def seed_values(row: ConfigRow, metric: str, seed_key: str) -> dict:
    """``{seed: value}`` of the row's ok jobs. A job without a seed, or whose seed repeats in the row (jobs
    whose settings are not all known: an unreadable config.yaml), is keyed by its name, so it is never
    paired with another row's job."""
    seeds = [job.value(seed_key) for job in row.ok_jobs]
    out = {}
    for job, seed in zip(row.ok_jobs, seeds):
        if metric in job.metrics:
            pairable = seed is not None and seeds.count(seed) == 1
            out[seed if pairable else ("job", job.name)] = job.metrics[metric]
    return out


def select_baseline(params: list[str], rows: list[ConfigRow], spec: list[str] | None) -> ConfigRow:
    """The row that ``spec`` (``["method=simclr", ...]``: swept values, all of which must match) names;
    with no spec the first configuration of the grid that has an ok job (else the first)."""
    if not spec:
        return next((row for row in rows if row.ok_jobs), rows[0])
    from cl_suite.sweeps import override_values

    available = "; ".join(row.label(params) for row in rows)
    wanted = {}
    for pair in spec:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BaselineError(f"--baseline {pair!r} is not key=value (e.g. method=simclr); "
                                f"the configurations are: {available}")
        if key not in params:
            swept = ", ".join(params) or "nothing but seeds"
            raise BaselineError(f"--baseline {pair}: {key!r} is not a swept parameter of this sweep (swept: {swept}); "
                                f"the configurations are: {available}")
        try:
            typed = canonical(override_values([f"{key}={raw}"]).get(key, raw))  # [64]: a tuple, as the rows
        except Exception:  # noqa: BLE001 - not in Hydra's grammar: compare as text
            typed = raw
        wanted[key] = (typed, raw.strip())
    matches = [row for row in rows if all(row.values[k] == typed or format_value(row.values[k]) == raw
                                          for k, (typed, raw) in wanted.items())]
    named = " ".join(spec)
    if not matches:
        raise BaselineError(f"--baseline {named} matches no configuration of this sweep; the configurations "
                            f"are: {available}")
    if len(matches) > 1:
        raise BaselineError(f"--baseline {named} matches {len(matches)} configurations "
                            f"({'; '.join(row.label(params) for row in matches)}): add key=value pairs to pick one")
    return matches[0]


def _summarize_compute(row: ConfigRow) -> None:
    """Images/s and device-hours (wall time x processes / 3600) of one run, means over the ok jobs."""
    ips = [job.metrics["time/images_per_s"] for job in row.ok_jobs if "time/images_per_s" in job.metrics]
    if ips:
        row.images_per_s = statistics.fmean(ips)
    timed = [job for job in row.ok_jobs if "time/wall_s" in job.metrics and job.processes and job.device]
    if timed:
        row.hours = statistics.fmean(job.metrics["time/wall_s"] * job.processes / 3600 for job in timed)
        units = sorted({"GPU-h" if job.device == "cuda" else "CPU-h" for job in timed})
        row.hours_unit = units[0] if len(units) == 1 else "GPU/CPU-h (mixed)"


def _summarize_published(row: ConfigRow) -> None:
    blocks = {repr(sorted(job.published.items())): job.published for job in row.jobs if job.published}
    if len(blocks) == 1:
        row.published = next(iter(blocks.values()))
    elif blocks:
        row.published_note = f"the jobs of this configuration name {len(blocks)} different published numbers"


def format_value(value: Any) -> str:
    """A setting's value in a cell; ``-`` where a configuration has no such setting (tau_plus of SimCLR).
    A list (a tuple here, ``jobs.canonical``) or mapping as the command line writes it: ``[64, 128]``,
    ``[[0, 1], [2, 3]]``, ``{name: crop}``, never Python's ``(64,)``."""
    if value is None:
        return "-"
    return _spelled(value)


def _spelled(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_spelled(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_spelled(v)}" for k, v in value.items()) + "}"
    return str(value)


def _csv_value(value: Any) -> Any:
    """A setting's value in a CSV cell: empty where unset, a list or mapping as ``format_value`` spells it,
    a number as it is."""
    if value is None:
        return ""
    return format_value(value) if isinstance(value, (list, tuple, dict)) else value


def _fmt_stat(stat: tuple[float, float, int] | None, seeds: int | None = None) -> str:
    """``mean ± std``; ``(n=k)`` where fewer than the row's ``seeds`` jobs have the metric (e.g. evaluate.py
    run on some of them)."""
    if stat is None:
        return "-"
    mean, std, n = stat
    text = f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text + (f" (n={n})" if seeds is not None and n < seeds else "")


def _jobs_cell(row: ConfigRow) -> str:
    ok = len(row.jobs) - len(row.failed)
    cell = f"{ok}/{len(row.jobs)}"
    if row.failed:
        cell += " (" + ", ".join(f"{job.name}: {job.status}" for job in row.failed) + ")"
    return cell


def published_footnotes(rows: list[ConfigRow]) -> list[dict[str, Any]]:
    """The distinct published numbers of the rows, in order: footnote ``i + 1`` is entry ``i``."""
    notes = []
    for row in rows:
        if row.published and row.published not in notes:
            notes.append(row.published)
    return notes


def _published_metrics(rows: list[ConfigRow], metrics: list[str]) -> set[str]:
    return {row.published["metric"] for row in rows if row.published} & set(metrics)


def _has_compute(rows: list[ConfigRow]) -> bool:
    return any(not math.isnan(row.images_per_s) or not math.isnan(row.hours) for row in rows)


def _fmt_hours(row: ConfigRow) -> str:
    return "-" if math.isnan(row.hours) else f"{row.hours:.3g} {row.hours_unit}"


def markdown_table(params: list[str], rows: list[ConfigRow], metrics: list[str]) -> str:
    """Mean ± std per metric, the published number next to the metric it is comparable with (when
    any row has one), images/s and device-hours per run (when recorded)."""
    with_published = _published_metrics(rows, metrics)
    notes = published_footnotes(rows)
    compute = _has_compute(rows)
    header = [*params, "seeds", "jobs ok"]
    for metric in metrics:
        header += [metric] + ([f"{metric} published"] if metric in with_published else [])
    header += ["images/s", "hours / run"] if compute else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [format_value(row.values[p]) for p in params] + [str(len(row.ok_jobs)), _jobs_cell(row)]
        if row.is_baseline and params and len(rows) > 1:
            cells[len(params) - 1] += " (baseline)"
        for metric in metrics:
            text = _fmt_stat(row.stats.get(metric), len(row.ok_jobs))
            cells.append(f"**{text}**" if metric in row.bold else text)
            if metric in with_published:
                pub = row.published
                cells.append(f"{pub['value']:.2f} [{notes.index(pub) + 1}]" if pub and pub["metric"] == metric else "-")
        if compute:
            cells += ["-" if math.isnan(row.images_per_s) else f"{row.images_per_s:,.0f}", _fmt_hours(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_signed(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.2f}"


def comparison_table(params: list[str], rows: list[ConfigRow], metrics: list[str]) -> str:
    """One line per (configuration, metric) other than the baseline's: difference, interval, test, verdict."""
    header = [*params, "metric", "Δ vs baseline", "95% interval", "test", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.is_baseline:
            continue
        for metric in metrics:
            c = row.comparisons.get(metric)
            if c is None:
                continue
            interval = f"[{c.low:+.2f}, {c.high:+.2f}]" if c.has_interval else "-"
            lines.append("| " + " | ".join([*[format_value(row.values[p]) for p in params], metric, _fmt_signed(c.diff),
                                            interval, c.describe(), c.verdict]) + " |")
    return "\n".join(lines)


STATISTICS_TEXT = (
    "Δ = configuration − baseline. Where the two have at least two seeds in common: a paired t-interval "
    "over those n seeds (the mean and spread of the per-seed differences); otherwise Welch's t-interval "
    "over the two sets of seeds. Intervals are 95%, from the t-distribution. Verdict: `better` or `worse` "
    "when the interval excludes 0 (lower is better for losses and FPR, higher for everything else), "
    "`within noise` when it contains 0, `n/a (1 seed)` when there are not enough seeds for an interval, "
    "`n/a (no spread)` when every seed gives the same non-zero difference (an interval of zero width is no "
    "evidence; identical results on every seed, [0, 0], contain 0: `within noise`).")


REPEATS_TEXT = (
    "Jobs with the same settings and seed as another job repeat one run (e.g. the same sweep run twice "
    "into one folder), so each (configuration, seed) counts once, as one job: an ok one before a failed one, "
    "then the most recent (its metrics.json written last, then the later folder). Left out:")


def markdown_report(sweep_dir: Path, jobs: list[Job], params: list[str], rows: list[ConfigRow],
                    metrics: list[str], plots: list[Path], seed_key: str = "seed",
                    repeats: list[tuple[Job, Job]] | None = None) -> str:
    """``report.md``. ``jobs``: those the table counts; ``repeats``: ``(left out, used instead)`` of
    ``jobs.drop_repeats``, listed in a section of their own."""
    failed = [job for job in jobs if not job.ok]
    base = next((row for row in rows if row.is_baseline), None)
    left_out = f"; {len(repeats)} repeats left out (below)" if repeats else ""
    parts = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(jobs)} jobs: {len(jobs) - len(failed)} ok, {len(failed)} failed or not run{left_out}. "
        f"Swept: {', '.join(params) or '(nothing but seeds)'} (the settings that differ between jobs, read "
        "from each job's resolved config and group choices, whatever set them). Cells: mean ± sample std "
        "over the ok jobs (seeds) of a configuration; `seeds` = its ok jobs. **Bold** = the best mean of a "
        "metric (lowest for losses and FPR, else highest), only where the comparison below backs it: the "
        "configuration is `better` than the baseline (the 95% interval of the difference excludes 0), or it "
        "is the baseline and every other configuration is `worse`; never with fewer than two seeds on either "
        "side. The per-configuration error bars of the plots may still overlap: a paired difference is "
        "tighter than two separate intervals. The CSV's `best` column marks the best mean regardless."
        + (" images/s: training throughput of a run; hours / run: its training wall time (the epochs, "
           "not the evaluations) x processes, in GPU-h or CPU-h (processes, not cores); both are means over "
           "its seeds, to compare configurations at equal compute (they measure the machine as well: "
           "compare them between runs on the same, otherwise idle hardware)." if _has_compute(rows) else ""),
        "",
        markdown_table(params, rows, metrics),
    ]
    fixed = fixed_settings(jobs, params, seed_key)
    followed = followed_settings(jobs, seed_key)
    if fixed or followed:
        parts += ["", "## Fixed settings", "",
                  "The same in every job (its group choices, epochs, batch size, learning rate and the values "
                  "set on the command line, from `.hydra/config.yaml` and `hydra.yaml`):", ""]
        for key, value, note in fixed:
            shown = value if key == "seeds" or key.endswith("(replicates)") else f"`{value}`"
            parts.append(f"- {key}: {shown}" + (f" ({note})" if note else ""))
        for key, by in followed:
            parts.append(f"- {key}: changes with {', '.join(by)} (not a parameter of its own)")
    notes = published_footnotes(rows)
    problems = [f"job {job.name}: {job.published_error}" for job in jobs if job.published_error]
    problems += [f"configuration {row.label(params)}: {row.published_note}" for row in rows if row.published_note]
    if notes or problems:
        parts += ["", "## Published numbers", ""]
        if notes:
            parts += ["The `published` columns: the number a recipe reproduces, as published (percent), "
                      "next to the suite metric it is comparable with.", ""]
        for i, pub in enumerate(notes, 1):
            extra = "; ".join(x for x in (pub["protocol"], f"source: {pub['source']}" if pub["source"] else "") if x)
            shown = "" if pub["metric"] in metrics else " (not a metric of this report: add --metric)"
            parts.append(f"{i}. {pub['value']:g} {pub['metric']}{shown}" + (f" — {extra}" if extra else ""))
        if problems:
            parts += [""] + [f"- not used: {p}" for p in problems]
    if base is not None and len(rows) > 1:
        parts += ["", "## Versus the baseline", "",
                  f"Baseline: `{base.label(params)}` (choose another with `--baseline key=value`). " + STATISTICS_TEXT,
                  "", comparison_table(params, rows, metrics)]
    if failed:
        parts += ["", "## Failed jobs", "", "| job | status | swept values | reason |", "|---|---|---|---|"]
        for job in failed:
            swept = " ".join(f"{k}={format_value(job.value(k))}" for k in [*params, seed_key]
                             if job.value(k) is not None)
            parts.append(f"| {job.name} | {job.status} | `{swept}` | {job.reason} |")
    continued = [job for job in jobs if job.setting_changes]
    if continued:
        parts += ["", "## Runs continued with other settings", "",
                  "Continued from a checkpoint with settings other than those they started with (metrics.json's "
                  "`setting_changes`); the tables and Fixed settings show the newest ones only:", ""]
        parts += [f"- {job.name}, from step {step}: " + "; ".join(changes)
                  for job in continued for step, changes in job.setting_changes]
    if repeats:
        parts += ["", "## Repeats left out", "", REPEATS_TEXT, "", "| job | status | used instead |", "|---|---|---|"]
        parts += [f"| {job.name} | {job.status} | {used.name} |" for job, used in repeats]
    if plots:
        parts += ["", "## Plots", "", "Error bars: the 95% t-interval of the mean over seeds (cut at 0% and 100% for percentages).", ""]
        parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


COMPARISON_COLUMNS = ("diff", "ci_low", "ci_high", "verdict", "n_pairs", "test")


def _write_csv(path: Path, rows: list[list]) -> None:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_tables(sweep_dir: Path, jobs: list[Job], params: list[str], rows: list[ConfigRow], metrics: list[str],
                 plots: list[Path], seed_key: str = "seed",
                 repeats: list[tuple[Job, Job]] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` (one row per configuration) and ``report_jobs.csv`` (one per job;
    the ``repeats`` left out after the others, status ``repeat``)."""
    repeats = repeats or []
    paths = {"markdown": sweep_dir / "report.md", "csv": sweep_dir / "report.csv",
             "jobs_csv": sweep_dir / "report_jobs.csv"}
    # Written by rename (atomic_write), never through a link someone planted at these names in the sweep dir.
    markdown = markdown_report(sweep_dir, jobs, params, rows, metrics, plots, seed_key, repeats)
    atomic_write(paths["markdown"], lambda f: f.write(markdown.encode()))
    table: list[list] = [[*params, "baseline", "seeds", "jobs_ok", "jobs_total", "failed_jobs",
                          *[f"{m} {s}" for m in metrics for s in ("mean", "std", "n", "best", *COMPARISON_COLUMNS,
                                                                  "published")],
                          "published_metric", "published_protocol", "published_source",
                          "images_per_s", "hours", "hours_unit"]]
    for row in rows:
        stats = []
        for metric in metrics:
            mean, std, n = row.stats.get(metric, (math.nan, math.nan, 0))
            c = row.comparisons.get(metric)
            compared = ([c.diff, c.low, c.high, c.verdict, c.n_pairs, c.test] if c else
                        [math.nan, math.nan, math.nan, "n/a (no values)", 0, "none"])
            pub = row.published["value"] if row.published and row.published["metric"] == metric else ""
            stats += [mean, std, n, metric in row.best, *compared, pub]
        pub = row.published or {}
        table.append([*[_csv_value(row.values[p]) for p in params], row.is_baseline, len(row.ok_jobs),
                      len(row.jobs) - len(row.failed), len(row.jobs), " ".join(job.name for job in row.failed),
                      *stats, pub.get("metric", ""), pub.get("protocol", ""), pub.get("source", ""),
                      row.images_per_s, row.hours, row.hours_unit])
    _write_csv(paths["csv"], table)
    listed = [(job, job.status, job.reason) for job in jobs]
    listed += [(job, "repeat", f"{job.status}; same settings and seed as {used.name}, which is used")
               for job, used in repeats]
    keys = list(dict.fromkeys([*params, seed_key, *(k for job, _, _ in listed for k in job.overrides)]))
    compute = ["time/wall_s", "time/images_per_s"]
    table = [["job", "status", "reason", *keys, *metrics, *[c for c in compute if c not in metrics],
              "device", "processes", "published_value", "published_metric", "published_problem"]]
    for job, status, reason in listed:
        pub = job.published or {}
        table.append([job.name, status, reason, *[_csv_value(job.value(k)) for k in keys],
                      *[job.metrics.get(m, "") for m in metrics],
                      *[job.metrics.get(c, "") for c in compute if c not in metrics],
                      job.device or "", job.processes or "", pub.get("value", ""), pub.get("metric", ""),
                      job.published_error])
    _write_csv(paths["jobs_csv"], table)
    return paths
