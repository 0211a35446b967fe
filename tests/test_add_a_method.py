"""A new method is one file and nothing else (issue 17, item 1).

The framework below is written into a module of its own in ``tmp_path`` (on ``sys.path`` for the test
only): no file of the suite is edited, no conf/ file is added. It declares its own candidate count
(``ContrastiveMethod.candidates_per_anchor``), so the start-up validation checks any sampler against it
through the sampler's own declaration (``NegativeSampler.check_candidates``), with no line in
``engine/validation.py`` that knows either class. Files these tests write: ``tmp_path/<module>.py``,
``tmp_path/run/`` (the training run) and ``tmp_path/conf/`` (a copy of the config tree with a preset
for the new method); nothing else.
"""
from __future__ import annotations

import shutil
import textwrap

import pytest
from hydra import compose, initialize_config_dir

from cl_suite.engine import validation
from cl_suite.engine.checkpoint import load_checkpoint
from cl_suite.engine.trainer import train
from cl_suite.engine.validation import ConfigError, validate_train_config
from cl_suite.samplers import MixingSampler, RingSampler
from helpers import (CONF, TINY, compose_train, evaluate_in_process, refused_at_the_first_step, trained_run,
                     user_module)

MODULE = "cl_suite_test_added_method"

# The whole new method: what a user would write in a file of their own.
SOURCE = '''
"""A two-view framework that is not part of the suite."""
import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.methods.base import ContrastiveMethod, MethodOutput
from cl_suite.models.heads import mlp
from cl_suite.samplers.base import NegativeSampler, config_value


class CrossViewCLR(ContrastiveMethod):
    """Anchors: the view-1 projections; positive: the same image's view-2 projection; candidates: the
    other images' view-2 projections (B-1), and with ``both_views`` their view-1 projections too (2B-2)."""

    @classmethod
    def candidates_per_anchor(cls, method_cfg, batch_size, dataset_size=None):
        return 2 * batch_size - 2 if config_value(cls, method_cfg, "both_views") else batch_size - 1

    @classmethod
    def candidates_source(cls, method_cfg, batch_size, dataset_size=None):
        views = "both views" if config_value(cls, method_cfg, "both_views") else "view 2"
        return f"method={cls.__name__} with trainer.batch_size={batch_size} (the other images' {views})"

    def __init__(self, backbone: nn.Module, sampler: NegativeSampler, temperature: float = 0.2,
                 projector_hidden_dims: list[int] | tuple[int, ...] = (64,), projector_dim: int = 32,
                 projector_batch_norm: bool = True, both_views: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"method.temperature={temperature} must be > 0")
        self.backbone, self.sampler = backbone, sampler
        self.temperature, self.both_views = float(temperature), both_views
        self.projector = mlp(backbone.num_features, list(projector_hidden_dims), projector_dim,
                             batch_norm=projector_batch_norm)

    def forward(self, views, labels, indices=None):
        b = views[0].shape[0]
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        z1, z2 = (F.normalize(self.projector(h).float(), dim=1) for h in (h1, h2))
        others = ~torch.eye(b, dtype=torch.bool, device=z1.device)  # an image is never its own negative
        candidates, mask, candidate_labels = z2, others, labels
        if self.both_views:
            candidates, mask, candidate_labels = torch.cat([z2, z1]), torch.cat([others, others], 1), labels.repeat(2)
        out = self.sampler(anchors=z1, positives=z2, candidates=candidates, candidate_mask=mask,
                           temperature=self.temperature, anchor_labels=labels, candidate_labels=candidate_labels)
        return MethodOutput(loss=out.loss, features=torch.cat([h1, h2]).detach(), feature_labels=labels.repeat(2),
                            stats=out.stats)
'''

# The new method on the command line: its _target_, SimCLR's keys it does not take removed, its own added.
TARGET = [f"method._target_={MODULE}.CrossViewCLR", "~method.form", "~method.concat_views"]


@pytest.fixture
def new_method(tmp_path, monkeypatch):
    """The module file, importable for this test only."""
    with user_module(tmp_path, monkeypatch, MODULE, SOURCE) as folder:
        yield folder


