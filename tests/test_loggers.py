"""The experiment loggers on real tiny runs, read back from their files: wandb's offline run log (history,
summary, exit code, the sync hint of a resumed run), metrics.csv, TensorBoard event files, several at
once (logger=many), and the wandb group of a sweep recipe (multirun/study.sh, with a stub Python)."""
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cl_suite.engine.logger import MultiLogger, offline_run_folders, run_summary
from cl_suite.engine.trainer import Trainer, train
from cl_suite.engine.validation import ConfigError
from helpers import ROOT, TINY, compose_train
from wandb_records import run_contents

NO_LOGGER = [o for o in TINY if not o.startswith("logger")] + ["trainer.eval_at_init=false"]


def wandb_log(run_dir: Path) -> Path:
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    return log


def read_metrics_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_wandb_and_csv_at_once_log_each_number_once_and_end_with_the_final_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(NO_LOGGER + ["logger=many", "logger/loggers=[wandb,csv]", "logger.group=g",
                                     "trainer.eval_every_epochs=1", "trainer.log_every_steps=5"], tmp_path)
    seen = []
    monkeypatch.setattr(Trainer, "fit", lambda self, fit=Trainer.fit: seen.append(self.logger) or fit(self))
    final = train(cfg)
    assert [type(lg).__name__ for lg in seen] == ["MultiLogger"]  # the loop sees one logger
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    run = run_contents(wandb_log(tmp_path))
    assert run["group"] == "g" and run["exit_code"] == 0

    # 1. The diagnostics once, as diag/* of the epoch records (as in metrics.json), never under raw names.
    keys = {k for row in run["history"] for k in row if not k.startswith(("_", "embeddings/"))}
    assert not [k for k in keys if k.startswith(("sim/", "negatives/", "hist/"))], keys
    assert {"diag/sim/positive_mean", "diag/sim/negative_mean", "diag/negatives/effective"} <= keys
    recorded = {k.split("/_type")[0].rsplit("/values")[0].rsplit("/bins")[0] for k in keys}
    in_metrics = {k for r in metrics["epochs"] for k in r} | {f"final/{k}" for k in metrics["final"]}
    assert recorded ^ in_metrics == {"train/loss", "lr", "images_per_s"}  # the log steps; the rest is in metrics.json
    rows = [row for row in run["history"] if "diag/sim/positive_mean" in row]
    assert [row["diag/sim/positive_mean"] for row in rows] == pytest.approx(
        [r["diag/sim/positive_mean"] for r in metrics["epochs"]])

    # 2. The summary's plain keys hold the final numbers; best/* the best of training and the end.
    summary = run["summary"]
    for key in ("knn/top1", "knn/top5", "linear/top1", "linear/top5", "online_probe/test_top1"):
        assert summary[key] == pytest.approx(final[key]) == pytest.approx(summary[f"final/{key}"]), key
    knn = [r["knn/top1"] for r in metrics["epochs"] if "knn/top1" in r]
    assert len(knn) == 1  # epoch 1 of 2 (the last epoch's evaluation is the final one)
    assert summary["best/knn/top1"] == pytest.approx(max(knn + [final["knn/top1"]]))
    assert summary["best/linear/top1"] == pytest.approx(final["linear/top1"])
    assert set(summary["train/loss"]) == {"min", "last"}
    for key, value in run_summary(metrics).items():
        assert summary[key] == pytest.approx(value), key

    # 6. metrics.csv: long format, the same numbers as wandb and metrics.json.
    table = read_metrics_csv(tmp_path / "metrics.csv")
    assert list(table[0]) == ["step", "key", "value"]
    by_key: dict = {}
    for row in table:
        by_key.setdefault(row["key"], []).append((int(row["step"]), float(row["value"])))
    assert not [k for k in by_key if k.startswith(("sim/", "negatives/", "diag/hist/"))]
    assert [v for _, v in by_key["diag/sim/positive_mean"]] == pytest.approx(
        [r["diag/sim/positive_mean"] for r in metrics["epochs"]])
    assert by_key["final/linear/top1"] == [(metrics["final"]["step"], pytest.approx(final["linear/top1"]))]
    wandb_losses = [(row["_step"], row["train/loss"]) for row in run["history"] if "train/loss" in row]
    assert by_key["train/loss"] == [(s, pytest.approx(v)) for s, v in wandb_losses]
    assert [s for s, _ in by_key["train/loss"]] == list(range(5, metrics["final"]["step"] + 1, 5))


