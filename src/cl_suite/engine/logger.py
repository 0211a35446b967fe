"""Experiment loggers behind one small interface, so the loop never imports wandb itself."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from cl_suite.engine.diagnostics import is_histogram


class NullLogger:
    """``logger=none``: logs nothing (``metrics.json`` and the console still get every number)."""

    wants_media = False  # callers skip work (e.g. encoding an embedding snapshot) whose only use is media

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None, run_id: str | None = None):
        self.run_id = run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
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


# define_metric summaries of the metrics logged during training, so a run's summary (and a sweep's
# runs table) holds the best value, not only the last: accuracies keep max and last, losses min and
# last. (final/* and evaluate.py's eval/* numbers are written into the summary directly.)
SUMMARY_MAX = ("knn/*", "online_probe/*", "linear/*")
SUMMARY_MIN = ("train/loss", "train/epoch_loss")
# An embedding snapshot keeps this many principal components per point, not the raw features (2048
# columns for a ResNet-50): a small table, and enough for the UI's UMAP/t-SNE to work on.
SNAPSHOT_COMPONENTS = 32
EPOCH_METRICS = ("knn/*", "online_probe/*", "linear/*", "epoch_time_s", "train/epoch_*", "diag/*")


class WandbLogger:
    """Logs to Weights & Biases; one run per training job, written under the run dir.

    Inside a Hydra multirun every job joins one group (``group``, default: the sweep dir) and the
    values it swept become the config key ``sweep`` (``{"sampler.tau_plus": 0.05, "seed": 1}``) and
    the run name, so the dashboard can group, filter and plot by them.

    The run is finished in ``finish`` (the loop calls it in a ``finally``): under a Hydra multirun an
    unfinished run would be silently reused by the next job's ``wandb.init``.
    """

    wants_media = True

    def __init__(self, run_dir: str, run_config: dict, project: str = "cl_suite", entity: str | None = None,
                 mode: str = "auto", group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, name: str | None = None, run_id: str | None = None):
        import wandb

        from cl_suite.sweeps import current_sweep_job

        self.mode = resolve_wandb_mode(mode)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        sweep = current_sweep_job()
        if sweep is not None:
            sweep_dir, swept = sweep
            group = group or "/".join(Path(sweep_dir).parts[-2:])
            name = name or ",".join(f"{k}={v}" for k, v in swept.items()) or None
            run_config = {**run_config, "sweep": swept}
        self._run = wandb.init(
            project=project, entity=entity, mode=self.mode, group=group, job_type=job_type,
            tags=list(tags) if tags else None, name=name, dir=run_dir, config=run_config,
            id=run_id, resume="allow" if run_id else None, reinit="finish_previous",
        )
        self.run_id = self._run.id
        self._run.define_metric("epoch")
        for pattern in EPOCH_METRICS:
            self._run.define_metric(pattern, step_metric="epoch")
        for pattern in SUMMARY_MAX:
            self._run.define_metric(pattern, summary="max,last")
        for pattern in SUMMARY_MIN:
            self._run.define_metric(pattern, summary="min,last")
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

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
        """An embedding snapshot: a ``wandb.Table`` (label and the top principal components; the UI's
        2-D projection panel re-projects it with PCA/UMAP/t-SNE) and a scatter image of the first two."""
        import wandb

        from cl_suite.engine.embedding_snapshot import principal_components, scatter_image

        coords = principal_components(features, SNAPSHOT_COMPONENTS)
        labels = labels.cpu().tolist()
        names = [class_names[y] if class_names and 0 <= y < len(class_names) else str(y) for y in labels]
        columns = ["label"] + [f"pc{i + 1}" for i in range(coords.shape[1])]
        rows = [[n, *c] for n, c in zip(names, coords.tolist())]
        self._run.log({f"{key}/table": wandb.Table(columns=columns, data=rows),
                       f"{key}/pca": wandb.Image(scatter_image(coords[:, :2], labels),
                                                 caption="test features, first two principal components")})

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
