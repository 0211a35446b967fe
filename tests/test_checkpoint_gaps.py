"""Checkpoint files at the level of single saves and loads, for what the end-to-end tests of
test_resume.py and test_trust_checkpoints.py do not reach: what a save refuses, what the checksum
covers, how many step files pruning keeps, and which refusal a damaged or forged file gets.

Small hand-made states throughout (a checkpoint only needs a ``method`` mapping to load), saved and
loaded by the suite's own functions on real files: each test takes milliseconds.
"""
import collections
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_suite.engine import checkpoint as ckpt


def small_state(**extra) -> dict:
    """A state with every kind of value a training checkpoint holds: tensors, nested dicts, a list,
    the numpy RNG state's tuple, strings, ints, floats, a bool, None."""
    return {"method": {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
            "config": {"dataset": {"name": "synthetic"}, "seed": 7, "optimizer": {"lr": 0.5, "nesterov": False},
                       "backbone": {"widths": [8, 16], "pretrained_file": None}},
            "rng": {"numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.0)},
            "step": 12, **extra}


def raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


# ---- saving ----

def test_a_state_that_cannot_be_loaded_back_safely_is_not_saved(tmp_path):
    """An object weights_only cannot rebuild would make the file unloadable: the save fails now, naming
    where the object is, and leaves neither the file nor a temporary file behind."""
    path = tmp_path / "checkpoints" / "step_000000012.pt"
    with pytest.raises(ckpt.CheckpointError, match=r"cannot save state\['extra'\]\['where'\]: a pathlib\."):
        ckpt.save_checkpoint(path, small_state(extra={"where": Path("/somewhere")}))
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


def test_a_state_may_not_bring_its_own_checksum_record(tmp_path):
    """save_checkpoint writes the checksum record itself; a state that already has that key (a loaded
    checkpoint saved again without load_checkpoint) would lose that value silently."""
    with pytest.raises(ValueError, match="may not have a 'checksum' key"):
        ckpt.save_checkpoint(tmp_path / "a.pt", small_state(checksum="mine"))
    assert not (tmp_path / "a.pt").exists()


def test_a_saved_state_loads_back_as_the_same_plain_data(tmp_path):
    """numpy values become lists and numbers, and nothing else changes: tuples stay tuples (the RNG state),
    a state_dict's OrderedDict keeps its _metadata (module versions for load_state_dict)."""
    method = collections.OrderedDict(weight=torch.ones(3), scale=np.float32(1.5))
    method._metadata = {"": {"version": 2}}
    ckpt.save_checkpoint(tmp_path / "a.pt", small_state(method=method))
    back = ckpt.load_checkpoint(tmp_path / "a.pt")
    assert back["rng"]["numpy"] == ("MT19937", [0, 1, 2, 3], 2, 0, 0.0)
    assert type(back["rng"]["numpy"]) is tuple and type(back["method"]["scale"]) is float
    assert type(back["method"]) is collections.OrderedDict and back["method"]._metadata == {"": {"version": 2}}
    assert ckpt.CHECKSUM not in back


# ---- the checksum covers every value, not only the tensors ----

def set_config_string(state):
    state["config"]["dataset"]["name"] = "synthetix"


def set_int(state):
    state["step"] = 13


def set_float(state):
    state["config"]["optimizer"]["lr"] = 0.25


def set_bool(state):
    state["config"]["optimizer"]["nesterov"] = True


def set_list_item(state):
    state["config"]["backbone"]["widths"][1] = 32


def list_to_tuple(state):
    state["config"]["backbone"]["widths"] = tuple(state["config"]["backbone"]["widths"])


def rename_key(state):
    state["config"]["seeds"] = state["config"].pop("seed")


def set_none(state):
    state["config"]["backbone"]["pretrained_file"] = "/elsewhere.pt"


def set_dtype(state):
    state["method"]["weight"] = state["method"]["weight"].double()


@pytest.mark.parametrize("change", [set_config_string, set_int, set_float, set_bool, set_list_item, list_to_tuple,
                                    rename_key, set_none, set_dtype])
def test_a_change_to_any_value_does_not_match_the_checksum(tmp_path, change):
    """A bit flip can land in the config (a data set's name, a learning rate) or the step as well as in a
    weight: each kind of value is part of the checksum, so the file is refused as corrupted."""
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, small_state())
    state = raw(path)
    change(state)  # the saved checksum record is kept as it was
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="is corrupted: its content does not match the checksum"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("record", ["0" * 64, {"scheme": "md5", "sha256": "x"}, {"scheme": "sha256-v1"},
                                    {"scheme": "sha256-v1", "sha256": 5}, ["sha256-v1"]])
def test_a_checksum_record_of_another_form_is_refused_as_corrupted(tmp_path, record):
    """A checksum record that is not this suite's (a damaged or forged file) is refused with the file's
    name, not with a Python error from reading the record."""
    path = tmp_path / "a.pt"
    torch.save({**small_state(), ckpt.CHECKSUM: record}, path)
    with pytest.raises(ckpt.CheckpointError, match="is corrupted: its checksum record is not a sha256-v1 record"):
        ckpt.load_checkpoint(path)


def test_a_checksum_of_another_scheme_is_not_trusted_even_when_it_matches(tmp_path):
    """A record of another scheme is not this suite's checksum, whatever digest it holds."""
    path = tmp_path / "a.pt"
    ckpt.save_checkpoint(path, small_state())
    state = raw(path)
    state[ckpt.CHECKSUM]["scheme"] = "sha256-v0"
    torch.save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="is not a sha256-v1 record"):
        ckpt.load_checkpoint(path)


