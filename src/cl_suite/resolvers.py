"""OmegaConf resolvers the config tree uses; registered on import (train.py imports this first)."""
from __future__ import annotations

import os
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
