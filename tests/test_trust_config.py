"""Config trust: no setting is silently ignored or silently meaningless. The shared checks themselves
(not only the whole-config walk) refuse nan and inf, unknown keys are judged against the config files
as they are now, and evaluate.py refuses what train.py refuses."""
import math
import shutil
import typing

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cl_suite.data.augment import AugmentConfig
from cl_suite.engine import validation
from cl_suite.engine.config_arguments import ArgumentError, check_group_arguments, value_fits
from cl_suite.engine.validation import ConfigError, validate_train_config
from cl_suite.eval.knn import knn_class_scores
from helpers import CONF, TINY, compose_train


def compose_evaluate(overrides: list[str], conf=CONF):
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        return compose(config_name="evaluate", overrides=["run=/nonexistent-run", *overrides])


# ---- 1. nan and inf ----

@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_float_annotation_takes_finite_numbers_only(value):
    assert value_fits(0.5, float) and value_fits(3, float | None)
    assert not value_fits(value, float) and not value_fits(value, float | None)
    assert not value_fits([0.1, value], tuple[float, float])
    node = OmegaConf.create({"_target_": "cl_suite.samplers.DebiasedSampler", "tau_plus": value})
    with pytest.raises(ArgumentError, match=r"sampler\.tau_plus=.* is not allowed: expected a finite number"):
        check_group_arguments("sampler", node)


def test_the_range_checks_refuse_inf_themselves():
    """``_number`` (every trainer, probe, evaluation, optimizer and scheduler range) and the augmentation
    parser refuse inf and nan on their own, not only through the walk over the whole config."""
    for key, value in (("lr", math.inf), ("momentum", math.nan)):
        lin = OmegaConf.create({"lr": 0.1, "momentum": 0.9, key: value})
        with pytest.raises(ConfigError, match=rf"evaluation\.linear\.{key}=(inf|nan) is not allowed"):
            validation._number(lin, f"evaluation.linear.{key}", 0.0, 1.0 if key == "momentum" else None)
    for jitter in ({"brightness": math.nan}, {"contrast": math.inf}, {"hue": math.nan}):
        with pytest.raises(ValueError, match=rf"jitter\.{next(iter(jitter))} = (nan|inf) must be a finite number"):
            AugmentConfig.from_dict({"jitter": jitter}, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="crop_ratio"):
        AugmentConfig.from_dict({"crop_ratio": [0.75, math.inf]}, mean=[0.5], std=[0.5])


# ---- 2. unknown keys ----

def test_an_unknown_key_names_the_nearest_known_ones():
    with pytest.raises(ConfigError) as err:
        validate_train_config(compose_train(TINY + ["+trainer.max_step=2"]))
    assert "trainer.max_step=2" in str(err.value) and "did you mean trainer.max_steps?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_train_config(compose_train(TINY + ["sampler=mixing", "+sampler.n_hardd=8"]))
    assert "sampler.n_hardd" in str(err.value) and "did you mean sampler.n_hard?" in str(err.value)


