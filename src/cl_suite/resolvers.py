"""OmegaConf resolvers the config tree uses; registered on import (train.py imports this first)."""
from __future__ import annotations

import os
import tempfile
from datetime import datetime

from omegaconf import OmegaConf


def run_stamp() -> str:
    """Name of a run's output folder: the torchrun id when launched by torchrun, else the time.

    Every torchrun process resolves the config on its own; ``${now:...}`` could differ between them
    across a second boundary and scatter one run over several folders. TORCHELASTIC_RUN_ID is the
    same in every process of one launch.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    return datetime.now().strftime("%H-%M-%S.%f")


if not OmegaConf.has_resolver("cl_suite.run_stamp"):
    OmegaConf.register_new_resolver("cl_suite.run_stamp", run_stamp, use_cache=True)


def evaluate_dir(run: str | None, checkpoint: str) -> str:
    """evaluate.py's output folder: the run dir, or (no ``run=``: an exported backbone file) the file's folder.

    Without a run dir or a file, a scratch folder: evaluate.py then stops with its own message (an error
    raised here would reach the user as a resolver traceback), and Hydra's log lands nowhere it matters.
    """
    if run is not None:
        return str(run)
    path = os.path.abspath(os.path.expanduser(str(checkpoint)))
    if not os.path.isfile(path):
        return os.path.join(tempfile.gettempdir(), "cl_suite_evaluate")
    return os.path.dirname(path)


if not OmegaConf.has_resolver("cl_suite.evaluate_dir"):
    OmegaConf.register_new_resolver("cl_suite.evaluate_dir", evaluate_dir)