def _stop_at_third_step(monkeypatch, stop):
    calls = []
    original = Trainer.train_step

    def train_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            stop()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_a_run_stopped_by_sigterm_is_not_finished_in_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _stop_at_third_step(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))  # the guard catches it
    with pytest.raises(SystemExit) as stop:
        train(compose_train(NO_LOGGER + ["logger=wandb"], tmp_path))
    assert stop.value.code == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
    assert run_contents(wandb_log(tmp_path))["exit_code"] == 128 + signal.SIGTERM


def test_a_run_that_raises_is_not_finished_in_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")

    def fail():
        raise RuntimeError("boom")

    _stop_at_third_step(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="boom"):
        train(compose_train(NO_LOGGER + ["logger=many", "logger/loggers=[csv,wandb]", "trainer.log_every_steps=1"],
                            tmp_path))
    assert run_contents(wandb_log(tmp_path))["exit_code"] == 1
    assert read_metrics_csv(tmp_path / "metrics.csv")[0]["key"] == "train/loss"  # flushed before the failure


def test_the_sync_hint_of_a_resumed_offline_run_names_every_folder_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = NO_LOGGER + ["logger=wandb", "trainer.eval_every_epochs=0", "evaluation.linear.epochs=1"]
    train(compose_train(overrides + ["trainer.max_steps=2"], tmp_path))
    capsys.readouterr()
    train(compose_train(overrides + ["trainer.max_steps=4"], tmp_path))  # resume=auto: a second folder
    run_id = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["wandb_run_id"]
    folders = offline_run_folders(tmp_path / "wandb", run_id)
    assert len(folders) == 2 and sorted(tmp_path.glob("wandb/offline-run-*")) == sorted(folders)
    out = capsys.readouterr().out.splitlines()
    hints = [l for l in out if "upload the run later" in l]
    assert len(hints) == 2 and hints[0] == hints[1]  # at the start, and again after wandb's own last words
    assert [l for l in out if "wandb sync" in l][-1] == hints[-1]
    command = hints[0].split(" with: ", 1)[1]
    assert [shlex.split(part)[2:] for part in command.split(" && ")] == [[str(f)] for f in folders]
    wandb_cli = Path(sys.executable).parent / "wandb"
    if wandb_cli.is_file():  # the command as printed runs: wandb lists each run log it would upload
        dry = command.replace("wandb sync ", f"{shlex.quote(str(wandb_cli))} sync --dry-run ")
        out = subprocess.run(["bash", "-c", dry], capture_output=True, text=True, timeout=300)
        # (wandb prints each path relative to the working directory)
        assert out.returncode == 0 and all(f"{f.name}/run-{run_id}.wandb" in out.stdout + out.stderr for f in folders), out


def test_a_resumed_csv_run_drops_the_rows_a_killed_run_logged_past_its_checkpoint(tmp_path):
    overrides = NO_LOGGER + ["logger=csv", "trainer.log_every_steps=1", "trainer.eval_every_epochs=0",
                             "evaluation.linear.epochs=1"]
    train(compose_train(overrides + ["trainer.max_steps=2"], tmp_path))
    path = tmp_path / "metrics.csv"
    first = read_metrics_csv(path)
    assert {int(r["step"]) for r in first} == {1, 2}
    # What a run killed after its step-2 checkpoint leaves: rows of steps 3 and 4, and a torn last line.
    with path.open("a", newline="") as f:
        f.write("3,train/loss,999\n4,train/loss,999\n4,train/lo")
    train(compose_train(overrides + ["trainer.max_steps=4"], tmp_path))  # resume=auto from step 2
    rows = read_metrics_csv(path)
    assert rows[:len(first)] == first  # the rows up to the checkpoint, untouched
    pairs = [(r["step"], r["key"]) for r in rows]
    assert len(pairs) == len(set(pairs))  # every (step, key) once
    loss = {int(r["step"]): float(r["value"]) for r in rows if r["key"] == "train/loss"}
    assert sorted(loss) == [1, 2, 3, 4] and 999 not in loss.values()
    assert not path.with_name("metrics.csv.tmp").exists()


