"""Files in a run folder are not trusted: a checkpoint is loaded without running code in it and checked
against its checksum, and evaluate.py instantiates only the suite's own targets from a run config.

Real files throughout: crafted pickles whose unpickling writes a marker file, a real tiny run's
checkpoints with one bit flipped, a real run config with a foreign ``_target_``, and a save killed
with SIGKILL half-way through.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.trainer import train
from helpers import CONF, ROOT, TINY, compose_train, user_module

STEPS_PER_EPOCH = 128 // 32  # synthetic: 4 classes x 32 training images
RUN = TINY + ["dataset=synthetic", "trainer.batch_size=32", "trainer.epochs=2", "trainer.eval_at_init=false",
              "trainer.eval_every_epochs=0", "trainer.checkpoint_every_epochs=1", "trainer.keep_last_checkpoints=3"]


class WritesMarker:
    """Unpickling this runs ``exec``: it writes ``marker``. What a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran while unpickling')",)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch run saved after each epoch (step_4, step_8 = last.pt), with the config train.py writes."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_train(RUN, run_dir)
    train(cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    folder = to / "checkpoints"
    (folder / "last.pt").unlink()  # copytree copied the hard link as a file: link it again, as in a run dir
    os.link(ckpt.step_checkpoints(folder)[-1], folder / "last.pt")
    return to


def crafted_checkpoint(path: Path, marker: Path, writer: str) -> Path:
    """A file shaped like a checkpoint whose unpickling runs code, in torch's zip format or in its older
    plain-pickle format (torch.load reads both)."""
    payload = {"method": WritesMarker(marker), "step": 0, "epoch": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path, _use_new_zipfile_serialization=writer == "zip")
    return path


def evaluate(run_dir: Path, *overrides: str):
    from cl_suite.run_evaluation import evaluate_run
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=[f"run={run_dir}", "protocol=knn", "wandb=false", *overrides])
    return evaluate_run(cfg)


def assert_refused_as_code(err: pytest.ExceptionInfo, path: Path) -> None:
    assert err.type is ckpt.CheckpointError
    message = str(err.value)
    assert f"checkpoint {str(path)!r} refused" in message and "execute arbitrary code" in message
    assert "weights_only=False" not in message.replace("weights_only=True", "")  # never suggests the unsafe load


# ---- 1. loading a checkpoint never runs code ----

def test_planted_last_checkpoint_is_refused_by_resume_auto_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    planted = crafted_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", marker, "zip")
    with pytest.raises(Exception) as err:
        train(compose_train(RUN, tmp_path / "run"))  # resume=auto reads checkpoints/last.pt
    assert not marker.exists()  # first: the payload did not run
    assert_refused_as_code(err, planted)
    assert re.search(r"it names the global (builtins\.)?exec\b", str(err.value))  # what it asked for
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("writer", ["zip", "legacy"])
def test_crafted_file_passed_as_resume_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "marker"
    crafted = crafted_checkpoint(tmp_path / "downloaded.pt", marker, writer)
    with pytest.raises(Exception) as err:
        train(compose_train(RUN + [f"resume={crafted}"], tmp_path / "run"))
    assert not marker.exists()
    assert_refused_as_code(err, crafted)


def test_crafted_file_passed_to_evaluate_is_refused_and_runs_nothing(finished_run, tmp_path):
    marker = tmp_path / "marker"
    crafted = crafted_checkpoint(tmp_path / "best.pt", marker, "zip")
    with pytest.raises(Exception) as err:
        evaluate(finished_run, f"checkpoint={crafted}")
    assert not marker.exists()
    assert_refused_as_code(err, crafted)
    assert not (finished_run / "eval.json").exists()


