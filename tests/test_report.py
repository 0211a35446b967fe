"""Sweep reports: a real (tiny) multirun on digits through the recipe runner, then its report and the
wandb offline runs of its jobs; plus the table statistics on hand-made jobs."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from cl_suite.report import Job, summarize
from cl_suite.report.__main__ import main as report_main
from cl_suite.report.table import markdown_table
from helpers import ROOT, TINY
from wandb_records import run_contents


def test_table_statistics_best_mark_and_failed_jobs():
    jobs = [Job("0", {"m": "a", "x": 1, "seed": 0}, metrics={"acc": 80.0, "train/loss": 2.0}),
            Job("1", {"m": "a", "x": 1, "seed": 1}, metrics={"acc": 84.0, "train/loss": 1.0}),
            Job("2", {"m": "a", "x": 2, "seed": 0}, metrics={"acc": 90.0, "train/loss": 3.0}),
            Job("3", {"m": "a", "x": 2, "seed": 1}, status="failed", reason="no metrics.json")]
    params, rows = summarize(jobs, ["acc", "train/loss"])
    assert params == ["x"]  # m is constant, seed is the replicate axis
    first, second = rows
    assert first.stats["acc"] == (82.0, pytest.approx(math.sqrt(8.0)), 2)
    assert second.stats["acc"][0] == 90.0 and second.stats["acc"][2] == 1
    assert math.isnan(second.stats["acc"][1])  # one ok seed: no std
    assert second.best == {"acc"} and first.best == {"train/loss"}  # losses: lower is better
    table = markdown_table(params, rows, ["acc", "train/loss"])
    assert "| 1 | 2/2 | 82.00 ± 2.83 | **1.50 ± 0.71** |" in table
    assert "| 2 | 1/2 (3: failed) | **90.00** | 3.00 |" in table


@pytest.mark.slow
def test_tiny_multirun_report_and_wandb_runs(tmp_path):
    """tau_plus in {0, 0.1} x 2 seeds that train, and tau_plus = 1.5, whose jobs crash at start-up:
    the report must show them as failed, not drop them; a job dir that is missing (a killed sweep)
    must show as not run."""
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("logger=")] + ["trainer.eval_at_init=false", "logger=wandb"]
    env = {**os.environ, "PYTHON": sys.executable, "SWEEP_DIR": str(sweep), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline"}
    proc = subprocess.run(["bash", str(ROOT / "multirun" / "study.sh"), "tiny_study", "method=dcl",
                           "sampler.tau_plus=0,0.1,1.5", "seed=0,1", *tiny],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, "the crashing jobs must fail the sweep command"
    assert "sampler.tau_plus=1.5" in proc.stderr, proc.stderr[-3000:]

    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["sampler.tau_plus"] for r in rows] == ["0", "0.1", "1.5"]
    assert [(r["jobs_ok"], r["jobs_total"]) for r in rows] == [("2", "2"), ("2", "2"), ("0", "2")]
    assert all(float(r["linear/top1 mean"]) > 50 and r["linear/top1 n"] == "2" for r in rows[:2])
    assert rows[2]["linear/top1 n"] == "0" and rows[2]["linear/top1 best"] == "False"
    assert any(r["linear/top1 best"] == "True" for r in rows)
    with (sweep / "report_jobs.csv").open() as f:
        assert [(j["job"], j["status"]) for j in csv.DictReader(f)] == [
            ("0", "ok"), ("1", "ok"), ("2", "ok"), ("3", "ok"), ("4", "failed"), ("5", "failed")]
    markdown = (sweep / "report.md").read_text()
    assert len([line for line in markdown.splitlines() if line.startswith(("| 0 ", "| 0.1 ", "| 1.5 "))]) == 3
    assert "| 1.5 | 0/2 (4: failed, 5: failed) | - | - |" in markdown
    assert "| 4 | failed | `sampler.tau_plus=1.5 seed=0` | no metrics.json" in markdown
    plot = sweep / "report_sampler.tau_plus.png"
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report_sampler.tau_plus.png" in markdown

    # A sweep killed before its last job: the grid point without a run dir is reported as not run.
    shutil.rmtree(sweep / "5")
    assert report_main([str(sweep)]) == 0
    with (sweep / "report_jobs.csv").open() as f:
        assert [(j["job"], j["status"]) for j in csv.DictReader(f)][-1] == ("5 (no dir)", "not run")

    # The wandb offline run of a job: group, job type, swept values, summary, embedding snapshot.
    (log,) = (sweep / "1" / "wandb").glob("offline-run-*/run-*.wandb")
    run = run_contents(log)
    final = json.loads((sweep / "1" / "metrics.json").read_text())["final"]
    assert run["group"] == "tiny_study" and run["job_type"] == "pretrain"
    assert run["config"]["sweep"] == {"sampler.tau_plus": 0, "seed": 1}
    assert run["config"]["sampler"]["tau_plus"] == 0 and run["config"]["seed"] == 1
    assert math.isclose(run["summary"]["final/linear/top1"], final["linear/top1"])
    assert math.isclose(run["summary"]["final/knn/top1"], final["knn/top1"])
    assert run["summary"]["embeddings/test/table/_type"] == "table-file"
    assert run["summary"]["embeddings/test/table/nrows"] == 360  # the whole digits test split (< 1000)


def test_optuna_sweeper_config_composes_with_the_search_space():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optional [optuna] extra")
    from hydra import compose, initialize_config_dir

    from helpers import CONF

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=["method=hcl", "hydra/sweeper=tau_plus_beta"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert dict(sweeper.params) == {"sampler.tau_plus": "interval(0.0, 0.2)", "sampler.beta": "interval(0.0, 2.0)"}