def test_a_new_method_validates_trains_and_checkpoints(new_method):
    run = new_method / "run"
    cfg = compose_train(TINY + TARGET + ["+method.both_views=true", "sampler=mixing", "trainer.max_steps=2",
                                         "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], run)
    validate_train_config(cfg)  # 2B-2 = 126 candidates >= sampler.n_hard=64
    final = train(cfg)
    assert final["step"] == 2
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 2 and state["config"]["method"]["_target_"] == f"{MODULE}.CrossViewCLR"
    assert state["config"]["method"]["both_views"] is True and "projector.0.weight" in state["method"]
    assert {p.name for p in new_method.iterdir()} <= {f"{MODULE}.py", "run", "__pycache__"}  # all it wrote


def test_a_run_of_the_new_method_is_evaluated_once_its_module_is_trusted(new_method):
    from omegaconf import OmegaConf

    from cl_suite.run_evaluation import evaluate_run

    run = new_method / "run"
    cfg = compose_train(TINY + TARGET + ["trainer.max_steps=2", "trainer.eval_at_init=false",
                                         "evaluation.linear.epochs=1"], run)
    train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # what train.py writes

    def evaluate(*extra):
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            return evaluate_run(compose(config_name="evaluate", overrides=[f"run={run}", "protocol=knn", "wandb=false",
                                                                            *extra]))

    with pytest.raises(ConfigError, match=rf"is not one of the suite's own targets(.|\n)*"
                                          rf"trust_targets=\[{MODULE}\]\)$"):
        evaluate()
    with pytest.raises(ConfigError, match=r"trust_targets=\['cl_suite'\] is not allowed"):
        evaluate("trust_targets=[cl_suite]")
    with pytest.raises(ConfigError, match=r"is not one of the suite's own targets"):
        evaluate("trust_targets=[some_other_module]")
    evaluated = evaluate(f"trust_targets=[{MODULE}]")
    assert 0 <= evaluated["metrics"]["knn/top1"] <= 100

    from cl_suite.export import ExportError, export_backbone, load_backbone

    with pytest.raises(ExportError, match=r"is not one of the suite's methods \(a method of your own: --trust-target"):
        export_backbone(run)
    out, _ = export_backbone(run, trusted=(MODULE,))
    assert sum(p.numel() for p in load_backbone(out).parameters()) > 0


def _spy_on(monkeypatch, sampler_cls):
    """Record the calls of ``sampler_cls.check_candidates`` (and still run it)."""
    calls = []
    check = sampler_cls.__dict__["check_candidates"].__func__

    def spy(cls, sampler_cfg, count, source):
        calls.append((cls.__name__, count))
        return check(cls, sampler_cfg, count, source)

    monkeypatch.setattr(sampler_cls, "check_candidates", classmethod(spy))
    return calls


def test_too_few_declared_candidates_are_refused_by_the_samplers_own_check(new_method, monkeypatch):
    mixing = _spy_on(monkeypatch, MixingSampler)
    # One view's B-1 = 39 other images: fewer than MoCHi's n_hard=64.
    with pytest.raises(ConfigError, match=r"^sampler\.n_hard=64 is larger than the 39 candidate negatives per anchor "
                                          r"of method=CrossViewCLR with trainer\.batch_size=40 \(the other images' "
                                          r"view 2\): lower sampler\.n_hard or use more candidates$"):
        validate_train_config(compose_train(TINY + TARGET + ["sampler=mixing", "trainer.batch_size=40"]))
    assert mixing == [("MixingSampler", 39)]
    # The count is the method's own, read from its own key: both views give 2B-2 = 78, enough.
    validate_train_config(compose_train(TINY + TARGET + ["+method.both_views=true", "sampler=mixing",
                                                         "trainer.batch_size=40"]))
    assert mixing[-1] == ("MixingSampler", 78)
    # The ring's own check: u = l = 0.1 of 7 candidates keeps ranks 0 .. -1, none.
    ring = _spy_on(monkeypatch, RingSampler)
    with pytest.raises(ConfigError, match=r"^sampler\.outer_fraction=0\.1 and sampler\.inner_fraction=0\.1 keep no "
                                          r"negative out of the 7 candidates of method=CrossViewCLR"):
        validate_train_config(compose_train(TINY + TARGET + ["sampler=ring", "trainer.batch_size=8"]))
    assert ring == [("RingSampler", 7)]


def test_a_preset_file_for_the_new_method_needs_no_change_to_the_suite(new_method, monkeypatch):
    """The same method as a preset (``method=cross_view``) in a copy of the config tree: its keys are the
    constructor's (the method group has a ``_target_``), so the known-keys check accepts them as they are."""
    conf = new_method / "conf"
    shutil.copytree(CONF, conf)
    (conf / "method" / "cross_view.yaml").write_text(textwrap.dedent(f"""\
        _target_: {MODULE}.CrossViewCLR
        temperature: 0.2
        projector_hidden_dims: [64]
        projector_dim: 32
        both_views: false
        """))
    monkeypatch.setattr(validation, "CONF_DIR", conf)

    def composed(*overrides):
        with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
            cfg = compose(config_name="train", overrides=[*TINY, "method=cross_view", *overrides])
        cfg.paths.output_dir = str(new_method / "run")
        return cfg

    validate_train_config(composed("sampler=ring", "sampler.outer_fraction=0.5"))  # 63 candidates: ranks 3 .. 30
    with pytest.raises(ConfigError, match=r"sampler\.n_hard=64 is larger than the 63 candidate negatives"):
        validate_train_config(composed("sampler=mixing"))
    with pytest.raises(ConfigError, match=r"method\.both_view is not a setting of .*CrossViewCLR; did you mean "
                                          r"method\.both_views\?"):
        validate_train_config(composed("+method.both_view=true"))


# ---- a sampler of one's own: one file too (`sampler._target_=<module>.<Class>`) ----

SAMPLER_MODULE = "cl_suite_test_added_sampler"

SAMPLER_SOURCE = '''
"""Negative samplers that are not part of the suite, and the mistakes one makes writing one."""
import torch
from torch import nn

from cl_suite.errors import ConfigError
from cl_suite.samplers.base import NegativeSampler, NegativeTerm


class TopKSampler(NegativeSampler):
    """The k most similar candidates of each anchor are its negatives."""

    @classmethod
    def check_candidates(cls, sampler_cfg, count, source):
        if sampler_cfg.get("k", 4) > count:
            raise ConfigError(f"sampler.k={sampler_cfg.k} is larger than the {count} candidates of {source}")

    def __init__(self, k: int = 4):
        super().__init__()
        self.k = k

    def negative_term(self, ctx):
        logits = (ctx.cand_sim / ctx.temperature).masked_fill(~ctx.mask, float("-inf"))
        return NegativeTerm(log_mass=torch.logsumexp(logits.topk(self.k, dim=1).values, dim=1))


class KeepDimSampler(NegativeSampler):
    """A (A, 1) log mass: broadcast against the (A,) positives it would make an (A, A) loss."""

    def negative_term(self, ctx):
        return NegativeTerm(log_mass=torch.logsumexp(ctx.cand_sim / ctx.temperature, dim=1, keepdim=True))


class TensorSampler(NegativeSampler):
    """Returns the log mass itself instead of a NegativeTerm."""

    def negative_term(self, ctx):
        return torch.logsumexp(ctx.cand_sim / ctx.temperature, dim=1)


class NoTermSampler(NegativeSampler):
    """Forgot negative_term."""


class ModuleSampler(nn.Module):
    """Not a NegativeSampler at all."""

    def forward(self, anchors, positives, candidates, candidate_mask, temperature, anchor_labels=None,
                candidate_labels=None):
        return (anchors * positives).sum(1).mean()
'''

SAMPLER = f"sampler._target_={SAMPLER_MODULE}"


@pytest.fixture
def new_sampler(tmp_path, monkeypatch):
    with user_module(tmp_path, monkeypatch, SAMPLER_MODULE, SAMPLER_SOURCE) as folder:
        yield folder


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_a_new_sampler_trains_with_simclr_and_moco_and_is_evaluated_once_trusted(new_sampler, method):
    run = new_sampler / "run"
    sizes = ["method.queue_size=256"] if method == "moco" else []
    final = trained_run(run, [f"method={method}", *sizes, f"{SAMPLER}.TopKSampler", "+sampler.k=8",
                              "trainer.max_steps=2", "evaluation.linear.epochs=1"])
    assert final["step"] == 2
    with pytest.raises(ConfigError, match=rf"sampler\._target_: '{SAMPLER_MODULE}\.TopKSampler' is not one of the "
                                          rf"suite's own targets(.|\n)*trust_targets=\[{SAMPLER_MODULE}\]\)$"):
        evaluate_in_process(run, "protocol=knn", "wandb=false")
    evaluated = evaluate_in_process(run, "protocol=knn", "wandb=false", f"trust_targets=[{SAMPLER_MODULE}]")
    assert 0 <= evaluated["metrics"]["knn/top1"] <= 100


@pytest.mark.parametrize("name, message", [
    ("NoTermSampler", r"^sampler\._target_='{m}\.NoTermSampler' does not implement negative_term\(ctx\)"),
    ("ModuleSampler", r"^sampler\._target_='{m}\.ModuleSampler' is not a subclass of "
                      r"cl_suite\.samplers\.base\.NegativeSampler: a sampler of your own must subclass it$"),
])
def test_a_sampler_that_does_not_implement_the_interface_is_refused_at_start_up(new_sampler, name, message):
    with pytest.raises(ConfigError, match=message.format(m=SAMPLER_MODULE)):
        validate_train_config(compose_train(TINY + [f"{SAMPLER}.{name}"]))


@pytest.mark.parametrize("name, message", [
    # 2B = 128 SimCLR anchors: a (128, 1) log mass used to broadcast into a (128, 128) loss, silently
    ("KeepDimSampler", r"^sampler\._target_='{m}\.KeepDimSampler': negative_term returned log_mass of shape "
                       r"\(128, 1\); expected \(128,\), one log N_a per anchor$"),
    ("TensorSampler", r"^sampler\._target_='{m}\.TensorSampler': negative_term returned Tensor; expected "
                      r"cl_suite\.samplers\.base\.NegativeTerm"),
])
def test_a_negative_term_of_the_wrong_type_or_shape_is_refused_at_the_first_step(new_sampler, name, message):
    refused_at_the_first_step(TINY + [f"{SAMPLER}.{name}"], new_sampler / "run", message.format(m=SAMPLER_MODULE))


# ---- the mistakes one makes writing a method ----

BAD_METHOD_SOURCE = '''
import torch
from torch import nn

from cl_suite.methods.base import ContrastiveMethod, MethodOutput


class Pooled(ContrastiveMethod):
    """A method whose forward returns ``what``: its loss alone, an unreduced loss, or a full output."""

    def __init__(self, backbone, sampler, temperature: float = 0.5, what: str = "loss"):
        super().__init__()
        self.backbone, self.sampler, self.temperature, self.what = backbone, sampler, temperature, what

    def forward(self, views, labels, indices=None):
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        b = len(h1)
        z1, z2 = torch.nn.functional.normalize(h1, dim=1), torch.nn.functional.normalize(h2, dim=1)
        out = self.sampler(anchors=z1, positives=z2, candidates=z2, candidate_mask=~torch.eye(b, dtype=torch.bool),
                           temperature=self.temperature)
        if self.what == "loss":
            return out.loss
        loss = out.loss.expand(b) if self.what == "per_anchor" else out.loss
        return MethodOutput(loss=loss, features=torch.cat([h1, h2]).detach(), feature_labels=labels.repeat(2))


class NotAMethod(nn.Module):
    def __init__(self, backbone, sampler, temperature: float = 0.5):
        super().__init__()
        self.backbone = backbone
'''

BAD_METHOD_MODULE = "cl_suite_test_bad_method"
BAD_METHOD = [f"method._target_={BAD_METHOD_MODULE}.Pooled", "~method.form", "~method.concat_views",
              "~method.projector_hidden_dims", "~method.projector_dim", "~method.projector_batch_norm"]


@pytest.fixture
def bad_method(tmp_path, monkeypatch):
    with user_module(tmp_path, monkeypatch, BAD_METHOD_MODULE, BAD_METHOD_SOURCE) as folder:
        yield folder


@pytest.mark.parametrize("what, message", [
    ("loss", r"^method\._target_='{m}\.Pooled': forward returned Tensor; expected "
             r"cl_suite\.methods\.base\.MethodOutput\(loss=<scalar>"),
    ("per_anchor", r"^method\._target_='{m}\.Pooled': forward returned a loss of shape \(64,\); expected a scalar"),
])
def test_a_method_output_of_the_wrong_type_or_shape_is_named_at_the_first_step(bad_method, what, message):
    refused_at_the_first_step(TINY + BAD_METHOD + [f"+method.what={what}", "trainer.eval_at_init=false"],
                              bad_method / "run", message.format(m=BAD_METHOD_MODULE))
    cfg = compose_train(TINY + BAD_METHOD + ["+method.what=output", "trainer.max_steps=1", "trainer.eval_at_init=false",
                                             "evaluation.linear.epochs=1"], bad_method / "good")
    assert train(cfg)["step"] == 1  # the same method returning a MethodOutput with a scalar loss trains


def test_a_method_that_is_no_contrastive_method_is_refused_at_start_up(bad_method):
    with pytest.raises(ConfigError, match=rf"^method\._target_='{BAD_METHOD_MODULE}\.NotAMethod' is not a subclass of "
                                          r"cl_suite\.methods\.base\.ContrastiveMethod: a method of your own must "
                                          r"subclass it$"):
        validate_train_config(compose_train(TINY + [f"method._target_={BAD_METHOD_MODULE}.NotAMethod", "~method.form",
                                                    "~method.concat_views", "~method.projector_hidden_dims",
                                                    "~method.projector_dim", "~method.projector_batch_norm"]))
