"""Bad input fails before training starts, with a message that names the offending value."""
import pytest
from hydra.errors import MissingConfigException

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
                                f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0
    assert "cifar-100-python" in proc.stderr and str(tmp_path) in proc.stderr
