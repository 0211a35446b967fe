"""A new backbone, logger or data set is one file too: start-up validation calls the class's own check
(``check_input_size(cfg, crop_size)`` of a backbone, ``check_config(cfg, key)`` of a logger) and names
neither class. The classes are written into a module in ``tmp_path`` (on ``sys.path`` for the test only)."""
from __future__ import annotations

import json

import pytest

from cl_suite.engine.trainer import train
from cl_suite.engine.validation import ConfigError, validate_train_config
from helpers import TINY, compose_train, refused_at_the_first_step, user_module

MODULE = "cl_suite_test_added_parts"

SOURCE = '''
import json
from pathlib import Path

import torch
from torch import nn

from cl_suite.errors import ConfigError


class PatchNet(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches, embedded and averaged."""

    @classmethod
    def check_input_size(cls, cfg, crop_size):
        if crop_size % cfg.patch:
            raise ConfigError(f"dataset.augment.crop_size={crop_size} is not a multiple of backbone.patch={cfg.patch}")

    def __init__(self, patch: int = 4, width: int = 16):
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.num_features = width

    def forward(self, x):
        return self.embed(x).mean(dim=(2, 3))


class UnpooledNet(PatchNet):
    """A mistake: the patch embeddings themselves, (n, width, h, w), not pooled."""

    def forward(self, x):
        return self.embed(x)


class WidthlessNet(nn.Module):
    """A mistake: no num_features."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.embed = nn.Conv2d(3, width, 4, stride=4)

    def forward(self, x):
        return self.embed(x).mean(dim=(2, 3))


def load_blobs(per_class: int = 16, image_size: int = 16):
    """A data set of one's own: a reader returning the suite's ImageDataset (one uint8 tensor per split)."""
    from cl_suite.data.types import ImageDataset, ImageSplit

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(per_class)
    colour = torch.rand(3, 3, 1, 1, generator=g)[labels] * 200
    split = ImageSplit(labels=labels, images=(colour + 55 * torch.rand(len(labels), 3, image_size, image_size,
                                                                        generator=g)).to(torch.uint8))
    return ImageDataset(name="blobs", pretrain=split, train=split, test=split, classes=["a", "b", "c"],
                        image_size=image_size)


def load_pairs(image_size: int = 16):
    """A mistake: (images, labels) instead of an ImageDataset."""
    return torch.zeros(8, 3, image_size, image_size, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)


class JsonLinesLogger:
    """One JSON line per log call, into ``<run dir>/<filename>``."""

    wants_media = False

    @classmethod
    def check_config(cls, cfg, key):
        if not str(cfg.filename).endswith(".jsonl"):
            raise ConfigError(f"{key}.filename={cfg.filename!r} must end in .jsonl")

    def __init__(self, run_dir, run_config=None, run_id=None, resume_step=None, filename="log.jsonl"):
        self.run_id = run_id
        self.file = (Path(run_dir) / filename).open("a")
        self.file.write(json.dumps({"resume_step": resume_step}) + "\\n")

    def log(self, metrics, step):
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.file.write(json.dumps({"step": step, **numbers}) + "\\n")

    def log_summary(self, metrics):
        pass

    def log_embeddings(self, key, features, labels, class_names=None):
        pass

    def finish(self, exit_code=0):
        self.file.close()
'''

BACKBONE = [f"backbone._target_={MODULE}.PatchNet", "~backbone.widths", "+backbone.patch=4"]
LOGGER = [f"logger._target_={MODULE}.JsonLinesLogger", "+logger.filename=log.jsonl"]


@pytest.fixture
def new_parts(tmp_path, monkeypatch):
    with user_module(tmp_path, monkeypatch, MODULE, SOURCE) as folder:
        yield folder


def test_the_backbones_own_input_size_check_refuses_a_crop_it_cannot_take(new_parts):
    crop = compose_train(TINY + BACKBONE).dataset.augment.crop_size
    validate_train_config(compose_train(TINY + BACKBONE))
    with pytest.raises(ConfigError, match=rf"^dataset\.augment\.crop_size={crop} is not a multiple of backbone\.patch=5$"):
        validate_train_config(compose_train(TINY + BACKBONE[:2] + ["+backbone.patch=5"]))


