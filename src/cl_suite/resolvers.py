"""OmegaConf resolvers the config tree uses; registered on import (train.py imports this first)."""
from __future__ import annotations

import os
import tempfile
from datetime import datetime

from omegaconf import OmegaConf


def run_folder() -> str:
    """A run's output folder under ``outputs/``: ``<date>/<time>`` (microseconds), or for the runs of a
    W&B sweep agent ``wandb-sweep-<sweep id>/<run id>``, or under torchrun ``<date>/torchrun-<id>``.

    A W&B agent (``wandb agent``) sets WANDB_SWEEP_ID and WANDB_RUN_ID for each run it starts: the
    trials of one sweep share a folder (``python -m cl_suite.report outputs/wandb-sweep-<id>`` reads
    them), each named by the dashboard's run, and a run id started again resumes from its checkpoint.
    Every torchrun process resolves the config on its own; ``${now:...}`` could differ between them
    across a second boundary and scatter one run over several folders. TORCHELASTIC_RUN_ID (and the
    agent's ids, inherited) are the same in every process of one launch.
    """
    sweep, wandb_run = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    if sweep and wandb_run:
        return f"wandb-sweep-{sweep}/{wandb_run}"
    now = datetime.now()
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"{now:%Y-%m-%d}/torchrun-{run_id}"
    return f"{now:%Y-%m-%d}/{now:%H-%M-%S.%f}"


if not OmegaConf.has_resolver("cl_suite.run_folder"):
    OmegaConf.register_new_resolver("cl_suite.run_folder", run_folder, use_cache=True)


def evaluate_dir(run: str | None, checkpoint: str) -> str:
    """evaluate.py's output folder: the run dir, or (no ``run=``: an exported backbone file) the file's folder.

    Without a run dir (a folder holding ``.hydra/config.yaml``) or a file, a scratch folder: evaluate.py
    then stops with its own message (an error raised here would reach the user as a resolver traceback),
    and Hydra's log lands nowhere it matters: a mistyped ``run=`` creates no folder and writes no log
    into the folder it names.
    """
    if run is not None:
        folder = os.path.expanduser(str(run))
        # A run folder may come from anyone: Hydra's log file handler would follow a planted
        # evaluate.log link and append to its target; evaluate.py refuses such a folder itself.
        if os.path.isfile(os.path.join(folder, ".hydra", "config.yaml")) and not os.path.islink(
                os.path.join(folder, "evaluate.log")):
            return os.path.abspath(folder)  # absolute: a multirun's job dir is sweep.dir / this
        return os.path.join(tempfile.gettempdir(), "cl_suite_evaluate")
    path = os.path.abspath(os.path.expanduser(str(checkpoint)))
    if not os.path.isfile(path):
        return os.path.join(tempfile.gettempdir(), "cl_suite_evaluate")
    return os.path.dirname(path)


if not OmegaConf.has_resolver("cl_suite.evaluate_dir"):
    OmegaConf.register_new_resolver("cl_suite.evaluate_dir", evaluate_dir)
