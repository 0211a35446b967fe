"""What the stage scripts of ``bench/gpu_check.sh`` share: dry-run switch, deadlines, config composition,
the section files a stage writes.

Every stage script writes a Markdown section to ``$GPU_CHECK_WORK/<stage>.md`` (rewritten after every row,
so a stage killed by its timeout still leaves the rows it measured) and one headline line to
``$GPU_CHECK_WORK/<stage>.headline`` for the summary table. ``GPU_CHECK_DRY=1``: tiny sizes on the CPU.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "src" / "cl_suite" / "conf"  # (the checkout's conf/ links here)
sys.path.insert(0, str(ROOT / "bench"))  # bench/common.py as ``common``

from tables import markdown_table as table  # noqa: E402  (torch-free: this stage process stays light)

DRY = os.environ.get("GPU_CHECK_DRY", "0") not in ("", "0")
WORK = Path(os.environ.get("GPU_CHECK_WORK") or "/tmp/gpu_check_work")
# Absolute time (time.time()) by which the stage must have finished; the shell passes it in.
DEADLINE = float(os.environ.get("GPU_CHECK_STAGE_DEADLINE") or time.time() + 3600)

# Settings every composed run starts from: nothing logged, evaluated, checkpointed or resumed.
QUIET = [
    "logger=none",
    "trainer.eval_at_init=false",
    "trainer.eval_every_epochs=0",
    "trainer.checkpoint_every_epochs=0",
    "trainer.progress_bar=false",
    "resume=null",
]


def seconds_left() -> float:
    return DEADLINE - time.time()


def compose(overrides: list[str], output_dir: str):
    """conf/train.yaml + ``QUIET`` + ``overrides``, ``paths.output_dir`` set (as the tests' compose_train)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    import cl_suite.resolvers  # noqa: F401  (registers ${cl_suite.run_folder:} as train.py does)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = hydra_compose(config_name="train", overrides=[*QUIET, *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
    return cfg


def data_overrides() -> list[str]:
    """The CIFAR-10 JPEG tree that ``data.py`` prepared (``$CL_SUITE_DATA/cifar10-jpg``), decoded once."""
    return ["dataset=cifar10_jpg", f"dataset.num_workers={min(16, os.cpu_count() or 1)}"]


class Section:
    """A stage's Markdown section, rewritten whole after each ``add`` so a killed stage keeps its rows."""

    def __init__(self, stage: str, title: str):
        self.stage, self.path = stage, WORK / f"{stage}.md"
        self.parts: list[str] = [f"## {title}\n"]
        WORK.mkdir(parents=True, exist_ok=True)
        self.flush()

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")
        self.flush()
        print(text, flush=True)

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(self.parts))
        os.replace(tmp, self.path)

    def headline(self, text: str) -> None:
        (WORK / f"{self.stage}.headline").write_text(text.strip().replace("|", "/") + "\n")