def test_the_loggers_own_check_runs_alone_and_inside_logger_many(new_parts):
    with pytest.raises(ConfigError, match=r"^logger\.filename='log\.txt' must end in \.jsonl$"):
        validate_train_config(compose_train(TINY + LOGGER[:1] + ["+logger.filename=log.txt"]))
    many = ["logger=many", "logger/loggers=[csv]", f"+logger.loggers.mine._target_={MODULE}.JsonLinesLogger",
            "+logger.loggers.mine.filename=log.txt"]
    with pytest.raises(ConfigError, match=r"^logger\.loggers\.mine\.filename='log\.txt' must end in \.jsonl$"):
        validate_train_config(compose_train([o for o in TINY if not o.startswith("logger")] + many))


def test_a_run_with_both_trains_logs_and_tells_a_resumed_logger_its_step(new_parts):
    run = new_parts / "run"
    overrides = TINY + BACKBONE + LOGGER + ["trainer.log_every_steps=1", "evaluation.linear.epochs=1"]
    train(compose_train(overrides + ["trainer.max_steps=2"], run))
    train(compose_train(overrides + ["trainer.max_steps=3"], run))  # resume=auto from step 2
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    starts = [line["resume_step"] for line in lines if "resume_step" in line]
    assert starts == [None, 2]
    steps = [line["step"] for line in lines if "train/loss" in line]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("name, message", [
    ("UnpooledNet", r"^backbone\._target_='{m}\.UnpooledNet' returned \(2, 16, 4, 4\) for 2 images of "
                    r"dataset\.augment\.crop_size=16; expected \(2, 16\): pooled features of its num_features=16$"),
    ("WidthlessNet", r"^backbone\._target_='{m}\.WidthlessNet' has num_features=None: a backbone sets "
                     r"self\.num_features to the width"),
])
def test_a_backbone_without_num_features_or_pooled_features_is_named_before_the_first_step(new_parts, name, message):
    patch = ["+backbone.patch=4"] if name == "UnpooledNet" else []
    refused_at_the_first_step(TINY + [f"backbone._target_={MODULE}.{name}", "~backbone.widths", *patch],
                              new_parts / "run", message.format(m=MODULE))


def test_a_data_set_of_ones_own_trains_and_a_reader_returning_another_type_is_named(new_parts):
    dataset = [f"dataset._target_={MODULE}.load_blobs", "~dataset.test_fraction", "~dataset.split_seed",
               "trainer.batch_size=16", "evaluation.knn.k=5", "evaluation.linear.epochs=1"]
    final = train(compose_train(TINY + dataset + ["trainer.max_steps=1", "trainer.eval_at_init=false"],
                                new_parts / "run"))
    assert final["step"] == 1
    cfg = compose_train(TINY + [f"dataset._target_={MODULE}.load_pairs", "~dataset.test_fraction",
                                "~dataset.split_seed"], new_parts / "pairs")
    with pytest.raises(ConfigError, match=rf"^dataset\._target_='{MODULE}\.load_pairs' returned tuple; expected "
                                          r"cl_suite\.data\.types\.ImageDataset"):
        train(cfg)


def test_the_export_of_a_backbone_of_ones_own_says_it_is_not_exported_and_what_to_do(new_parts):
    from cl_suite.export import ExportError, export_backbone

    run = new_parts / "run"
    train(compose_train(TINY + BACKBONE + ["trainer.max_steps=1", "trainer.eval_at_init=false",
                                           "evaluation.linear.epochs=1"], run))
    with pytest.raises(ExportError, match=rf"backbone\._target_='{MODULE}\.PatchNet' is a backbone of your own; the "
                                          r"export \(and api.load_encoder\) rebuild only the suite's backbones .*"
                                          rf"--trust-target covers a method of your own, not a backbone.*"
                                          rf"trust_targets=\[{MODULE}\]"):
        export_backbone(run, trusted=(MODULE,))
    assert not list(run.glob("backbone_*"))
