"""One PNG per swept parameter: each metric against that parameter, one line per method (and per value
of the other swept parameters), error bars = the 95% t-interval of the mean over seeds. The title says
what is compared (the metrics, the parameter, the lines, the fixed data set / backbone / epochs), never
the sweep folder's name; the legend sits outside the axes, right of the last panel."""
from __future__ import annotations

import math
import re
from pathlib import Path

from cl_suite.files import atomic_write
from cl_suite.report.stats import mean_halfwidth
from cl_suite.report.table import ConfigRow, format_value

# Metrics in percent in this suite (accuracies, retrieval mAP / P@k / R@k, OOD AUROC / FPR); losses are not.
PERCENT_MARKERS = ("top1", "top5", "map", "p@", "r@", "auroc", "fpr")
# The fixed settings a plot title names, in this order, when every job shares them.
TITLE_SETTINGS = (("experiment", "{}"), ("dataset", "{}"), ("backbone", "{}"), ("trainer.epochs", "{} epochs"),
                  ("trainer.max_steps", "stopped at step {}"))  # a run cut short (debug=fast) says so


def is_percent(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(marker in leaf for marker in PERCENT_MARKERS)


def axis_label(metric: str) -> str:
    """``linear/top1`` -> ``linear top-1 accuracy (%)``; other percentages ``<metric> (%)``; losses as named."""
    head, _, leaf = metric.rpartition("/")
    for k in ("1", "5"):
        if leaf.lower() == f"top{k}":
            return f"{head.replace('/', ' ')} top-{k} accuracy (%)".strip()
    return f"{metric} (%)" if is_percent(metric) else metric


def _is_numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _line_label(row: ConfigRow, others: list[str], method: str | None) -> str:
    parts = [format_value(row.values[k]) if k == "method" else f"no {k}" if row.values[k] is None
             else f"{k}={format_value(row.values[k])}" for k in others]
    if "method" not in others and method:
        parts.insert(0, method)
    return ", ".join(parts) or "all jobs"


def _method_of(row: ConfigRow) -> str | None:
    methods = {job.value("method") or job.choices.get("method") for job in row.jobs}
    return ", ".join(sorted(str(m) for m in methods if m)) or None


def plot_title(metrics: list[str], param: str, params: list[str], fixed: list[tuple[str, str, str]] | None = None,
               width: int | None = None) -> str:
    """What a figure compares, e.g. ``linear/top1, knn/top1 vs sampler.tau_plus, one line per method``
    and, on a second line, the fixed method, data set, backbone and epochs (``fixed_settings``) and what
    the points and bars are; never the sweep folder's name."""
    others = [p for p in params if p != param]
    head = f"{', '.join(metrics)} vs {param}" + (f", one line per {', '.join(others)}" if others else "")
    fixed_map = {key: value for key, value, _ in fixed or []}
    setting = [fmt.format(fixed_map[key]) for key, fmt in (("method", "{}"), *TITLE_SETTINGS)
               if fixed_map.get(key) is not None]
    details = "; ".join(x for x in (", ".join(setting), "mean over seeds, error bars: 95% t-interval") if x)
    if width:  # wrapped to the figure's width
        import textwrap

        return "\n".join(textwrap.fill(line, width) for line in (head, details))
    return f"{head}\n{details}"


def _with_value(rows: list[ConfigRow], param: str) -> list[ConfigRow]:
    """The rows that have the parameter: a configuration without it (tau_plus of SimCLR) is no point of
    its plot (it still has its own row in the table)."""
    having = [row for row in rows if row.values[param] is not None]
    return having or rows


def x_values(rows: list[ConfigRow], param: str) -> list:
    """The x axis: the parameter's values (hashable: a list is a tuple, ``jobs.canonical``), sorted when
    they are numbers, else in the table's order."""
    xs = list(dict.fromkeys(row.values[param] for row in _with_value(rows, param)))
    return sorted(xs) if _is_numeric(xs) else xs


def series(param: str, params: list[str], rows: list[ConfigRow], metric: str) -> dict[str, list[tuple]]:
    """``{line label: [(x value, mean, 95% half-width or NaN, seeds), ...]}``, sorted by x: what a
    panel plots (the x values as the report has them, e.g. the method name, never None for a default)."""
    others = [p for p in params if p != param]
    rows = _with_value(rows, param)
    order = x_values(rows, param)
    rank = {repr(x): i for i, x in enumerate(order)}
    lines: dict[str, list[tuple]] = {}
    for row in rows:
        label = _line_label(row, others, _method_of(row) if param != "method" else None)
        points = lines.setdefault(label, [])
        if metric in row.stats:
            mean, std, n = row.stats[metric]
            points.append((row.values[param], mean, mean_halfwidth(std, n), n))
    return {label: sorted(points, key=lambda p: rank[repr(p[0])]) for label, points in lines.items() if points}


def error_bars(points: list[tuple], percent: bool) -> list[list[float]]:
    """``[below, above]`` of each point's bar: its 95% half-width (0 for one seed, NaN), cut at 0 and 100
    for a percentage (an interval of two seeds easily reaches past 100%, which no accuracy can)."""
    below, above = [], []
    for _, mean, half, _ in points:
        half = 0.0 if math.isnan(half) else half
        below.append(min(half, max(mean, 0.0)) if percent else half)
        above.append(min(half, max(100.0 - mean, 0.0)) if percent else half)
    return [below, above]


def build_figure(param: str, params: list[str], rows: list[ConfigRow], metrics: list[str],
                 fixed: list[tuple[str, str, str]] | None = None):
    """``(figure, axes, legend)`` of one parameter (``None`` when no row has any of the metrics); the
    caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [m for m in metrics if any(m in row.stats for row in _with_value(rows, param))]
    if not plotted:
        return None
    order = x_values(rows, param)
    numeric = _is_numeric(order)
    position = {repr(x): (x if numeric else i) for i, x in enumerate(order)}

    fig, axes = plt.subplots(1, len(plotted), figsize=(4.5 * len(plotted), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], plotted):
        for label, points in series(param, params, rows, metric).items():
            ax.errorbar([position[repr(x)] for x, *_ in points], [mean for _, mean, _, _ in points],
                        yerr=error_bars(points, is_percent(metric)), marker="o", capsize=3, label=label)
        ax.set_xlabel(param)
        ax.set_ylabel(axis_label(metric))
        if not numeric:
            ax.set_xticks(range(len(order)), [format_value(x) for x in order])
        ax.grid(alpha=0.3)
    entries: dict = {}
    for ax in axes[0]:  # every line once, also one that only some panels have
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    handles, labels = list(entries.values()), list(entries)
    legend = fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize="small",
                        borderaxespad=0.0, frameon=False)
    fig.suptitle(plot_title(plotted, param, params, fixed, width=int(14 * 4.5 * len(plotted))), fontsize="medium")
    fig.tight_layout()
    return fig, axes[0], legend


def plot_parameter(sweep_dir: Path, param: str, params: list[str], rows: list[ConfigRow],
                   metrics: list[str], fixed: list[tuple[str, str, str]] | None = None) -> Path | None:
    """``report_<param>.png``: one panel per metric; None when no row has a value for any metric."""
    import matplotlib.pyplot as plt

    # Text is drawn as written: a "$" in a metric key or setting value (a run folder's files are anyone's)
    # would otherwise start matplotlib's math mode, and a malformed one fails the whole report.
    with plt.rc_context({"text.parse_math": False}):
        built = build_figure(param, params, rows, metrics, fixed)
        if built is None:
            return None
        fig = built[0]
        try:
            path = Path(sweep_dir) / f"report_{re.sub(r'[^A-Za-z0-9_.-]+', '_', param)}.png"
            # grown to hold the legend and title; written by rename, never through a link planted at the name
            atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
        finally:
            plt.close(fig)
    return path


def plot_all(sweep_dir: Path, params: list[str], rows: list[ConfigRow], metrics: list[str],
             fixed: list[tuple[str, str, str]] | None = None) -> list[Path]:
    paths = [plot_parameter(sweep_dir, p, params, rows, metrics, fixed) for p in params]
    return [p for p in paths if p is not None]