def test_a_finished_csv_run_started_again_writes_its_final_rows_once(tmp_path):
    overrides = NO_LOGGER + ["logger=csv", "trainer.max_steps=2", "evaluation.linear.epochs=1"]
    train(compose_train(overrides, tmp_path))
    first = read_metrics_csv(tmp_path / "metrics.csv")
    assert {r["key"] for r in first} >= {"final/linear/top1", "final/knn/top1"}
    train(compose_train(overrides, tmp_path))  # the same command again: resumes at step 2, evaluates again
    assert read_metrics_csv(tmp_path / "metrics.csv") == first


def test_a_corrupted_metrics_csv_loses_its_bad_rows_not_the_resume(tmp_path):
    from cl_suite.engine.logger import CSVLogger

    path = tmp_path / "metrics.csv"
    good = [["1", "train/loss", "2.5"], ["1", "flag", "True"], ["2", "train/loss", "2.25"]]
    path.write_bytes(b"step,key,value\n" + b"".join(",".join(r).encode() + b"\n" for r in good)
                     + b"2,bad,\xff\xfe\n2,nul\x00,1\n2,\"unclosed,1\n3,train/loss,9\nxx,train/loss,1\n2,a,b,c\n\n2,train/lr,nan")
    logger = CSVLogger(str(tmp_path), resume_step=2)
    logger.log({"train/loss": 2.0}, step=3)
    logger.finish()
    rows = read_metrics_csv(path)
    assert [[r["step"], r["key"], r["value"]] for r in rows] == good + [["2", "train/lr", "nan"], ["3", "train/loss", "2.0"]]


