import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "cl_suite" / "conf"  # (the checkout's conf/ links here)


@pytest.fixture(autouse=True)
def _quiet_offline_env(monkeypatch, tmp_path):
    """No test ever talks to a wandb server or a model hub; one test opts into offline wandb files."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture(autouse=True, scope="session")
def _known_key_trees_read_once_per_state_of_the_files():
    """validate_train_config / validate_evaluate_config read conf/<name>.yaml and every option file of its
    groups on each call (``primary_key_tree``: ~0.1 s, so that a key added to a file is known at once). The
    hundreds of in-process runs of a test process read the same unchanged files: here a tree is read once
    per (config folder, config name, size and modification time of every .yaml in the folder), so a copied
    or edited config tree (the tests that add a key or an option) is read again, as the suite would."""
    from cl_suite.engine import validation

    real, trees = validation.primary_key_tree, {}

    def primary_key_tree(config_name: str) -> dict:
        folder = Path(validation.CONF_DIR)
        files = tuple(sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                             for p in folder.rglob("*.yaml")))
        key = (str(folder), config_name, files)
        if key not in trees:
            trees[key] = real(config_name)
        return copy.deepcopy(trees[key])

    validation.primary_key_tree = primary_key_tree
    yield
    validation.primary_key_tree = real
