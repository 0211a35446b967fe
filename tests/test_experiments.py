"""The paper recipes (conf/experiment/): every one composes, really pins its setting, carries a
well-formed published number, and trains two steps on the digits stand-in; the sweep recipes
(multirun/*.sh) run on top of them as multirun/README.md says."""
import functools
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from cl_suite.engine.trainer import drop_outdated_published, train
from cl_suite.engine.validation import ConfigError, best_metric_names, validate_train_config
from helpers import CONF, ROOT, compose_train, group_options, run_cli

RECIPES = group_options("experiment")
PINNED_GROUPS = ("dataset", "backbone", "method", "optimizer", "scheduler", "evaluation")
UNIFORM = "cl_suite.samplers.UniformSampler"
STUDIES = ("tau_plus.sh", "hcl_beta.sh", "ring_fractions.sh", "mochi.sh", "temperature.sh", "ring_anneal.sh")


def recipe_text(name: str) -> str:
    return (CONF / "experiment" / f"{name}.yaml").read_text(encoding="utf-8")


def recipe_header(name: str) -> str:
    lines = recipe_text(name).splitlines()
    end = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "\n".join(lines[:end])


def recipe_body(name: str) -> dict:
    return yaml.safe_load(recipe_text(name))


def group_choices(name: str) -> dict[str, str]:
    """``{"dataset": "stl10", ...}`` from the recipe's ``- override /dataset: stl10`` entries."""
    choices = {}
    for entry in recipe_body(name)["defaults"]:
        (key, option), = entry.items()
        assert key.startswith("override /"), f"{name}: defaults entry {entry} is not an `override /<group>`"
        choices[key.removeprefix("override /")] = option
    return choices


def preset_sampler(method: str) -> str | None:
    """The sampler option a method preset picks (``override /sampler: debiased`` in conf/method/dcl.yaml)."""
    for entry in yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text()).get("defaults") or []:
        if isinstance(entry, dict) and "override /sampler" in entry:
            return entry["override /sampler"]
    return None


@functools.lru_cache(maxsize=None)
def composed(*overrides: str):
    return compose_train(list(overrides))


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def test_there_are_recipes_for_every_seed_paper_and_baseline():
    # DCL/HCL, Ring, MoCHi, NNCLR/KMCLR, RINCE and the strong baselines (CE, solo-learn's rows)
    for needed in ("simclr_stl10", "dcl_stl10", "dcl_stl10_tau005", "hcl_stl10", "moco_ring_cifar10",
                   "ir_ring_cifar10", "simclr_ring_cifar10", "mochi_caltech256", "nnclr_cifar100",
                   "kmclr_cifar100", "rince_in_cifar100", "rince_out_cifar100", "rince_out_in_cifar100",
                   "scl_out_cifar100", "supervised_cifar100", "solo_simclr_cifar10", "solo_mocov2plus_cifar100",
                   "solo_nnclr_cifar10", "solo_supcon_cifar100"):
        assert needed in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_pins_its_setting(name):
    text = recipe_text(name)
    assert text.startswith("# @package _global_\n"), f"{name}: must start with `# @package _global_`"
    header = recipe_header(name)
    assert "# Source:" in header and "# Published:" in header, f"{name}: header must cite its source and number"
    choices = group_choices(name)
    missing = [g for g in PINNED_GROUPS if g not in choices]
    assert not missing, f"{name}: does not pin {missing}"
    # A recipe that chose the sampler itself would beat a method given on the command line
    # (`tau_plus.sh experiment=dcl_stl10` sweeps method=dcl,hcl): HCL would silently run DCL's sampler.
    assert "sampler" not in choices, f"{name}: the sampler comes from the method (preset) or train.yaml's default"
    body = recipe_body(name)
    assert {"epochs", "batch_size"} <= set(body["trainer"]), f"{name}: must pin trainer.epochs and batch_size"

    cfg = compose_train([f"experiment={name}"])
    validate_train_config(cfg)
    defaults = composed()
    for group, option in choices.items():
        alone = composed(f"{group}={option}")[group]
        if "_target_" in alone:
            assert cfg[group]._target_ == alone._target_, f"{name}: {group}={option} did not take effect"
    assert cfg.dataset.name == choices["dataset"] != defaults.dataset.name
    assert cfg.method._target_ == composed(f"method={choices['method']}").method._target_
    sampler = preset_sampler(choices["method"])
    expected = composed(f"sampler={sampler}").sampler._target_ if sampler else UNIFORM
    assert cfg.sampler._target_ == expected, f"{name}: sampler {cfg.sampler._target_}, expected {expected}"
    # Every value the recipe writes is in the composed config: the recipe comes after train.yaml's own
    # values (its defaults entry is last), and no key is silently dropped or renamed.
    plain = OmegaConf.to_container(cfg, resolve=False)
    for path, value in leaves({k: v for k, v in body.items() if k != "defaults"}):
        node = plain
        for key in path.split("."):
            node = node[key]
        assert node == value, f"{name}: {path} is {node!r} in the composed config, the recipe says {value!r}"
    assert cfg.trainer.epochs != defaults.trainer.epochs or cfg.trainer.batch_size != defaults.trainer.batch_size


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_published_number_is_complete_and_matches_its_header(name):
    cfg = composed(f"experiment={name}")
    published = cfg.published
    header = recipe_header(name)
    stated = re.search(r"^# Published: (\d+\.\d+) %", header, re.M)
    if published is None:
        assert re.search(r"^# Published: none\. \S", header, re.M), f"{name}: published null needs the reason"
        assert stated is None
        return
    assert set(published) == {"value", "metric", "protocol", "source"}
    assert published.metric in best_metric_names(cfg), f"{name}: the suite does not report {published.metric}"
    assert 0 < published.value <= 100 and published.protocol.strip() and published.source.strip()
    assert stated and float(stated[1]) == published.value, f"{name}: header and published.value disagree"


