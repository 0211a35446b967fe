"""Experiment loggers behind one small interface, so the loop never imports wandb itself."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from cl_suite.engine.diagnostics import is_histogram


class NullLogger:
    """``logger=none``: logs nothing (``metrics.json`` and the console still get every number)."""

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None, run_id: str | None = None):
        self.run_id = run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto``: online when credentials exist, offline otherwise; ``WANDB_MODE`` in the environment wins."""
    allowed = ("auto", "online", "offline", "disabled")
    mode = os.environ.get("WANDB_MODE", mode)
    if mode not in allowed:
        raise ValueError(f"logger.mode={mode!r} is not one of {allowed}")
    if mode == "auto":
        return "online" if wandb_credentials_available() else "offline"
    return mode


class WandbLogger:
    """Logs to Weights & Biases; one run per training job, written under the run dir.

    The run is finished in ``finish`` (the loop calls it in a ``finally``): under a Hydra multirun an
    unfinished run would be silently reused by the next job's ``wandb.init``.
    """

    def __init__(self, run_dir: str, run_config: dict, project: str = "cl_suite", entity: str | None = None,
                 mode: str = "auto", group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, name: str | None = None, run_id: str | None = None):
        import wandb

        self.mode = resolve_wandb_mode(mode)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project, entity=entity, mode=self.mode, group=group, job_type=job_type,
            tags=list(tags) if tags else None, name=name, dir=run_dir, config=run_config,
            id=run_id, resume="allow" if run_id else None, reinit="finish_previous",
        )
        self.run_id = self._run.id
        self._run.define_metric("epoch")
        for pattern in ("knn/*", "online_probe/*", "linear/*", "epoch_time_s", "train/epoch_*", "diag/*"):
            self._run.define_metric(pattern, step_metric="epoch")
        if self.mode == "offline":
            print(f"wandb is offline; upload the run later with: wandb sync {Path(self._run.dir).parent}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._run.log({k: self._histogram(v) if is_histogram(v) else v for k, v in metrics.items()}, step=step)

    @staticmethod
    def _histogram(value: dict):
        import numpy as np
        import wandb

        counts = np.asarray(value["counts"])
        edges = np.linspace(*value["range"], len(counts) + 1)
        return wandb.Histogram(np_histogram=(counts, edges))

    def log_summary(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self._run.summary[key] = value

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
