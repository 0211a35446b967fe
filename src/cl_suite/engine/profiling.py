"""``trainer.profile_steps``: the torch profiler over a few training steps, and a table of the top ops.

The first ``warmup`` steps run unprofiled (lazy initialisation, cuDNN autotuning, compilation), then
``steps`` steps are recorded. The table (``profile.txt`` in the run folder, also printed) lists the ops
with the most self time on the device that trains (CUDA kernels on a GPU, CPU ops otherwise);
``profile_trace.json`` opens in chrome://tracing or https://ui.perfetto.dev for the timeline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, schedule

TABLE_NAME, TRACE_NAME = "profile.txt", "profile_trace.json"
TABLE_ROWS = 25


class StepProfiler:
    """Call :meth:`step` after every training step and :meth:`close` when training ends."""

    def __init__(self, run_dir: Path, steps: int, warmup: int, device: torch.device, report: Callable[[str], None]):
        self.run_dir, self.steps, self.warmup, self.report = Path(run_dir), steps, warmup, report
        self.cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        # The profiler's own warm-up phase (traced, discarded) is the last unprofiled step, so that its
        # start-up cost stays out of the recorded steps; ``wait`` steps before it are not traced at all.
        plan = schedule(wait=max(warmup - 1, 0), warmup=min(warmup, 1), active=steps, repeat=1)
        self.recorded = 0
        # acc_events: one cycle (repeat=1), so keeping events "across cycles" changes nothing; without it
        # torch warns at start that events of earlier cycles are cleared.
        self.prof = profile(activities=activities, schedule=plan, on_trace_ready=self._write, acc_events=True)
        self.prof.start()
        self.seen = 0

    def step(self) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.recorded = min(self.seen - self.warmup, self.steps)
        self.prof.step()

    def close(self) -> None:
        """Stop the profiler; if the run ended inside the recorded steps, the table covers those."""
        if self.prof is not None:
            self.prof.stop()
            self.prof = None

    def _write(self, prof) -> None:
        sort_by = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        if self.recorded == 0:
            self.report(f"profiler: the run ended before a step was recorded (trainer.profile_warmup_steps="
                        f"{self.warmup}); nothing written")
            return
        table = prof.key_averages().table(sort_by=sort_by, row_limit=TABLE_ROWS)
        header = (f"torch.profiler: {self.recorded} training step(s) after {self.warmup} warm-up step(s), "
                  f"top {TABLE_ROWS} ops by {sort_by}\n")
        (self.run_dir / TABLE_NAME).write_text(header + table + "\n")
        prof.export_chrome_trace(str(self.run_dir / TRACE_NAME))
        self.report(header + table + f"\n(written to {self.run_dir / TABLE_NAME}; timeline: {self.run_dir / TRACE_NAME})")
