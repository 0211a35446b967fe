"""Bad input fails before training starts, with a message that names the offending value."""
import re

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from cl_suite.data.types import DatasetNotFoundError
from cl_suite.engine.trainer import train
from cl_suite.engine.validation import ConfigError
from helpers import TINY, compose_train, run_cli


@pytest.mark.parametrize("override, named", [("dataset=imagenet_typo", "imagenet_typo"),
                                             ("method=simclrr", "simclrr"),
                                             ("sampler=ringg", "ringg")])
def test_unknown_group_option_lists_the_choices(override, named):
    with pytest.raises(MissingConfigException) as err:
        compose_train([override])
    message = str(err.value)
    assert named in message and "Available options" in message


@pytest.mark.parametrize("override, error, named", [
    ("trainer.batch_size=1", ConfigError, "trainer.batch_size=1"),
    ("trainer.epochs=0", ConfigError, "trainer.epochs=0"),
    ("trainer.precision=fp8", ConfigError, "trainer.precision='fp8'"),
    ("trainer.max_steps=0", ConfigError, "trainer.max_steps=0"),
    ("trainer.overfit_batches=-1", ConfigError, "trainer.overfit_batches=-1"),
    ("trainer.threads=0", ConfigError, "trainer.threads=0"),
    ("trainer.threads=many", ConfigError, "trainer.threads='many'"),
    ("trainer.overfit_batches=1000", ConfigError, "trainer.overfit_batches=1000"),  # digits has 5 batches of 256
    ("trainer.profile_steps=-2", ConfigError, "trainer.profile_steps=-2"),
    ("trainer.save_checkpoints=maybe", ConfigError, "trainer.save_checkpoints"),
    ("trainer.device=tpu", ConfigError, "trainer.device='tpu'"),
    ("evaluation.knn.k=0", ConfigError, "evaluation.knn.k=0"),
    ("seed=-1", ConfigError, "seed=-1"),
    ("trainer.batch_size=4096", ValueError, "larger than the 1437 training images"),
    ("method.temperature=0", ValueError, "method.temperature=0"),
    ("optimizer.lr=-0.1", ConfigError, "optimizer.lr=-0.1"),
    ("trainer.precision=fp16 trainer.device=cpu", ConfigError, "trainer.precision='fp16' needs a CUDA device"),
    ("resume=/no/such/run", FileNotFoundError, "resume='/no/such/run'"),
])
def test_bad_values_fail_before_training(tmp_path, override, error, named):
    with pytest.raises(error) as err:
        train(compose_train(TINY + override.split(), tmp_path))
    assert named in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_set_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        train(compose_train(TINY + ["dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}"], tmp_path))
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "dataset.download=true" in message


