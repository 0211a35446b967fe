"""Real training runs on digits: the CLI end to end, exact resume, the wandb offline run."""
import json
import math

import pytest
import torch

from cl_suite.engine.trainer import train
from helpers import SAMPLERLESS_METHODS, TINY, compose_train, group_options, run_cli, tiny_overrides, valid_pair


@pytest.mark.slow
def test_train_cli_writes_run_files_and_learns_and_evaluate_cli_reproduces_its_numbers(tmp_path):
    """One real `python train.py` run, then `python evaluate.py` on it (one test: xdist would otherwise train
    the run once per worker that runs a test reading it)."""
    run_dir = tmp_path / "run"
    # k=200 and a narrow net: the random-init kNN is far from perfect, so learning shows.
    args = ["logger=none", "trainer.epochs=8", "trainer.progress_bar=false", "backbone.widths=[16,32]",
            "evaluation.knn.k=200", "evaluation.linear.epochs=20", f"hydra.run.dir={run_dir}"]
    proc = run_cli("train.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 8 * (1437 // 256) and state["epoch"] == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 9))
    assert metrics["epochs"][-1]["train/epoch_loss"] < metrics["epochs"][0]["train/epoch_loss"]
    init, final = metrics["init"]["knn/top1"], metrics["final"]["knn/top1"]
    assert final >= init + 8, f"kNN top-1 {init:.1f} at init -> {final:.1f} after pre-training"
    assert final > 70 and metrics["final"]["linear/top1"] > 90
    # The console ends with the protocol-labelled table.
    assert "kNN (frozen, un-augmented)" in proc.stdout and "linear (frozen, cached features)" in proc.stdout

    # evaluate.py reproduces the final numbers
    proc = run_cli("evaluate.py", [f"run={run_dir}", "evaluation.knn.k=200", "evaluation.linear.epochs=20"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "eval.json").read_text())
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    for key in ("knn/top1", "knn/top5", "linear/top1", "online_probe/test_top1"):
        assert math.isclose(result["metrics"][key], final[key], abs_tol=1e-6), key
    assert result["step"] == final["step"]
    # The training config on disk is untouched by evaluate.py (hydra.output_subdir is null there).
    assert "evaluate" not in (run_dir / ".hydra" / "overrides.yaml").read_text()


def assert_resume_mid_epoch_equals_uninterrupted_run(tmp_path, overrides: list[str]) -> None:
    """Stop after 30 steps (mid-epoch 2 of 3), resume from the run dir: bit-identical weights, buffers (queues,
    banks, support sets, prototypes, momentum encoders) and final numbers."""
    common = overrides + ["trainer.epochs=3", "trainer.eval_at_init=false"]
    full = train(compose_train(common, tmp_path / "full"))
    train(compose_train(common + ["trainer.max_steps=30"], tmp_path / "split"))
    first = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)
    assert first["step"] == 30
    resumed = train(compose_train(common + [f"resume={tmp_path / 'split'}"], tmp_path / "split"))
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=False)
    assert a["method"].keys() == b["method"].keys()
    for key in a["method"]:
        assert torch.equal(a["method"][key], b["method"][key]), key
    for key in a["probe"]:
        assert torch.equal(a["probe"][key], b["probe"][key]), key
    assert full == resumed


@pytest.mark.parametrize("method", ["simclr", "moco", "ir"])
def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, method):
    """The MoCo queue, its pointer and the key encoder, the IR memory bank and its random draws included."""
    assert_resume_mid_epoch_equals_uninterrupted_run(tmp_path, TINY + [f"method={method}"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["method=mochi"],  # the mixing draws from the global generator, the queue's image indices
    ["method=cmc"],  # both colour banks and their draws
    ["method=cmc", "method.criterion=nce"],  # NCE's normalising constants Z, fixed on the first step
    ["method=nnclr", "method.support_set_size=256"],  # the support set and its pointer
    ["method=kmclr"],  # the online k-means: prototypes, counts, the reassignment counter
    ["method=supcon", "method.bank_size=128"],  # the labelled FIFO bank
    ["method=rince", "method.class_groups=[[0,6,8,9],[1,4,7],[2,3,5]]"],  # the key encoder and labelled bank
    ["method=ring_symmetric", "sampler.anneal=linear", "sampler.anneal_epochs=2"],  # the annealed ring
    ["method=ir_ring"],  # the ring's draws with replacement over the whole bank
    ["method=moco_ring", "sampler.anneal=adaptive_loss", "sampler.outer_fraction=0.3"],  # u and the last losses
    ["method=moco_ring", "sampler.anneal=adaptive_accuracy", "sampler.outer_fraction=0.3",
     "trainer.eval_every_epochs=1"],  # u and the last accuracies
    ["method=supervised"],
], ids=lambda overrides: "-".join(o.split("=", 1)[1] for o in overrides)[:40])
def test_every_kind_of_method_state_resumes_mid_epoch_as_the_uninterrupted_run(tmp_path, overrides):
    method = overrides[0].split("=", 1)[1]
    assert_resume_mid_epoch_equals_uninterrupted_run(tmp_path, tiny_overrides(method) + overrides)


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train([o for o in TINY if not o.startswith("logger")] + ["logger=wandb", "trainer.max_steps=3"],
                        tmp_path)
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert list(runs[0].glob(f"run-{state['wandb_run_id']}.wandb")), "the .wandb log of the checkpoint's run id"


