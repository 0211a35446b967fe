"""``cl_suite.api``: train, evaluate and load an encoder from Python, with the run folders, records and
checks of train.py / evaluate.py; a folder of such runs is a sweep the report reads."""
import json
import os
import sys
import threading

import hydra
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cl_suite import api
from cl_suite.api import JobRunningError
from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.logger import offline_run_folders
from cl_suite.engine.trainer import Trainer
from cl_suite.engine.validation import ConfigError
from cl_suite.errors import MissingPathError
from cl_suite.export import ExportError, export_backbone, load_backbone
from cl_suite.report.jobs import collect_jobs
from helpers import TINY, compose_train, evaluate_in_process, run_cli, to_plain
from wandb_records import run_contents

QUICK = TINY + ["trainer.max_steps=2", "trainer.eval_at_init=false", "evaluation.linear.epochs=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two DCL runs of a tau_plus 'sweep' written by api.train, as a notebook would loop over a value."""
    folder = tmp_path_factory.mktemp("sweep")
    done = [api.train(QUICK + ["method=dcl", f"sampler.tau_plus={tau}"], run_dir=folder / f"tau_{tau}")
            for tau in (0.0, 0.1)]
    return folder, done


def test_train_returns_the_runs_final_numbers_and_leaves_the_record_train_py_writes(runs):
    folder, (run, _) = runs
    assert run.dir == (folder / "tau_0.0").resolve()
    saved = json.loads((run.dir / "metrics.json").read_text())
    assert run.metrics == saved["final"] and 0 <= run.metrics["linear/top1"] <= 100 and run.metrics["step"] == 2
    assert (run.dir / ckpt.CHECKPOINT_DIR / ckpt.LAST).is_file() and (run.dir / "train.log").is_file()
    record = run.dir / ".hydra"
    overrides = QUICK + ["method=dcl", "sampler.tau_plus=0.0"]
    assert yaml.safe_load((record / "overrides.yaml").read_text()) == overrides
    hydra = yaml.safe_load((record / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["output_dir"] == hydra["run"]["dir"] == str(run.dir)
    assert hydra["runtime"]["choices"]["method"] == "dcl" and hydra["job"]["name"] == "train"
    # As Hydra's own run records it (test_the_record_is_the_one_train_py_writes compares a whole CLI run's)
    assert hydra["mode"] == "RUN" and hydra["overrides"]["hydra"] == ["hydra.mode=RUN"]
    assert {"path": "cl_suite.conf", "schema": "pkg", "provider": "main"} in hydra["runtime"]["config_sources"]
    # The config is the one Hydra composes for these overrides (paths.output_dir stays ${hydra:...}, as
    # train.py records it), and the settings were applied.
    recorded = OmegaConf.load(record / "config.yaml")
    assert OmegaConf.to_container(recorded.paths)["output_dir"] == "${hydra:runtime.output_dir}"
    expected = to_plain(compose_train(overrides, run.dir))
    recorded.paths.output_dir = str(run.dir)
    assert to_plain(recorded) == expected and recorded.sampler.tau_plus == 0.0
    assert not HydraConfig.initialized()  # the job's Hydra settings are not left behind


def test_a_folder_of_api_runs_is_a_sweep_the_report_reads(runs):
    folder, done = runs
    jobs = collect_jobs(folder)
    assert [job.status for job in jobs] == ["ok", "ok"]
    assert [job.settings["sampler.tau_plus"] for job in jobs] == [0.0, 0.1]
    assert [job.metrics["linear/top1"] for job in jobs] == pytest.approx([r.metrics["linear/top1"] for r in done])


def test_evaluate_gives_evaluate_pys_numbers_and_writes_eval_json(runs):
    _, (run, _) = runs
    result = api.evaluate(run.dir, ["protocol=[knn,retrieval]"])
    assert set(result["protocols"]) == {"knn", "retrieval"} and result["step"] == 2
    assert json.loads((run.dir / "eval.json").read_text())["protocols"] == result["protocols"]
    again = evaluate_in_process(run.dir, "protocol=[knn,retrieval]")  # evaluate.py's own entry
    assert again["protocols"] == result["protocols"]
    assert result["protocols"]["knn"]["knn/top1"] == pytest.approx(run.metrics["knn/top1"])


def test_load_encoder_is_the_trained_backbone_as_the_export_writes_it(runs):
    _, (run, _) = runs
    encoder = api.load_encoder(run.dir)
    assert not encoder.training and type(encoder).__name__ == "SmallConvNet"
    out, _ = export_backbone(run.dir, out=run.dir / "encoder.pt")
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(encoder(x), load_backbone(out)(x), rtol=0, atol=0)
    state = ckpt.load_checkpoint(run.dir / "checkpoints" / "last.pt")
    weights = {k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")}
    assert weights and all(torch.equal(encoder.state_dict()[k], v) for k, v in weights.items())
    # A training checkpoint path names itself; the exported result evaluates to the run's numbers.
    file_encoder = api.load_encoder(run.dir / "checkpoints" / "last.pt")
    torch.testing.assert_close(file_encoder(x), encoder(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="checkpoint='best' names a checkpoint of a run folder, but .*last.pt' is a "
                                          "checkpoint file"):
        api.load_encoder(run.dir / "checkpoints" / "last.pt", checkpoint="best")
    with pytest.raises(MissingPathError, match=r"checkpoint='epoch_9': .* does not exist; available: \['best', 'last'"):
        api.load_encoder(run.dir, checkpoint="epoch_9")
    exported = api.evaluate(out, ["protocol=[knn]"])
    assert exported["protocols"]["knn"]["knn/top1"] == pytest.approx(run.metrics["knn/top1"])
    assert (run.dir / "encoder.eval.json").is_file()


def test_load_encoder_reads_paths_under_the_home_folder(runs, monkeypatch):
    folder, (run, _) = runs
    monkeypatch.setenv("HOME", str(folder))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = api.load_encoder(run.dir)(x)
    for path in (f"~/{run.dir.name}", f"~/{run.dir.name}/checkpoints/last.pt"):
        torch.testing.assert_close(api.load_encoder(path)(x), expected, rtol=0, atol=0)


def test_evaluate_a_checkpoint_file_of_a_run_as_evaluate_py_run_and_checkpoint(runs):
    _, (_, run) = runs
    step = sorted((run.dir / "checkpoints").glob("step_*.pt"))[-1]
    result = api.evaluate(step, ["protocol=[knn]"])
    assert result["checkpoint"] == str(step) and result["step"] == 2
    assert result["protocols"]["knn"]["knn/top1"] == pytest.approx(run.metrics["knn/top1"])


def test_a_job_asked_for_while_one_trains_in_another_thread_is_refused(runs, tmp_path, monkeypatch):
    """Hydra's settings, the run log and the thread count are the process's: a second job at once (a notebook
    that trains in a background thread) would write into the first's train.log and folder."""
    _, (run, _) = runs
    training, go_on = threading.Event(), threading.Event()
    original = Trainer.train_step

    def train_step(self, *args, **kwargs):
        if threading.current_thread().name == "bg":  # the background job holds at its first step
            training.set()
            assert go_on.wait(timeout=120)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    done = []
    background = threading.Thread(target=lambda: done.append(api.train(QUICK, run_dir=tmp_path / "bg")), name="bg")
    background.start()
    try:
        assert training.wait(timeout=120)
        for call in (lambda: api.train(QUICK, run_dir=tmp_path / "fg"), lambda: api.train_config(),
                     lambda: api.evaluate(run.dir, ["protocol=[knn]"])):
            with pytest.raises(JobRunningError, match=r"api.\w+: api.train in thread 'bg' is still running in this "
                                                      r"process"):
                call()
    finally:
        go_on.set()
        background.join(timeout=120)
    (bg,) = done
    assert bg.metrics["step"] == 2 and not (tmp_path / "fg").exists()
    assert api.train_config(run_dir=tmp_path / "next").paths.output_dir == str(tmp_path / "next")  # free again


def test_train_in_process_gives_back_the_callers_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        api.train(QUICK + ["trainer.threads=1", "trainer.save_checkpoints=false"], run_dir=tmp_path / "run")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    # A run that saves no checkpoint has no encoder to load, and the error says which setting made it so.
    with pytest.raises(MissingPathError, match=r"checkpoint='last': .*last.pt does not exist; the run saved no "
                                               r"checkpoint \(trainer.save_checkpoints=false"):
        api.load_encoder(tmp_path / "run")
    with pytest.raises(ExportError, match="no such run dir or checkpoint file"):
        api.load_encoder(tmp_path / "no run here")


def _draws() -> tuple:
    import random

    import numpy as np
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_train_and_evaluate_give_back_the_callers_random_state(runs, tmp_path):
    """A job seeds the global generators with its seed; the notebook's own sequence continues after it as if
    no job had run (and is not the job's seed's sequence)."""
    import random

    import numpy as np
    for seeded in (random.seed, np.random.seed, torch.manual_seed):
        seeded(1234)
    expected = _draws()
    for seeded in (random.seed, np.random.seed, torch.manual_seed):
        seeded(1234)
    api.train(QUICK + ["trainer.save_checkpoints=false", "seed=7"], run_dir=tmp_path / "run")
    api.evaluate(runs[1][0].dir, ["protocol=[knn]", "seed=7"])
    assert _draws() == expected


def test_train_again_into_a_finished_run_trains_nothing_and_returns_its_numbers(runs, capsys):
    _, (_, run) = runs
    again = api.train(QUICK + ["method=dcl", "sampler.tau_plus=0.1"], run_dir=run.dir)
    assert again == run
    assert "this run already finished at step 2" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, kept", [([], True), (["trainer.epochs=10"], False)])
def test_train_config_drops_a_recipes_published_number_where_train_does(overrides, kept, tmp_path):
    cfg = api.train_config(["experiment=dcl_stl10", *overrides], run_dir=tmp_path)
    assert cfg.published == (compose_train(["experiment=dcl_stl10"]).published if kept else None)


def test_train_with_wandb_leaves_the_callers_own_wandb_run_active(tmp_path, monkeypatch):
    """A notebook that logs its own analysis to wandb, then trains (and evaluates) with logger=wandb: its own
    run stays the active wandb.run; each training job is a run of its own, finished."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    mine = wandb.init(project="my-notebook", dir=tmp_path)
    try:
        run = api.train([o for o in QUICK if o != "logger=none"] + ["logger=wandb"], run_dir=tmp_path / "run")
        api.evaluate(run.dir, ["protocol=[knn]"])  # into the training job's wandb run, as evaluate.py
        assert wandb.run is mine
        mine.log({"analysis": 1})  # raised wandb's UsageError: the run had been finished by the job's
    finally:
        mine.finish()
    trained, evaluated = (run_contents(next(folder.glob("run-*.wandb")))  # one run id, a folder per process
                          for folder in offline_run_folders(run.dir / "wandb", ckpt.load_checkpoint(
                              run.dir / "checkpoints" / "last.pt")["wandb_run_id"]))
    assert trained["exit_code"] == evaluated["exit_code"] == 0
    assert trained["summary"]["knn/top1"] == pytest.approx(run.metrics["knn/top1"])
    assert "eval/knn/top1" in evaluated["summary"]


def test_train_config_is_the_composed_config_with_the_run_folder(tmp_path):
    cfg = api.train_config(["method=hcl", "sampler.beta=0.5"], run_dir=tmp_path / "x")
    assert cfg.paths.output_dir == str(tmp_path / "x") and cfg.sampler.beta == 0.5
    assert cfg.sampler._target_ == "cl_suite.samplers.HardSampler" and "hydra" not in cfg
    default = api.train_config()
    assert default.paths.output_dir.startswith(str(__import__("pathlib").Path.cwd() / "outputs"))
    assert not HydraConfig.initialized()


@pytest.mark.parametrize("overrides, message", [
    ("method=dcl", r"overrides='method=dcl': pass a list of overrides, one string each \(\['method=dcl'\]\)"),
    ([3], "override 3 is not a string"),
    ({"method": "dcl", "seed": 1}, r"overrides=\{'method': 'dcl', 'seed': 1\} is a mapping: pass a list of "
     r"overrides, one string each, as on the command line \(\['method=...', 'seed=...'\]\)"),
    (["seed=0,1"], r"seed=0,1: a sweep value .* call train\(\) once per value"),
    (["-m", "seed=1"], r"-m: sweeps and launchers are train.py's"),
    (["hydra/launcher=local"], "hydra/launcher=local: sweeps and launchers"),
    (["hydra.mode=MULTIRUN", "seed=1"], "hydra.mode=MULTIRUN: sweeps and launchers"),
    (["trainer.epoch=3"], r"train overrides \['trainer.epoch=3'\]: Could not override 'trainer.epoch'"),
    (["method=nope"], r"Could not find 'method/nope'\n\nAvailable options in 'method':(?s:(?!Config search path).)*$"),
    (["debug=fast", "logger.mode=offline"], "choose the logger too"),
])
def test_overrides_that_cannot_be_one_job_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        api.train_config(overrides)
    assert not HydraConfig.initialized()


def test_the_run_folder_is_named_once(tmp_path):
    assert api.train_config([f"hydra.run.dir={tmp_path}/a"]).paths.output_dir == str(tmp_path / "a")
    with pytest.raises(ConfigError, match="run_dir='b' and the override hydra.run.dir both name the run folder"):
        api.train_config([f"hydra.run.dir={tmp_path}/a"], run_dir="b")


def test_a_run_folder_named_with_an_interpolation_is_resolved_once_and_recorded_so(tmp_path):
    run = api.train(QUICK + ["trainer.save_checkpoints=false"], run_dir=tmp_path / "${hydra:job.name}-${now:%f}")
    assert run.dir.parent == tmp_path and run.dir.name.startswith("train-") and run.dir.is_dir()
    hydra = yaml.safe_load((run.dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["output_dir"] == hydra["run"]["dir"] == str(run.dir)  # the folder, not ${now:%f}
    for run_dir, overrides in ((tmp_path / "a${b}", []), (tmp_path / "a${b", []), (None, ["hydra.run.dir=/x/${b}"])):
        with pytest.raises(ConfigError, match=r"(run_dir='.*'|hydra.run.dir): .*\(a \$\{...\} in the run folder's name "
                                              r"is an interpolation, as in hydra.run.dir\)"):
            api.train_config(overrides, run_dir)


def test_a_refused_config_raises_and_leaves_no_hydra_settings_behind(tmp_path):
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        api.train(QUICK + ["trainer.batch_size=0"], run_dir=tmp_path / "run")
    assert not HydraConfig.initialized()
    assert (tmp_path / "run" / "refused.txt").is_file()  # as train.py leaves it: a report lists the job as failed


def test_overrides_given_as_a_generator_or_a_tuple_are_all_applied(runs, tmp_path):
    _, (_, run) = runs
    result = api.evaluate(run.dir, (o for o in ["protocol=[knn]", "evaluation.knn.k=7"]))
    assert result["settings"]["knn"]["evaluation"]["knn"]["k"] == 7
    cfg = api.train_config((o for o in ["method=dcl", "sampler.tau_plus=0.3"]), run_dir=tmp_path)
    assert cfg.sampler.tau_plus == 0.3 and api.train_config(("method=dcl", "sampler.tau_plus=0.3"), tmp_path) == cfg


def test_evaluate_refuses_a_second_name_for_what_it_evaluates(runs):
    _, (run, _) = runs
    with pytest.raises(ConfigError, match=r"run=elsewhere names what to evaluate"):
        api.evaluate(run.dir, ["run=elsewhere"])
    with pytest.raises(ConfigError, match=r"checkpoint=best names what to evaluate"):
        api.evaluate(run.dir / "checkpoints" / "last.pt", ["checkpoint=best"])
    # evaluate.py's hint: the run's data set is moved with dataset_root=, not with its dataset.* keys
    with pytest.raises(ConfigError, match=r"^dataset.root=/data is not an evaluate.py setting. The run's own data "
                                          r"set is moved with dataset_root=<dir>"):
        api.evaluate(run.dir, ["dataset.root=/data"])


def test_the_api_composes_beside_the_callers_own_hydra(tmp_path, monkeypatch):
    """A notebook that uses Hydra itself (hydra.initialize()), a Hydra app of one's own that trains: the api
    composes its own config tree, and the caller's Hydra comes back as it was."""
    (tmp_path / "mine.yaml").write_text("x: 1\n")
    with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path)):
        callers = GlobalHydra.instance().hydra
        assert api.train_config(["method=dcl", "sampler.tau_plus=0.2"]).sampler.tau_plus == 0.2
        assert GlobalHydra.instance().hydra is callers
        assert compose(config_name="mine", overrides=["x=2"]).x == 2  # the caller's own Hydra still composes
    seen = []

    @hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="mine")
    def app(cfg):
        seen.append(api.train(QUICK + ["trainer.save_checkpoints=false", f"seed={cfg.x}"], run_dir=tmp_path / "run"))
        seen.append(HydraConfig.get().runtime.output_dir)  # the app's own settings again

    monkeypatch.setattr(sys, "argv", ["app.py", f"hydra.run.dir={tmp_path / 'app'}", "hydra/job_logging=none",
                                      "hydra/hydra_logging=none", "hydra.output_subdir=null"])
    app()
    run, app_dir = seen
    assert app_dir == str(tmp_path / "app") and run.metrics["step"] == 2
    assert OmegaConf.load(run.dir / ".hydra" / "config.yaml").seed == 1
    record = yaml.safe_load((run.dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert record["job"]["name"] == "train" and record["runtime"]["output_dir"] == str(tmp_path / "run")


@pytest.mark.slow
def test_the_record_is_the_one_train_py_writes(tmp_path):
    """train.py and api.train with the same overrides: the same .hydra/ record but for the folder's name,
    and each entry point reads the other's run."""
    overrides = QUICK + ["method=dcl"]
    proc = run_cli("train.py", overrides + [f"hydra.run.dir={tmp_path / 'cli'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = api.train(overrides + [f"hydra.run.dir={tmp_path / 'api'}"])
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        cli_text = (tmp_path / "cli" / ".hydra" / name).read_text()
        assert (run.dir / ".hydra" / name).read_text() == cli_text.replace(str(tmp_path / "cli"), str(run.dir)), name
    assert api.evaluate(tmp_path / "cli", ["protocol=[knn]"])["protocols"]["knn"]["knn/top1"] == pytest.approx(
        run.metrics["knn/top1"])
    proc = run_cli("evaluate.py", [f"run={run.dir}", "protocol=[knn]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run.dir / "eval.json").read_text())["protocols"]["knn"]["knn/top1"] == pytest.approx(
        run.metrics["knn/top1"])


def test_hydra_job_env_set_is_set_while_the_job_runs_and_chdir_is_refused(tmp_path, monkeypatch):
    """As Hydra's run_job: hydra.job.env_set's variables are the job's (the caller's come back after it);
    hydra.job.chdir=true would move the caller's working directory, so it is refused by name."""
    import cl_suite.engine.trainer as trainer_module
    import cl_suite.run_evaluation as evaluation_module

    seen = []
    monkeypatch.setattr(trainer_module, "train", lambda cfg: seen.append(
        (os.environ.get("CL_SUITE_A"), os.environ.get("CL_SUITE_B"))) or {"step": 0})
    monkeypatch.setattr(evaluation_module, "evaluate_run", lambda cfg: seen.append(os.environ.get("CL_SUITE_A")))
    monkeypatch.setenv("CL_SUITE_A", "caller's")
    monkeypatch.delenv("CL_SUITE_B", raising=False)
    api.train(["+hydra.job.env_set.CL_SUITE_A=for_the_job", "+hydra.job.env_set.CL_SUITE_B=${hydra:job.name}"],
              run_dir=tmp_path / "run")
    api.evaluate(tmp_path, ["+hydra.job.env_set.CL_SUITE_A=for_evaluation"])
    assert seen == [("for_the_job", "train"), "for_evaluation"]
    assert os.environ["CL_SUITE_A"] == "caller's" and "CL_SUITE_B" not in os.environ
    with pytest.raises(ConfigError, match="hydra.job.chdir=true: an api job runs in this process's working directory"):
        api.train(["hydra.job.chdir=true"], run_dir=tmp_path / "run")
