"""What a run tells its user: the thread count it chose, where max_steps ends it, and train.log."""
import json
import shlex

import pytest
import torch

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.threads import auto_threads, set_threads
from cl_suite.engine.trainer import train
from cl_suite.sweeps import parse_overrides
from helpers import TINY, compose_train


@pytest.mark.parametrize("env, device, cpus, load, expected", [
    ({"OMP_NUM_THREADS": "3"}, "cpu", 16, 0.0, 3),  # torchrun / a SLURM script decided
    ({}, "cuda", 16, 0.0, None),  # torch's default: the GPU does the work
    ({}, "cpu", 2, 0.1, 2),  # an idle 2-core machine: both cores
    ({}, "cpu", 2, 3.6, 1),  # a busy one: one thread, not two fighting others for the cores
    ({}, "cpu", 8, 2.4, 6),
    ({"OMP_NUM_THREADS": ""}, "cpu", 4, 0.0, 4),  # set but empty: ignored
])
def test_auto_threads_respects_the_environment_and_the_load(env, device, cpus, load, expected):
    threads, why = auto_threads(device, env=env, cpus=cpus, load=load)
    assert threads == expected and why


def test_an_explicit_thread_count_is_applied():
    before = torch.get_num_threads()
    try:
        assert set_threads(1, "cpu") == (1, "trainer.threads")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_step_limited_run_says_where_it_ends_and_records_the_same_epoch_everywhere(tmp_path, capsys):
    run = tmp_path / "runs, v2"  # a folder Hydra would read as a sweep (comma) and the shell would split
    final = train(compose_train(TINY + ["trainer.max_steps=3", "trainer.threads=1"], run))
    out = capsys.readouterr().out
    # digits: 1437 // 64 = 22 steps per epoch, so 3 steps are 0.1364 of an epoch
    assert "epoch 1/2 (trainer.max_steps=3 ends the run at epoch 0.136364)" in out
    assert "final evaluation at step 3 (0.1364 of 2 epochs)" in out
    assert "device cpu, 1 CPU thread(s) (trainer.threads; trainer.threads=1)" in out
    history = json.loads((run / "metrics.json").read_text())
    assert final["epoch"] == history["final"]["epoch"] == 0.1364
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 0.1364
    assert history["compute"]["threads"] == 1
    # train.log holds what the console showed, with time stamps: progress, the table, the folder.
    log = (run / "train.log").read_text()
    for line in ("][INFO] device cpu, 1 CPU thread(s)", "][INFO] epoch 1/2 (trainer.max_steps=3",
                 "kNN (frozen, un-augmented)", f"run folder: {run}"):
        assert line in log, line
    # The re-evaluate command is printed ready to paste: one shell word Hydra reads back as the folder.
    (hint,) = [line for line in out.splitlines() if line.startswith("run folder:")]
    words = shlex.split(hint.partition("re-evaluate: ")[2].rstrip(")"))
    assert words[:2] == ["python", "evaluate.py"] and len(words) == 3
    (override,) = parse_overrides(words[2:])
    assert override.key_or_group == "run" and override.value() == str(run)