def test_a_resumed_tensorboard_run_purges_the_events_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    overrides = NO_LOGGER + ["logger=tensorboard", "trainer.log_every_steps=1", "trainer.eval_every_epochs=0",
                             "evaluation.linear.epochs=1"]
    train(compose_train(overrides + ["trainer.max_steps=2"], tmp_path))
    killed = SummaryWriter(log_dir=str(tmp_path / "tensorboard"))  # a killed run's events past step 2
    for step in (3, 4):
        killed.add_scalar("train/loss", 999.0, step)
    killed.close()
    time.sleep(1.1)  # event files are named by the second they were opened, and read in name order
    train(compose_train(overrides + ["trainer.max_steps=4"], tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    points = events.Scalars("train/loss")
    assert [p.step for p in points] == [1, 2, 3, 4] and 999.0 not in [p.value for p in points]


def test_a_resumed_tensorboard_logger_writes_only_the_keys_not_yet_shown_at_its_checkpoint_step(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cl_suite.engine.logger import TensorBoardLogger

    first = TensorBoardLogger(str(tmp_path))
    first.log({"train/loss": 1.0, "diag/hist/negative": {"counts": [1, 2], "range": [-1, 1]}}, step=5)
    first.finish()
    time.sleep(1.1)  # event files are named by the second they were opened, and read in name order
    resumed = TensorBoardLogger(str(tmp_path), resume_step=5)
    resumed.log({"train/loss": 7.0, "final/linear/top1": 50.0,  # at the checkpoint's step: only the new key
                 "diag/hist/negative": {"counts": [3, 3], "range": [-1, 1]}}, step=5)
    resumed.log({"train/loss": 2.0}, step=6)
    resumed.finish()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    assert [(p.step, p.value) for p in events.Scalars("train/loss")] == [(5, 1.0), (6, 2.0)]
    assert [(p.step, p.value) for p in events.Scalars("final/linear/top1")] == [(5, 50.0)]
    assert [p.histogram_value.num for p in events.Histograms("diag/hist/negative")] == [3]


def test_a_finished_tensorboard_run_started_again_shows_its_final_numbers_once(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_train(NO_LOGGER + ["logger=tensorboard", "trainer.max_steps=2", "evaluation.linear.epochs=1",
                                     "evaluation.embedding_snapshot=50"], tmp_path)
    train(cfg)
    time.sleep(1.1)
    train(cfg)  # resumes at its last step: evaluates and logs the final numbers again
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [p.step for p in events.Scalars("final/linear/top1")] == [2]
    assert [p.step for p in events.Scalars("final/knn/top1")] == [2]
    assert (tmp_path / "tensorboard" / "projector_config.pbtxt").read_text().count("embeddings {") == 1


def test_wandb_logger_skips_a_step_below_the_runs_last_one_quietly(tmp_path, monkeypatch, capsys):
    from cl_suite.engine.logger import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "false")
    logger = WandbLogger(str(tmp_path), {"seed": 0})
    logger.log({"train/loss": 1.0}, step=7)
    logger.log({"train/loss": 9.0}, step=5)  # what a resumed run re-logs: wandb would drop it, with a warning
    logger.log({"lr": 0.1}, step=7)  # the same step again is one row
    logger.finish()
    rows = run_contents(wandb_log(tmp_path))["history"]
    assert [(row["_step"], row.get("train/loss"), row.get("lr")) for row in rows] == [(7, 1.0, 0.1)]
    assert "less than the current step" not in capsys.readouterr().err


def test_offline_run_folders_sorts_resumes_by_time_then_suffix(tmp_path):
    for name in ("offline-run-20260102_000000-abc", "offline-run-20260101_000000-abc-1",
                 "offline-run-20260101_000000-abc", "offline-run-20260101_000000-abcd", "run-20260101_000000-abc"):
        (tmp_path / name).mkdir()
    assert [p.name for p in offline_run_folders(tmp_path, "abc")] == [
        "offline-run-20260101_000000-abc", "offline-run-20260101_000000-abc-1", "offline-run-20260102_000000-abc"]


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    final = train(compose_train(NO_LOGGER + ["logger=tensorboard", "trainer.log_every_steps=5"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "diag/sim/positive_mean", "final/linear/top1"} <= set(tags["scalars"])
    assert not [t for t in tags["scalars"] if t.startswith(("sim/", "negatives/"))]
    (point,) = events.Scalars("final/linear/top1")
    assert point.step == metrics["final"]["step"] and point.value == pytest.approx(final["linear/top1"], rel=1e-6)
    assert [p.value for p in events.Scalars("diag/sim/positive_mean")] == pytest.approx(
        [r["diag/sim/positive_mean"] for r in metrics["epochs"]], rel=1e-6)
    assert "diag/hist/positive" in tags["histograms"]
    (hist,) = events.Histograms("diag/hist/positive")[-1:]
    assert hist.histogram_value.num == sum(metrics["epochs"][-1]["diag/hist/positive"]["counts"])
    assert (tmp_path / "tensorboard" / "projector_config.pbtxt").is_file()  # the embedding snapshot


def test_logger_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("cl_suite.engine.logger.tensorboard_available", lambda: False)
    for logger in (["logger=tensorboard"], ["logger=many", "logger/loggers=[csv,tensorboard]"]):
        with pytest.raises(ConfigError, match=re.escape('pip install -e ".[tensorboard]"')):
            train(compose_train(NO_LOGGER + logger, tmp_path))
    assert not (tmp_path / "metrics.csv").exists()  # refused at start-up, before any logger started


def test_many_finishes_the_loggers_it_started_when_a_later_one_fails(tmp_path, monkeypatch):
    finished = []
    monkeypatch.setattr("cl_suite.engine.logger.CSVLogger.finish",
                        lambda self, exit_code=0: finished.append(exit_code))
    loggers = {"csv": {"_target_": "cl_suite.engine.logger.CSVLogger"},
               "broken": {"_target_": "cl_suite.engine.logger.CSVLogger", "filename": "no/such\0name.csv"}}
    with pytest.raises(Exception, match="embedded null byte"):  # hydra wraps the ValueError
        MultiLogger(loggers, run_dir=str(tmp_path))
    assert finished == [1]


def _study_invocation(tmp_path, env_extra=None, args=("seed=0,1",)) -> list[str]:
    """Run multirun/study.sh with PYTHON set to a stub that records its arguments; return train.py's."""
    stub, record = tmp_path / "python", tmp_path / "calls.txt"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" "--" >> {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
    record.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(stub)}
    env.pop("SWEEP_DIR", None)
    env.update(env_extra or {})
    proc = subprocess.run(["bash", str(ROOT / "multirun" / "study.sh"), "tiny_study", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    calls = record.read_text().split("--\n")
    assert calls[1].split("\n")[:2] == ["-m", "cl_suite.report"]  # then the report of the same sweep dir
    return calls[0].split("\n")[:-1]


def test_each_study_folder_gets_its_own_wandb_group_and_a_continued_study_keeps_it(tmp_path):
    first = _study_invocation(tmp_path)
    assert first[:2] == ["train.py", "-m"] and first[-1] == "seed=0,1"
    (group,) = [a.split("=", 1)[1] for a in first if a.startswith("logger.group=")]
    (sweep_dir,) = [a.split("=", 1)[1] for a in first if a.startswith("hydra.sweep.dir=")]
    stamp = re.fullmatch(r"tiny_study-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)", group)[1]
    assert sweep_dir == f"multirun/tiny_study/{stamp}"  # one stamp: the group is the sweep's
    time.sleep(1.05)
    second = _study_invocation(tmp_path, {"SWEEP_DIR": str(tmp_path / "sweep")})
    assert f"hydra.sweep.dir={tmp_path / 'sweep'}" in second
    (other,) = [a.split("=", 1)[1] for a in second if a.startswith("logger.group=")]
    assert other == "tiny_study-sweep"  # the group is the sweep folder's
    time.sleep(1.05)  # continuing the first study (SWEEP_DIR = its folder) keeps its group
    third = _study_invocation(tmp_path, {"SWEEP_DIR": sweep_dir + "/"})
    assert [a for a in third if a.startswith("logger.group=")] == [f"logger.group={group}"]


@pytest.mark.parametrize("logger, grouped", [("logger=csv", False), ("logger=none", False),
                                             ("logger=tensorboard", False), ("logger=many", True),
                                             ("logger=wandb", True), ("debug=fast", False), ("debug=overfit", False)])
def test_a_study_sets_a_wandb_group_only_for_loggers_that_have_one(tmp_path, logger, grouped):
    args = _study_invocation(tmp_path, args=(logger, "seed=0,1"))
    assert any(a.startswith("logger.group=") for a in args) == grouped
    overrides = [a for a in args[2:] if not a.startswith(("hydra.", "seed="))]
    cfg = compose_train(overrides, tmp_path)  # what the sweep's first job composes: no "not in struct"
    assert cfg.logger.get("group") is None or cfg.logger.group.startswith("tiny_study-")


def test_evaluate_finds_the_wandb_run_of_a_run_that_logged_to_several_loggers():
    """evaluate.py writes eval/* into the run's wandb summary: under logger=many too, with its group."""
    from cl_suite.run_evaluation import _wandb_logger_config

    many = compose_train(NO_LOGGER + ["logger=many", "logger/loggers=[csv,wandb]", "logger.group=g"]).logger
    entry = _wandb_logger_config(many)
    assert entry._target_.endswith("WandbLogger") and entry.group == "g"
    assert _wandb_logger_config(compose_train(NO_LOGGER + ["logger=wandb"]).logger) is not None
    assert _wandb_logger_config(compose_train(NO_LOGGER + ["logger=many", "logger/loggers=[csv]"]).logger) is None
    assert _wandb_logger_config(compose_train(NO_LOGGER + ["logger=csv"]).logger) is None


@pytest.mark.slow
def test_a_wandb_sweep_agent_run_of_the_documented_sweep(tmp_path):
    """multirun/wandb_sweep.yaml as `wandb agent` runs it, without a server: the agent's command list,
    with its macros filled by wandb's own argument builder (``create_sweep_command_args``) and the
    agent's substitution (a ``${name}`` item becomes that list), in the agent's environment (sweep id,
    run id, the parameter file); debug=fast keeps it short and offline mode writes the run log."""
    import yaml
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args
    from wandb.sdk.lib import config_util

    spec = yaml.safe_load((ROOT / "multirun" / "wandb_sweep.yaml").read_text())
    params = spec["parameters"]
    chosen = {"sampler.tau_plus": 0.05, "sampler.beta": 0.5}
    assert set(chosen) == set(params) and all(params[k]["min"] <= v <= params[k]["max"] for k, v in chosen.items())
    command = {"args": {key: {"value": value} for key, value in chosen.items()}, "program": spec["program"]}
    macros = {**create_sweep_command_args(command), "env": ["/usr/bin/env"], "interpreter": [sys.executable],
              "program": [str(ROOT / spec["program"])]}
    argv = []
    for item in spec["command"]:
        argv += macros[item[2:-1]] if item.startswith("${") else [item]
    argv.insert(argv.index("method=hcl") + 1, "debug=fast")
    run_id, sweep_id = "agentrun1", "sweep01"
    param_file = tmp_path / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    param_file.parent.mkdir(parents=True)
    config_util.save_config_file_from_dict(str(param_file), command["args"])
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id,
           "WANDB_SWEEP_PARAM_PATH": str(param_file), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run_dir = tmp_path / "outputs" / f"wandb-sweep-{sweep_id}" / run_id  # the sweep's folder, the dashboard's run
    resolved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert (resolved["sampler"]["tau_plus"], resolved["sampler"]["beta"]) == (0.05, 0.5)
    assert resolved["method"]["_target_"].endswith("SimCLR") and resolved["sampler"]["_target_"].endswith("HardSampler")
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    run = run_contents(wandb_log(run_dir))
    assert wandb_log(run_dir).name == f"run-{run_id}.wandb" and run["exit_code"] == 0
    assert run["summary"]["linear/top1"] == pytest.approx(final["linear/top1"])  # the sweep's metric
    # The agent's flat key and the run's own config, which trained with it
    assert run["config"]["sampler.tau_plus"] == 0.05 and run["config"]["sampler"]["tau_plus"] == 0.05
    from cl_suite.report.__main__ import main as report_main

    assert report_main([str(run_dir.parent)]) == 0  # the trials' folder reads as a sweep
    assert (run_dir.parent / "report.md").is_file()


def test_the_logged_lr_is_the_rate_of_the_step_just_taken(tmp_path):
    """During the linear warm-up, step s (0-based) runs at base (s + 1) / W: the rows of steps 1, 2, 3 (steps
    taken) hold the rates of steps 0, 1, 2, in the ratio 1 : 2 : 3 (the next step's rates would be 2 : 3 : 4)."""
    cfg = compose_train(NO_LOGGER + ["logger=csv", "trainer.log_every_steps=1", "trainer.max_steps=3",
                                     "trainer.epochs=4", "scheduler.warmup_epochs=2", "trainer.eval_at_init=false",
                                     "evaluation.linear.epochs=1"], tmp_path)
    train(cfg)
    logged = [float(r["value"]) for r in read_metrics_csv(tmp_path / "metrics.csv") if r["key"] == "lr"]
    assert [v / logged[0] for v in logged] == pytest.approx([1.0, 2.0, 3.0])
    epoch_lr = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]["train/epoch_lr"]
    assert epoch_lr == pytest.approx(logged[-1])


def test_a_bad_wandb_mode_in_the_environment_is_refused_at_start_up_by_its_name(monkeypatch):
    from cl_suite.engine.logger import resolve_wandb_mode
    from cl_suite.engine.validation import validate_train_config

    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ConfigError, match=r"environment variable WANDB_MODE='ofline' \(it wins over logger\.mode\)"):
        validate_train_config(compose_train(["logger=wandb"]))
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's older name for offline
    validate_train_config(compose_train(["logger=wandb"]))
    assert resolve_wandb_mode("online") == "offline"


def test_epoch_loss_of_a_partial_epoch_and_the_runs_throughput(tmp_path):
    """max_steps=3 ends the run 3 steps into a 22-step epoch: the epoch loss is the mean of those 3 steps'
    losses (not their sum over 22), and the run's images/s is its 3 x 64 images over its training seconds."""
    cfg = compose_train(NO_LOGGER + ["logger=csv", "trainer.log_every_steps=1", "trainer.max_steps=3",
                                     "evaluation.linear.epochs=1"], tmp_path)
    train(cfg)
    losses = [float(r["value"]) for r in read_metrics_csv(tmp_path / "metrics.csv") if r["key"] == "train/loss"]
    history = json.loads((tmp_path / "metrics.json").read_text())
    (record,) = history["epochs"]
    assert len(losses) == 3 and record["step"] == 3
    assert record["train/epoch_loss"] == pytest.approx(sum(losses) / 3, rel=1e-5)
    compute = history["compute"]
    assert compute["time/wall_s"] == pytest.approx(record["epoch_time_s"])
    assert compute["time/images_per_s"] == pytest.approx(3 * 64 / compute["time/wall_s"])
    # the checkpoint of a run stopped inside an epoch records the fraction of epochs done (eval.json, exports)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (state["step"], state["epoch"]) == (3, round(3 / 22, 4))
