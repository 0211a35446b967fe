"""Sweep reports: ``python -m cl_suite.report <sweep dir>`` reads every job's config and metrics and
writes a Markdown and CSV table (mean +- std over seeds; each configuration against a baseline with a
95% t-interval and a verdict; published numbers; images/s and device-hours) and PNG plots into the sweep dir.

It reads only files (``.hydra/``, ``metrics.json``, ``eval.json``): no wandb server is involved. What each
job ran with is its resolved config and group choices (``jobs.job_settings``), read as plain data; the swept
parameters are the settings that differ between jobs (``table.analyse_settings``), whatever set them.
"""
from cl_suite.report.jobs import Job, collect_jobs
from cl_suite.report.stats import Comparison
from cl_suite.report.table import BaselineError, ConfigRow, summarize, write_tables

__all__ = ["BaselineError", "Comparison", "ConfigRow", "Job", "collect_jobs", "summarize", "write_tables"]