@pytest.mark.slow
def test_cli_reports_a_missing_data_set_readably(tmp_path):
    proc = run_cli("train.py", ["dataset=cifar100", f"dataset.root={tmp_path}", "logger=none",
                                f"hydra.run.dir={tmp_path / 'run'}"], env={"HYDRA_FULL_ERROR": ""})  # as a user's shell
    assert proc.returncode == 1
    assert "cifar-100-python" in proc.stderr and str(tmp_path) in proc.stderr
    # The suite's own errors print their message alone: no traceback, a screenful at most.
    assert "Traceback" not in proc.stderr and "error: CIFAR-100 not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 12, proc.stderr
    full = run_cli("train.py", ["dataset=cifar100", f"dataset.root={tmp_path}", "logger=none",
                                f"hydra.run.dir={tmp_path / 'run2'}"], env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "DatasetNotFoundError" in full.stderr


@pytest.mark.slow
def test_a_sweep_job_with_a_bad_setting_prints_its_message_without_a_traceback(tmp_path):
    proc = run_cli("train.py", ["-m", "scheduler.warmup_epochs=50", "trainer.epochs=1", "trainer.max_steps=1",
                                "logger=none", f"hydra.sweep.dir={tmp_path}"], env={"HYDRA_FULL_ERROR": ""})
    assert proc.returncode == 1
    assert "error: scheduler.warmup_epochs=50 is longer than the run (trainer.epochs=1)" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    from cl_suite.report.jobs import collect_jobs  # the sweep's report says why the job failed

    (job,) = collect_jobs(tmp_path)
    assert job.status == "failed" and job.reason.startswith(
        "refused at start-up: scheduler.warmup_epochs=50 is longer than the run (trainer.epochs=1)"), job.reason
    fixed = run_cli("train.py", ["scheduler.warmup_epochs=0", "trainer.epochs=1", "trainer.max_steps=1", "logger=none",
                                 "evaluation.linear.epochs=1", "trainer.eval_at_init=false",
                                 f"hydra.run.dir={tmp_path / '0'}"])
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert not (tmp_path / "0" / "refused.txt").exists() and collect_jobs(tmp_path)[0].status == "ok"


@pytest.mark.slow
def test_missing_paths_and_bad_evaluate_settings_print_one_error_line_and_create_nothing(tmp_path):
    """A mistyped run folder, checkpoint or protocol reads like every other user error (no traceback), and
    evaluate.py's log does not create the folder a typo names nor land in a folder that is not a run."""
    typo, not_a_run = tmp_path / "no_such_run", tmp_path / "src_like"
    not_a_run.mkdir()
    cases = [
        ("evaluate.py", [f"run={typo}"], f"error: run='{typo}' does not exist"),
        ("evaluate.py", [f"run={not_a_run}"], f"error: run='{not_a_run}' has no .hydra/config.yaml"),
        ("evaluate.py", ["protocol=foo", f"run={typo}"], "error: protocol=['foo'] is not allowed"),
        ("evaluate.py", ["protocol=ood", f"run={typo}"], "error: protocol=ood needs ood_dataset="),
        ("train.py", [f"resume={typo}.pt", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
         f"error: resume='{typo}.pt': no such checkpoint file or run dir"),
    ]
    for script, args, message in cases:
        proc = run_cli(script, args, env={"HYDRA_FULL_ERROR": ""})
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr
    assert not typo.exists() and list(not_a_run.iterdir()) == []


def test_evaluate_names_its_own_setting_for_a_missing_ood_data_set(tmp_path):
    from helpers import evaluate_in_process, trained_run

    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=1", "trainer.eval_at_init=false"])
    with pytest.raises(DatasetNotFoundError) as err:
        evaluate_in_process(run, "protocol=ood", "ood_dataset=cifar10", f"ood_root={tmp_path / 'nowhere'}")
    message = str(err.value)
    assert f"ood_root={tmp_path / 'nowhere'}" in message and "then pass ood_root=<dir>" in message
    assert "dataset.root=" not in message.replace("dataset.root=<dir> debug=fast", "")


def test_a_constructor_refusing_a_value_is_a_config_error_and_other_errors_keep_their_traceback(monkeypatch):
    from cl_suite.engine.validation import ConfigError
    from cl_suite.errors import UserError, user_errors_without_traceback
    from hydra.errors import CompactHydraException

    monkeypatch.delenv("HYDRA_FULL_ERROR")  # the tests' default shows every traceback

    def refuses(cfg):
        raise ConfigError("method.temperature=-1 must be > 0")

    def crashes(cfg):
        raise KeyError("a bug")

    with pytest.raises(CompactHydraException, match=r"^error: method.temperature=-1 must be > 0$"):
        user_errors_without_traceback(refuses)(None)
    with pytest.raises(KeyError):  # a bug is not the user's error: Hydra prints its traceback
        user_errors_without_traceback(crashes)(None)
    with pytest.raises(ConfigError, match="method.temperature=-1") as err:  # raised by the constructor itself
        train(compose_train(TINY + ["method.temperature=-1"]))
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


# One row per bad input, across every config group: (overrides, text the error must contain). The text
# is the offending key (with its value where the message quotes it): the user reads which knob to turn.
BAD_OVERRIDES = [
    # dataset
    ("dataset.image_size=0", "dataset.image_size=0"),
    ("dataset.test_fraction=abc", "dataset.test_fraction='abc'"),
    ("+dataset.colour=true", "dataset.colour"),
    ("dataset.std=[0.3,0,0.3]", "dataset.std"),
    ("dataset.mean=[0.1,0.2]", "dataset.mean"),
    ("dataset.augment.crop_size=0", "dataset.augment.crop_size"),
    ("dataset.augment.jitter.hue=0.7", "dataset.augment.jitter.hue"),
    ("dataset.augment.flip_p=1.5", "dataset.augment.flip_p"),
    ("dataset.std=[inf,0.2,0.2]", "dataset.std=[inf, 0.2, 0.2]"),  # nan and inf: never a setting's value
    ("dataset.augment.jitter.brightness=nan", "dataset.augment.jitter.brightness=nan"),
    ("dataset.augment.crop_ratio=[0.75,inf]", "dataset.augment.crop_ratio"),
    ("dataset.split_seed=-1", "dataset.split_seed=-1"),  # scikit-learn's message would not name the key
    ("dataset.split_seed=4294967296", "dataset.split_seed=4294967296"),
    ("+dataset.augment.jitter.brightnes=0.4", "dataset.augment.jitter.brightnes"),
    # backbone (and its fit with the image size)
    ("backbone.widths=[]", "backbone.widths"),
    ("backbone.widths=[8,abc]", "backbone.widths"),
    ("backbone.widths=[4,4,4,4,4,4]", "backbone.widths"),  # 5 halvings of a 16 px crop
    ("backbone=resnet18 backbone.depth=34", "backbone.depth=34"),
    ("+backbone.dropout=0.1", "backbone.dropout"),
    # method
    ("method.temperature=abc", "method.temperature='abc'"),
    ("method.projector_dim=0", "method.projector_dim=0"),
    ("method.projector_hidden_dims=[0]", "method.projector_hidden_dims"),
    ("method.concat_views=maybe", "method.concat_views='maybe'"),
    ("+method.tau=0.1", "method.tau"),
    ("method.temperature=inf", "method.temperature=inf"),
    ("method.tempreature=0.1", "method.tempreature"),
    ("method=moco method.queue_size=0", "method.queue_size=0"),
    ("method=moco method.momentum=1.5", "method.momentum=1.5"),
    ("method=ir method.num_negatives=0", "method.num_negatives=0"),
    ("method=ir method.bank_momentum=1", "method.bank_momentum=1"),
    # sampler (and its fit with the framework's candidates)
    ("sampler=debiased sampler.tau_plus=1.0", "sampler.tau_plus=1.0"),
    ("sampler=hard sampler.beta=-1", "sampler.beta=-1"),
    ("sampler=ring sampler.outer_fraction=0", "sampler.outer_fraction=0"),
    ("sampler=ring sampler.inner_fraction=1.0", "sampler.inner_fraction=1.0"),
    ("sampler=ring sampler.anneal=cosine", "sampler.anneal='cosine'"),
    ("sampler=ring trainer.batch_size=4", "sampler.outer_fraction=0.1"),  # 6 candidates: int(0.6) = 0, an empty ring
    ("method=ir_ring sampler.outer_fraction=0.0005", "sampler.outer_fraction=0.0005"),  # the whole digits bank is too small
    ("sampler.lower_percentile=90", "sampler.lower_percentile"),  # the old key is refused, not ignored
    ("sampler=mixing sampler.s1=-1", "sampler.s1=-1"),
    ("sampler=mixing sampler.s1=-1 trainer.batch_size=16", "sampler.s1=-1"),  # not "n_hard too large"
    ("method=moco sampler=mochi method.queue_size=512", "sampler.n_hard=1024"),
    ("method=nnclr sampler=mixing trainer.batch_size=32", "sampler.n_hard=64"),  # 31 candidates
    ("method=rince method.variant=sideways", "method.variant"),
    ("method=kmclr method.num_prototypes=1", "method.num_prototypes"),
    # optimizer
    ("optimizer.momentum=1.0", "optimizer.momentum=1.0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1"),
    ("optimizer.batch_size_reference=0", "optimizer.batch_size_reference=0"),
    ("optimizer=adamw optimizer.betas=[0.9]", "optimizer.betas"),
    ("optimizer=adamw optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0]"),  # beta 1: no decay of the average
    ("optimizer=lars optimizer.eta=0", "optimizer.eta=0"),
    ("+optimizer.foo=1", "optimizer.foo"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay=inf"),
    # scheduler
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs=-1"),
    ("scheduler.warmup_epochs=5", "scheduler.warmup_epochs=5"),  # longer than trainer.epochs=2
    ("scheduler.min_lr_ratio=2", "scheduler.min_lr_ratio=2"),
    ("scheduler.warmup_epochs=3", "scheduler.warmup_epochs=3"),  # one epoch longer than the run
    # logger
    ("logger=wandb logger.mode=sometimes", "logger.mode='sometimes'"),
    ("logger=wandb logger.tags=5", "logger.tags=5"),
    # evaluation
    ("evaluation.knn.temperature=0", "evaluation.knn.temperature=0"),
    ("evaluation.knn.k=5000", "evaluation.knn.k=5000"),  # more neighbours than labelled images
    ("evaluation.linear.momentum=1", "evaluation.linear.momentum=1"),
    ("evaluation.linear.epochs=0", "evaluation.linear.epochs=0"),
    ("evaluation.linear.lr=inf", "evaluation.linear.lr=inf"),
    ("evaluation.knn.temperature=inf", "evaluation.knn.temperature=inf"),
    ("+evaluation.knn.kk=5", "evaluation.knn.kk=5"),  # a + key nothing reads is refused, not ignored
    ("evaluation.lowshot.fractions=[0.01,2]", "evaluation.lowshot.fractions=[0.01, 2]"),
    ("evaluation.lowshot.fractions=0.1", "evaluation.lowshot.fractions=0.1"),  # a list, not a number
    ("evaluation.lowshot.fractions=[0.1,0.1]", "evaluation.lowshot.fractions=[0.1, 0.1]"),  # one number twice
    ("evaluation.lowshot.draws=0", "evaluation.lowshot.draws=0"),
    ("evaluation.retrieval.ks=[0,5]", "evaluation.retrieval.ks=[0, 5]"),
    ("evaluation.knn.k=1438", "evaluation.knn.k=1438 is larger than the 1437 labelled"),  # one more than there are
    # trainer and top level
    ("trainer.epochs=ten", "trainer.epochs='ten'"),
    ("trainer.keep_last_checkpoints=0", "trainer.keep_last_checkpoints=0"),
    ("trainer.nonfinite=ignore", "trainer.nonfinite='ignore'"),
    ("trainer.best_mode=up", "trainer.best_mode='up'"),
    ("trainer.log_every_steps=0", "trainer.log_every_steps=0"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0"),
    ("trainer.compile_mode=fast", "trainer.compile_mode='fast'"),
    ("trainer.compile_mode=max-autotune", "trainer.compile_mode=max-autotune has no effect with trainer.compile=false"),
    ("trainer.channels_last=maybe", "trainer.channels_last='maybe'"),
    ("probe.lr=0", "probe.lr=0"),
    ("probe.weight_decay=inf", "probe.weight_decay=inf"),
    ("+probe.lrr=0.1", "probe.lrr=0.1"),
    ("trainer.grad_clip=inf", "trainer.grad_clip=inf"),
    ("+trainer.max_step=2", "trainer.max_step=2"),  # the form Hydra's own error suggests for a typo
    ("+paths.output=out", "paths.output='out'"),
    ("+seeds=3", "seeds=3"),
    ("seed=4294967296", "seed=4294967296"),  # numpy's generators take [0, 2**32 - 1]
    ("trainer.device=cuda:abc", "trainer.device='cuda:abc'"),
    ("trainer.best_metric=knn/top3", "trainer.best_metric='knn/top3'"),  # never measured: best.pt never written
    ("trainer.best_metric=train/loss", "trainer.best_metric='train/loss'"),
    # a method's diagnostics and training numbers are compared at eval epochs before the last only
    ("trainer.best_metric=diag/alignment", "trainer.best_metric='diag/alignment'"),
    ("trainer.best_metric=train/epoch_loss trainer.eval_every_epochs=2", "trainer.best_metric='train/epoch_loss'"),
    ("trainer.eval_every_epochs=-1", "trainer.eval_every_epochs=-1"),
    ("trainer.max_skipped_fraction=1.5", "trainer.max_skipped_fraction=1.5"),
    ("trainer.overfit_batches=23", "trainer.overfit_batches=23 is more than the 22 batches"),  # 1437 // 64
    ("probe.momentum=1", "probe.momentum=1"),
    ("probe.optimizer=lars", "probe.optimizer=lars takes its eta"),  # with the default SGD: no eta to take
]


def _overrides(bad: str) -> list[str]:
    """TINY plus the bad overrides; a row that swaps the backbone drops TINY's small-convnet widths."""
    base = [o for o in TINY if not (o.startswith("backbone.") and "backbone=" in bad)]
    return base + bad.split()


@pytest.mark.parametrize("bad, named", BAD_OVERRIDES, ids=[row[0] for row in BAD_OVERRIDES])
def test_every_group_rejects_a_bad_value_naming_the_key(tmp_path, bad, named):
    """The real path (compose, then ``train``) stops before training with an error that names the key,
    not Hydra's escaped one-line wrapper of it, and leaves no checkpoint behind."""
    with pytest.raises(Exception) as err:
        train(compose_train(_overrides(bad), tmp_path))
    message = str(err.value)
    assert named in message, f"{type(err.value).__name__}: {message}"
    assert "Error in call to target" not in message
    assert not (tmp_path / "checkpoints").exists()


def test_the_table_covers_every_config_group():
    """Every section of the composed train config (each group and trainer, probe, paths) has a row, and no
    row is there twice: the sections come from the config tree, so a new group needs its own rows."""
    from omegaconf import DictConfig

    sections = {key for key, value in compose_train([]).items() if isinstance(value, DictConfig)}
    groups = {row[0].split("=")[0].lstrip("+").split(".")[0] for row in BAD_OVERRIDES}
    assert sections - groups == set()
    assert len({row[0] for row in BAD_OVERRIDES}) == len(BAD_OVERRIDES)


def _image_folder(root, bad_file: str, content: bytes):
    """A two-class image folder (train and test) with one unreadable file in train."""
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"{i}.png")
    (root / "train" / "a" / bad_file).write_bytes(content)
    return root / "train" / "a" / bad_file


@pytest.mark.parametrize("bad_file, content", [("empty.jpg", b""), ("page.jpg", b"<html>404</html>"),
                                               ("cut.png", None)])
def test_unreadable_image_names_the_file_and_writes_no_cache(tmp_path, bad_file, content):
    import io

    from PIL import Image

    from cl_suite.data.imagefolder import CACHE_DIR_NAME, UnreadableImageError

    if content is None:  # a real PNG cut short, as an interrupted copy leaves it
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
        content = buffer.getvalue()[:60]
    path = _image_folder(tmp_path / "data", bad_file, content)
    cfg = compose_train(TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                "dataset.augment.crop_size=16", "trainer.batch_size=2"], tmp_path / "run")
    with pytest.raises(UnreadableImageError) as err:
        train(cfg)
    assert str(path) in str(err.value) and "Remove or replace" in str(err.value)
    assert str(err.value).startswith(f"cannot read image file {path}: ")  # one file: its own error, not "1 image files"
    assert not (tmp_path / "data" / CACHE_DIR_NAME).exists()
    assert not (tmp_path / "run" / "checkpoints").exists()



def test_every_unreadable_image_is_named_in_one_error(tmp_path):
    """Before: the first unreadable file stopped the decoding, so a tree with 12 bad files took 12 runs (each a
    full decode of the tree) to find them; now one error names the first 10 (in path order) and counts the rest."""
    from cl_suite.data.imagefolder import CACHE_DIR_NAME, MAX_UNREADABLE_NAMED, UnreadableImageError

    first = _image_folder(tmp_path / "data", "bad_00.jpg", b"<html>404</html>")
    bad = [first] + [first.with_name(f"bad_{i:02d}.jpg") for i in range(1, MAX_UNREADABLE_NAMED + 2)]
    for path in bad[1:]:
        path.write_bytes(b"")
    cfg = compose_train(TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                "dataset.augment.crop_size=16", "trainer.batch_size=2"], tmp_path / "run")
    with pytest.raises(UnreadableImageError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"cannot read {len(bad)} image files: {', '.join(map(str, bad[:MAX_UNREADABLE_NAMED]))}"
                              " and 2 more (the first: UnidentifiedImageError: ")
    assert str(bad[-1]) not in message and "Remove or replace them" in message
    assert not (tmp_path / "data" / CACHE_DIR_NAME).exists()
    assert (tmp_path / "run" / "refused.txt").read_text() == message  # an UnreadableImageError is no ConfigError

def _class_tree(root, classes_per_split):
    """``root/<split>/<class>/<i>.png`` for ``{split: [class, ...]}``, two 8x8 images per class."""
    from PIL import Image

    for split, classes in classes_per_split.items():
        for label in classes:
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / split / label / f"{i}.png")


