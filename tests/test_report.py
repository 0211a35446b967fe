"""Sweep reports: a real (tiny) multirun on digits through the recipe runner, then its report and the
wandb offline runs of its jobs; plus the table statistics on hand-made jobs."""
import csv
import json
import math
import os
import re
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


# What train.py's Hydra composes without overrides (conf/train.yaml's defaults), and the sampler a
# method preset picks (conf/method/dcl.yaml: `override /sampler: debiased`).
DEFAULT_CHOICES = {"dataset": "digits", "backbone": "small_convnet", "sampler": "uniform", "method": "simclr",
                   "optimizer": "sgd", "scheduler": "warmup_cosine", "logger": "wandb", "evaluation": "default",
                   "experiment": None, "debug": None}
PRESET_SAMPLER = {"dcl": "debiased", "hcl": "hard"}


def resolved_record(run, overrides: dict, defaults: dict | None = None) -> tuple[dict, dict]:
    """``(config, choices)`` as a job's ``.hydra/config.yaml`` and ``hydra.yaml`` hold them: ``defaults``
    are settings a recipe or the config gave (``{"method": "dcl", "trainer.epochs": 5}``), the overrides
    win over them; group keys become choices, dotted keys values. Paths, logger group and run name differ
    in every job, as in real runs."""
    settings = {**(defaults or {}), **overrides}
    choices = {**DEFAULT_CHOICES, **{k: v for k, v in settings.items() if k in DEFAULT_CHOICES}}
    if "sampler" not in settings:
        choices["sampler"] = PRESET_SAMPLER.get(choices["method"], "uniform")
    config = {"dataset": {"name": choices["dataset"], "root": "${paths.data_dir}"},
              "backbone": {"_target_": f"cl_suite.models.{choices['backbone']}"},
              "sampler": {"_target_": f"cl_suite.samplers.{choices['sampler']}",
                          **({"tau_plus": 0.1} if choices["sampler"] in ("debiased", "hard") else {})},
              "method": {"_target_": f"cl_suite.methods.{choices['method']}", "temperature": 0.5},
              "optimizer": {"lr": 0.06, "momentum": 0.9},
              "logger": {"group": run.parent.name, "name": run.name, "tags": []},
              "seed": 0, "resume": "auto", "trainer": {"epochs": 1, "batch_size": 256, "progress_bar": False},
              "paths": {"data_dir": "${oc.env:CL_SUITE_DATA,data}", "output_dir": str(run)}}
    for key, value in settings.items():
        if key in DEFAULT_CHOICES:
            continue
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config, choices


