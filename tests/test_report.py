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
    # The baseline (the first configuration) and x=2 share one seed: its difference, no interval, so no bold.
    assert first.is_baseline and second.comparisons["acc"].diff == 10.0
    assert second.comparisons["acc"].verdict == "n/a (1 seed)" and not second.comparisons["acc"].has_interval
    assert first.bold == set() and second.bold == set()
    table = markdown_table(params, rows, ["acc", "train/loss"])
    assert "| 1 (baseline) | 2 | 2/2 | 82.00 ± 2.83 | 1.50 ± 0.71 |" in table
    assert "| 2 | 1 | 1/2 (3: failed) | 90.00 | 3.00 |" in table


# Hand-made per-seed numbers (seeds 0-3): the baseline, a configuration better on every seed, and one
# that moves both ways (its interval contains 0).
BASE = [80.1, 81.3, 79.8, 80.6]
BETTER = [81.0, 82.5, 80.9, 81.2]
NOISY = [81.1, 80.2, 80.3, 81.0]


def _jobs(configs: dict, metric: str = "acc", seeds: dict | None = None) -> list[Job]:
    jobs = []
    for method, values in configs.items():
        for seed, value in zip((seeds or {}).get(method, range(len(values))), values):
            jobs.append(Job(str(len(jobs)), {"method": method, "seed": seed}, metrics={metric: value}))
    return jobs


