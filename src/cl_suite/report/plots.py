"""One PNG per swept parameter: each metric against that parameter, one line per method (and per value
of the other swept parameters), error bars = the 95% t-interval of the mean over seeds."""
from __future__ import annotations

import math
import re
from pathlib import Path

from cl_suite.report.stats import mean_halfwidth
from cl_suite.report.table import ConfigRow


def _is_numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _line_label(row: ConfigRow, others: list[str], method: str | None) -> str:
    parts = [f"{k}={row.values[k]}" if k != "method" else str(row.values[k]) for k in others]
    if "method" not in others and method:
        parts.insert(0, method)
    return ", ".join(parts) or "all jobs"


def _method_of(row: ConfigRow) -> str | None:
    methods = {job.choices.get("method") for job in row.jobs if job.choices.get("method")}
    return ", ".join(sorted(methods)) or None


def plot_parameter(sweep_dir: Path, param: str, params: list[str], rows: list[ConfigRow],
                   metrics: list[str]) -> Path | None:
    """``report_<param>.png``: one panel per metric; None when no row has a value for any metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [m for m in metrics if any(m in row.stats for row in rows)]
    if not plotted:
        return None
    others = [p for p in params if p != param]
    xs_all = list(dict.fromkeys(row.values[param] for row in rows))
    numeric = _is_numeric(xs_all)
    order = sorted(xs_all) if numeric else xs_all
    position = {repr(x): (x if numeric else i) for i, x in enumerate(order)}
    lines: dict[str, list[ConfigRow]] = {}
    for row in rows:
        lines.setdefault(_line_label(row, others, _method_of(row)), []).append(row)

    fig, axes = plt.subplots(1, len(plotted), figsize=(4.5 * len(plotted), 3.6), squeeze=False)
    try:
        for ax, metric in zip(axes[0], plotted):
            for label, line_rows in lines.items():
                points = sorted(((position[repr(r.values[param])], r.stats[metric]) for r in line_rows
                                 if metric in r.stats), key=lambda p: p[0])
                if not points:
                    continue
                halves = [mean_halfwidth(std, n) for _, (_, std, n) in points]  # NaN: one seed, no bar
                ax.errorbar([p[0] for p in points], [p[1][0] for p in points],
                            yerr=[0.0 if math.isnan(h) else h for h in halves],
                            marker="o", capsize=3, label=label)
            ax.set_xlabel(param)
            ax.set_ylabel(f"{metric} (mean, 95% CI)")
            if not numeric:
                ax.set_xticks(range(len(order)), [str(x) for x in order])
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize="small")
        fig.suptitle(f"{sweep_dir.name}: metric vs {param} (mean; error bars: 95% t-interval over seeds)",
                     fontsize="medium")
        fig.tight_layout()
        path = sweep_dir / f"report_{re.sub(r'[^A-Za-z0-9_.-]+', '_', param)}.png"
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_all(sweep_dir: Path, params: list[str], rows: list[ConfigRow], metrics: list[str]) -> list[Path]:
    paths = [plot_parameter(sweep_dir, p, params, rows, metrics) for p in params]
    return [p for p in paths if p is not None]
