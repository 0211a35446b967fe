"""Sweep reports: ``python -m cl_suite.report <sweep dir>`` reads every job's config and metrics and
writes a Markdown and CSV table (mean +- std over seeds, best marked) and PNG plots into the sweep dir.

It reads only files (``.hydra/``, ``metrics.json``, ``eval.json``): no wandb server is involved.
"""
from cl_suite.report.jobs import Job, collect_jobs
from cl_suite.report.table import ConfigRow, summarize, write_tables

__all__ = ["ConfigRow", "Job", "collect_jobs", "summarize", "write_tables"]
