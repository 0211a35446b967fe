"""torchrun with 2 CPU processes (gloo): global negatives are exact, and a run writes one run dir."""
import os
import runpy
import shutil
import sys
from unittest import mock

import pytest
import torch

from cl_suite.distributed import GLOO_EXIT_ABORT, run_torchrun
from helpers import ROOT, TINY


def torchrun(args, timeout=900, env=None, fresh=None):
    """2 CPU processes under torchrun. A launch whose process aborted at exit, after its work, as torch's gloo
    threads sometimes make it (``cl_suite.distributed.run_torchrun``), runs once more, ``fresh`` (a folder the
    launch writes) removed first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return run_torchrun(cmd, f"torchrun {args[0]}", (lambda: shutil.rmtree(fresh)) if fresh is not None else None,
                        cwd=ROOT, env=env, timeout=timeout)


def one_and_two_processes(script_name, tmp_path):
    """Run a tests/ script as one process (this one: without torchrun's environment it joins no process
    group, as a plain `python script` would; the global generator is restored after it) and as 2 torchrun
    processes; load what each saved."""
    script = str(ROOT / "tests" / script_name)
    assert int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not torch.distributed.is_initialized()
    with torch.random.fork_rng(devices=[]), mock.patch.object(sys, "argv", [script, str(tmp_path / "one.pt")]):
        runpy.run_path(script, run_name="__main__")
    proc = torchrun([script, str(tmp_path / "two.pt")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")


@pytest.mark.slow
def test_every_sampler_on_two_processes_equals_one_process(tmp_path):
    """Loss and input gradients of uniform, DCL, HCL and ring with all-gathered candidates (and the ring in
    SimCLR's ``ring_code`` form, view-1 anchors only), and of MoCHi
    over a shared queue (its random mixing draws included), and the loss a schedule that follows it is told
    (``mean_over_processes``: the global batch's): 2 processes x B/2 against 1 x B (the 1-process numbers
    are checked against the papers' equations elsewhere)."""
    one, two = one_and_two_processes("ddp_sampler_script.py", tmp_path)
    assert set(one) == {"uniform", "debiased", "hard", "ring", "ring_code", "ring_code_simclr", "mixing_queue"}
    for name in one:
        for key in ("loss", "grad", "false_negative_rate", "mean_over_processes"):
            torch.testing.assert_close(two[name][key], one[name][key], rtol=1e-5, atol=1e-7, msg=f"{name} {key}")


@pytest.mark.slow
def test_full_training_step_on_two_processes_equals_one_process(tmp_path):
    """Method and online-probe parameters after one step, MoCo's and RINCE's key encoders and queues (the
    keys of both processes, in global batch order), IR's and CMC's banks, SupCon's bank; after two steps
    NNCLR's support set and KMCLR's prototypes and the parameters trained on their look-ups, and symmetric
    MoCo's two per-view queues (method.queue_per_view: each view's all-gathered keys in its own queue on
    every process; the second step masks the first one's keys of the same images); tolerance 1e-6
    (float32 summation order)."""
    one, two = one_and_two_processes("ddp_train_step_script.py", tmp_path)
    assert set(one) == {"simclr", "moco", "moco_per_view", "ir", "cmc", "supcon", "rince", "nnclr", "kmclr"}
    for name in one:
        for key in one[name]:
            torch.testing.assert_close(two[name][key], one[name][key], rtol=1e-6, atol=1e-6, msg=f"{name} {key}")
        assert {k.split(".")[0] for k in one[name]} == {"method", "probe"}
    assert int(one["moco"]["method.queue.ptr"]) == 8
    assert torch.equal(one["moco"]["method.queue.labels"][:8], torch.arange(8) % 3)
    per_view = one["moco_per_view"]
    for view in (0, 1):  # both steps' 8 keys of the view, FIFO of 12, image indices in global batch order
        assert int(per_view[f"method.queues.{view}.ptr"]) == 16 % 12
        assert per_view[f"method.queues.{view}.indices"].tolist() == [4, 5, 6, 7, 4, 5, 6, 7, 0, 1, 2, 3]
    assert not torch.allclose(per_view["method.queues.0.embeddings"], per_view["method.queues.1.embeddings"])
    assert int(one["nnclr"]["method.support_set.ptr"]) == 16 % 12  # both steps' 8 projections, FIFO of 12


@pytest.mark.slow
def test_torchrun_training_writes_one_run_dir_one_checkpoint_one_wandb_run(tmp_path):
    outputs = tmp_path / "outputs"
    args = [o for o in TINY if not o.startswith(("trainer.epochs", "logger"))] + [
        "logger=wandb", "trainer.max_steps=4", "trainer.eval_at_init=false", f"hydra.run.dir={outputs}/run"]
    proc = torchrun([str(ROOT / "train.py"), *args], env={"WANDB_MODE": "offline"}, fresh=outputs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = outputs / "run"
    assert [p.name for p in outputs.iterdir()] == ["run"]
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ["metrics.json", "train.log"]
    files = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in files] == ["best.pt", "last.pt", "step_000000004.pt"]
    assert len({p.stat().st_ino for p in files}) == 1  # one checkpoint: last and best are links to it
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 4
    # optimizer.lr is given for batch_size_reference images and scales with the global batch (64), not
    # with one process's share of it (32)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.06 * 64 / 256)
    assert "batch 64 images per step = 2 processes x 32; peak learning rate optimizer.lr 0.06 x 64/256 = 0.015" in (
        run / "train.log").read_text()
    (wandb_run,) = (run / "wandb").glob("offline-run-*")  # rank 0 only
    assert wandb_run.name.endswith(state["wandb_run_id"])


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_over_the_processes_is_one_error_line(tmp_path):
    proc = torchrun(["train.py", "trainer.batch_size=63", "logger=none", "trainer.max_steps=1",
                     f"hydra.run.dir={tmp_path / 'run'}"], timeout=600, env={"HYDRA_FULL_ERROR": ""})
    assert proc.returncode != 0
    assert "error: trainer.batch_size=63 is not allowed with 2 processes" in proc.stderr
    assert "data/loader.py" not in proc.stderr  # refused before the data is read, not deep in the loader
    # the folder says why it holds no run (a sweep report lists the job as refused with this reason)
    run = tmp_path / "run"
    assert "trainer.batch_size=63 is not allowed" in (run / "refused.txt").read_text()
    assert (run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_a_launch_that_aborts_at_exit_runs_once_more(tmp_path, capsys):
    """The harness's answer to torch's gloo exit-time abort (``GLOO_EXIT_ABORT``): the first launch's rank 1
    aborts after its work, as torch does, and the launch runs once more in a fresh folder; any other failure
    is not retried."""
    script = tmp_path / "abort_once.py"
    script.write_text(
        "import os, sys\nfrom pathlib import Path\n"
        "out = Path(sys.argv[1]); marker = Path(sys.argv[2])\n"
        "out.mkdir(exist_ok=True)\n"
        "(out / f'rank{os.environ[\"RANK\"]}').write_text(os.environ['TORCHELASTIC_RESTART_COUNT'])\n"
        "if os.environ['RANK'] == '1' and not marker.exists():\n"
        "    marker.write_text('aborted')\n"
        f"    sys.stderr.write({GLOO_EXIT_ABORT!r} + '\\n'); sys.stderr.flush(); os.abort()\n")
    out, marker = tmp_path / "out", tmp_path / "marker"
    (tmp_path / "out").mkdir()
    (out / "from_the_first_launch").write_text("")
    proc = torchrun([str(script), str(out), str(marker)], timeout=300, fresh=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.read_text() == "aborted" and sorted(p.name for p in out.iterdir()) == ["rank0", "rank1"]
    assert "abort_once.py: a process aborted at exit" in capsys.readouterr().err

    failing = tmp_path / "fails.py"
    failing.write_text("import os, sys\nif os.environ['RANK'] == '1':\n    sys.stderr.write('other failure\\n'); os.abort()\n")
    proc = torchrun([str(failing)], timeout=300)
    assert proc.returncode != 0 and "other failure" in proc.stderr
    assert "launching once more" not in capsys.readouterr().err


def test_a_job_waits_for_every_process_before_leaving_the_group_unless_it_failed(tmp_path, monkeypatch):
    """A finished CPU job waits for every process before destroy_process_group (no process exits while rank 0
    still writes the run's files; up to an hour, for a wandb upload); a failed one does not (the others may
    wait in a collective for it)."""
    import cl_suite.distributed as distributed
    import cl_suite.engine.trainer as trainer_module
    from cl_suite.engine.trainer import Trainer, train
    from helpers import compose_train

    calls, backend = [], ["gloo"]
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: backend[0])
    monkeypatch.setattr(distributed.dist, "monitored_barrier",
                        lambda timeout, wait_all_ranks: calls.append(("wait", timeout, wait_all_ranks)))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.cleanup_distributed(wait_for_all=True)
    distributed.cleanup_distributed()
    backend[0] = "nccl"  # GPUs: no exit-time abort to wait out; torchrun waits for the processes that exit
    distributed.cleanup_distributed(wait_for_all=True)
    assert calls == [("wait", distributed.EXIT_WAIT, True), "destroy", "destroy", "destroy"]
    monkeypatch.undo()

    waits = []
    monkeypatch.setattr(trainer_module, "cleanup_distributed", lambda wait_for_all=False: waits.append(wait_for_all))
    quick = TINY + ["trainer.max_steps=1", "trainer.eval_at_init=false", "trainer.save_checkpoints=false",
                    "trainer.threads=1"]
    train(compose_train(quick, tmp_path / "finished"))
    monkeypatch.setattr(Trainer, "fit", lambda self: (_ for _ in ()).throw(RuntimeError("a step failed")))
    with pytest.raises(RuntimeError, match="a step failed"):
        train(compose_train(quick, tmp_path / "failed"))
    assert waits == [True, False]
