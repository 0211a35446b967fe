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
