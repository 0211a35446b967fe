"""Every option of every config group composes with the defaults and instantiates (Hydra compose API)."""
import dataclasses
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method, instantiate
from omegaconf import OmegaConf

from cl_suite.engine.build import DatasetFacts, build_augment_config, build_logger, build_method
from cl_suite.engine.optim import build_optimizer
from cl_suite.engine.validation import validate_train_config
from helpers import CONF, compose_train, group_options, to_plain, valid_pair

# 40 images of 10 classes in 5 superclasses (RINCE's second rank)
FACTS = DatasetFacts(num_samples=40, num_classes=10, steps_per_epoch=1, coarse_of_class=torch.arange(10) // 2)
GROUPS = ["dataset", "backbone", "method", "sampler", "optimizer", "scheduler", "logger", "evaluation"]


def test_every_group_has_options():
    """GROUPS, the groups this module tests option by option, is every group train.yaml composes, and each group's
    default option is one of its files: a group missing here, or an empty folder, would go untested."""
    defaults = [entry for entry in OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").defaults)
                if isinstance(entry, dict)]
    chosen = {group: option for entry in defaults for group, option in entry.items() if option is not None}
    assert sorted(chosen) == sorted(GROUPS)
    for group, option in chosen.items():
        assert option in group_options(group), f"conf/{group} has no {option}.yaml (train.yaml's default)"


@pytest.mark.parametrize("option", group_options("dataset"))
def test_dataset_configs_compose(option):
    overrides = [f"dataset={option}"]
    if option in ("imagefolder", "image_files"):
        overrides.append("dataset.root=/some/where")  # the folder data sets have no default location
    cfg = compose_train(overrides)
    plain = to_plain(cfg)
    validate_train_config(cfg)
    assert callable(get_method(plain["dataset"]["_target_"]))
    aug = build_augment_config(cfg.dataset)  # augmentation block validates
    assert aug.crop_size >= 1 and len(aug.mean) == 3


@pytest.mark.parametrize("option", group_options("backbone"))
def test_backbone_configs_instantiate_and_give_features(option):
    cfg = compose_train([f"backbone={option}"])
    backbone = instantiate(cfg.backbone).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, backbone.num_features)


@pytest.mark.parametrize("method, sampler", [(m, s) for m in group_options("method") for s in group_options("sampler")
                                             if valid_pair(m, s)])
def test_method_sampler_pairs_instantiate_and_give_a_loss(method, sampler):
    cfg = compose_train([f"method={method}", f"sampler={sampler}", "backbone.widths=[8]"])
    # A bank of 2000 rows: enough candidates for every sampler where the whole bank is ranked (ir_ring).
    model = build_method(cfg, dataclasses.replace(FACTS, num_samples=2000))
    # Enough candidates per anchor for every sampler's defaults: SimCLR has 2n-2, NNCLR/KMCLR n-1.
    n = 80 if method in ("nnclr", "kmclr") else 40
    x = torch.randn(n, 3, 8, 8)
    out = model((x, x + 0.1 * torch.randn_like(x)), labels=torch.arange(n) % 10, indices=torch.arange(n) % 40)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("option", group_options("optimizer"))
def test_optimizer_configs_build_and_step(option):
    cfg = compose_train([f"optimizer={option}"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(cfg.optimizer, model, global_batch_size=512)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    ref = cfg.optimizer.batch_size_reference
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr * (512 / ref if ref else 1))


@pytest.mark.parametrize("option", group_options("scheduler"))
def test_scheduler_configs_instantiate(option):
    cfg = compose_train([f"scheduler={option}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = instantiate(cfg.scheduler, optimizer=opt, steps_per_epoch=10, total_steps=100)
    factors = []  # the multiplier of the base rate 1.0 at steps 0..99, then after the last step
    for _ in range(100):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    factors.append(opt.param_groups[0]["lr"])
    target = cfg.scheduler._target_.rsplit(".", 1)[1]
    if target == "constant":
        assert factors == [1.0] * 101
    elif target == "warmup_cosine":  # linear warm-up to 1, then a cosine that never rises, down to min_lr_ratio
        warmup = round(cfg.scheduler.warmup_epochs * 10)
        assert factors[:warmup] == pytest.approx([(i + 1) / warmup for i in range(warmup)])
        assert factors[warmup] == pytest.approx(1.0)
        assert all(b <= a + 1e-12 for a, b in zip(factors[warmup:], factors[warmup + 1:]))
        assert factors[-1] == pytest.approx(cfg.scheduler.min_lr_ratio)
    else:
        pytest.fail(f"scheduler={option}: state its schedule here")


@pytest.mark.parametrize("option", group_options("logger"))
def test_logger_configs_instantiate(option, tmp_path):
    if option == "tensorboard":
        pytest.importorskip("tensorboard", reason="the optional [tensorboard] extra")
    cfg = compose_train([f"logger={option}"], output_dir=tmp_path)
    logger = build_logger(cfg.logger, str(tmp_path), cfg)
    assert type(logger) is get_class(cfg.logger._target_)
    logger.log({"x": 1.0}, step=1)
    logger.finish()


def test_evaluate_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=["run=/tmp/some-run"])
    assert cfg.run == "/tmp/some-run" and cfg.evaluation.knn.k >= 1
    assert cfg.evaluation == compose_train([]).evaluation  # the same protocol settings as training's


def test_default_config_is_the_embedded_cpu_run():
    cfg = compose_train([])
    assert OmegaConf.select(cfg, "dataset.name") == "digits"
    assert cfg.method._target_.endswith("SimCLR") and cfg.sampler._target_.endswith("UniformSampler")


def test_a_queue_sized_sampler_on_batch_candidates_is_a_clear_error():
    cfg = compose_train(["method=simclr", "sampler=mochi", "backbone.widths=[8]"])
    x = torch.randn(40, 3, 8, 8)
    with pytest.raises(ValueError, match="sampler.n_hard=1024 is larger than the 78 candidates"):
        build_method(cfg, FACTS)((x, x), labels=torch.arange(40), indices=torch.arange(40))


@pytest.mark.parametrize("env, pattern", [
    ({}, r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d\.\d{6}"),
    ({"TORCHELASTIC_RUN_ID": "none"}, r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d\.\d{6}"),  # torchrun without an id
    ({"TORCHELASTIC_RUN_ID": "abc"}, r"\d{4}-\d\d-\d\d/torchrun-abc"),
    ({"WANDB_SWEEP_ID": "sw", "WANDB_RUN_ID": "r1", "TORCHELASTIC_RUN_ID": "abc"}, r"wandb-sweep-sw/r1"),
    ({"WANDB_RUN_ID": "r1"}, r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d\.\d{6}"),  # a resumed wandb run is no sweep
])
def test_the_run_folder_under_outputs(monkeypatch, env, pattern):
    from cl_suite.resolvers import run_folder

    for key in ("TORCHELASTIC_RUN_ID", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert re.fullmatch(pattern, run_folder())
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):  # train.yaml's hydra.run.dir uses it
        cfg = compose(config_name="train", return_hydra_config=True)
    assert re.fullmatch("outputs/" + pattern, cfg.hydra.run.dir)