def test_checkpoints_are_plain_data_and_checkpoints_of_the_earlier_format_still_resume(finished_run, tmp_path):
    """New files load with torch's weights-only loader and no allow-list at all. A checkpoint as the suite
    saved it before (the numpy RNG state as an array, no checksum) still resumes, with a warning."""
    last = finished_run / "checkpoints" / "last.pt"
    plain = torch.load(last, weights_only=True)
    assert isinstance(plain["rng"]["numpy"][1], list) and plain["config"]["dataset"]["name"] == "synthetic"
    assert plain[ckpt.CHECKSUM]["sha256"] == ckpt.state_digest({k: v for k, v in plain.items() if k != ckpt.CHECKSUM})

    earlier = dict(plain)
    del earlier[ckpt.CHECKSUM]
    earlier["rng"] = {**plain["rng"], "numpy": (plain["rng"]["numpy"][0], np.array(plain["rng"]["numpy"][1],
                                                dtype=np.uint32), *plain["rng"]["numpy"][2:])}
    earlier_file = tmp_path / "earlier.pt"
    torch.save(earlier, earlier_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = train(compose_train([o for o in RUN if "epochs=2" not in o] + ["trainer.epochs=3",
                                                                               f"resume={earlier_file}"],
                                    tmp_path / "run"))
    assert any("has no checksum" in str(w.message) for w in caught)
    assert final["step"] == 3 * STEPS_PER_EPOCH


# ---- 2. evaluate.py instantiates only the suite's own targets ----

@pytest.mark.parametrize("key, value, named", [
    ("dataset", {"_target_": "subprocess.getoutput", "cmd": "touch {marker}"},
     "dataset._target_: 'subprocess.getoutput' is not one of the suite's own targets"),
    # A cl_suite prefix is not enough: Hydra would walk through a module's imports to os.system.
    ("dataset", {"_target_": "cl_suite.data.cifar.os.system", "command": "touch {marker}"},
     "dataset._target_: 'cl_suite.data.cifar.os.system' is not a class or function of the suite"),
    # ... also to a Python function there (os.makedirs is one, not a builtin): only what the package defines.
    ("dataset", {"_target_": "cl_suite.data.cifar.os.makedirs", "name": "{marker}"},
     "dataset._target_: 'cl_suite.data.cifar.os.makedirs' is not a class or function of the suite's config "
     "packages (it is os)"),
    # A resolver that builds a node (with its own _target_) when the config is resolved.
    ("dataset", "${{oc.create:{{_target_: subprocess.getoutput, cmd: 'touch {marker}'}}}}",
     "dataset: \"${oc.create:"),
    # A node built by an allowed resolver (oc.select's default) when resolved: caught after resolution.
    ("dataset", "${{oc.select:nowhere,{{_target_: subprocess.getoutput, cmd: 'touch {marker}'}}}}",
     "dataset._target_: 'subprocess.getoutput'"),
    # A resolver that parses a string into a node (its interpolations resolved too): refused as written.
    ("dataset", "${{oc.decode:'{{_target_: subprocess.getoutput, cmd: touch {marker}}}'}}",
     "calls the resolver 'oc.decode', which is not allowed"),
    # A resolver whose name is computed (here: oc.create, out of oc.select's default).
    ("dataset", "${{${{oc.select:nowhere,oc.create}}:{{_target_: subprocess.getoutput, cmd: 'touch {marker}'}}}}",
     "has an interpolation with a computed name"),
    ("backbone", {"_target_": "cl_suite.models.SmallConvNet",
                  "widths": [8, {"_target_": "subprocess.getoutput", "_args_": ["touch {marker}"]}]},
     "backbone.widths[1]._target_: 'subprocess.getoutput'"),
    # The suite's own classes, but as another object's argument: a CSVLogger would write {marker}.
    ("backbone", {"_target_": "cl_suite.models.SmallConvNet",
                  "in_channels": {"_target_": "cl_suite.engine.logger.CSVLogger", "run_dir": "{marker}",
                                  "filename": "x.csv"}},
     "backbone.in_channels._target_: 'cl_suite.engine.logger.CSVLogger' is not at the top of a config group"),
    # ... or in another group's slot
    ("dataset", {"_target_": "cl_suite.engine.logger.CSVLogger", "run_dir": "{marker}"},
     "dataset._target_: 'cl_suite.engine.logger.CSVLogger' is not allowed there (only cl_suite.data.*)"),
    ("backbone", {"_target_": "torch.optim.SGD", "params": []},
     "backbone._target_: 'torch.optim.SGD' is not allowed there"),
    ("dataset", {"_target_": "cl_suite.data.load_digits", "_partial_": True},
     "dataset._partial_: Hydra's _partial_ is not allowed in a run config"),
    # ... also where it only appears once resolved
    ("dataset", "${{oc.select:nowhere,{{_target_: cl_suite.data.load_digits, _partial_: true}}}}",
     "dataset._partial_: Hydra's _partial_ is not allowed in a run config"),
])
def test_run_config_naming_foreign_code_is_refused_before_anything_is_instantiated(finished_run, tmp_path, key,
                                                                                      value, named):
    marker = tmp_path / "marker"
    run_dir = copy_run(finished_run, tmp_path / "run")
    config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    config[key] = with_marker(value, marker)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))

    from cl_suite.engine.validation import ConfigError
    with pytest.raises(Exception) as err:
        evaluate(run_dir)
    assert not marker.exists()  # first: nothing ran
    assert err.type is ConfigError
    message = str(err.value)
    assert named in message and "Nothing was instantiated" in message
    assert str(run_dir / ".hydra" / "config.yaml") in message
    assert not (run_dir / "eval.json").exists()


