"""Numerical guard: what the loop does with a non-finite (NaN or infinite) training loss.

``trainer.nonfinite=stop`` (default): every step records on the device whether its loss was finite
(no host sync). The record is read where the loop syncs anyway (every ``log_every_steps`` steps) and
before every evaluation and checkpoint, so the run stops within ``log_every_steps`` steps of the first
bad one, the message names that step, and no checkpoint is ever written after it: the last checkpoint
on disk is the last good state.

``trainer.nonfinite=skip``: a step whose loss is not finite makes no update (no backward, no optimizer
step, no method state update). Deciding that before the backward needs the loss on the host, so this
mode costs one device-to-host read per step (plus an all-reduce of one number under DDP, so that every
process skips the same steps). BatchNorm running statistics of the skipped forward pass are already
updated; when the activations themselves overflow, ``stop`` is the right choice.

Skipping is not a licence to train on nothing: every skipped step is reported (console and log), a run
stops (``TooManySkippedStepsError``) once more than ``trainer.max_skipped_fraction`` of its planned steps
were skipped, and no checkpoint is ever written with non-finite weights or buffers (NaN BatchNorm
statistics from a skipped forward pass): ``NonFiniteStateError``, naming the tensors.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from cl_suite.errors import UserError

MODES = ("stop", "skip")


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite. The message names the step and what to try."""


class TooManySkippedStepsError(UserError, FloatingPointError):
    """``trainer.nonfinite=skip`` skipped more than ``trainer.max_skipped_fraction`` of the run's steps."""


class NonFiniteStateError(UserError, FloatingPointError):
    """A checkpoint would hold NaN/inf weights or buffers; it is not written."""


def nonfinite_tensors(states: dict[str, dict]) -> list[str]:
    """``part.key`` of every floating-point tensor in ``states`` ({part: state_dict}) that has a NaN or inf
    (one host sync for all of them)."""
    names, flags = [], []
    for part, state in states.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                names.append(f"{part}.{key}")
                flags.append(torch.isfinite(value).all())
    if not flags:
        return []
    finite = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [name for name, ok in zip(names, finite) if not ok]


def likely_causes(cfg) -> str:
    """The usual suspects, with this run's values, so the message says what to change."""
    method, t = cfg.method, cfg.trainer
    causes = [f"a learning rate too high for this batch and optimizer (optimizer.lr={cfg.optimizer.lr}, "
              f"scaled by trainer.batch_size={t.batch_size} / optimizer.batch_size_reference="
              f"{cfg.optimizer.get('batch_size_reference')}; try a smaller lr, a warm-up or trainer.grad_clip=1.0)"]
    if "temperature" in method:
        causes.append(f"a temperature too small for the precision (method.temperature={method.temperature}: "
                      "logits s/t overflow, most of all in fp16)")
    if t.precision == "fp16":
        causes.append("fp16 overflow (trainer.precision=fp16: try trainer.precision=bf16)")
    causes.append("a corrupt input batch (check the data set)")
    return "; ".join(causes)


class NonFiniteGuard:
    """Counts non-finite losses on the device and turns them into the configured behaviour."""

    def __init__(self, mode: str, device: torch.device, world_size: int = 1):
        self.mode, self.world_size = mode, world_size
        self.bad_steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_bad_loss = torch.zeros((), device=device)
        self.skipped = 0  # skip mode: steps skipped since the last epoch record
        self.total_skipped = 0  # skip mode: steps skipped in the whole run (kept in the checkpoint)

    def record(self, loss: torch.Tensor, step: int) -> None:
        """Stop mode: note the step on the device if ``loss`` is not finite (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        new = bad & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(new, step, self.first_bad_step)
        self.first_bad_loss = torch.where(new, loss.detach().float(), self.first_bad_loss)
        self.bad_steps += bad

    def should_skip(self, loss: torch.Tensor) -> bool:
        """Skip mode: whether this step's loss is non-finite on any process (one host read)."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        skip = bool(bad.item())
        self.skipped += skip
        self.total_skipped += skip
        return skip

    def check_skipped_share(self, max_fraction: float, planned_steps: int, step: int, last_checkpoint: str) -> None:
        """Skip mode: raise once more than ``max_fraction`` of the run's ``planned_steps`` were skipped."""
        if self.total_skipped <= max_fraction * planned_steps:
            return
        raise TooManySkippedStepsError(
            f"{self.total_skipped} of the run's {planned_steps} steps had a non-finite loss and were skipped "
            f"(trainer.nonfinite=skip), more than trainer.max_skipped_fraction={max_fraction}; stopped at step {step} "
            f"without saving. The last checkpoint ({last_checkpoint}) is the last saved state. A run that skips this "
            "many steps learns little (and its BatchNorm statistics may be NaN): lower the learning rate or check "
            "the data, or raise trainer.max_skipped_fraction to accept it.")

    def check(self, step: int, cfg, last_checkpoint: str) -> None:
        """Stop mode: raise if any step so far had a non-finite loss (a host sync: call it where the loop
        syncs anyway)."""
        if self.mode != "stop":
            return
        bad = self.bad_steps.clone()
        if self.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.SUM)
        if not bad.item():
            return
        first = int(self.first_bad_step.item())
        where = f"at step {first}" if first >= 0 else "on another process"
        value = f" ({self.first_bad_loss.item()})" if first >= 0 else ""
        raise NonFiniteLossError(
            f"non-finite training loss{value} {where}; stopped at step {step} without saving, so the last "
            f"checkpoint ({last_checkpoint}) is the last good state.\n"
            f"Likely causes: {likely_causes(cfg)}.\n"
            "To skip such steps instead of stopping: trainer.nonfinite=skip.")