def test_paired_difference_interval_and_verdict_match_scipy():
    from scipy import stats

    _, rows = summarize(_jobs({"base": BASE, "better": BETTER, "noisy": NOISY}), ["acc"])
    base, better, noisy = rows
    assert base.is_baseline and base.comparisons["acc"].verdict == "baseline"  # default: the first configuration
    for row, values in ((better, BETTER), (noisy, NOISY)):
        c = row.comparisons["acc"]
        reference = stats.ttest_rel(values, BASE)
        low, high = reference.confidence_interval(0.95)
        diffs = [a - b for a, b in zip(values, BASE)]
        mean = sum(diffs) / 4
        half = stats.t.ppf(0.975, 3) * math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3) / 2
        assert (c.test, c.n_pairs) == ("paired", 4)
        assert c.diff == pytest.approx(mean)
        assert (c.low, c.high) == (pytest.approx(low), pytest.approx(high))
        assert (c.low, c.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
        assert (reference.pvalue < 0.05) == (c.verdict != "within noise")
    assert better.comparisons["acc"].verdict == "better" and better.comparisons["acc"].low > 0
    assert noisy.comparisons["acc"].verdict == "within noise"
    assert noisy.comparisons["acc"].low < 0 < noisy.comparisons["acc"].high
    assert better.best == {"acc"} and better.bold == {"acc"} and noisy.bold == base.bold == set()


def test_unpaired_seeds_use_welch_and_common_seeds_are_paired():
    from scipy import stats

    other = [82.0, 83.5, 81.0]
    _, (_, row) = summarize(_jobs({"base": BASE, "other": other}, seeds={"other": [10, 11, 12]}), ["acc"])
    c = row.comparisons["acc"]
    low, high = stats.ttest_ind(other, BASE, equal_var=False).confidence_interval(0.95)
    assert (c.test, c.n_pairs, c.n, c.n_base) == ("welch", 0, 3, 4)
    assert c.diff == pytest.approx(sum(other) / 3 - sum(BASE) / 4)
    assert (c.low, c.high) == (pytest.approx(low), pytest.approx(high))
    assert c.verdict == ("better" if low > 0 else "within noise")

    # Seeds 1, 2, 3 in common (seed 7 only in the configuration): paired over those three.
    _, (_, row) = summarize(_jobs({"base": BASE, "other": [*other, 50.0]}, seeds={"other": [1, 2, 3, 7]}), ["acc"])
    c = row.comparisons["acc"]
    low, high = stats.ttest_rel(other, BASE[1:]).confidence_interval(0.95)
    assert (c.test, c.n_pairs) == ("paired", 3) and c.diff == pytest.approx((sum(other) - sum(BASE[1:])) / 3)
    assert (c.low, c.high) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("metric", ["train/loss", "eval/ood/fpr95"])
def test_verdict_direction_for_losses_and_fpr(metric):
    higher = [b + 0.5 + 0.1 * i for i, b in enumerate(BASE)]  # higher on every seed
    lower = [b - 0.5 - 0.1 * i for i, b in enumerate(BASE)]
    _, (_, up, down) = summarize(_jobs({"base": BASE, "up": higher, "down": lower}, metric=metric), [metric])
    assert up.comparisons[metric].diff > 0 and up.comparisons[metric].verdict == "worse"
    assert down.comparisons[metric].diff < 0 and down.comparisons[metric].verdict == "better"
    assert down.bold == {metric} and up.bold == set()
    _, (_, up) = summarize(_jobs({"base": BASE, "up": higher}), ["acc"])  # an accuracy: higher is better
    assert up.comparisons["acc"].verdict == "better"


def test_one_seed_has_no_interval_and_a_single_configuration_no_bold():
    _, (_, other) = summarize(_jobs({"base": [80.0], "other": [85.0]}), ["acc"])
    c = other.comparisons["acc"]
    assert c.diff == 5.0 and c.verdict == "n/a (1 seed)" and math.isnan(c.low) and math.isnan(c.high)
    assert other.best == {"acc"} and other.bold == set()
    _, (only,) = summarize(_jobs({"base": BASE}), ["acc"])  # nothing swept but seeds
    assert only.is_baseline and only.best == {"acc"} and only.bold == set()
    assert "**" not in markdown_table([], [only], ["acc"])


# ---- fake run dirs: the files a job leaves, read back through the CLI ----

PUBLISHED = """published:
  value: 84.26
  metric: linear/top1
  protocol: "linear probe, 100 epochs, ResNet-18, CIFAR-10 test set"
  source: "Chuang et al. 2020, Table 1"
"""


def write_run(sweep, name: str, overrides: dict, final: dict, config: str = "published: null\n",
              compute: dict | None = None, epochs: list | None = None):
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\ntrainer:\n  epochs: 1\n" + config)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    history = {"init": {}, "epochs": epochs or [], "final": final}
    if compute is not None:
        history["compute"] = compute
    (run / "metrics.json").write_text(json.dumps(history))
    return run


def write_sweep(sweep, configs: dict, **kwargs) -> None:
    for method, values in configs.items():
        for seed, value in enumerate(values):
            write_run(sweep, str(len(list(sweep.iterdir()))), {"method": method, "seed": seed},
                      {"linear/top1": value}, **kwargs)


def read_csv(path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_baseline_chosen_with_the_option_and_by_default(tmp_path):
    write_sweep(tmp_path, {"simclr": BASE, "dcl": BETTER, "hcl": NOISY})
    assert report_main([str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["method"], r["baseline"], r["linear/top1 verdict"]) for r in rows] == [
        ("simclr", "True", "baseline"), ("dcl", "False", "better"), ("hcl", "False", "within noise")]
    assert [r["seeds"] for r in rows] == ["4", "4", "4"]
    assert "| dcl | 4 | 4/4 | **81.40 ± 0.74** |" in (tmp_path / "report.md").read_text()

    assert report_main([str(tmp_path), "--baseline", "method=dcl"]) == 0
    rows = {r["method"]: r for r in read_csv(tmp_path / "report.csv")}
    assert rows["dcl"]["baseline"] == "True" and rows["dcl"]["linear/top1 verdict"] == "baseline"
    simclr = rows["simclr"]
    assert (simclr["linear/top1 verdict"], simclr["linear/top1 test"], simclr["linear/top1 n_pairs"]) == (
        "worse", "paired", "4")
    assert float(simclr["linear/top1 diff"]) == pytest.approx(-0.95)
    assert float(simclr["linear/top1 ci_low"]) == pytest.approx(-1.3709980742298555)  # scipy ttest_rel, by hand
    assert float(simclr["linear/top1 ci_high"]) == pytest.approx(-0.5290019257701573)
    assert rows["hcl"]["linear/top1 verdict"] == "within noise"
    markdown = (tmp_path / "report.md").read_text()
    assert "Baseline: `method=dcl`" in markdown and "paired t-interval" in markdown and "95%" in markdown
    assert "| simclr | linear/top1 | -0.95 | [-1.37, -0.53] | paired t, n=4 | worse |" in markdown
    # The baseline has the best mean, but hcl is within noise of it: not bold.
    assert "| dcl (baseline) | 4 | 4/4 | 81.40 ± 0.74 |" in markdown


@pytest.mark.parametrize("spec, named", [
    (["method=moco"], "--baseline method=moco matches no configuration"),
    (["sampler=ring"], "'sampler' is not a swept parameter of this sweep (swept: method)"),
    (["simclr"], "--baseline 'simclr' is not key=value"),
])
def test_baseline_not_found_names_the_value_and_the_configurations(tmp_path, capsys, spec, named):
    write_sweep(tmp_path, {"simclr": BASE[:2], "dcl": BETTER[:2]})
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), "--baseline", *spec])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "the configurations are: method=simclr; method=dcl" in err