@pytest.mark.parametrize("value, named", [
    ("${oc.dict.values:nowhere}", "dataset.split_seed: ${oc.dict.values:nowhere} (ConfigKeyError raised while "
                                  "resolving interpolation: Key not found: 'nowhere')"),
    ("${nowhere.at_all}", "dataset.split_seed: ${nowhere.at_all} (Interpolation key 'nowhere.at_all' not found)"),
    ("???", "dataset.split_seed: ??? (Missing mandatory value: dataset.split_seed)"),
])
def test_run_config_with_unresolvable_values_is_refused_naming_them(finished_run, tmp_path, value, named):
    run_dir = copy_run(finished_run, tmp_path / "run")
    config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    config["dataset"]["split_seed"] = value
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(config))

    from cl_suite.engine.validation import ConfigError
    with pytest.raises(ConfigError) as err:
        evaluate(run_dir)
    message = str(err.value)
    assert "values of this run config cannot be resolved" in message and named in message, message
    assert not (run_dir / "eval.json").exists()


def with_marker(value, marker: Path):
    if isinstance(value, dict):
        return {k: with_marker(v, marker) for k, v in value.items()}
    if isinstance(value, list):
        return [with_marker(v, marker) for v in value]
    return value.format(marker=marker) if isinstance(value, str) else value


def test_every_target_of_the_suites_own_configs_is_allowed():
    """The allow-list is not stale: each _target_ under conf/ passes in its own group's slot, so real run
    folders evaluate (conf/logger/loggers/* are the loggers of logger=many)."""
    from cl_suite.run_evaluation import _target_problem, _target_slot
    problems, checked = {}, 0
    for path in CONF.rglob("*.yaml"):
        group = path.relative_to(CONF).parts[0]
        for target in re.findall(r"_target_:\s*([\w.]+)", path.read_text()):
            slot = "logger.loggers.x._target_" if path.parent.name == "loggers" else f"{group}._target_"
            allowed = _target_slot(slot)
            problems[str(path)] = "no slot" if allowed is None else _target_problem(target, allowed)
            checked += 1
    assert checked > 20 and {k: v for k, v in problems.items() if v} == {}


def test_a_trusted_module_vouches_only_for_what_it_defines(tmp_path, monkeypatch):
    """trust_targets=[<module>] allows the classes and functions defined in that module, not a function it
    imports from elsewhere (subprocess.getoutput reached as <module>.getoutput), and not a module whose
    name merely starts with the trusted one (importing it would already run its code)."""
    from cl_suite.engine.validation import ConfigError
    from cl_suite.run_evaluation import check_run_config

    marker = tmp_path / "marker"
    with user_module(tmp_path, monkeypatch, "users_methods", "from subprocess import getoutput\n\n"
                                                               "class Mine:\n    pass\n"), \
            user_module(tmp_path, monkeypatch, "users_methods_evil", f"open({str(marker)!r}, 'w').write('ran')\n"
                                                                     "class Mine:\n    pass\n"):
        def check(target):
            check_run_config(OmegaConf.create({"method": {"_target_": target}}), tmp_path / "config.yaml",
                             ("users_methods",))

        check("users_methods.Mine")
        with pytest.raises(ConfigError, match="'users_methods.getoutput' is not a class or function defined in the "
                                              "trusted users_methods"):
            check("users_methods.getoutput")
        with pytest.raises(ConfigError, match="'users_methods_evil.Mine' is not one of the suite's own targets"):
            check("users_methods_evil.Mine")
        assert not marker.exists()

# ---- 3. checksums ----

def read_weights_only(path: Path) -> dict:
    """torch's weights-only load of a file this test wrote (numpy arrays allowed, as older saves hold them)."""
    with torch.serialization.safe_globals([np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                                           np.dtypes.UInt32DType]):
        return torch.load(path, weights_only=True)


