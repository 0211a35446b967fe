"""Checkpoint files: the last K and the best are kept, a damaged or foreign checkpoint is refused with a
clear message, and nothing on disk is overwritten by the refusal."""
import json
import os
import re
import shutil

import pytest
import torch

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.trainer import train
from cl_suite.run_evaluation import find_checkpoint
from helpers import TINY, compose_train, run_cli

EPOCHS = 4
KEEP = 2
RUN = TINY + ["dataset=synthetic", "trainer.batch_size=32", f"trainer.epochs={EPOCHS}", "trainer.eval_at_init=false",
              "trainer.eval_every_epochs=1", "trainer.checkpoint_every_epochs=1", f"trainer.keep_last_checkpoints={KEEP}"]
STEPS_PER_EPOCH = 128 // 32  # synthetic: 4 classes x 32 training images


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 4-epoch run that evaluates and saves after every epoch, keeping the last 2 step files."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_train(RUN, run_dir))
    return run_dir


def test_keeps_the_last_k_step_checkpoints_and_last_points_at_the_newest(finished_run):
    folder = finished_run / "checkpoints"
    steps = [torch.load(p, weights_only=False)["step"] for p in ckpt.step_checkpoints(folder)]
    assert steps == [(EPOCHS - 1) * STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH]
    newest = ckpt.step_checkpoints(folder)[-1]
    assert (folder / "last.pt").samefile(newest)  # a hard link: no second copy on disk
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_best_checkpoint_holds_the_best_monitored_metric(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    seen = [(e["step"], e["knn/top1"]) for e in metrics["epochs"] if "knn/top1" in e]
    seen.append((metrics["final"]["step"], metrics["final"]["knn/top1"]))
    best_value = max(value for _, value in seen)
    best_step = next(step for step, value in seen if value == best_value)  # a tie does not replace the best
    best = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == best_step
    assert best["best"] == {"metric": "knn/top1", "value": best_value, "step": best_step}
    assert find_checkpoint(finished_run, "best").samefile(finished_run / "checkpoints" / "best.pt")  # evaluate.py
    assert len(seen) == EPOCHS


def test_truncated_last_checkpoint_is_refused_and_the_previous_one_resumes(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    folder = run_dir / "checkpoints"
    last = folder / "last.pt"
    last.unlink()  # copytree copied the hard link as a file: link it again, as in the run dir
    os.link(ckpt.step_checkpoints(folder)[-1], last)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy interrupted half-way
    metrics_before = (run_dir / "metrics.json").read_bytes()
    previous = ckpt.step_checkpoints(folder)[0]

    with pytest.raises(ckpt.CheckpointError) as err:
        train(compose_train(RUN, run_dir))  # resume=auto reads the damaged last.pt
    message = str(err.value)
    assert str(last) in message and "cannot be read" in message
    assert f"resume={previous}" in message  # and says which intact checkpoint to continue from
    assert last.stat().st_size < previous.stat().st_size  # nothing overwritten
    assert (run_dir / "metrics.json").read_bytes() == metrics_before

    state = ckpt.load_checkpoint(previous)
    assert state["step"] == (EPOCHS - 1) * STEPS_PER_EPOCH
    final = train(compose_train(RUN + [f"resume={previous}"], run_dir))  # the last epoch again, from there
    original = json.loads(metrics_before)["final"]
    assert final == original  # the same epoch replayed from the intact checkpoint: the same numbers


@pytest.mark.parametrize("override, named", [
    ("method=moco", "method._target_: checkpoint 'cl_suite.methods.SimCLR', this run 'cl_suite.methods.MoCo'"),
    ("backbone.widths=[8,32]", "backbone.widths: checkpoint [8, 16], this run [8, 32]"),
    ("dataset=digits", "dataset.name: checkpoint 'synthetic', this run 'digits'"),
    ("optimizer=adamw", "optimizer._target_: checkpoint 'torch.optim.SGD', this run 'torch.optim.AdamW'"),
    # the online probe's AdamW moments in an SGD probe optimizer: no momentum, the first step would fail
    ("probe.optimizer=sgd", "probe.optimizer: checkpoint 'adamw', this run 'sgd'"),
])
def test_checkpoint_of_another_model_is_refused_by_name(finished_run, tmp_path, override, named):
    before = (finished_run / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ckpt.CheckpointError) as err:
        train(compose_train(RUN + [override, f"resume={finished_run}"], tmp_path))
    message = str(err.value)
    assert named in message and "different model, data set or optimizer" in message
    assert "Missing key" not in message and "Unexpected key" not in message
    assert (finished_run / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert not (tmp_path / "checkpoints").exists()


def copied_run(finished_run, run_dir):
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.unlink()  # copytree copied the hard link as a file: link it again, as in the run dir
    os.link(ckpt.step_checkpoints(run_dir / "checkpoints")[-1], last)
    return run_dir


@pytest.mark.parametrize("override, named", [
    ("method=dcl", "sampler._target_: checkpoint 'cl_suite.samplers.UniformSampler', this run "
                   "'cl_suite.samplers.DebiasedSampler'"),
    ("method.temperature=0.1", "method.temperature: checkpoint 0.5, this run 0.1"),
    ("trainer.positive_pairs=same_class", "trainer.positive_pairs: checkpoint 'same_image', this run 'same_class'"),
])
def test_a_reused_run_folder_with_another_objective_is_refused_under_resume_auto(finished_run, tmp_path, override,
                                                                                  named):
    run_dir = copied_run(finished_run, tmp_path / "run")
    metrics, before = (run_dir / "metrics.json").read_text(), (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ckpt.CheckpointError) as err:
        train(compose_train(RUN + [override], run_dir))  # resume=auto: the folder's own checkpoint
    message = str(err.value)
    assert "already holds a run with another objective" in message and named in message, message
    assert f"resume={run_dir / 'checkpoints' / 'last.pt'}" in message
    assert (run_dir / "metrics.json").read_text() == metrics
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_an_explicit_resume_continues_with_another_objective_and_says_so(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(compose_train(RUN + ["method.temperature=0.1", f"trainer.epochs={EPOCHS + 1}", f"resume={finished_run}"],
                        run_dir))
    out = capsys.readouterr().out
    assert "settings changed since the checkpoint" in out and "method.temperature: checkpoint 0.5, this run 0.1" in out
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["step"] == (EPOCHS + 1) * STEPS_PER_EPOCH


def test_extending_a_run_whose_sampler_follows_the_epochs_is_not_another_objective(tmp_path, capsys):
    # HCL's anneal_epochs is ${trainer.epochs}: extending the run changes it with the epochs (a warning)
    run_dir = tmp_path / "run"
    hcl = RUN + ["method=hcl", "sampler.anneal=down", "trainer.epochs=9", "trainer.eval_every_epochs=0",
                 "trainer.checkpoint_every_epochs=9", "trainer.max_steps=4"]
    train(compose_train(hcl, run_dir))
    train(compose_train(hcl[:-1] + ["trainer.epochs=10", "trainer.max_steps=8"], run_dir))
    out = capsys.readouterr().out
    assert "sampler.anneal_epochs: checkpoint 9, this run 10" in out and "resumed from" in out


def test_a_finished_run_started_again_does_nothing_unless_its_evaluation_changed(finished_run, tmp_path, capsys):
    run_dir = copied_run(finished_run, tmp_path / "run")
    metrics = (run_dir / "metrics.json").read_bytes()
    final = train(compose_train(RUN, run_dir))
    assert "this run already finished at step" in capsys.readouterr().out
    assert (run_dir / "metrics.json").read_bytes() == metrics  # no second 100-epoch probe, nothing rewritten
    assert final == json.loads(metrics)["final"]
    train(compose_train(RUN + ["evaluation.knn.k=3"], run_dir))  # other evaluation settings: evaluated again
    out = capsys.readouterr().out
    assert "already finished" not in out and "final evaluation at step" in out


def test_a_run_stopped_mid_epoch_by_max_steps_keeps_its_records_when_started_again(tmp_path):
    run_dir = tmp_path / "run"
    args = RUN + [f"trainer.max_steps={STEPS_PER_EPOCH + 2}"]  # stops inside the second epoch
    train(compose_train(args, run_dir))
    before = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in before["epochs"]] == [1, 2] and before["compute"]["time/wall_s"] > 0
    train(compose_train(args, run_dir))
    after = json.loads((run_dir / "metrics.json").read_text())
    assert after["epochs"] == before["epochs"] and after["compute"] == before["compute"]


def test_a_resume_with_another_cpu_thread_count_says_so(tmp_path, capsys):
    run_dir, threads = tmp_path / "run", torch.get_num_threads()
    try:
        train(compose_train(RUN + ["trainer.threads=1", f"trainer.max_steps={STEPS_PER_EPOCH}"], run_dir))
        assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["threads"] == 1
        capsys.readouterr()
        train(compose_train(RUN + ["trainer.threads=2", f"trainer.max_steps={STEPS_PER_EPOCH + 1}"], run_dir))
    finally:
        torch.set_num_threads(threads)  # the setting is global to the process
    assert "CPU threads: checkpoint 1, this run 2" in capsys.readouterr().out


def test_a_finished_checkpoint_of_another_folder_is_evaluated_into_this_one(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "new"
    train(compose_train(RUN + [f"resume={finished_run}"], run_dir))
    assert "already finished" not in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["step"] == EPOCHS * STEPS_PER_EPOCH
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_changed_probe_settings_take_effect_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_train(RUN + ["trainer.max_steps=1"], run_dir))
    train(compose_train(RUN + ["trainer.max_steps=2", "probe.lr=0.5", "probe.weight_decay=0.1"], run_dir))
    (group,) = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["probe_optimizer"]["param_groups"]
    assert (group["lr"], group["weight_decay"]) == (0.5, 0.1)


def test_a_checkpoint_written_before_newer_settings_existed_resumes_without_false_changes():
    from omegaconf import OmegaConf

    current = OmegaConf.to_container(compose_train(RUN + ["optimizer=lars"]), resolve=True)
    saved = json.loads(json.dumps(current))
    for group, key in [("optimizer", "clip_lr"), ("optimizer", "trust_denominator"), ("scheduler", "warmup_prefix"),
                       ("probe", "optimizer"), ("probe", "schedule"), ("trainer", "positive_pairs")]:
        del saved[group][key]
    assert ckpt.continuation_differences(saved, current)  # without the defaults: false "changes"
    assert ckpt.continuation_differences(ckpt.with_added_defaults(saved, current), current) == []
    sgd = OmegaConf.to_container(compose_train(RUN), resolve=True)  # not LARS: no LARS keys added
    assert "clip_lr" not in ckpt.with_added_defaults(sgd, current)["optimizer"]


def test_head_of_another_size_names_the_setting_not_a_wall_of_keys(finished_run, tmp_path):
    with pytest.raises(ckpt.CheckpointError) as err:
        train(compose_train(RUN + ["method.projector_dim=8", f"resume={finished_run}"], tmp_path))
    message = str(err.value)
    assert "method.projector_dim: checkpoint 16, this run 8" in message
    assert len(message.splitlines()) < 12


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ckpt.CheckpointError, match="not a cl_suite training checkpoint"):
        train(compose_train(TINY + [f"resume={path}"], tmp_path / "run"))


def test_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in RUN if not o.startswith("logger")] + ["logger=wandb", "trainer.eval_every_epochs=0"]
    train(compose_train(overrides + ["trainer.max_steps=2"], tmp_path))
    first = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    train(compose_train(overrides + ["trainer.max_steps=5"], tmp_path))  # resume=auto
    second = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert second["step"] == 5 and first["wandb_run_id"] == second["wandb_run_id"]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    # wandb appends "-1" to the folder of a run resumed within the same second as its start.
    pattern = rf"offline-run-\d{{8}}_\d{{6}}-{first['wandb_run_id']}(-\d+)?"
    assert runs and all(re.fullmatch(pattern, run.name) for run in runs)


@pytest.mark.slow
def test_a_finished_run_started_again_refused_or_with_other_settings_keeps_its_records(tmp_path):
    """Through train.py (Hydra writes the record), on one finished run. A re-run into its folder that is
    refused, for its config or at resume for another objective, must not relabel the run. Nothing is trained
    when a finished run is started again, so another optimizer setting on that command line must not relabel
    the run either: its .hydra record, its checkpoint's config and its wandb run keep the settings it trained
    with. Changed evaluation settings are evaluated again and recorded, alone."""
    from omegaconf import OmegaConf

    from wandb_records import run_contents

    args = [o for o in TINY if not o.startswith("logger")] + [
        "logger=wandb", "dataset=synthetic", "trainer.max_steps=2", "trainer.eval_at_init=false",
        "trainer.device=cpu", "evaluation.linear.epochs=1", "evaluation.embedding_snapshot=0",
        f"hydra.run.dir={tmp_path}"]
    env = {"WANDB_MODE": "offline"}
    first = run_cli("train.py", args, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    names = ("config.yaml", "overrides.yaml", "hydra.yaml")
    record = {name: (tmp_path / ".hydra" / name).read_text() for name in names}
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1

    # Refused re-runs: for their config, at resume for another objective; then the same command, accepted
    refused = run_cli("train.py", args + ["method=dcl", "sampler.tau_plus=1.0"], env=env)
    assert refused.returncode != 0 and "sampler.tau_plus=1.0 is not allowed" in refused.stderr
    other = run_cli("train.py", args + ["method=dcl"], env=env)
    assert other.returncode != 0 and "already holds a run with another objective" in other.stderr
    assert all(record[name] == (tmp_path / ".hydra" / name).read_text() for name in ("config.yaml", "overrides.yaml"))
    again = run_cli("train.py", args, env=env)  # the same command again: accepted (it only re-runs the final evaluation)
    assert again.returncode == 0, again.stderr[-2000:]
    assert record["config.yaml"] == (tmp_path / ".hydra" / "config.yaml").read_text()

    # Another optimizer setting: not applied, nothing trained, nothing relabelled
    wandb_runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    again = run_cli("train.py", args + ["optimizer.lr=0.5"], env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "optimizer.lr: checkpoint 0.06, this run 0.5" in again.stdout and "not applied" in again.stdout
    assert "this run already finished" in again.stdout and "applied to the restored" not in again.stdout
    assert record == {name: (tmp_path / ".hydra" / name).read_text() for name in names}
    assert sorted((tmp_path / "wandb").glob("offline-run-*")) == wandb_runs  # wandb was not even opened

    evaluated = run_cli("train.py", args + ["optimizer.lr=0.5", "evaluation.knn.k=3"], env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "final evaluation at step 2" in evaluated.stdout
    config = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert config.optimizer.lr == 0.06 and config.evaluation.knn.k == 3
    assert record["overrides.yaml"] == (tmp_path / ".hydra" / "overrides.yaml").read_text()
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.pt")["config"]
    assert saved["optimizer"]["lr"] == 0.06 and saved["evaluation"]["knn"]["k"] == 3
    (new_run,) = set((tmp_path / "wandb").glob("offline-run-*")) - set(wandb_runs)
    logged = run_contents(next(new_run.glob("run-*.wandb")))["config"]
    assert logged["optimizer"]["lr"] == 0.06 and logged["evaluation"]["knn"]["k"] == 3

    # The record deleted by hand: the one written back comes from the checkpoint, not from this command line.
    shutil.rmtree(tmp_path / ".hydra")
    again = run_cli("train.py", args + ["optimizer.lr=0.5", "evaluation.knn.k=5"], env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    config = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    assert config.optimizer.lr == 0.06 and config.evaluation.knn.k == 5
    assert not (tmp_path / ".hydra" / "overrides.yaml").exists()


def test_a_finished_run_evaluated_again_keeps_the_settings_it_trained_with(finished_run, tmp_path, capsys):
    run_dir = copied_run(finished_run, tmp_path / "run")
    train(compose_train(RUN + ["optimizer.lr=0.5", "evaluation.knn.k=3"], run_dir))
    out = capsys.readouterr().out
    assert "optimizer.lr: checkpoint 0.06, this run 0.5" in out and "not applied" in out
    assert "final evaluation at step" in out  # the evaluation changed: evaluated again
    saved = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]
    assert saved["optimizer"]["lr"] == 0.06 and saved["evaluation"]["knn"]["k"] == 3
    assert "setting_changes" not in json.loads((run_dir / "metrics.json").read_text())


def test_a_run_continued_with_changed_settings_says_so_in_its_metrics(tmp_path):
    """The .hydra record and wandb's config show the newest settings only: metrics.json keeps where a
    continuation changed them, and what."""
    run_dir = tmp_path / "run"
    train(compose_train(RUN + [f"trainer.max_steps={STEPS_PER_EPOCH + 1}"], run_dir))
    train(compose_train(RUN + ["optimizer.lr=0.03"], run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (change,) = metrics["setting_changes"]
    assert change["step"] == STEPS_PER_EPOCH + 1
    # trainer.max_steps only says where a piece of the run stops: no change of the run's setting
    assert change["changes"] == ["optimizer.lr: 0.06 -> 0.03 applied to the restored optimizer"]
    assert metrics["final"]["step"] == EPOCHS * STEPS_PER_EPOCH


def _stopped_run(run_dir, monkeypatch, overrides, at_step):
    """A run of ``overrides`` stopped as by a signal once it has reached ``at_step`` (checkpoint saved)."""
    import signal

    from cl_suite.engine.trainer import Trainer

    def stop_requested(self) -> bool:
        if self.step >= at_step:
            self.guard.received = signal.SIGTERM
        return self.guard.received is not None

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as stopped:
        patch.setattr(Trainer, "_stop_requested", stop_requested)
        train(compose_train(overrides, run_dir))
    assert stopped.value.code == 128 + signal.SIGTERM


@pytest.mark.parametrize("override, change", [
    # 2 epochs = 8 steps: not a finished run whose records stay, but a continuation with a changed setting
    ("trainer.epochs=2", "trainer.epochs: checkpoint 4, this run 2"),
    # batch 64: 2 steps per epoch, so this command stops at step 8; the checkpoint's own end is counted in its
    # own steps per epoch (16, not 4 epochs x 2 = 8)
    ("trainer.batch_size=64", "trainer.batch_size: checkpoint 32, this run 64"),
])
def test_a_run_stopped_early_and_started_again_with_a_shorter_schedule_is_continued_with_it(
        tmp_path, monkeypatch, capsys, override, change):
    """Stopped at step 10 of its 16 (batch 32: 4 steps per epoch), started again with a schedule that ends
    before step 10: continued with the changed setting, and recorded as such."""
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, monkeypatch, RUN, at_step=10)
    capsys.readouterr()
    final = train(compose_train(RUN + [override], run_dir))
    out = capsys.readouterr().out
    assert "training is complete" not in out and change in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert final["step"] == metrics["final"]["step"] == 10
    assert metrics["setting_changes"] == [{"step": 10, "changes": [change]}]
    saved = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["config"]["trainer"]["epochs"] == (2 if override == "trainer.epochs=2" else 4)
    assert saved["steps_per_epoch"] == (2 if override == "trainer.batch_size=64" else 4)


def test_a_checkpoint_without_its_steps_per_epoch_counts_its_end_in_this_runs(tmp_path, monkeypatch, capsys):
    """A checkpoint written before they were recorded: its own end is counted in this run's steps per
    epoch (the same where the batch size is unchanged), so a run stopped at step 10 of its 16 and started
    again with 2 epochs (8 steps) is continued, not taken as finished."""
    run_dir = tmp_path / "run"
    _stopped_run(run_dir, monkeypatch, RUN, at_step=10)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        state = ckpt.load_checkpoint(path)
        del state["steps_per_epoch"]
        ckpt.save_checkpoint(path, state)
    capsys.readouterr()
    final = train(compose_train(RUN + ["trainer.epochs=2"], run_dir))
    out = capsys.readouterr().out
    assert "training is complete" not in out and "trainer.epochs: checkpoint 4, this run 2" in out
    assert final["step"] == 10


@pytest.mark.parametrize("recorded, used", [(1, 1), (8, 8), (None, 4), (0, 4), (-2, 4), (True, 4), (2.0, 4),
                                            ("8", 4)])
def test_a_checkpoints_own_end_uses_its_recorded_steps_per_epoch_if_a_whole_number_from_1(recorded, used):
    """The steps per epoch a checkpoint records count its own end (1: a batch of the whole data set);
    anything else (absent, 0, a bool, a float or text in a damaged file) falls back to this run's (4)."""
    from types import SimpleNamespace

    from cl_suite.engine.trainer import Trainer

    fake = SimpleNamespace(steps_per_epoch=4)
    saved = {"trainer": {"epochs": 3, "max_steps": None}}
    assert Trainer._stop_step_of(fake, saved, recorded) == 3 * used


def test_a_finished_run_extended_and_stopped_has_no_final_numbers_until_its_new_end(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(compose_train(RUN + ["trainer.max_steps=4"], run_dir))
    first = json.loads((run_dir / "metrics.json").read_text())["final"]
    _stopped_run(run_dir, monkeypatch, RUN + ["trainer.max_steps=8"], at_step=6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"] == {} and metrics["earlier_finals"] == [first]
    train(compose_train(RUN + ["trainer.max_steps=8"], run_dir))
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["step"] == 8


@pytest.mark.parametrize("mode, values, improved", [
    ("max", [50.0, 60.0, 60.0, 55.0, 61.0], [True, True, False, False, True]),  # a tie does not replace the best
    ("min", [0.5, 0.4, 0.4, 0.45, 0.3], [True, True, False, False, True]),
])
def test_best_metric_direction_and_ties(mode, values, improved):
    from types import SimpleNamespace

    from cl_suite.engine.trainer import Trainer

    cfg = SimpleNamespace(trainer=SimpleNamespace(best_metric="knn/top1", best_mode=mode))
    fake = SimpleNamespace(cfg=cfg, best={"metric": "knn/top1", "value": None, "step": None}, step=0)
    seen = []
    for step, value in enumerate(values):
        fake.step = step
        seen.append(Trainer._improves_best(fake, {"knn/top1": value}))
    assert seen == improved
    best_step = max(i for i, flag in enumerate(improved) if flag)
    assert fake.best == {"metric": "knn/top1", "value": values[best_step], "step": best_step}
    assert Trainer._improves_best(fake, {"linear/top1": 99.0}) is False  # the monitored metric is absent


def test_resume_auto_without_last_pt_takes_the_newest_step_file(tmp_path):
    from types import SimpleNamespace

    from cl_suite.engine.trainer import Trainer

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (8, 12, 100):
        (folder / f"step_{step:09d}.pt").write_bytes(b"")
    fake = SimpleNamespace(run_dir=tmp_path)
    assert Trainer._checkpoint_to_resume(fake, "auto") == folder / "step_000000100.pt"
    (folder / "last.pt").write_bytes(b"")
    assert Trainer._checkpoint_to_resume(fake, "auto") == folder / "last.pt"
    assert Trainer._checkpoint_to_resume(SimpleNamespace(run_dir=tmp_path / "empty"), "auto") is None


def test_resumed_trainer_restores_the_global_random_generators(finished_run, tmp_path):
    """The checkpoint's python, numpy and torch generator states are the process's after the restore (models
    with dropout or stochastic depth draw from them). The saved states are replaced by ones no seeding of
    this run produces, so a restore that skips a generator cannot pass by reseeding it."""
    import random

    import numpy as np

    from cl_suite.engine.trainer import Trainer, rng_states

    state = ckpt.load_checkpoint(finished_run / "checkpoints" / "last.pt")
    random.seed(9876)
    np.random.seed(9876)
    torch.manual_seed(9876)
    planted = rng_states()
    state["rng"] = planted
    ckpt.save_checkpoint(tmp_path / "planted.pt", state)
    Trainer(compose_train(RUN + [f"resume={tmp_path / 'planted.pt'}"], tmp_path / "resumed"), torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), planted["torch"])
    assert np.array_equal(np.random.get_state()[1], planted["numpy"][1])
    assert random.getstate() == planted["python"]


def test_cuda_generator_states_of_gpus_this_machine_lacks_are_not_restored(monkeypatch):
    """A checkpoint holds one CUDA generator state per GPU of the machine that saved it (8 under an 8-GPU
    torchrun); resumed on a machine with fewer, restoring them all indexed a generator that does not exist
    (torch.cuda.set_rng_state_all: IndexError, so the resume was refused)."""
    import random

    import numpy as np

    from cl_suite.engine.trainer import set_rng_states

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    saved = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    set_rng_states({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": saved})
    assert len(restored) == 1 and torch.equal(restored[0], saved[0])


def test_a_run_saved_without_fp16_continues_with_a_fresh_loss_scaler(finished_run, tmp_path, monkeypatch):
    """A run trained in fp32/bf16 continued with trainer.precision=fp16 (a GPU): its checkpoint's scaler
    state is empty, which an enabled GradScaler refuses ('saved from a disabled instance'), so the resume was
    refused. Here a CPU GradScaler, enabled, stands in for the GPU's."""
    from cl_suite.engine.trainer import Trainer

    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: real("cpu", enabled=True))
    last = finished_run / "checkpoints" / "last.pt"
    assert ckpt.load_checkpoint(last)["scaler"] == {}
    trainer = Trainer(compose_train(RUN + [f"resume={last}"], tmp_path / "resumed"), torch.device("cpu"))
    assert trainer.step > 0 and trainer.scaler.is_enabled() and trainer.scaler.get_scale() == real("cpu").get_scale()


def test_each_process_saves_and_restores_the_generator_of_its_own_gpu(monkeypatch):
    """Under torchrun every rank draws on its own GPU from a generator seeded and consumed alike, and rank 0
    saves: the checkpoint holds the state of the saving process's GPU, restored into each resuming
    process's own GPU (restoring all GPUs' states gave rank r rank 0's never-used generator of GPU r)."""
    from cl_suite.engine.trainer import rng_states, set_rng_states

    generators = {0: torch.full((16,), 7, dtype=torch.uint8), 3: torch.full((16,), 9, dtype=torch.uint8)}
    current = {"device": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: generators[current["device"]].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: generators.__setitem__(current["device"], state))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored every GPU's state"))
    saved = rng_states()  # rank 0, on GPU 0
    assert torch.equal(saved["cuda_device"], torch.full((16,), 7, dtype=torch.uint8)) and "cuda" not in saved
    current["device"] = 3  # rank 3 resumes on GPU 3
    set_rng_states(saved)
    assert torch.equal(generators[3], generators[0])


def test_the_generator_saved_and_restored_is_the_training_gpus(monkeypatch):
    """trainer.device=cuda:1 in one process draws on GPU 1 while GPU 0 stays the current one: its state is
    the one saved and restored."""
    from cl_suite.engine.trainer import rng_states, set_rng_states

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or torch.zeros(16))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: asked.append(device))
    set_rng_states(rng_states(torch.device("cuda", 1)), torch.device("cuda", 1))
    set_rng_states(rng_states(torch.device("cpu")))  # a CPU run (or api's caller): the current GPU's
    assert asked == [torch.device("cuda", 1)] * 2 + ["cuda"] * 2


def test_evaluation_and_checkpoints_every_second_epoch(tmp_path):
    """trainer.eval_every_epochs=2 and checkpoint_every_epochs=2 in a 4-epoch run: the kNN monitor runs after
    epoch 2 (epoch 4 ends the run: its numbers are the final evaluation) and step files are written after
    epochs 2 and 4, never after the odd epochs."""
    overrides = [o for o in RUN if not o.startswith(("trainer.eval_every_epochs", "trainer.checkpoint_every_epochs",
                                                     "trainer.keep_last_checkpoints"))]
    train(compose_train(overrides + ["trainer.eval_every_epochs=2", "trainer.checkpoint_every_epochs=2",
                                     "trainer.keep_last_checkpoints=10"], tmp_path))
    epochs = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in epochs if "knn/top1" in e] == [2]
    steps = [int(p.name[5:-3]) for p in ckpt.step_checkpoints(tmp_path / "checkpoints")]
    assert steps == [2 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH]