@pytest.mark.parametrize("bad, message", [
    ("published=84.26", "published=84.26 is not allowed"),
    ("+published.value=84.26", "missing published.metric, published.protocol, published.source"),
    ("published.value=101", "published.value=101"),
    ("published.metric=linear/top2", "published.metric='linear/top2' is not one of"),
    ("+published.note=x", "unknown published.note"),
    ("published.source=''", "published.source='' is not allowed"),
])
def test_malformed_published_blocks_are_refused(bad, message):
    base = [] if bad.startswith(("published=", "+published")) else ["experiment=dcl_stl10"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_train_config(compose_train([*base, bad]))


def test_a_published_text_of_several_lines_is_refused():
    """The protocol and source are one line each: the report prints them as a footnote and a CSV cell."""
    cfg = compose_train(["experiment=dcl_stl10"])
    cfg.published.protocol = "linear probe\n| a forged | table row |"
    with pytest.raises(ConfigError, match=r"published\.protocol='linear probe\\n\| a forged"):
        validate_train_config(cfg)


def stand_in_run(name: str, run_dir: Path) -> dict:
    """The recipe with its data set and backbone swapped for the digits stand-in and a tiny convnet (the
    recipe's dataset/backbone values belong to its data set), two steps, a one-epoch linear probe."""
    cfg = compose_train([f"experiment={name}", "logger=none", "trainer.max_steps=2", "trainer.eval_at_init=false",
                         "trainer.progress_bar=false", "trainer.device=cpu", "evaluation.linear.epochs=1",
                         "evaluation.embedding_snapshot=0"], run_dir)
    stand_in = composed("dataset=digits", "backbone=small_convnet")
    with open_dict(cfg):
        cfg.dataset = stand_in.dataset
        cfg.backbone = stand_in.backbone
        cfg.backbone.widths = [8, 16]
    return train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_two_steps_on_the_digits_stand_in(name, tmp_path):
    # method, sampler, optimizer, schedule, batch size and evaluation stay the recipe's; RINCE's second
    # rank uses the digits' coarse labels (conf/dataset/digits.yaml)
    final = stand_in_run(name, tmp_path)
    assert final["step"] == 2 and 0 <= final["linear/top1"] <= 100


@pytest.mark.parametrize("overrides, changed", [
    ([], None),
    (["dataset.root=/elsewhere", "dataset.download=true", "seed=3", "logger=csv", "trainer.progress_bar=false",
      "evaluation.batch_size=64", "evaluation.embedding_snapshot=0", "+dataset.num_workers=4"], None),  # the same
    (["probe.lr=0.5"], "probe.lr=0.5"),  # the solo_* recipes publish the online probe's number
    (["trainer.overfit_batches=2"], "trainer.overfit_batches=2"),
    (["trainer.positive_pairs=same_class"], "trainer.positive_pairs=same_class"),  # oracle positives
    (["trainer.epochs=10"], "trainer.epochs=10"),
    (["trainer.batch_size=128"], "trainer.batch_size=128"),
    (["trainer.max_steps=100"], "trainer.max_steps=100"),  # a run cut short is not the recipe's length
    (["evaluation.knn={k:20,temperature:0.1}"], "evaluation.knn={'k': 20, 'temperature': 0.1}"),  # a node at once
    (["dataset=stl10"], "dataset=stl10"),
    (["sampler.tau_plus=0.2", "seed=1"], "sampler.tau_plus=0.2"),
    (["backbone.depth=18"], "backbone.depth=18"),
    (["dataset.augment.crop_scale=[0.2,1.0]"], "dataset.augment.crop_scale=[0.2, 1.0]"),
    (["evaluation.linear.epochs=1"], "evaluation.linear.epochs=1"),
    (["scheduler=warmup_cosine"], "scheduler=warmup_cosine"),
    (["debug=fast"], "debug=fast"),
    # a deleted recipe value: the run takes the default instead (here the augmentation's blur)
    (["~dataset.augment.blur"], "~dataset.augment.blur"),
    (["~trainer.progress_bar"], None),  # deleting what only changes the output is no change
])
def test_a_run_that_changes_the_recipes_setting_drops_its_published_number(overrides, changed):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="train", overrides=["experiment=dcl_stl10", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        note = drop_outdated_published(cfg)
    finally:
        HydraConfig.instance().cfg = None
    if changed is None:
        assert note is None and cfg.published.value == recipe_body("dcl_stl10")["published"]["value"]
    else:
        assert cfg.published is None and note.startswith("published=null") and note.endswith(f"setting: {changed})")


@pytest.mark.slow
def test_recipe_run_on_another_data_set_records_no_published_number(tmp_path):
    args = ["experiment=solo_simclr_cifar10", "dataset=digits", "backbone=small_convnet", "logger=none",
            "trainer.max_steps=2", "trainer.eval_at_init=false", "trainer.progress_bar=false", "trainer.device=cpu",
            "evaluation.linear.epochs=1", "evaluation.embedding_snapshot=0", f"hydra.run.dir={tmp_path}"]
    proc = run_cli("train.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = yaml.safe_load((tmp_path / ".hydra" / "config.yaml").read_text())
    assert record["published"] is None and recipe_body("solo_simclr_cifar10")["published"]["value"] > 0
    assert "published=null: the recipe's published number is not this run's reference" in proc.stdout
    assert "dataset=digits, backbone=small_convnet, trainer.max_steps=2" in proc.stdout
    assert record["dataset"]["name"] == "digits" and record["method"]["temperature"] == 0.2
    assert "experiment=solo_simclr_cifar10" in (tmp_path / ".hydra" / "overrides.yaml").read_text()


def study_jobs(script: str, extra: list[str], tmp_path: Path) -> list[list[str]]:
    """The overrides of every job the study script would run: the script runs with a stand-in python that
    records its arguments, and Hydra's basic sweeper expands them (as `train.py -m` does)."""
    fake, record = tmp_path / "python", tmp_path / "args"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> "$ARGS_FILE"\n')
    fake.chmod(0o755)
    record.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": str(fake), "ARGS_FILE": str(record), "SWEEP_DIR": str(tmp_path / "sweep")}
    subprocess.run(["bash", str(ROOT / "multirun" / script), *extra], env=env, check=True, timeout=300)
    args = [a.decode() for a in record.read_bytes().split(b"\0")[:-1]]
    report = args.index("-m", 2)  # the second call: python -m cl_suite.report <dir>
    assert args[:2] == ["train.py", "-m"] and args[report:] == ["-m", "cl_suite.report", str(tmp_path / "sweep")]
    overrides = OverridesParser.create().parse_overrides(args[2:report])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def check_job(job: list[str], recipe: str) -> None:
    """A job of a study on a recipe runs the study's method with that method's own sampler, the swept
    values, and the recipe's data set, backbone and optimizer; it raises when the two do not fit."""
    cfg = compose_train(job)
    validate_train_config(cfg)
    method = next(o.split("=", 1)[1] for o in job if o.startswith("method="))
    own = composed(f"method={method}")
    assert cfg.method._target_ == own.method._target_
    assert cfg.sampler._target_ == own.sampler._target_, f"{recipe}: method={method} lost its sampler"
    recipe = composed(f"experiment={recipe}")
    for group in ("dataset", "backbone", "optimizer", "scheduler"):
        assert cfg[group] == recipe[group]
    assert cfg.trainer.epochs == recipe.trainer.epochs and cfg.published is None
    for override in job:
        key, value = override.split("=", 1)
        if key.startswith(("sampler.", "method.")):
            assert str(OmegaConf.select(cfg, key)) == value


def test_tau_plus_study_sweeps_on_top_of_the_dcl_recipe(tmp_path):
    jobs = study_jobs("tau_plus.sh", ["experiment=dcl_stl10"], tmp_path)
    assert len(jobs) == 2 * 4 * 3 and all("experiment=dcl_stl10" in job for job in jobs)
    for method in ("dcl", "hcl"):  # one job per method: HCL's jobs run HCL's sampler, not the recipe's DCL
        check_job(next(j for j in jobs if f"method={method}" in j and "sampler.tau_plus=0.05" in j), "dcl_stl10")


def test_a_study_that_does_not_fit_a_recipe_stops_at_start_up(tmp_path):
    jobs = study_jobs("tau_plus.sh", ["experiment=solo_mocov2plus_cifar100"], tmp_path)
    with pytest.raises(ConfigError, match="method.queue_size is not a setting of cl_suite.methods.SimCLR"):
        validate_train_config(compose_train(jobs[0]))


def documented_fits() -> dict[str, set[str]]:
    """The table "| study | recipes it runs on |" of multirun/README.md."""
    text = (ROOT / "multirun" / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+\.sh)` \| (.*) \|$", text.split("recipes it runs on", 1)[1], re.M)
    return {script: set(re.findall(r"`(\w+)`", recipes)) for script, recipes in rows}


def test_every_study_has_a_row_of_recipes_in_the_readme():
    assert sorted(documented_fits()) == sorted(STUDIES)


@pytest.mark.slow
@pytest.mark.parametrize("script", STUDIES)  # one test per study: xdist runs them side by side
def test_the_documented_study_recipe_pairs_are_exactly_those_that_fit(tmp_path, script):
    """Every (study, recipe) pair either fits (each distinct method of the grid composes, validates and
    runs its own sampler on the recipe's setting) or stops at start-up; multirun/README.md lists the former."""
    fits = set()
    for recipe in RECIPES:
        jobs = study_jobs(script, [f"experiment={recipe}"], tmp_path)
        methods = {next(o for o in job if o.startswith("method=")): job for job in jobs}
        try:
            for job in methods.values():
                check_job(job, recipe)
        except (ConfigError, ConfigCompositionException):
            continue
        fits.add(recipe)
    assert fits == documented_fits()[script]


# ---- the solo_* recipes against solo-learn's own scripts (vturrisi/solo-learn @ 9187ea3) ----
#
# The values of scripts/pretrain/cifar/<method>.yaml and of the augmentation file it names
# (augmentations/symmetric.yaml, symmetric_weak.yaml, asymmetric.yaml), written out here from reading them:
# method_kwargs, optimizer (name, lr, classifier_lr, weight_decay, LARS eta / clip_lr /
# exclude_bias_n_norm), momentum base_tau -> final_tau, max_epochs, batch_size, and per view the crop
# scale, colour-jitter probability and strengths, grayscale, blur, solarization and flip probabilities.
SOLO_SYMMETRIC = dict(crop_scale=[0.08, 1.0], jitter=dict(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
                      grayscale_p=0.2, blur_p=[0.5, 0.5], solarize_p=[0.0, 0.0], flip_p=0.5)
SOLO_SYMMETRIC_WEAK = {**SOLO_SYMMETRIC, "jitter": dict(p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)}
SOLO_ASYMMETRIC = dict(crop_scale=[0.08, 1.0], jitter=dict(p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1),
                       grayscale_p=0.2, blur_p=[0.0, 0.0], solarize_p=[0.0, 0.2], flip_p=0.5)
SOLO_LEARN_SCRIPTS = {
    "simclr": dict(aug=SOLO_SYMMETRIC, method=dict(temperature=0.2, projector_hidden_dims=[2048], projector_dim=256),
                   optimizer=dict(name="lars", lr=0.4, classifier_lr=0.1, weight_decay=1e-4, eta=0.02, clip_lr=True,
                                  exclude_bias_and_norm=True)),
    "nnclr": dict(aug=SOLO_ASYMMETRIC, method=dict(temperature=0.2, projector_hidden_dims=[2048, 2048],
                                                   predictor_hidden_dims=[4096], projector_dim=256,
                                                   support_set_size=65536),
                  optimizer=dict(name="lars", lr=0.4, classifier_lr=0.1, weight_decay=1e-5, eta=0.02, clip_lr=True,
                                 exclude_bias_and_norm=True)),
    "supcon": dict(aug=SOLO_SYMMETRIC, method=dict(temperature=0.2, projector_hidden_dims=[2048], projector_dim=256),
                   optimizer=dict(name="sgd", lr=0.4, classifier_lr=0.1, weight_decay=1e-5)),
    "mocov2plus": dict(aug=SOLO_SYMMETRIC_WEAK, method=dict(temperature=0.2, projector_hidden_dims=[2048],
                                                            projector_dim=256, queue_size=32768, momentum=0.99,
                                                            momentum_final=0.999, symmetric=True,
                                                            queue_per_view=True),
                       optimizer=dict(name="sgd", lr=0.3, classifier_lr=0.3, weight_decay=1e-4)),
}


@pytest.mark.parametrize("name", sorted(r for r in RECIPES if r.startswith("solo_")))
def test_solo_recipes_pin_the_values_of_solo_learns_scripts(name):
    method, dataset = re.fullmatch(r"solo_(\w+)_(cifar10|cifar100)", name).groups()
    script = SOLO_LEARN_SCRIPTS[method]
    cfg = composed(f"experiment={name}")
    assert cfg.dataset.name == dataset
    assert cfg.backbone._target_ == composed("backbone=resnet18").backbone._target_
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (1000, 256)
    for key, value in script["method"].items():
        assert cfg.method[key] == value, (name, key)
    opt = script["optimizer"]
    assert cfg.optimizer._target_ == composed(f"optimizer={opt['name']}").optimizer._target_
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.batch_size_reference) == (
        opt["lr"], opt["weight_decay"], 256)
    if opt["name"] == "lars":
        assert (cfg.optimizer.eta, cfg.optimizer.clip_lr, cfg.optimizer.exclude_bias_and_norm) == (
            opt["eta"], opt["clip_lr"], opt["exclude_bias_and_norm"])
    assert (cfg.probe.lr, cfg.probe.weight_decay, cfg.probe.optimizer) == (opt["classifier_lr"], 0.0, opt["name"])
    aug, ours = script["aug"], cfg.dataset.augment
    assert (list(ours.crop_scale), ours.crop_size, ours.flip_p, ours.grayscale_p) == (
        aug["crop_scale"], 32, aug["flip_p"], aug["grayscale_p"])
    assert dict(ours.jitter) == aug["jitter"]
    assert (list(ours.blur.p), list(ours.solarize.p)) == (aug["blur_p"], aug["solarize_p"])