def flip_one_bit_in_a_weight(path: Path) -> str:
    """Flip the lowest bit of one float inside a weight tensor's data, in place; the file stays a valid
    archive (torch does not check the zip CRCs), so only the checksum can tell. Returns the tensor's key."""
    state = read_weights_only(path)
    key, weight = next((k, v) for k, v in state["method"].items() if v.dtype == torch.float32 and v.numel() > 100)
    data = bytearray(path.read_bytes())
    start = bytes(data).find(weight.numpy().tobytes())
    assert start > 0 and bytes(data).count(weight.numpy().tobytes()) == 1
    data[start + 4 * (weight.numel() // 2)] ^= 0x01
    path.write_bytes(bytes(data))
    flipped = read_weights_only(path)["method"][key]  # still loads ...
    assert (flipped != weight).sum() == 1 and torch.isfinite(flipped).all()  # ... one weight slightly off
    return key


def test_bit_flip_in_the_last_checkpoint_is_refused_on_resume_naming_the_intact_one(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    folder = run_dir / "checkpoints"
    last, previous = folder / "last.pt", ckpt.step_checkpoints(folder)[0]
    flip_one_bit_in_a_weight(last)
    damaged = last.read_bytes()

    with pytest.raises(ckpt.CheckpointError) as err:
        train(compose_train(RUN, run_dir))  # resume=auto reads last.pt
    message = str(err.value)
    assert f"checkpoint {str(last)!r} is corrupted" in message and "does not match the checksum" in message
    assert f"Intact earlier checkpoints of this run: {previous.name};" in message
    assert f"resume={previous}" in message
    assert last.read_bytes() == damaged and ckpt.step_checkpoints(folder)[-1].samefile(last)  # nothing overwritten


def test_bit_flip_is_refused_by_evaluate_naming_the_intact_checkpoint(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    folder = run_dir / "checkpoints"
    previous = ckpt.step_checkpoints(folder)[0]
    flip_one_bit_in_a_weight(folder / "last.pt")
    with pytest.raises(ckpt.CheckpointError) as err:
        evaluate(run_dir)
    message = str(err.value)
    assert "last.pt' is corrupted" in message and f"checkpoint={previous}" in message
    assert not (run_dir / "eval.json").exists()
    assert evaluate(run_dir, f"checkpoint={previous}")["step"] == STEPS_PER_EPOCH  # and that one evaluates


# ---- 4. temporary files of a killed save ----

def test_temporary_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    """A save killed (SIGKILL) half-way leaves its temporary file; the next save removes it, but not a
    temporary file newer than that save's start (another save in progress) nor files that are not ours."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from cl_suite.files import atomic_write
        def write(f):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write(Path({str(folder / "step_000000004.pt")!r}), write)
    """)], env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}, capture_output=True,
       timeout=300)
    assert killed.returncode == -9
    orphans = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].name.startswith(".step_000000004.pt.")
    link = folder / ".last.pt.12345.link"  # an _atomic_link killed between link and rename
    link.write_bytes(b"")
    in_progress = folder / ".step_000000008.pt.abcd1234.tmp"
    in_progress.write_bytes(b"")
    future = time.time() + 3600
    os.utime(in_progress, (future, future))  # modified after the next save starts: someone is writing it
    not_ours = [folder / "notes.tmp", folder / ".step_000000004.pt.bak"]
    for path in not_ours:
        path.write_bytes(b"")

    train(compose_train(RUN + ["trainer.max_steps=2"], tmp_path / "run"))
    assert not orphans[0].exists() and not link.exists()
    assert in_progress.exists() and all(p.exists() for p in not_ours)
    assert ckpt.load_checkpoint(folder / "last.pt")["step"] == 2


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("probe"), "'probe' is missing"),
    (lambda s: s.update(step=-50), "its step -50 is not a whole number >= 0"),
    (lambda s: s.update(step="abc"), "its step 'abc' is not a whole number >= 0"),
    (lambda s: s["scheduler"].update(optimizer="hijacked"), "lr schedule state has keys this run's has not"),
    (lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(3, 3, 3)),
     "optimizer state 'momentum_buffer' has shape (3, 3, 3)"),
    (lambda s: s["probe_optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3, 3)),
     "online probe's optimizer state 'exp_avg' has shape (3, 3, 3)"),
    (lambda s: s.update(rng={"torch": "nonsense"}), "random number generator state does not fit"),
])
def test_a_checkpoint_with_a_valid_checksum_but_an_unusable_state_is_refused(finished_run, tmp_path, change, named):
    """Anyone can recompute the checksum: the structure is checked before any of it is applied."""
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    state.pop(ckpt.CHECKSUM)
    change(state)
    forged = tmp_path / "forged.pt"
    ckpt.save_checkpoint(forged, state)  # a fresh, valid checksum
    with pytest.raises(ckpt.CheckpointError, match=re.escape(named)):
        train(compose_train(RUN + [f"resume={forged}"], tmp_path / "run"))