def test_bf16_autocast_trains_on_cpu_with_a_finite_fp32_loss(tmp_path):
    cfg = compose_train(TINY + ["trainer.precision=bf16", "trainer.max_steps=3", "trainer.eval_at_init=false",
                                "trainer.log_every_steps=1"], tmp_path)
    train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    assert record["step"] == 3 and math.isfinite(record["train/epoch_loss"])


@pytest.mark.slow
def test_compiled_model_trains_and_saves_plain_state_dict_keys(tmp_path):
    # log_every_steps=1: both steps record diagnostics (the last step of a run always does), so inductor
    # compiles one graph and the second step reuses it; a step without them would be a second compilation.
    train(compose_train(TINY + ["trainer.compile=true", "trainer.max_steps=2", "trainer.log_every_steps=1",
                                "trainer.eval_at_init=false"], tmp_path))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2 and not any("_orig_mod" in key for key in state["method"])


@pytest.mark.parametrize("choice", [f"sampler={s}" for s in group_options("sampler") if valid_pair("simclr", s)]
                         + [f"method={m} sampler={s}" for m in ("moco", "ir", "cmc") for s in group_options("sampler")]
                         + [f"method=nnclr method.support_set_size=256 sampler={s}" + (" sampler.n_hard=32" * (s == "mixing"))
                            for s in group_options("sampler") if valid_pair("nnclr", s)]  # B-1 = 63 candidates
                         + [f"method={m}" for m in group_options("method") if m not in SAMPLERLESS_METHODS])
def test_every_sampler_framework_pair_and_preset_trains_on_digits(tmp_path, choice):
    final = train(compose_train(TINY + choice.split() + ["trainer.max_steps=3", "trainer.eval_at_init=false",
                                                         "evaluation.linear.epochs=1"], tmp_path))
    record = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    assert math.isfinite(record["train/epoch_loss"]) and final["step"] == 3
    assert 0 <= record["diag/negatives/false_negative_rate"] <= 1
    assert sum(record["diag/hist/negative"]["counts"]) > 0
    if choice in ("method=moco sampler=ring", "method=moco_ring"):  # the ring over 4096 queued keys: 90..99
        assert record["diag/negatives/effective"] == math.floor(0.99 * 4096) - math.floor(0.90 * 4096)


@pytest.mark.slow
@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_runs_on_the_embedded_default_without_extra_flags(tmp_path, method):
    """`python train.py method=<m>` must work as it comes: digits, small_convnet, batch 256, the preset's
    own sampler and settings (RINCE reads the digits' stroke-family coarse labels). Only the run's length
    and evaluation are cut here."""
    final = train(compose_train([f"method={method}", "logger=none", "trainer.max_steps=2", "trainer.progress_bar=false",
                                 "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path))
    assert final["step"] == 2 and 0 <= final["knn/top1"] <= 100


def test_gradient_clipping_clips_the_method_gradients_to_the_configured_norm(tmp_path):
    """trainer.grad_clip=c: the gradients the optimizer steps with (still in .grad after the step) have total
    norm c (the unclipped norm of the first step is far above c); the online probe's are not clipped."""
    from cl_suite.engine.trainer import Trainer, step_seed

    clip = 1e-4
    cfg = compose_train(TINY + ["trainer.eval_at_init=false", f"trainer.grad_clip={clip}"], tmp_path)
    trainer = Trainer(cfg, torch.device("cpu"))
    batch = next(iter(trainer.batches.epoch(0)))
    trainer.train_step(batch, torch.Generator().manual_seed(step_seed(cfg.seed, 0, 0)))
    grads = [p.grad for p in trainer.method.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm.item() == pytest.approx(clip, rel=1e-3)
    probe = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in trainer.probe.parameters()]))
    assert probe.item() > 10 * clip


@pytest.mark.parametrize("crop_size, warned", [(24, True), (16, False)])
def test_images_stored_smaller_than_the_crop_are_named_at_start_up(tmp_path, capsys, crop_size, warned):
    """synthetic stores its images at 16 px: a 24-px crop upsamples every view, said once at start-up (an
    image folder at its default 32 px with crop_size=224 trained on blurred-up thumbnails in silence)."""
    train(compose_train(TINY + ["dataset=synthetic", f"dataset.augment.crop_size={crop_size}", "trainer.max_steps=1",
                                "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path))
    out = capsys.readouterr()
    line = f"warning: the training images are stored at 16x16 px, smaller than dataset.augment.crop_size={crop_size}"
    assert (line in out.out + out.err) == warned
    assert ("upsampled" in (tmp_path / "train.log").read_text()) == warned