def test_known_keys_come_from_the_config_files_as_they_are(tmp_path, monkeypatch):
    """A key added to conf/train.yaml (or an evaluation option) is known without touching the code."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    train_yaml = conf / "train.yaml"
    train_yaml.write_text(train_yaml.read_text().replace("trainer:\n", "trainer:\n  new_knob: 1\n", 1))
    (conf / "evaluation" / "default.yaml").write_text(
        (conf / "evaluation" / "default.yaml").read_text() + "new_protocol: {size: 3}\n")
    monkeypatch.setattr(validation, "CONF_DIR", conf)
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="train", overrides=TINY + ["trainer.new_knob=2", "evaluation.new_protocol.size=4"])
    cfg.paths.output_dir = str(tmp_path / "run")
    validate_train_config(cfg)
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        cfg = compose(config_name="train", overrides=TINY + ["+evaluation.new_protocol.sise=4"])
    cfg.paths.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"evaluation\.new_protocol\.sise=4 .*did you mean evaluation\.new_protocol\.size"):
        validate_train_config(cfg)


@pytest.mark.parametrize("override, named", [
    ("+evaluation.knn.kk=5", "evaluation.knn.kk=5"),
    ("+checkpoints=last", "checkpoints='last'"),
    ("evaluation.linear.lr=inf", "evaluation.linear.lr=inf"),
    ("evaluation.embedding_snapshot=-5", "evaluation.embedding_snapshot=-5"),
    ("seed=4294967296", "seed=4294967296"),
    ("device=cuda:abc", "device='cuda:abc'"),
    ("wandb=maybe", "wandb='maybe'"),
])
def test_evaluate_config_is_checked_like_the_training_config(override, named):
    with pytest.raises(ConfigError) as err:
        validation.validate_evaluate_config(compose_evaluate([override]))
    assert named in str(err.value)
    validation.validate_evaluate_config(compose_evaluate([]))  # the defaults pass


# ---- 3. best_metric, embedding_snapshot ----

def test_best_metric_must_be_a_metric_the_run_measures():
    with pytest.raises(ConfigError) as err:
        validate_train_config(compose_train(TINY + ["trainer.best_metric=knn/acc"]))
    message = str(err.value)
    assert "trainer.best_metric='knn/acc'" in message
    assert all(name in message for name in ("knn/top1", "linear/top1", "online_probe/test_top1"))
    # Training numbers are compared at mid-run eval epochs only: allowed when there is one.
    with pytest.raises(ConfigError, match="eval_every_epochs"):
        validate_train_config(compose_train(TINY + ["trainer.best_metric=train/epoch_loss"]))
    validate_train_config(compose_train(TINY + ["trainer.best_metric=train/epoch_loss", "trainer.best_mode=min",
                                                "trainer.eval_every_epochs=1"]))
    for ok in ("knn/top5", "linear/top1", "null"):
        validate_train_config(compose_train(TINY + [f"trainer.best_metric={ok}"]))


@pytest.mark.parametrize("value", ["-5", "1.5", "many"])
def test_embedding_snapshot_is_a_count(value):
    with pytest.raises(ConfigError, match=r"evaluation\.embedding_snapshot=.* expected an integer >= 0"):
        validate_train_config(compose_train(TINY + [f"evaluation.embedding_snapshot={value}"]))


# ---- 4. library errors translated into the key ----

def test_seeds_are_limited_to_what_numpy_takes():
    validate_train_config(compose_train(TINY + [f"seed={2**32 - 1}", f"dataset.split_seed={2**32 - 1}"]))
    for override in (f"seed={2**32}", "dataset.split_seed=-1", "dataset=synthetic dataset.seed=-3"):
        with pytest.raises(ConfigError, match=override.split()[-1].split("=")[0].replace(".", r"\.")):
            validate_train_config(compose_train(TINY + override.split()))


def test_a_cuda_device_that_does_not_exist_is_refused_up_front():
    """cuda:<device_count> never exists (on a CPU-only machine no cuda device does)."""
    for device in (f"cuda:{torch.cuda.device_count()}", "cuda:abc", "cuda:-1", "gpu"):
        with pytest.raises(ConfigError, match=rf"trainer\.device='{device}' is not allowed"):
            validate_train_config(compose_train(TINY + [f"trainer.device={device}"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.device='cuda' is not allowed: CUDA is not available"):
            validate_train_config(compose_train(TINY + ["trainer.device=cuda"]))


def test_the_sampler_is_blamed_for_its_own_value_before_the_candidate_count():
    with pytest.raises(ConfigError, match=r"sampler\.s1=-1 is not allowed"):
        validate_train_config(compose_train(TINY + ["sampler=mixing", "sampler.s1=-1", "trainer.batch_size=16"]))


# ---- 5. kNN k: refused, never clamped ----

def test_knn_refuses_more_neighbours_than_labelled_images():
    train, labels = torch.randn(10, 4), torch.tensor([0, 1] * 4 + [-1, -1])
    knn_class_scores(train, labels, torch.randn(3, 4), num_classes=2, k=8)
    with pytest.raises(ValueError, match=r"evaluation\.knn\.k=9 is larger than the 8 labelled training images"):
        knn_class_scores(train, labels, torch.randn(3, 4), num_classes=2, k=9)


def test_evaluate_refuses_a_k_larger_than_the_labelled_images_before_encoding(tmp_path, monkeypatch):
    from cl_suite import run_evaluation
    from helpers import trained_run

    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=1", "evaluation.linear.epochs=1"])

    def no_encoding(*args, **kwargs):
        raise AssertionError("features were extracted before the k was checked")

    monkeypatch.setattr(run_evaluation, "encode_splits", no_encoding)
    cfg = compose_evaluate(["protocol=[knn]", "wandb=false", "evaluation.knn.k=5000"])
    cfg.run = str(run)
    with pytest.raises(ConfigError, match=r"evaluation\.knn\.k=5000 is larger than the 1437 labelled"):
        run_evaluation.evaluate_run(cfg)
    assert not (run / "eval.json").exists()


@pytest.mark.parametrize("name", ["evaluate.log", "wandb"])
def test_evaluate_refuses_a_run_folder_with_a_planted_link_where_it_writes(tmp_path, name):
    """A run folder from someone else: evaluate.py's log (or wandb's files) must not follow a link to
    another file; the folder is refused and the link's target is never touched."""
    from cl_suite.resolvers import evaluate_dir
    from cl_suite.run_evaluation import load_run_config

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (run / name).symlink_to(target)
    assert evaluate_dir(str(run), "last") != str(run) or name != "evaluate.log"  # Hydra's log goes elsewhere
    with pytest.raises(ConfigError, match=f"{name} is a symbolic link"):
        load_run_config(run)
    assert target.read_text() == "precious\n"