@pytest.mark.parametrize("layout, named", [
    ({"train": ["a", "b", "empty"], "test": ["a", "b", "empty"]}, "train/empty holds no image files"),
    ({"train": ["a", "b"], "test": ["a", "c"]}, "only in train: ['b'], only in test: ['c']"),
    ({"train": [], "test": ["a", "b"]}, "train has no class sub-folders"),
])
def test_a_bad_image_folder_layout_is_a_user_error_naming_the_folder(tmp_path, layout, named):
    """Before: plain ValueErrors, so train.py printed a traceback for a mistake in the user's own folder."""
    from cl_suite.errors import UserError

    _class_tree(tmp_path / "data", layout)
    (tmp_path / "data" / "train").mkdir(exist_ok=True)
    for split, classes in layout.items():
        if "empty" in classes:
            for png in (tmp_path / "data" / split / "empty").iterdir():
                png.unlink()
            (tmp_path / "data" / split / "empty" / "nested").mkdir()  # an empty sub-folder is no image either
    cfg = compose_train(TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                "dataset.augment.crop_size=16", "trainer.batch_size=2"], tmp_path / "run")
    with pytest.raises(UserError) as err:
        train(cfg)
    assert named in str(err.value).replace(str(tmp_path / "data") + "/", "")
    assert (tmp_path / "run" / "refused.txt").read_text() == str(err.value)  # the folder says why it holds no run