# ---- which refusal a damaged file gets ----

def test_damaged_pickle_data_is_unreadable_not_foreign_code(tmp_path):
    """An opcode torch's weights-only unpickler does not know (damaged data) is a file that cannot be read;
    the warning about code is kept for files that name a global."""
    path = tmp_path / "a.pt"
    torch.save({"method": {}}, path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = next(name for name in files if name.endswith("data.pkl"))
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, b"\x80\x02}q\x00\xff." if name == data else content)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert "cannot be read" in message and "execute arbitrary code" not in message
    assert "weights_only=False" not in message


# ---- pruning keeps trainer.keep_last_checkpoints files ----

def test_pruning_keeps_every_step_file_until_there_are_more_than_keep_last(tmp_path):
    """With fewer saves than keep_last nothing is deleted; from then on the newest keep_last remain."""
    folder = tmp_path / "checkpoints"
    for step in range(1, 5):
        ckpt.save_run_checkpoint(folder, small_state(step=step), step, keep_last=5)
        assert [ckpt.load_checkpoint(p)["step"] for p in ckpt.step_checkpoints(folder)] == list(range(1, step + 1))
    for step in range(5, 8):
        ckpt.save_run_checkpoint(folder, small_state(step=step), step, keep_last=5)
    assert [ckpt.load_checkpoint(p)["step"] for p in ckpt.step_checkpoints(folder)] == [3, 4, 5, 6, 7]
    assert (folder / ckpt.LAST).samefile(ckpt.step_checkpoints(folder)[-1])


# ---- the structure of a checkpoint whose checksum is valid (anyone can recompute one) ----

def usable_state(**changes) -> dict:
    state = {"method": {}, "probe": {}, "optimizer": {}, "probe_optimizer": {}, "scheduler": {}, "scaler": {},
             "history": {"epochs": []}, "rng": {}, "step": 0}
    state.update(changes)
    return state


def test_a_usable_state_at_step_zero_passes_the_structure_check(tmp_path):
    ckpt.check_training_state(tmp_path / "a.pt", usable_state())


@pytest.mark.parametrize("changes, named", [
    ({"history": None}, "'history' is a NoneType, not a mapping"),
    ({"scaler": []}, "'scaler' is a list, not a mapping"),
    ({"step": True}, "its step True is not a whole number >= 0"),
    ({"step": -1}, "its step -1 is not a whole number >= 0"),
    ({"step": 2.0}, "its step 2.0 is not a whole number >= 0"),
    ({"history": {"epochs": {"1": {}}}}, "its history's 'epochs' is not a list"),
])
def test_a_state_with_a_part_of_the_wrong_kind_is_refused(tmp_path, changes, named):
    with pytest.raises(ckpt.CheckpointError, match=re.escape(named)):
        ckpt.check_training_state(tmp_path / "a.pt", usable_state(**changes))


def test_a_missing_history_is_refused_by_name(tmp_path):
    state = usable_state()
    del state["history"]
    with pytest.raises(ckpt.CheckpointError, match="'history' is missing"):
        ckpt.check_training_state(tmp_path / "a.pt", state)


def test_optimizer_state_shapes_are_checked_in_every_group_and_step_counts_pass(tmp_path):
    """Adam's per-parameter step count is a scalar tensor: not a shape mismatch (a valid AdamW checkpoint
    resumes). A momentum of another shape is refused in whichever param group it is."""
    first, second = torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(4))
    adam = torch.optim.AdamW([{"params": [first]}, {"params": [second], "weight_decay": 0.0}])
    (first.sum() + second.sum()).backward()
    adam.step()
    assert adam.state[second]["step"].dim() == 0
    ckpt.check_optimizer_state(tmp_path / "a.pt", adam, "optimizer")

    sgd = torch.optim.SGD([{"params": [first]}, {"params": [second]}], lr=0.1, momentum=0.9)
    sgd.state[second]["momentum_buffer"] = torch.zeros(5)
    with pytest.raises(ckpt.CheckpointError, match=re.escape("'momentum_buffer' has shape (5,) for a parameter of "
                                                             "shape (4,)")):
        ckpt.check_optimizer_state(tmp_path / "a.pt", sgd, "optimizer")


# ---- the intact checkpoints an error names ----

def damage(path: Path) -> None:
    """Change a weight of a saved checkpoint in place, keeping its old checksum (a bit flip)."""
    state = raw(path)
    state["method"]["weight"][0, 0] += 1
    torch.save(state, path)


