"""``python -m cl_suite.report <sweep dir> [--metric linear/top1 ...] [--baseline method=simclr ...]
[--seed-key seed]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cl_suite.report.jobs import Job, collect_jobs, drop_repeats
from cl_suite.report.plots import plot_all
from cl_suite.report.table import (BaselineError, MetricError, default_metrics, fixed_settings, markdown_table,
                                   summarize, write_tables)


def argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cl_suite.report`` (tests/test_docs.py parses the documented ones)."""
    parser = argparse.ArgumentParser(prog="python -m cl_suite.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun dir (or a folder of them)")
    parser.add_argument("--metric", action="append", dest="metrics",
                        help="a metric key of metrics.json's final record (linear/top1) or eval/<key> of "
                             "eval.json; repeat for several (default: linear/top1, knn/top1, every eval/*)")
    parser.add_argument("--baseline", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="the configuration every other one is compared with: swept values that all match "
                             "it, e.g. --baseline method=simclr sampler.tau_plus=0 (after the sweep dir; default: "
                             "the first configuration of the grid)")
    parser.add_argument("--seed-key", default="seed", help="the override that only repeats a configuration")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)

    if not args.sweep_dir.is_dir():
        parser.error(f"sweep dir {str(args.sweep_dir)!r} does not exist (or is not a folder)")
    jobs = collect_jobs(args.sweep_dir)
    if not jobs:
        parser.error(f"no job dirs (with .hydra/config.yaml) under {args.sweep_dir}")
    jobs, repeats = drop_repeats(jobs, args.seed_key)
    metrics = args.metrics or default_metrics(jobs)
    try:
        params, rows = summarize(jobs, metrics, args.seed_key, baseline=args.baseline)
    except (BaselineError, MetricError) as err:
        parser.error(str(err))
    plots = plot_all(args.sweep_dir, params, rows, metrics, fixed_settings(jobs, params, args.seed_key))
    paths = write_tables(args.sweep_dir, jobs, params, rows, metrics, plots, args.seed_key, repeats)
    print(markdown_table(params, rows, metrics))
    failed = [job for job in jobs if not job.ok]
    for job in failed:
        print(f"{job.status}: {job.name}  {job.reason}")
    for job in jobs:
        if job.published_error:
            print(f"published number of job {job.name} not used: {job.published_error}")
    if repeats:
        print(repeats_warning(args.sweep_dir, repeats), file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in [*paths.values(), *plots]))
    return 0


def repeats_warning(sweep_dir: Path, repeats: list[tuple[Job, Job]]) -> str:
    """One line: how many jobs ``drop_repeats`` left out, and in which folders."""
    folders: dict[Path, int] = {}
    for job, _ in repeats:
        folder = Path(sweep_dir) / Path(job.name).parent
        folders[folder] = folders.get(folder, 0) + 1
    where = ", ".join(f"{n} in {folder}" for folder, n in folders.items())
    return (f"warning: left out {len(repeats)} jobs that repeat a run with the same settings and seed ({where}); "
            "each (configuration, seed) counts once, as its ok, most recent job (listed in report.md)")


if __name__ == "__main__":
    sys.exit(main())