def test_an_image_folder_of_one_class_is_refused_before_training(tmp_path):
    """Before: the run trained and reported kNN, linear and probe accuracies of 100% (one class to pick)."""
    _class_tree(tmp_path / "data", {"train": ["only"], "test": ["only"]})
    cfg = compose_train(TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                "dataset.augment.crop_size=16", "trainer.batch_size=2", "evaluation.knn.k=1"],
                        tmp_path / "run")
    with pytest.raises(ConfigError, match=r"dataset=imagefolder has one class \('only'\).*at least 2 classes"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_one_class_refusal_names_the_class_the_labelled_images_hold():
    """The class named is the one of the labelled training images, not the data set's first class (a data
    set whose other classes are only in its unlabelled images)."""
    from types import SimpleNamespace

    from cl_suite.engine.validation import validate_against_data

    data = SimpleNamespace(name="mine", classes=["cat", "dog"],
                           train=SimpleNamespace(labels=torch.tensor([1, -1, 1, -1])))
    cfg = compose_train(TINY + ["dataset=synthetic"])
    with pytest.raises(ConfigError, match=re.escape("dataset=mine has one class ('dog') in its labelled training")):
        validate_against_data(cfg, data)


def test_a_job_refused_once_its_data_are_read_says_why_in_its_folder(tmp_path):
    """A batch larger than the image folder is refused after the data set is read. Before: the folder held no
    refused.txt, so the sweep report listed the job as "crashed before its first checkpoint"."""
    from cl_suite.report.jobs import collect_jobs

    _class_tree(tmp_path / "data", {"train": ["a", "b"], "test": ["a", "b"]})
    run = tmp_path / "sweep" / "0"
    cfg = compose_train(TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                                "dataset.augment.crop_size=16", "trainer.batch_size=8", "evaluation.knn.k=1"], run)
    with pytest.raises(ConfigError, match="trainer.batch_size=8 is larger than the 4 training images"):
        train(cfg)
    assert "trainer.batch_size=8 is larger than the 4 training images" in (run / "refused.txt").read_text()
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # as train.py's Hydra record
    (job,) = collect_jobs(tmp_path / "sweep")
    assert job.status == "failed" and job.reason.startswith(
        "refused at start-up: trainer.batch_size=8 is larger than the 4 training images"), job.reason