def test_the_error_names_the_intact_checkpoints_newest_first_and_never_a_damaged_one(tmp_path):
    """Steps 1-4, 4 (= last.pt) and 3 damaged, 2 saved before checksums existed: the intact ones are 2 and
    1, and the way on is the newest of them."""
    folder = tmp_path / "checkpoints"
    for step in range(1, 5):
        ckpt.save_run_checkpoint(folder, small_state(step=step), step, keep_last=5)
    step_1, step_2, step_3, step_4 = ckpt.step_checkpoints(folder)
    damage(step_4)
    damage(step_3)
    legacy = raw(step_2)
    del legacy[ckpt.CHECKSUM]
    torch.save(legacy, step_2)

    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(folder / ckpt.LAST)
    message = str(err.value)
    assert f"Intact earlier checkpoints of this run: {step_2.name}, {step_1.name};" in message
    assert f"resume={step_2} " in message and f"checkpoint={step_2})" in message


def test_a_checkpoint_refused_for_its_structure_is_not_named_as_its_own_way_out(tmp_path):
    """last.pt with a valid checksum and a missing part: the hint names the earlier step file, not the
    step file last.pt is a hard link to (the very file refused)."""
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        ckpt.save_run_checkpoint(folder, usable_state(step=step), step, keep_last=5)
    step_1, _ = ckpt.step_checkpoints(folder)
    state = ckpt.load_checkpoint(folder / ckpt.LAST)
    del state["probe"]
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_training_state(folder / ckpt.LAST, state)
    assert f"Intact earlier checkpoints of this run: {step_1.name};" in str(err.value)


# ---- settings added since a checkpoint was written ----

def test_added_defaults_fill_in_only_what_the_checkpoint_lacks():
    """A checkpoint that has a newer setting keeps its own value: the default is only for older files."""
    current = {"optimizer": {"_target_": "cl_suite.engine.optim.LARS", "clip_lr": False,
                             "trust_denominator": "update_norm"},
               "probe": {"optimizer": "adamw", "momentum": 0.9, "schedule": "constant"}}
    saved = {"optimizer": {"_target_": "cl_suite.engine.optim.LARS", "clip_lr": True},
             "probe": {"optimizer": "sgd", "momentum": 0.5}}
    out = ckpt.with_added_defaults(saved, current)
    assert out["optimizer"] == {"_target_": "cl_suite.engine.optim.LARS", "clip_lr": True,
                                "trust_denominator": "update_norm"}
    assert out["probe"] == {"optimizer": "sgd", "momentum": 0.5, "schedule": "constant"}
    assert saved["optimizer"] == {"_target_": "cl_suite.engine.optim.LARS", "clip_lr": True}  # not changed in place


# ---- atomic writes and untrusted YAML (cl_suite.files) ----

@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    """A save that fails (a full disk, a second Ctrl-C) keeps the previous metrics.json or checkpoint as it
    was, and removes its own temporary file."""
    from cl_suite.files import atomic_write

    path = tmp_path / "metrics.json"
    path.write_text("the previous record")

    def write(f):
        f.write(b"half a rec")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, write)
    assert path.read_text() == "the previous record"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_data_is_on_disk_before_the_name_points_at_it(tmp_path, monkeypatch):
    """fsync of the complete temporary file comes before the rename: after a power loss the name holds the
    old file or the whole new one, never an empty one."""
    import os

    from cl_suite import files

    events, fsync, replace = [], os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size, (tmp_path / "a.pt").exists()))
        fsync(fd)

    def record_replace(src, dst):
        events.append(("replace",))
        replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", record_fsync)
    monkeypatch.setattr(files.os, "replace", record_replace)
    files.atomic_write(tmp_path / "a.pt", lambda f: f.write(b"x" * 10_000))
    assert events == [("fsync", 10_000, False), ("replace",)]


def test_a_yaml_record_larger_than_any_run_record_is_refused_unread(tmp_path, monkeypatch):
    from cl_suite import files

    monkeypatch.setattr(files, "MAX_YAML_BYTES", 100)
    path = tmp_path / "config.yaml"
    path.write_text("seed: 0\n" + "# padding\n" * 20)
    with pytest.raises(ValueError, match="more than a run record ever holds"):
        files.load_untrusted_yaml(path)
    path.write_text("seed: 0\n")
    assert files.load_untrusted_yaml(path) == {"seed": 0}


def test_resume_names_a_run_dir_without_a_checkpoint_as_such(tmp_path):
    """resume=<run dir> of a run that saved nothing: said so, before any file is opened."""
    from cl_suite.errors import MissingPathError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(MissingPathError, match="is a directory without checkpoints/last.pt"):
        ckpt.resolve_checkpoint(tmp_path / "run")
    with pytest.raises(MissingPathError, match="no such checkpoint file or run dir"):
        ckpt.resolve_checkpoint(tmp_path / "nowhere.pt")
    ckpt.save_run_checkpoint(tmp_path / "run" / "checkpoints", small_state(), 12, keep_last=1)
    assert ckpt.resolve_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "last.pt"