# ---- 6. checks found missing by mutation testing ----

def test_value_fits_judges_booleans_lengths_elements_and_mappings():
    """What a constructor's annotation accepts, for groups added later: true is no integer (it would
    pass as 1), a fixed-length tuple takes exactly that many values, list elements, mappings and
    Literal choices are judged too."""
    assert value_fits(3, int) and not value_fits(True, int)
    assert value_fits([0.9, 0.99], tuple[float, float])
    assert not value_fits([0.9], tuple[float, float]) and not value_fits([0.9, 0.99, 0.999], tuple[float, float])
    assert value_fits([8, 16], list[int]) and not value_fits([8, "abc"], list[int])
    assert value_fits({"a": 1}, dict[str, int]) and not value_fits([1], dict) and not value_fits("a", dict[str, int])
    assert value_fits("nce", typing.Literal["softmax", "nce"]) and not value_fits("triplet", typing.Literal["softmax", "nce"])


def test_a_boolean_for_an_integer_setting_is_refused_by_its_key():
    """sampler.s1=true: the mixing sampler's own check takes True for the integer 1 (bool is an int)."""
    with pytest.raises(ConfigError, match=r"sampler\.s1=true is not allowed: expected an integer"):
        validate_train_config(compose_train(TINY + ["sampler=mixing", "sampler.s1=true"]))


def test_data_set_checks_of_evaluate_and_train():
    """With the run's data set read: evaluate.py's OOD k must not exceed the training images (the k-th
    neighbour would not exist), and training needs labelled training images for its kNN and probe."""
    from cl_suite.engine.build import build_dataset

    cfg = compose_train(TINY)
    data = build_dataset(cfg.dataset)
    validation.validate_evaluation_against_data(compose_evaluate(["evaluation.ood.k=1437"]), data, ("ood",))
    with pytest.raises(ConfigError, match=r"evaluation\.ood\.k=1438 is larger than the 1437 training images"):
        validation.validate_evaluation_against_data(compose_evaluate(["evaluation.ood.k=1438"]), data, ("ood",))
    validation.validate_against_data(cfg, data)
    # kNN: refused with the data set read, before any model is built (not at the first evaluation)
    validation.validate_against_data(compose_train(TINY + ["evaluation.knn.k=1437"]), data)
    with pytest.raises(ConfigError, match=r"evaluation\.knn\.k=1438 is larger than the 1437 labelled"):
        validation.validate_against_data(compose_train(TINY + ["evaluation.knn.k=1438"]), data)
    data.train.labels = torch.full_like(data.train.labels, -1)
    with pytest.raises(ConfigError, match="dataset=digits has no labelled training images"):
        validation.validate_against_data(cfg, data)


def test_a_required_argument_deleted_from_its_group_is_named():
    """``~dataset.root``: the reader has no default for it; said at start-up with the key to pass."""
    with pytest.raises(ConfigError, match=r"dataset\.root is required by cl_suite\.data\.cifar\.load_cifar10 but not "
                                          r"set: pass \+dataset\.root=<value>"):
        validate_train_config(compose_train(TINY + ["dataset=cifar10", "~dataset.root"]))


def test_a_warm_up_as_long_as_the_run_is_allowed():
    validate_train_config(compose_train(TINY + ["scheduler.warmup_epochs=2"]))  # trainer.epochs=2


def test_trust_targets_cannot_vouch_for_a_part_of_the_suite():
    """trust_targets lifts the slot check for the user's own code only: naming cl_suite.engine (or any
    part of the suite) would let a run config reach every function in it."""
    from cl_suite.run_evaluation import trusted_targets

    assert trusted_targets(OmegaConf.create({"trust_targets": ["mymethods", "lab.models.Net"]})) == (
        "mymethods", "lab.models.Net")
    for names in (["cl_suite"], ["cl_suite.engine"], ["mymethods", "cl_suite.data.cifar"]):
        with pytest.raises(ConfigError, match=r"trust_targets=.* is not allowed: expected dotted names of your own"):
            trusted_targets(OmegaConf.create({"trust_targets": names}))


def test_evaluate_refuses_dataset_with_a_run_before_reading_the_run():
    """dataset= picks the data of an exported backbone; a run dir is evaluated on its own data set, so
    dataset= beside run= would be silently ignored: refused, naming dataset_root= for moved data."""
    from cl_suite.run_evaluation import evaluate_run

    with pytest.raises(ConfigError, match=r"dataset= is for an exported backbone file .*dataset_root= moves it"):
        evaluate_run(compose_evaluate(["dataset=digits", "wandb=false"]))  # run=/nonexistent-run: never read