def write_run(sweep, name: str, overrides: dict, final: dict, config: str = "published: null\n",
              compute: dict | None = None, epochs: list | None = None, defaults: dict | None = None):
    """A job's run dir: ``.hydra/`` (resolved config, choices, overrides) and metrics.json."""
    import yaml

    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    resolved, choices = resolved_record(run, overrides, defaults)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False) + config)
    hydra = {"hydra": {"run": {"dir": str(run)}, "job": {"name": "train", "num": int(name) if name.isdigit() else 0},
                       "runtime": {"output_dir": str(run), "choices": {**choices, "hydra/launcher": "basic"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
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
    for seed, value in enumerate([84.0, 84.5]):  # the recipe's runs: its method comes from the recipe
        write_run(tmp_path, str(seed), {"experiment": "dcl_stl10", "seed": seed}, {"linear/top1": value},
                  config=PUBLISHED, defaults={"method": "dcl"})
    for seed, value in enumerate([83.0, 83.1]):  # a recipe without a number: published: null
        write_run(tmp_path, str(2 + seed), {"experiment": "simclr_x", "seed": seed}, {"linear/top1": value})
    assert report_main([str(tmp_path), "--baseline", "experiment=simclr_x"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| experiment | seeds | jobs ok | linear/top1 | linear/top1 published |" in markdown
    assert "| dcl_stl10 | 2 | 2/2 | 84.25 ± 0.35 | 84.26 [1] |" in markdown
    assert "| simclr_x (baseline) | 2 | 2/2 | 83.05 ± 0.07 | - |" in markdown
    assert ("1. 84.26 linear/top1 — linear probe, 100 epochs, ResNet-18, CIFAR-10 test set; "
            "source: Chuang et al. 2020, Table 1") in markdown
    rows = {r["experiment"]: r for r in read_csv(tmp_path / "report.csv")}
    assert rows["dcl_stl10"]["linear/top1 published"] == "84.26" and rows["simclr_x"]["linear/top1 published"] == ""
    assert rows["dcl_stl10"]["published_source"] == "Chuang et al. 2020, Table 1"


@pytest.mark.parametrize("block, problem", [
    ("published:\n  value: ${oc.env:CL_SECRET}\n  metric: linear/top1\n",
     "value must be a finite number (percent), not '${oc.env:CL_SECRET}'"),
    ("published:\n  value: eighty\n  metric: linear/top1\n", "value must be a finite number (percent), not 'eighty'"),
    ("published:\n  value: 84.3\n", "metric must be a suite metric key such as linear/top1, not None"),
    ("published:\n  value: 84.3\n  metric: ' '\n", "metric must be a suite metric key such as linear/top1, not ' '"),
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
    fixed = markdown.split("## Fixed settings")[1].split("\n## ")[0]
    assert "- sampler: changes with method" in fixed  # hydra.yaml's choices: dcl brings its sampler
    if "unreadable" in problem:  # those jobs' config values are unknown, not different
        assert "- trainer.epochs: `1` (unknown for 2 jobs)\n" in fixed and "trainer.epochs: changes" not in fixed
    else:
        assert "- trainer.epochs: `1`\n" in fixed


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


def write_multirun_yaml(sweep, task: list[str]) -> None:
    """The basic sweeper's record of a sweep's grid (``multirun.yaml``)."""
    import yaml

    record = {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                    "params": None},
                        "overrides": {"task": task}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(record))


def two_sweeps(root):
    """``method=simclr,dcl seed=0,1`` (the method an override) and, in another timestamp folder,
    ``sampler.tau_plus=0,0.1 seed=0,1`` on a config whose default method is DCL (no method override);
    the second sweep was killed before its last job."""
    first, second = root / "2026-11-23" / "14-00-00", root / "2026-11-24" / "09-30-00"
    first.mkdir(parents=True), second.mkdir(parents=True)
    write_multirun_yaml(first, ["method=simclr,dcl", "seed=0,1", "trainer.epochs=5"])
    for number, (method, seed) in enumerate([(m, s) for m in ("simclr", "dcl") for s in (0, 1)]):
        write_run(first, str(number), {"method": method, "seed": seed, "trainer.epochs": 5},
                  {"linear/top1": {"simclr": 80.0, "dcl": 82.0}[method] + 0.3 * seed})
    write_multirun_yaml(second, ["sampler.tau_plus=0,0.1", "seed=0,1", "trainer.epochs=5"])
    for number, (tau, seed) in enumerate([(0, 0), (0, 1), (0.1, 0)]):  # job 3 (tau 0.1, seed 1) never ran
        write_run(second, str(number), {"sampler.tau_plus": tau, "seed": seed, "trainer.epochs": 5},
                  {"linear/top1": 81.0 + 10 * tau + 0.3 * seed}, defaults={"method": "dcl"})
    return first, second


def test_folder_of_sweeps_reads_the_method_from_the_resolved_config(tmp_path):
    from cl_suite.report import collect_jobs
    from cl_suite.report.plots import build_figure, series
    from cl_suite.report.table import fixed_settings

    first, second = two_sweeps(tmp_path)
    jobs = collect_jobs(tmp_path)
    assert [(j.name, j.status, j.value("method")) for j in jobs][-1] == (
        "2026-11-24/09-30-00/3 (no dir)", "not run", "dcl")  # the killed sweep's grid point, method from its twin
    params, rows = summarize(jobs, ["linear/top1"])
    # The method is swept (an override in one sweep, a default in the other); the sampler only follows it;
    # paths, logger group/name and the run dirs differ in every job but are no settings; the seed replicates.
    assert params == ["method", "sampler.tau_plus"]
    # dcl 0.1: one configuration, each seed once. method=dcl's default tau_plus is 0.1, so the second
    # sweep's seed 0 repeats the first's (the more recent is used) and its seed 1, never run, the first's.
    assert [(r.values["method"], r.values["sampler.tau_plus"], [j.name for j in r.jobs]) for r in rows] == [
        ("simclr", None, ["2026-11-23/14-00-00/0", "2026-11-23/14-00-00/1"]),
        ("dcl", 0.1, ["2026-11-24/09-30-00/2", "2026-11-23/14-00-00/3"]),
        ("dcl", 0, ["2026-11-24/09-30-00/0", "2026-11-24/09-30-00/1"])]

    assert report_main([str(tmp_path)]) == 0
    csv_rows = read_csv(tmp_path / "report.csv")
    assert [(r["method"], r["sampler.tau_plus"], r["jobs_total"]) for r in csv_rows] == [
        ("simclr", "", "2"), ("dcl", "0.1", "2"), ("dcl", "0", "2")]
    markdown = (tmp_path / "report.md").read_text()
    assert "| simclr | - (baseline) | 2 | 2/2 | 80.15 ± 0.21 |" in markdown
    assert "| dcl | 0 | 2 | 2/2 | 81.15 ± 0.21 |" in markdown
    assert "None" not in markdown.split("## Fixed settings")[0]
    assert [(j["job"], j["status"]) for j in read_csv(tmp_path / "report_jobs.csv")][-2:] == [
        ("2026-11-23/14-00-00/2", "repeat"), ("2026-11-24/09-30-00/3 (no dir)", "repeat")]
    assert "| 2026-11-24/09-30-00/3 (no dir) | not run | 2026-11-23/14-00-00/3 |" in markdown

    # What the plots are given: the method on the x axis (never None), tau_plus without SimCLR.
    assert {x for points in series("method", params, rows, "linear/top1").values() for x, *_ in points} == {
        "simclr", "dcl"}
    by_tau = series("sampler.tau_plus", params, rows, "linear/top1")
    assert list(by_tau) == ["dcl"]
    assert [p[:2] for p in by_tau["dcl"]] == [(0, pytest.approx(81.15)), (0.1, pytest.approx(82.15))]
    fig, axes, _ = build_figure("method", params, rows, ["linear/top1"], fixed_settings(jobs, params))
    try:
        fig.canvas.draw()
        assert [t.get_text() for t in axes[0].get_xticklabels()] == ["simclr", "dcl"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    for name in ("report_method.png", "report_sampler.tau_plus.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fixed_settings_are_listed_and_stay_text(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_SECRET", "s3cr3t")  # an interpolation of a run's record is never resolved
    for number, (tau, seed) in enumerate([(t, s) for t in (0, 0.1) for s in (0, 1, 2)]):
        write_run(tmp_path, str(number), {"method": "dcl", "sampler.tau_plus": tau, "seed": seed,
                                          "dataset.name": "${oc.env:CL_SECRET}"},
                  {"linear/top1": 80.0 + tau + seed}, defaults={"dataset": "cifar10", "backbone": "resnet18",
                                                                   "trainer.epochs": 200, "optimizer.lr": 0.3})
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    fixed = markdown.split("## Fixed settings")[1].split("\n## ")[0]
    for line in ("- method: `dcl`", "- dataset: `cifar10`", "- backbone: `resnet18`", "- sampler: `debiased`",
                 "- optimizer: `sgd`", "- scheduler: `warmup_cosine`", "- trainer.epochs: `200`",
                 "- trainer.batch_size: `256`", "- optimizer.lr: `0.3`", "- dataset.name: `${oc.env:CL_SECRET}`",
                 "- seeds: 0, 1, 2"):
        assert line + "\n" in fixed, (line, fixed)
    for absent in ("experiment", "debug", "logger", "paths", "output_dir", "tau_plus", "progress_bar", "resume"):
        assert absent not in fixed
    assert "s3cr3t" not in markdown
    assert "Swept: sampler.tau_plus (" in markdown


def test_single_seed_sweeps_never_bold(tmp_path):
    from cl_suite.report import collect_jobs

    # One seed per configuration, however large the difference.
    single = tmp_path / "single"
    single.mkdir()
    write_sweep(single, {"simclr": [70.0], "dcl": [90.0], "hcl": [60.0]})
    assert report_main([str(single)]) == 0
    rows = read_csv(single / "report.csv")
    assert [r["linear/top1 best"] for r in rows] == ["False", "True", "False"]
    assert "**" not in (single / "report.md").read_text().split("## ")[0].split("| method")[1]
    # The same single-seed sweep run twice into one folder: the second only repeats the first (same
    # settings, same seed), so each configuration still has one job and one seed, never an interval.
    twice = tmp_path / "twice"
    for stamp in ("10-00-00", "11-00-00"):
        (twice / stamp).mkdir(parents=True)
        write_sweep(twice / stamp, {"simclr": [70.0], "dcl": [90.0]})
    _, rows = summarize(collect_jobs(twice), ["linear/top1"])
    assert [[j.name for j in r.jobs] for r in rows] == [["11-00-00/0"], ["11-00-00/1"]]
    assert rows[1].best == {"linear/top1"} and rows[1].comparisons["linear/top1"].verdict == "n/a (1 seed)"
    assert all(r.bold == set() for r in rows)
    # Jobs whose settings are not all known are never taken for repeats: the same seed twice in a row
    # still must not pass for certainty (identical numbers, a zero-width interval).
    jobs = collect_jobs(twice)
    for job in jobs:
        job.settings_complete = False
    _, rows = summarize(jobs, ["linear/top1"])
    assert [len(r.jobs) for r in rows] == [2, 2] and rows[1].best == {"linear/top1"}
    assert rows[1].comparisons["linear/top1"].verdict == "n/a (no spread)"  # a zero-width interval: no evidence
    assert all(r.bold == set() for r in rows)


def test_plot_title_labels_and_legend_outside_the_axes(tmp_path):
    import matplotlib.pyplot as plt

    from cl_suite.report import collect_jobs
    from cl_suite.report.plots import axis_label, build_figure, plot_title
    from cl_suite.report.table import fixed_settings

    assert axis_label("linear/top1") == "linear top-1 accuracy (%)"
    assert axis_label("knn/top5") == "knn top-5 accuracy (%)"
    assert axis_label("eval/retrieval/mAP") == "eval/retrieval/mAP (%)"
    assert axis_label("eval/ood/fpr95").endswith("(%)") and axis_label("eval/ood/auroc").endswith("(%)")
    assert axis_label("train/loss") == "train/loss"

    sweep = tmp_path / "multirun" / "tau_plus" / "2026-11-23_14-00-00"
    sweep.mkdir(parents=True)
    for number, (method, tau, seed) in enumerate([(m, t, s) for m in ("dcl", "hcl") for t in (0, 0.1)
                                                  for s in (0, 1)]):
        write_run(sweep, str(number), {"method": method, "sampler.tau_plus": tau, "seed": seed},
                  {"linear/top1": 80.0 + number, "knn/top1": 70.0 + number, "train/loss": 5.0 - 0.1 * number})
    jobs = collect_jobs(sweep)
    metrics = ["linear/top1", "knn/top1", "train/loss"]
    params, rows = summarize(jobs, metrics)
    fixed = fixed_settings(jobs, params)
    title = plot_title(metrics, "sampler.tau_plus", params, fixed)
    assert title == ("linear/top1, knn/top1, train/loss vs sampler.tau_plus, one line per method\n"
                     "digits, small_convnet, 1 epochs; mean over seeds, error bars: 95% t-interval")
    assert "digits, small_convnet, 1 epochs, stopped at step 2;" in plot_title(
        metrics, "sampler.tau_plus", params, fixed + [("trainer.max_steps", "2", "")])  # a run cut short says so
    fig, axes, legend = build_figure("sampler.tau_plus", params, rows, metrics, fixed)
    try:
        assert fig._suptitle.get_text().split() == title.split()  # wrapped to the figure's width
        assert "2026" not in title and "tau_plus/" not in title
        assert [ax.get_ylabel() for ax in axes] == ["linear top-1 accuracy (%)", "knn top-1 accuracy (%)",
                                                     "train/loss"]
        assert [t.get_text() for t in legend.get_texts()] == ["dcl", "hcl"]
        fig.canvas.draw()
        box = legend.get_window_extent()
        for ax in axes:  # the legend covers no panel
            assert not box.overlaps(ax.get_window_extent())
    finally:
        plt.close(fig)
    assert report_main([str(sweep)]) == 0
    assert (sweep / "report_sampler.tau_plus.png").is_file()


@pytest.mark.slow
def test_tiny_multirun_report_and_wandb_runs(tmp_path):
    """tau_plus in {0, 0.1} x 2 seeds that train, and tau_plus = 1.5, whose jobs are refused at start-up:
    the report must show them as failed with the reason, not drop them; a job dir that is missing (a killed sweep)
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
    assert "| 4 | failed | `sampler.tau_plus=1.5 seed=0` | refused at start-up: sampler.tau_plus=1.5" in markdown
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
    assert run["group"] == f"tiny_study-{sweep.name}" and run["job_type"] == "pretrain"  # the sweep folder's group
    assert run["config"]["sweep"] == {"sampler.tau_plus": 0, "seed": 1}
    assert run["config"]["sampler"]["tau_plus"] == 0 and run["config"]["seed"] == 1
    assert math.isclose(run["summary"]["final/linear/top1"], final["linear/top1"])
    assert math.isclose(run["summary"]["final/knn/top1"], final["knn/top1"])
    assert math.isclose(run["summary"]["linear/top1"], final["linear/top1"])  # plain keys: the final numbers
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


@pytest.mark.slow
def test_an_optuna_search_runs_its_trials_and_the_report_reads_them(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optional [optuna] extra")
    import yaml

    from helpers import run_cli

    sweep = tmp_path / "sweep"
    proc = run_cli("train.py", ["-m", "method=hcl", "hydra/sweeper=tau_plus_beta", "hydra.sweeper.n_trials=3",
                                "debug=fast", "logger=none", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    finals, searched = [], []
    for job in ("0", "1", "2"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        finals.append(metrics["final"]["linear/top1"])
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        values = dict(o.split("=", 1) for o in overrides if o.startswith("sampler."))
        searched.append((float(values["sampler.tau_plus"]), float(values["sampler.beta"])))
        sampler = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["sampler"]
        assert (sampler["tau_plus"], sampler["beta"]) == searched[-1]  # the trial trained with what was asked
    assert all(0 <= tau <= 0.2 and 0 <= beta <= 2 for tau, beta in searched) and len(set(searched)) == 3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(finals))  # the objective is train.py's final linear top-1
    assert report_main([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert len(rows) == 3 and {"sampler.tau_plus", "sampler.beta"} <= set(rows[0])


def test_list_valued_settings_are_grouped_compared_and_plotted(tmp_path, capsys):
    """A sweep of a list-valued setting (``'method.projector_hidden_dims=[64],[128]'``) and, in the same
    folder, runs with a nested list the others lack (``method.class_groups=[[0, 1], [2, 3]]``): lists
    group, compare, name a baseline, plot and print like any other value (they crashed the report)."""
    from cl_suite.report import collect_jobs
    from cl_suite.report.plots import build_figure, series, x_values

    runs = [([64], None), ([128], None), ([64], [[0, 1], [2, 3]])]
    for number, ((dims, groups), seed) in enumerate([(r, s) for r in runs for s in (0, 1)]):
        overrides = {"method.projector_hidden_dims": dims, "optimizer.betas": [0.9, 0.999], "seed": seed}
        if groups is not None:
            overrides["method.class_groups"] = groups
        write_run(tmp_path, str(number), overrides, {"linear/top1": 80.0 + dims[0] / 64 + 2 * number + seed})
    params, rows = summarize(collect_jobs(tmp_path), ["linear/top1"])
    assert params == ["method.projector_hidden_dims", "method.class_groups"]
    assert [len(r.jobs) for r in rows] == [2, 2, 2]
    assert x_values(rows, "method.projector_hidden_dims") == [(64,), (128,)]
    assert list(series("method.projector_hidden_dims", params, rows, "linear/top1")) == [
        "simclr, no method.class_groups", "simclr, method.class_groups=[[0, 1], [2, 3]]"]
    fig, axes, _ = build_figure("method.projector_hidden_dims", params, rows, ["linear/top1"])
    try:
        fig.canvas.draw()
        assert [t.get_text() for t in axes[0].get_xticklabels()] == ["[64]", "[128]"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)

    assert report_main([str(tmp_path), "--baseline", "method.class_groups=[[0,1],[2,3]]"]) == 0
    csv_rows = read_csv(tmp_path / "report.csv")
    assert [(r["method.projector_hidden_dims"], r["method.class_groups"], r["baseline"]) for r in csv_rows] == [
        ("[64]", "", "False"), ("[128]", "", "False"), ("[64]", "[[0, 1], [2, 3]]", "True")]
    assert csv_rows[0]["linear/top1 test"] == "paired" and csv_rows[0]["linear/top1 n_pairs"] == "2"
    markdown = (tmp_path / "report.md").read_text()
    assert "| [128] | - | 2 | 2/2 | 87.50 ± 2.12 |" in markdown
    # every seed's difference is the same here: a zero-width interval, no verdict and no bold
    assert "| [64] | [[0, 1], [2, 3]] (baseline) | 2 | 2/2 | 90.50 ± 2.12 |" in markdown
    assert "| [64] | - | linear/top1 | -8.00 | [-8.00, -8.00] | paired t, n=2 | n/a (no spread) |" in markdown
    assert "- optimizer.betas: `[0.9, 0.999]`\n" in markdown  # the same list in every job: a fixed setting
    assert "(64,)" not in markdown and "[64]" in capsys.readouterr().out
    jobs = read_csv(tmp_path / "report_jobs.csv")
    assert [j["method.projector_hidden_dims"] for j in jobs] == ["[64]", "[64]", "[128]", "[128]", "[64]", "[64]"]
    for name in ("report_method.projector_hidden_dims.png", "report_method.class_groups.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_valued_overrides_of_hand_made_jobs():
    jobs = [Job(str(i), {"dims": dims, "seed": seed}, metrics={"acc": 80.0 + i})
            for i, (dims, seed) in enumerate([([64], 0), ([64], 1), ([128, 64], 0), ([128, 64], 1)])]
    params, rows = summarize(jobs, ["acc"])
    from cl_suite.report.plots import x_values

    assert params == ["dims"] and [r.label(params) for r in rows] == ["dims=[64]", "dims=[128, 64]"]
    assert x_values(rows, "dims") == [(64,), (128, 64)]
    assert rows[1].comparisons["acc"].test == "paired"


@pytest.mark.parametrize("asked, named", [
    (["foo/bar"], "--metric foo/bar: no job has this metric"),
    (["linear/top1", "linaer/top1"], "--metric linaer/top1: no job has this metric (did you mean linear/top1?)"),
    (["foo/bar", "eval/x"], "--metric foo/bar, eval/x: no job has these metrics"),
])
def test_a_metric_no_job_has_is_an_error_naming_it_and_the_metrics_there_are(tmp_path, capsys, asked, named):
    write_sweep(tmp_path, {"simclr": BASE[:2], "dcl": BETTER[:2]})
    with pytest.raises(SystemExit) as exit_:
        report_main([str(tmp_path), *[a for metric in asked for a in ("--metric", metric)]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "the jobs have: linear/top1" in err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "report.csv").exists()


def test_a_sweep_run_twice_into_one_folder_counts_each_seed_once(tmp_path, capsys):
    """The same ``method=simclr,dcl seed=0,1`` sweep run twice under multirun/: each (configuration, seed)
    is one run, not two. The most recent ok job of each is used (the older sweep's DCL seed 1, whose rerun
    crashed); the others are left out with a warning, and listed."""
    import time

    older, newer = tmp_path / "multirun" / "2026-11-23" / "14-00-00", tmp_path / "multirun" / "2026-11-24" / "09-00-00"
    for sweep in (older, newer):
        sweep.mkdir(parents=True)
    write_sweep(older, {"simclr": [70.0, 71.0], "dcl": [60.0, 84.0]})
    write_sweep(newer, {"simclr": BASE[:2], "dcl": [81.0, 0.0]})
    (newer / "3" / "metrics.json").unlink()  # the rerun of dcl seed 1 crashed
    for run in older.iterdir():  # finished a day before the rerun
        for path in (run / "metrics.json", run / ".hydra" / "config.yaml"):
            if path.is_file():
                os.utime(path, (time.time() - 86400,) * 2)
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert ("warning: left out 4 jobs that repeat a run with the same settings and seed (3 in "
            f"{older}, 1 in {newer})") in err
    rows = {r["method"]: r for r in read_csv(tmp_path / "report.csv")}
    assert [(r["seeds"], r["jobs_total"]) for r in rows.values()] == [("2", "2"), ("2", "2")]
    assert float(rows["simclr"]["linear/top1 mean"]) == pytest.approx((BASE[0] + BASE[1]) / 2)
    assert float(rows["dcl"]["linear/top1 mean"]) == pytest.approx((81.0 + 84.0) / 2)
    assert (rows["dcl"]["linear/top1 test"], rows["dcl"]["linear/top1 n_pairs"]) == ("paired", "2")
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith(f"# Sweep report: {tmp_path}\n\n4 jobs: 4 ok, 0 failed or not run; 4 repeats left out")
    assert "- seeds: 0, 1\n" in markdown and "## Failed jobs" not in markdown
    repeats = markdown.split("## Repeats left out")[1].split("\n## ")[0]
    assert "| multirun/2026-11-23/14-00-00/0 | ok | multirun/2026-11-24/09-00-00/0 |" in repeats
    assert "| multirun/2026-11-24/09-00-00/3 | failed | multirun/2026-11-23/14-00-00/3 |" in repeats
    jobs = {j["job"]: j for j in read_csv(tmp_path / "report_jobs.csv")}
    assert len(jobs) == 8 and sorted(j["status"] for j in jobs.values()).count("repeat") == 4
    assert jobs["multirun/2026-11-23/14-00-00/3"]["status"] == "ok"
    assert jobs["multirun/2026-11-24/09-00-00/3"]["reason"] == (
        "failed; same settings and seed as multirun/2026-11-23/14-00-00/3, which is used")


def test_eval_json_counts_only_when_written_at_the_runs_final_step(tmp_path):
    """evaluate.py on a run still training describes an earlier checkpoint: not the run's eval/* numbers."""
    from cl_suite.report.jobs import read_job

    run = write_run(tmp_path, "0", {"method": "simclr", "seed": 0}, {"linear/top1": 50.0, "step": 10})
    (run / "eval.json").write_text(json.dumps({"step": 5, "metrics": {"knn/top1": 40.0}}))
    assert "eval/knn/top1" not in read_job(run, tmp_path).metrics
    (run / "eval.json").write_text(json.dumps({"step": 10, "metrics": {"knn/top1": 45.0}}))
    assert read_job(run, tmp_path).metrics["eval/knn/top1"] == 45.0
    (run / "eval.json").write_text('{"step": 10, "metrics": {"knn/top1": 4')  # cut short: ignored, not raised
    assert "eval/knn/top1" not in read_job(run, tmp_path).metrics


def test_report_files_replace_planted_links_and_job_names_cannot_start_a_line(tmp_path):
    """A sweep folder from someone else: a link at report.md must not make the report write its target
    (a .pth file would run at Python's next start), and a job folder named with a newline stays one line."""
    from cl_suite.report.__main__ import main

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_run(sweep, "0", {"method": "simclr", "seed": 0}, {"linear/top1": 50.0})
    write_run(sweep, "1\nimport os; os.system('x') #", {"method": "simclr", "seed": 1}, {"linear/top1": 52.0})
    victim = tmp_path / "evil.pth"
    (sweep / "report.md").symlink_to(victim)
    (sweep / "report_jobs.csv").symlink_to(tmp_path / "other.pth")
    assert main([str(sweep)]) == 0
    assert not victim.exists() and not (tmp_path / "other.pth").exists()
    assert not (sweep / "report.md").is_symlink()
    assert (sweep / "report.md").stat().st_mode & 0o777 == 0o666 & ~_current_umask()  # not owner-only
    jobs = (sweep / "report_jobs.csv").read_text()
    assert "1\\x0aimport os" in jobs and not any(line.startswith("import os") for line in jobs.splitlines())


def test_a_recipes_published_number_is_not_shown_for_a_run_that_changes_its_setting(tmp_path):
    """experiment=<recipe> dataset=digits: the recipe's number belongs to another data set."""
    from cl_suite.report.jobs import read_job

    run = write_run(tmp_path, "0", {"experiment": "dcl_stl10", "dataset": "digits", "seed": 0},
                    {"linear/top1": 40.0}, config=PUBLISHED, defaults={"method": "dcl"})
    job = read_job(run, tmp_path)
    assert job.published is None and "changes the recipe's setting (dataset=digits)" in job.published_error
    kept = write_run(tmp_path, "1", {"experiment": "dcl_stl10", "dataset.root": "/data", "seed": 0},
                     {"linear/top1": 84.0}, config=PUBLISHED, defaults={"method": "dcl"})
    assert read_job(kept, tmp_path).published["value"] == 84.26  # where the data is does not change it


@pytest.mark.parametrize("content", ['[1, 2]', '{"final": [1]}', '{"final": {}, "epochs": [1, 2]}',
                                     '{"final": {"linear/top1": 1' + '0' * 400 + '}}', '[' * 100000 + ']' * 100000,
                                     '{"final": {"linear/top1": 5', b'\xff\xfe'])
def test_a_crafted_metrics_json_fails_its_job_not_the_report(tmp_path, content):
    from cl_suite.report.jobs import read_job

    run = write_run(tmp_path, "0", {"method": "simclr", "seed": 0}, {"linear/top1": 50.0})
    path = run / "metrics.json"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    job = read_job(run, tmp_path)
    assert not job.metrics.get("linear/top1") or job.status != "ok"


def test_billion_laughs_yaml_and_an_enormous_grid_do_not_hang_the_report(tmp_path):
    """A run record with nested YAML aliases is refused (no file Hydra writes has them); a multirun.yaml
    whose grid is millions of points is not expanded to list the jobs that never ran."""
    from cl_suite.report.jobs import read_job
    from cl_suite.files import load_untrusted_yaml

    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(laughs)
    with pytest.raises(ValueError, match="anchors and aliases are not allowed"):
        load_untrusted_yaml(bomb)
    run = write_run(tmp_path / "sweep", "0", {"method": "simclr", "seed": 0}, {"linear/top1": 50.0})
    (run / ".hydra" / "config.yaml").write_text(laughs)
    assert "anchors and aliases" in read_job(run, tmp_path / "sweep").published_error
    write_multirun_yaml(tmp_path / "sweep", ["seed=range(0,3000)", "method.temperature=range(0,3000)"])
    assert report_main([str(tmp_path / "sweep")]) == 0


def test_a_metric_key_with_a_dollar_sign_is_plotted_as_text(tmp_path):
    """A crafted metrics.json key such as x$\\frac{$ made matplotlib's math parser fail the report."""
    for seed, value in enumerate([1.0, 2.0]):
        write_run(tmp_path, str(seed), {"method": "simclr", "seed": seed}, {"linear/top1": value, "x$\\frac{$": 3.0})
    for seed, value in enumerate([1.5, 2.5]):
        write_run(tmp_path, str(2 + seed), {"method": "dcl", "seed": seed}, {"linear/top1": value, "x$\\frac{$": 3.0})
    assert report_main([str(tmp_path), "--metric", "linear/top1", "--metric", "x$\\frac{$"]) == 0
    assert (tmp_path / "report_method.png").is_file()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_identical_configurations_are_within_noise_not_worse():
    """A configuration equal to the baseline on every seed has the interval [0, 0]: it contains 0."""
    from cl_suite.report.stats import compare

    c = compare({1: 80.0, 2: 81.5, 3: 79.0}, {1: 80.0, 2: 81.5, 3: 79.0}, lower_better=False)
    assert (c.test, c.diff, c.low, c.high, c.verdict) == ("paired", 0.0, 0.0, 0.0, "within noise")
    c = compare({1: 0.5, 2: 0.5}, {3: 0.5, 4: 0.5}, lower_better=True)  # Welch with no spread at all
    assert (c.test, c.low, c.high, c.verdict) == ("welch", 0.0, 0.0, "within noise")


def test_report_text_says_no_spread_is_for_a_non_zero_difference():
    """report.md explains the verdicts: a zero-width interval at 0 (identical results) is `within noise`,
    `n/a (no spread)` only a non-zero one; the text once said every equal difference was `n/a (no spread)`."""
    from cl_suite.report.stats import compare
    from cl_suite.report.table import STATISTICS_TEXT

    assert compare({1: 80.0, 2: 81.0}, {1: 80.0, 2: 81.0}, lower_better=False).verdict == "within noise"
    assert compare({1: 81.0, 2: 82.0}, {1: 80.0, 2: 81.0}, lower_better=False).verdict == "n/a (no spread)"
    assert "the same non-zero difference" in STATISTICS_TEXT and "`within noise`" in STATISTICS_TEXT


def test_error_bar_halfwidth_is_the_95_percent_t_interval_of_the_mean():
    import statistics

    from scipy import stats as scipy_stats

    from cl_suite.report.stats import mean_halfwidth

    xs = [80.1, 81.3, 79.4, 82.0, 80.7]
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=statistics.fmean(xs), scale=scipy_stats.sem(xs))
    assert mean_halfwidth(statistics.stdev(xs), len(xs)) == pytest.approx((high - low) / 2)
    assert math.isnan(mean_halfwidth(1.0, 1)) and math.isnan(mean_halfwidth(math.nan, 3))


def test_identical_differences_over_seeds_give_no_verdict():
    """Two seeds whose differences are the same (accuracies move in steps of one test image) make a t-interval
    of zero width: no evidence either way, so no verdict and no bold; identical results are within noise."""
    from cl_suite.report.stats import NO_SPREAD, compare

    paired = compare({0: 97.5, 1: 98.0}, {0: 97.22, 1: 97.72}, lower_better=False)
    assert paired.test == "paired" and paired.low == paired.high and paired.verdict == NO_SPREAD
    rounded = compare({0: 91.23, 1: 90.57}, {0: 91.22, 1: 90.56}, lower_better=False)  # equal up to float rounding
    assert rounded.low != rounded.high and rounded.verdict == NO_SPREAD
    welch = compare({None: 90.0, "a": 90.0}, {None: 80.0, "b": 80.0}, lower_better=False)  # no common seed
    assert welch.test == "welch" and welch.verdict == NO_SPREAD
    same = compare({0: 90.0, 1: 91.0}, {0: 90.0, 1: 91.0}, lower_better=False)
    assert same.verdict == "within noise"
    assert compare({0: 90.0, 1: 92.0}, {0: 80.0, 1: 81.0}, lower_better=False).verdict == "better"


def test_cells_on_fewer_jobs_than_the_row_say_so_and_recorded_settings_are_not_metrics(tmp_path):
    """evaluate.py run on one job of two: its cell says n=1; the k a low-shot kNN used is not compared."""
    for number, (method, seed) in enumerate([(m, s) for m in ("simclr", "dcl") for s in (0, 1)]):
        final = {"linear/top1": 80.0 + number + seed * 1.5, "step": 10}
        run = write_run(tmp_path, str(number), {"method": method, "seed": seed}, final)
        if seed == 0:
            (run / "eval.json").write_text(json.dumps({"step": 10, "metrics": {
                "lowshot/1pct/top1": 50.0 + number, "lowshot/1pct/knn_k": 5.0}}))
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert "eval/lowshot/1pct/top1" in header and "knn_k" not in markdown
    assert "| simclr (baseline) | 2 | 2/2 | 81.25 ± 1.77 | 50.00 (n=1) |" in markdown


def test_the_report_lists_runs_continued_with_other_settings_and_unfinished_jobs(tmp_path):
    run = write_run(tmp_path, "0", {"method": "simclr", "seed": 0}, {"linear/top1": 80.0})
    history = json.loads((run / "metrics.json").read_text())
    history["setting_changes"] = [{"step": 39, "changes": ["optimizer.lr: 0.06 -> 0.03 applied to the restored "
                                                          "optimizer"]}, "not an entry", {"step": 5}]
    (run / "metrics.json").write_text(json.dumps(history))
    stopped = write_run(tmp_path, "1", {"method": "simclr", "seed": 1}, {},
                        epochs=[{"epoch": 5, "step": 20, "stopped_by_signal": True}])
    (stopped / "checkpoints").mkdir()
    (stopped / "checkpoints" / "last.pt").write_bytes(b"")
    crashed = write_run(tmp_path, "2", {"method": "simclr", "seed": 2}, {}, epochs=[{"epoch": 1, "step": 4}])
    (crashed / "checkpoints").mkdir()
    (crashed / "checkpoints" / "step_000000004.pt").write_bytes(b"")  # a NaN stop, an exception: not a signal
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    section = markdown.split("## Runs continued with other settings")[1]
    assert "- 0, from step 39: optimizer.lr: 0.06 -> 0.03 applied to the restored optimizer\n" in section
    assert section.count("\n- ") == 1  # the malformed entries are skipped
    rows = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| 1 |")
            or line.startswith("| 2 |")}
    assert "unfinished, not lost: stopped by a signal" in rows["| 1"] and "unfinished" not in rows["| 2"]
    assert "ended without final metrics (crashed, or still running)" in rows["| 2"]


# ---- gaps found by mutation testing: each test pins one decision of the table ----

def test_no_bold_against_a_baseline_or_for_a_configuration_with_one_distinct_seed():
    """The same seed twice (jobs whose settings are not all known, so not taken for repeats) gives two
    values but no spread between seeds: Welch's interval may exclude 0, yet neither side has two seeds,
    so the best mean stays plain, whichever side it is on."""
    def jobs(base: list[tuple], other: list[tuple]) -> list[Job]:
        return [Job(f"{method}{i}", {"method": method, "seed": seed}, metrics={"acc": value}, settings_complete=False)
                for method, pairs in (("base", base), ("other", other)) for i, (seed, value) in enumerate(pairs)]

    one_seed, three_seeds = [(0, 80.0), (0, 80.2)], [(0, 90.0), (1, 90.5), (2, 91.0)]
    _, (base, other) = summarize(jobs(one_seed, three_seeds), ["acc"])  # the baseline: one seed, twice
    assert other.comparisons["acc"].verdict == "better" and other.best == {"acc"}
    assert other.bold == set()
    _, (base, other) = summarize(jobs([(0, 80.0), (1, 80.5), (2, 81.0)], [(0, 90.0), (0, 90.2)]), ["acc"])
    assert other.comparisons["acc"].verdict == "better" and other.best == {"acc"}  # the row: one seed, twice
    assert other.bold == set()


def test_the_default_baseline_is_the_first_configuration_with_an_ok_job():
    """A first configuration whose jobs all failed has no numbers to compare with: the next one is the
    baseline, so the others still get a difference and a verdict."""
    jobs = [Job(str(i), {"method": "crashed", "seed": i}, status="failed", reason="no metrics.json") for i in (0, 1)]
    jobs += _jobs({"base": BASE, "better": BETTER})
    for i, job in enumerate(jobs):
        job.name = str(i)
    _, (crashed, base, better) = summarize(jobs, ["acc"])
    assert (crashed.is_baseline, base.is_baseline) == (False, True)
    assert better.comparisons["acc"].verdict == "better" and better.bold == {"acc"}
    assert crashed.comparisons["acc"].verdict == "n/a (no values)"


def test_device_hours_of_a_configuration_run_on_both_gpu_and_cpu_say_mixed():
    """Hours of GPU and CPU runs averaged together are neither GPU-h nor CPU-h: the unit says so."""
    jobs = [Job(str(seed), {"method": "simclr", "seed": seed}, metrics={"acc": 80.0, "time/wall_s": 3600.0 * (1 + seed)},
                device=device, processes=1) for seed, device in enumerate(("cuda", "cpu"))]
    _, (row,) = summarize(jobs, ["acc"])
    assert row.hours == 1.5 and row.hours_unit == "GPU/CPU-h (mixed)"


def test_jobs_of_one_configuration_naming_different_published_numbers_show_none():
    """Two published numbers for one row: neither is shown as its reference, and the report says why."""
    published = {"value": 84.26, "metric": "acc", "protocol": "", "source": ""}
    jobs = [Job(str(seed), {"method": "dcl", "seed": seed}, metrics={"acc": 84.0},
                published={**published, "value": value}) for seed, value in enumerate((84.26, 90.0))]
    params, (row,) = summarize(jobs, ["acc"])
    assert row.published is None
    assert row.published_note == "the jobs of this configuration name 2 different published numbers"
    assert "published |" not in markdown_table(params, [row], ["acc"])


def test_a_published_number_is_only_under_the_metric_it_is_comparable_with(tmp_path):
    """A recipe publishes a linear top-1: the CSV's knn/top1 published cell stays empty, not 84.26."""
    for seed, value in enumerate([84.0, 84.5]):
        write_run(tmp_path, str(seed), {"experiment": "dcl_stl10", "seed": seed},
                  {"linear/top1": value, "knn/top1": value - 5}, config=PUBLISHED, defaults={"method": "dcl"})
    assert report_main([str(tmp_path), "--metric", "linear/top1", "--metric", "knn/top1"]) == 0
    (row,) = read_csv(tmp_path / "report.csv")
    assert (row["linear/top1 published"], row["knn/top1 published"]) == ("84.26", "")
    assert "| 2 | 2/2 | 84.25 ± 0.35 | 84.26 [1] | 79.25 ± 0.35 |" in (tmp_path / "report.md").read_text()


def test_a_sweep_whose_jobs_all_failed_is_still_reported(tmp_path):
    """No job has any metric (every job crashed): the asked metric is no typo (no --metric error), the
    report lists the failed jobs and why."""
    write_sweep(tmp_path, {"simclr": [80.0, 81.0], "dcl": [82.0, 83.0]})
    for run in tmp_path.iterdir():
        (run / "metrics.json").unlink()
    assert report_main([str(tmp_path), "--metric", "linear/top1"]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "4 jobs: 0 ok, 4 failed or not run" in markdown
    assert "| simclr (baseline) | 0 | 0/2 (0: failed, 1: failed) | - |" in markdown
    assert "| 3 | failed | `method=dcl seed=1` | no metrics.json (crashed before its first checkpoint) |" in markdown


def test_folders_of_the_data_are_no_swept_setting(tmp_path):
    """Jobs that read the same data from different folders (``dataset.train_dir``, a ``*_dir`` key) ran
    the same setting: one configuration, not one per folder."""
    for seed in (0, 1):
        write_run(tmp_path, str(seed), {"method": "simclr", "seed": seed, "dataset.train_dir": f"/scratch/node{seed}"},
                  {"linear/top1": 80.0 + seed})
    params, (row,) = summarize(collect_jobs_of(tmp_path), ["linear/top1"])
    assert params == [] and row.stats["linear/top1"][2] == 2


def collect_jobs_of(sweep):
    from cl_suite.report import collect_jobs

    return collect_jobs(sweep)


def test_the_swept_keys_of_a_multirun_are_its_sweeps_not_its_fixed_overrides(tmp_path):
    """What names a sweep job's wandb run and its ``sweep`` config (``current_sweep_job``): the keys the
    command line sweeps (``a=1,2``, ``range``) and those of ``hydra.sweeper.params`` (a sweep kept in a
    config, Optuna's search space), not the fixed overrides every job shares."""
    import yaml

    from cl_suite.sweeps import swept_keys

    write_multirun_yaml(tmp_path, ["method=dcl", "sampler.tau_plus=0,0.1", "seed=range(0,2)", "trainer.epochs=5"])
    assert swept_keys(tmp_path) == ["sampler.tau_plus", "seed"]
    record = yaml.safe_load((tmp_path / "multirun.yaml").read_text())
    record["hydra"]["sweeper"]["params"] = {"sampler.beta": "interval(0.0, 2.0)"}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(record))
    assert swept_keys(tmp_path) == ["sampler.tau_plus", "seed", "sampler.beta"]


def test_a_setting_that_changes_with_the_swept_method_is_not_listed_as_fixed(tmp_path):
    """method=simclr,dcl: the sampler changes with the method (dcl brings debiased), so it is no fixed
    setting of the sweep with the first job's value, only "changes with method"."""
    write_sweep(tmp_path, {"simclr": BASE[:2], "dcl": BETTER[:2]})
    assert report_main([str(tmp_path)]) == 0
    fixed = (tmp_path / "report.md").read_text().split("## Fixed settings")[1].split("\n## ")[0]
    assert "- sampler: changes with method (not a parameter of its own)\n" in fixed
    assert "- sampler: `" not in fixed and "- method: `" not in fixed and "- dataset: `digits`\n" in fixed


def test_the_comparison_table_has_no_line_for_the_baseline_itself():
    """Each configuration against the baseline: the baseline against itself (+0.00) is no comparison."""
    from cl_suite.report.table import comparison_table

    params, rows = summarize(_jobs({"base": BASE, "better": BETTER, "noisy": NOISY}), ["acc"])
    lines = comparison_table(params, rows, ["acc"]).splitlines()[2:]
    assert [line.split(" | ")[0] for line in lines] == ["| better", "| noisy"]


def test_tied_best_means_mark_every_tied_configuration():
    _, rows = summarize(_jobs({"a": [80.0, 82.0], "b": [81.0, 81.0], "c": [79.0, 80.0]}), ["acc"])
    assert [row.best for row in rows] == [{"acc"}, {"acc"}, set()]


def test_evaluate_numbers_of_the_final_checkpoint_are_default_columns(tmp_path):
    """evaluate.py's numbers (eval.json at the run's final step, ``eval/*``) are in the report without
    --metric, after the headline accuracies."""
    for seed in (0, 1):
        run = write_run(tmp_path, str(seed), {"method": "simclr", "seed": seed}, {"linear/top1": 50.0 + seed, "step": 10})
        (run / "eval.json").write_text(json.dumps({"step": 10, "metrics": {"retrieval/mAP": 30.0 + seed}}))
    assert report_main([str(tmp_path)]) == 0
    (row,) = read_csv(tmp_path / "report.csv")
    assert (float(row["linear/top1 mean"]), float(row["eval/retrieval/mAP mean"])) == (50.5, 30.5)
    assert "| seeds | jobs ok | linear/top1 | eval/retrieval/mAP |" in (tmp_path / "report.md").read_text()


def test_a_baseline_without_a_metric_leaves_that_metric_uncompared():
    """The baseline's jobs lack a metric the others have (an older run without kNN): nothing to compare
    with on it, said in its cells, while the other metrics are compared."""
    jobs = _jobs({"base": BASE, "better": BETTER})
    for job in jobs[4:]:
        job.metrics["knn/top1"] = 70.0 + len(job.name)
    _, (base, better) = summarize(jobs, ["acc", "knn/top1"])
    assert "knn/top1" not in base.comparisons and base.comparisons["acc"].verdict == "baseline"
    assert better.comparisons["knn/top1"].verdict == "n/a (no values)" and better.comparisons["acc"].verdict == "better"


def test_a_setting_written_0_or_0_0_is_one_configuration(tmp_path):
    """``sampler.tau_plus=0`` on one command line and ``0.0`` on another (or a config default) are the
    same setting: one configuration with all four seeds, paired with the other configuration's seeds."""
    for number, (tau, seed) in enumerate([(0, 0), (0, 1), (0.1, 0), (0.1, 1), (0.0, 2), (0.0, 3), (0.1, 2), (0.1, 3)]):
        write_run(tmp_path, str(number), {"sampler.tau_plus": tau, "seed": seed}, {"linear/top1": 80.0 + number},
                  defaults={"method": "dcl"})
    assert report_main([str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "report.csv")
    assert [(r["sampler.tau_plus"], r["seeds"]) for r in rows] == [("0", "4"), ("0.1", "4")]
    assert (rows[1]["linear/top1 test"], rows[1]["linear/top1 n_pairs"]) == ("paired", "4")


def test_a_configuration_that_never_ran_does_not_borrow_another_configurations_settings(tmp_path):
    """``method=simclr,hcl seed=0,1`` killed before any hcl job: the hcl grid points have no twin, and
    what the jobs that ran share (SimCLR's uniform sampler) says nothing of HCL, whose preset picks its
    own sampler. The sampler is listed as SimCLR's with a note that it is unknown for the two hcl jobs,
    never as the sampler of every job."""
    write_multirun_yaml(tmp_path, ["method=simclr,hcl", "seed=0,1"])
    for seed in (0, 1):
        write_run(tmp_path, str(seed), {"method": "simclr", "seed": seed}, {"linear/top1": 80.0 + seed})
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| hcl | 0 | 0/2 (2 (no dir): not run, 3 (no dir): not run) |" in markdown
    assert "- sampler: `uniform` (unknown for 2 jobs)\n" in markdown.split("## Fixed settings")[1]


def test_a_job_refused_at_start_up_is_failed_with_the_first_line_of_its_reason(tmp_path):
    """train.py writes refused.txt when it refuses a job's config: the report gives that reason (its first
    line, escaped), not "crashed"."""
    from cl_suite.paths import REFUSED_FILE

    write_sweep(tmp_path, {"simclr": [80.0, 81.0]})
    (tmp_path / "1" / "metrics.json").unlink()
    (tmp_path / "1" / REFUSED_FILE).write_text("sampler.tau_plus=1.5 is not allowed\x1b[2J\nTraceback (most recent)\n")
    assert report_main([str(tmp_path)]) == 0
    jobs = {j["job"]: j for j in read_csv(tmp_path / "report_jobs.csv")}
    assert (jobs["1"]["status"], jobs["1"]["reason"]) == (
        "failed", "refused at start-up: sampler.tau_plus=1.5 is not allowed\\x1b[2J")


def test_the_record_of_an_evaluate_multirun_is_no_grid_of_jobs_not_run(tmp_path):
    """``evaluate.py -m run=a,b`` leaves a multirun.yaml whose grid is run folders, not training jobs:
    the report of those runs lists no phantom "not run" job for it."""
    import yaml

    from cl_suite.report import collect_jobs

    write_sweep(tmp_path, {"simclr": [80.0, 81.0]})
    write_multirun_yaml(tmp_path, [f"run={tmp_path / '0'},{tmp_path / '1'}", "protocol=knn"])
    record = yaml.safe_load((tmp_path / "multirun.yaml").read_text())
    record["hydra"]["job"] = {"name": "evaluate"}
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(record))
    assert [(job.name, job.status) for job in collect_jobs(tmp_path)] == [("0", "ok"), ("1", "ok")]


def test_a_grid_point_without_a_twin_knows_only_what_the_jobs_that_ran_share(tmp_path):
    """``method=simclr,dcl trainer.epochs=1,2 seed=0,1`` killed after the 1-epoch jobs: a 2-epoch point
    has no twin, so it knows only what every job that ran shares, not the first job's settings (then
    dcl would seem to have run with SimCLR's uniform sampler, and the sampler would pass for a swept
    parameter instead of following the method)."""
    from cl_suite.report import collect_jobs

    write_multirun_yaml(tmp_path, ["method=simclr,dcl", "trainer.epochs=1,2", "seed=0,1"])
    for number, method, seed in ((0, "simclr", 0), (1, "simclr", 1), (4, "dcl", 0), (5, "dcl", 1)):  # Hydra's numbers
        write_run(tmp_path, str(number), {"method": method, "trainer.epochs": 1, "seed": seed},
                  {"linear/top1": 80.0 + number})
    jobs = collect_jobs(tmp_path)
    assert [job.status for job in jobs].count("not run") == 4
    params, _ = summarize(jobs, ["linear/top1"])
    assert params == ["method", "trainer.epochs"]


def test_error_bars_of_percentages_stop_at_0_and_100():
    """Two seeds give wide t-intervals: a bar past 100% shows an accuracy no run can have."""
    from cl_suite.report.plots import error_bars

    points = [("a", 98.0, 8.8, 2), ("b", 3.0, 5.0, 2), ("c", 50.0, math.nan, 1)]
    assert error_bars(points, percent=True) == [[8.8, 3.0, 0.0], [2.0, 5.0, 0.0]]
    assert error_bars(points, percent=False) == [[8.8, 5.0, 0.0], [8.8, 5.0, 0.0]]