def test_a_run_folder_refused_once_its_data_are_read_keeps_its_run_unlabelled(tmp_path):
    """A folder that holds a run, started again with a batch larger than its data set: refused after the data
    are read, but no refused.txt: the run it holds stays reported as that run, not as a refused job."""
    from cl_suite.report.jobs import collect_jobs

    _class_tree(tmp_path / "data", {"train": ["a", "b"], "test": ["a", "b"]})
    run = tmp_path / "sweep" / "0"
    overrides = TINY + ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
                        "dataset.augment.crop_size=16", "evaluation.knn.k=1", "trainer.eval_at_init=false"]
    cfg = compose_train(overrides + ["trainer.batch_size=2", "trainer.max_steps=1"], run)
    train(cfg)
    assert re.search(r"\]\[INFO\] decoding 4 images from .*train at 16x16", (run / "train.log").read_text())
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="trainer.batch_size=8 is larger than the 4 training images"):
        train(compose_train(overrides + ["trainer.batch_size=8", "trainer.max_steps=1"], run))
    assert not (run / "refused.txt").exists()
    (job,) = collect_jobs(tmp_path / "sweep")
    assert job.status == "ok", job.reason


def test_evaluate_refuses_an_image_folder_without_its_root_and_a_transfer_k_beyond_its_images(tmp_path):
    """Before: ood_dataset=image_files without ood_root read the folder '???' of the working directory (once the
    features were extracted), and a transfer folder with fewer labelled images than evaluation.knn.k
    stopped with a ValueError traceback."""
    from helpers import evaluate_in_process, trained_run

    run = tmp_path / "run"
    trained_run(run, ["trainer.max_steps=1", "trainer.eval_at_init=false"])
    for overrides, named in [(["protocol=ood", "ood_dataset=image_files"], "ood_dataset=image_files needs ood_root=<dir>"),
                             (["protocol=ood", "ood_dataset=[cifar10,image_files]"],  # each data set of a list
                              "ood_dataset=image_files needs ood_root=<dir>"),
                             (["protocol=transfer", "transfer_dataset=imagefolder"],
                              "transfer_dataset=imagefolder needs transfer_root=<dir>")]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            evaluate_in_process(run, "wandb=false", *overrides)
    # the settings of a protocol not run are not read: no root needed
    assert list(evaluate_in_process(run, "wandb=false", "protocol=knn", "ood_dataset=image_files",
                                    "transfer_dataset=imagefolder")["protocols"]) == ["knn"]
    _class_tree(tmp_path / "small", {"train": ["a", "b"], "test": ["a", "b"]})  # 4 labelled train images
    with pytest.raises(ConfigError, match=re.escape("evaluation.knn.k=20 is larger than the 4 labelled training "
                                                    "images of transfer_dataset=imagefolder")):
        evaluate_in_process(run, "wandb=false", "protocol=transfer", "transfer_dataset=imagefolder",
                            f"transfer_root={tmp_path / 'small'}")
    assert "transfer" in evaluate_in_process(run, "wandb=false", "protocol=transfer", "transfer_dataset=imagefolder",
                                             f"transfer_root={tmp_path / 'small'}", "evaluation.knn.k=3")["protocols"]