def test_baseline_with_two_swept_values(tmp_path):
    for number, (method, tau, seed) in enumerate([(m, t, s) for m in ("dcl", "hcl") for t in (0, 0.1) for s in (0, 1)]):
        write_run(tmp_path, str(number), {"method": method, "sampler.tau_plus": tau, "seed": seed},
                  {"linear/top1": 80.0 + number})
    with pytest.raises(SystemExit):  # two configurations have method=hcl
        report_main([str(tmp_path), "--baseline", "method=hcl"])
    assert report_main([str(tmp_path), "--baseline", "method=hcl", "sampler.tau_plus=0.10"]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["method"], r["sampler.tau_plus"]) for r in rows if r["baseline"] == "True"] == [("hcl", "0.1")]


def test_published_number_next_to_the_measured_one(tmp_path):
    write_sweep(tmp_path, {"dcl": [84.0, 84.5]}, config=PUBLISHED)
    write_sweep(tmp_path, {"simclr": [83.0, 83.1]})  # no recipe: published: null
    assert report_main([str(tmp_path), "--baseline", "method=simclr"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| method | seeds | jobs ok | linear/top1 | linear/top1 published |" in markdown
    assert "| dcl | 2 | 2/2 | 84.25 ± 0.35 | 84.26 [1] |" in markdown
    assert "| simclr (baseline) | 2 | 2/2 | 83.05 ± 0.07 | - |" in markdown
    assert ("1. 84.26 linear/top1 — linear probe, 100 epochs, ResNet-18, CIFAR-10 test set; "
            "source: Chuang et al. 2020, Table 1") in markdown
    rows = {r["method"]: r for r in read_csv(tmp_path / "report.csv")}
    assert rows["dcl"]["linear/top1 published"] == "84.26" and rows["simclr"]["linear/top1 published"] == ""
    assert rows["dcl"]["published_source"] == "Chuang et al. 2020, Table 1"


@pytest.mark.parametrize("block, problem", [
    ("published:\n  value: ${oc.env:CL_SECRET}\n  metric: linear/top1\n",
     "value must be a finite number (percent), not '${oc.env:CL_SECRET}'"),
    ("published:\n  value: eighty\n  metric: linear/top1\n", "value must be a finite number (percent), not 'eighty'"),
    ("published:\n  value: 84.3\n", "metric must be a suite metric key such as linear/top1, not None"),
    ("published:\n  vaule: 84.3\n  value: 84.3\n  metric: linear/top1\n", "unknown key(s) vaule"),
    ("published: [84.3, linear/top1]\n", "published must be a mapping with keys value, metric, protocol, source"),
    ("published: {value: [84.3\n", "unreadable config.yaml"),
])
def test_malformed_published_block_is_reported_not_raised(tmp_path, capsys, monkeypatch, block, problem):
    monkeypatch.setenv("CL_SECRET", "s3cr3t")  # an interpolation must stay text: never resolved
    write_sweep(tmp_path, {"dcl": [84.0, 84.5]}, config=block)
    write_sweep(tmp_path, {"simclr": [83.0, 83.1]})
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "## Published numbers" in markdown and "published |" not in markdown
    assert "- not used: job 0: " in markdown and problem in markdown
    assert "- not used: job 1: " in markdown and "job 2" not in markdown.split("## Published numbers")[1]
    assert problem in capsys.readouterr().out
    assert "s3cr3t" not in markdown
    jobs = read_csv(tmp_path / "report_jobs.csv")
    assert problem in jobs[0]["published_problem"] and jobs[2]["published_problem"] == ""


def test_compute_columns_device_hours_and_images_per_second(tmp_path):
    gpu = {"time/wall_s": 7200.0, "time/images_per_s": 1000.0, "device": "cuda", "processes": 4}
    for seed, wall in enumerate((7200.0, 10800.0)):
        write_run(tmp_path, str(seed), {"method": "simclr", "seed": seed}, {"linear/top1": 80.0 + seed},
                  compute={**gpu, "time/wall_s": wall, "time/images_per_s": 1000.0 + 200 * seed})
    write_run(tmp_path, "2", {"method": "dcl", "seed": 0}, {"linear/top1": 81.0},
              compute={"time/wall_s": 90.0, "time/images_per_s": 50.0, "device": "cpu", "processes": 1})
    # A run from before the compute record: throughput from its epoch records, hours unknown.
    write_run(tmp_path, "3", {"method": "ring", "seed": 0}, {"linear/top1": 82.0},
              epochs=[{"epoch": 1, "epoch_time_s": 10.0, "images_per_s": 100.0},
                      {"epoch": 2, "epoch_time_s": 30.0, "images_per_s": 300.0}])
    assert report_main([str(tmp_path)]) == 0
    rows = {r["method"]: r for r in read_csv(tmp_path / "report.csv")}
    assert float(rows["simclr"]["images_per_s"]) == 1100.0
    assert float(rows["simclr"]["hours"]) == 10.0 and rows["simclr"]["hours_unit"] == "GPU-h"  # (2 + 3) h x 4 / 2
    assert float(rows["dcl"]["hours"]) == 0.025 and rows["dcl"]["hours_unit"] == "CPU-h"
    assert float(rows["ring"]["images_per_s"]) == 250.0 and rows["ring"]["hours"] == "nan"
    markdown = (tmp_path / "report.md").read_text()
    assert "| images/s | hours / run |" in markdown
    assert "| simclr (baseline) | 2 | 2/2 | 80.50 ± 0.71 | 1,100 | 10 GPU-h |" in markdown
    assert "| dcl | 1 | 1/1 | 81.00 | 50 | 0.025 CPU-h |" in markdown
    assert "| ring | 1 | 1/1 | **82.00** | 250 | - |" not in markdown  # one seed: not backed, not bold
    assert "| ring | 1 | 1/1 | 82.00 | 250 | - |" in markdown
    jobs = read_csv(tmp_path / "report_jobs.csv")
    assert [(j["device"], j["processes"], j["time/wall_s"]) for j in jobs] == [
        ("cuda", "4", "7200.0"), ("cuda", "4", "10800.0"), ("cpu", "1", "90.0"), ("", "", "40.0")]


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
    # tau_plus=0 (the first configuration) is the baseline; both seeds pair; the crashed one has no values.
    assert [r["baseline"] for r in rows] == ["True", "False", "False"]
    assert rows[1]["linear/top1 test"] == "paired" and rows[1]["linear/top1 n_pairs"] == "2"
    assert rows[1]["linear/top1 verdict"] in ("better", "worse", "within noise")
    assert rows[2]["linear/top1 verdict"] == "n/a (no values)"
    # The trainer's compute record: images/s and CPU-hours of each run.
    assert all(float(r["images_per_s"]) > 0 and 0 < float(r["hours"]) < 0.05 and r["hours_unit"] == "CPU-h"
               for r in rows[:2])
    compute = json.loads((sweep / "0" / "metrics.json").read_text())["compute"]
    assert compute["device"] == "cpu" and compute["processes"] == 1 and compute["time/wall_s"] > 0
    with (sweep / "report_jobs.csv").open() as f:
        assert [(j["job"], j["status"]) for j in csv.DictReader(f)] == [
            ("0", "ok"), ("1", "ok"), ("2", "ok"), ("3", "ok"), ("4", "failed"), ("5", "failed")]
    markdown = (sweep / "report.md").read_text()
    table = markdown.split("\n## ")[0]
    assert len([line for line in table.splitlines() if line.startswith(("| 0 ", "| 0.1 ", "| 1.5 "))]) == 3
    assert "| 1.5 | 0 | 0/2 (4: failed, 5: failed) | - | - | - | - |" in table
    assert "| 1.5 | linear/top1 | - | - | - | n/a (no values) |" in markdown
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
