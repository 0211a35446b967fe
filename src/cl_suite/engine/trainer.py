"""The pre-training loop: plain PyTorch, one file to read top to bottom.

config -> dataset, augmentation, method(backbone, sampler), probe, optimizers -> for each step:
augment on the device, forward under autocast, backward, step, schedule -> per epoch: metrics,
periodic kNN monitor, checkpoint -> at the end: kNN and offline linear evaluation.
"""
from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cl_suite.data.augment import TwoViewAugment
from cl_suite.data.loader import TrainBatches
from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.build import (build_augment_config, build_dataset, build_logger, build_method,
                                   instantiate_unwrapped)
from cl_suite.engine.diagnostics import EpochDiagnostics, is_histogram
from cl_suite.engine.distributed import (cleanup_distributed, get_rank, get_world_size, init_distributed,
                                         is_main_process)
from cl_suite.engine.evaluation import evaluate_encoder
from cl_suite.engine.logger import NullLogger
from cl_suite.engine.optim import build_optimizer
from cl_suite.engine.preemption import PreemptionGuard
from cl_suite.engine.pretrainer import Pretrainer
from cl_suite.engine.probe import OnlineProbe, RunningTopkAccuracy
from cl_suite.engine.validation import validate_train_config

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu or auto")
        if get_world_size() > 1:  # torchrun: one GPU per process
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Augmentation seed of one step: a function of (seed, step, rank) only, so a resumed run draws the
    same views as the uninterrupted one without restoring any generator state."""
    return ((seed * 1_000_003 + step) * 1024 + rank) % 2**63


def autocast(precision: str, device: torch.device):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rng_states() -> dict[str, Any]:
    """The global generators. The loop itself draws from its own seeded generators, but models may not
    (dropout, stochastic depth in timm models), so a resumed run restores these too."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one pre-training job described by ``cfg``; return the final metrics."""
    validate_train_config(cfg)
    device_type = "cuda" if cfg.trainer.device != "cpu" and torch.cuda.is_available() else "cpu"
    with contextlib.ExitStack() as teardown:
        # Callbacks run last-in first-out: wandb finishes before the process group goes away (an
        # unfinished run hangs at exit, or is silently reused by the next job of a multirun).
        init_distributed(device_type)
        teardown.callback(cleanup_distributed)
        guard = teardown.enter_context(PreemptionGuard())
        trainer = Trainer(cfg, resolve_device(cfg.trainer.device), guard)
        teardown.callback(trainer.logger.finish)
        final = trainer.fit()
    if final is None:  # stopped by a signal after saving its checkpoint
        trainer._print(f"stopped by signal {guard.received} at step {trainer.step}; checkpoint saved in "
                       f"{trainer.run_dir}. Run the same command again to continue (resume=auto).")
        guard.hand_over()  # e.g. submitit requeues the job here
        raise SystemExit(128 + guard.received)  # the shell's "terminated by signal" status: not finished
    # After wandb has finished (and printed its own run summary): the run ends with the numbers.
    trainer._print(_summary_table(trainer.history))
    trainer._print(f"run folder: {trainer.run_dir}  (re-evaluate: python evaluate.py run={trainer.run_dir})")
    return final


class Trainer:
    """Owns the objects of one run and the step counter; ``fit`` runs it to the end.

    The position of a run is its global optimizer ``step`` alone: the epoch, the batch inside it, the
    augmentation seed and the learning rate all derive from it, so a checkpoint taken at any step
    continues exactly. ``trainer.max_steps`` stops a run early without changing its schedule (which
    always spans ``trainer.epochs``): a smoke run, or the first half of a split run.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, guard: PreemptionGuard | None = None):
        self.cfg, self.device, t = cfg, device, cfg.trainer
        self.guard = guard or PreemptionGuard()
        self.run_dir = Path(cfg.paths.output_dir)
        self.rank, self.world = get_rank(), get_world_size()
        self.main = is_main_process()
        seed_everything(cfg.seed)

        self.data = build_dataset(cfg.dataset)
        self.aug_cfg = build_augment_config(cfg.dataset)
        self.augment = TwoViewAugment(self.aug_cfg)
        self.batches = TrainBatches(self.data.pretrain, t.batch_size, device, cfg.seed, self.rank, self.world,
                                    num_workers=t.num_workers, data_on_device=t.data_on_device)
        self.steps_per_epoch = len(self.batches)
        self.schedule_steps = t.epochs * self.steps_per_epoch
        self.stop_step = self.schedule_steps if t.max_steps is None else min(self.schedule_steps, t.max_steps)

        self.method = build_method(cfg, len(self.data.pretrain)).to(device)
        self.probe = OnlineProbe(self.method.num_features, self.data.num_classes).to(device)
        self.channels_last = device.type == "cuda" if t.channels_last == "auto" else bool(t.channels_last)
        model = Pretrainer(self.method, self.probe)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.world > 1:
            if t.sync_batchnorm:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the BN children in place
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if t.compile:
            model.compile(mode=t.compile_mode)  # in place: state_dict keys stay free of "_orig_mod."
        self.model = model
        self.optimizer = build_optimizer(cfg.optimizer, self.method, t.batch_size)
        self.probe_optimizer = torch.optim.AdamW(self.probe.parameters(), lr=cfg.probe.lr,
                                                 weight_decay=cfg.probe.weight_decay)
        self.scheduler = instantiate_unwrapped(cfg.scheduler, optimizer=self.optimizer, steps_per_epoch=self.steps_per_epoch,
                                     total_steps=self.schedule_steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.precision == "fp16")
        self.probe_accuracy = RunningTopkAccuracy((1, 5), self.data.num_classes, device)
        self.diagnostics = EpochDiagnostics()

        self.step = 0
        self.history: dict[str, Any] = {"init": {}, "epochs": [], "final": {}}
        checkpoint = self._checkpoint_to_resume(cfg.resume)
        wandb_id = self._restore(checkpoint) if checkpoint else None
        self.logger = NullLogger()
        if self.main:
            self.logger = build_logger(cfg.logger, str(self.run_dir), cfg, run_id=wandb_id)

    # ---- the run ----
    def fit(self) -> dict[str, Any] | None:
        """Train to ``stop_step`` and evaluate; return the final metrics, or None when a stop signal
        arrived (the checkpoint of the step it stopped at is saved)."""
        t = self.cfg.trainer
        if t.eval_at_init and self.step == 0:
            self.history["init"] = self.evaluate(with_linear=True, with_probe=False)  # the probe is untrained
            self.logger.log({f"init/{k}": v for k, v in self.history["init"].items()}, step=0)
            self._print("at initialisation: " + _fmt(self.history["init"]))
        while self.step < self.stop_step:
            epoch = self.step // self.steps_per_epoch
            record = self.train_epoch(epoch)
            if self._stop_requested():
                self.history["epochs"].append({**record, "stopped_by_signal": True})
                self.save()
                return None
            finished_epoch = self.step % self.steps_per_epoch == 0
            last = self.step >= self.stop_step
            if finished_epoch and not last and t.eval_every_epochs and (epoch + 1) % t.eval_every_epochs == 0:
                record.update(self.evaluate(with_linear=False))
            self.history["epochs"].append(record)
            self.logger.log(record, step=self.step)
            self._print(f"epoch {epoch + 1}/{t.epochs}: " + _fmt(record))
            if not last and t.checkpoint_every_epochs and (epoch + 1) % t.checkpoint_every_epochs == 0:
                self.save()

        self.history["final"] = {**self.evaluate(with_linear=True), "step": self.step,
                                 "epoch": self.step / self.steps_per_epoch}
        self.save()
        final = {f"final/{k}": v for k, v in self.history["final"].items()}
        self.logger.log(final, step=self.step)
        self.logger.log_summary(final)
        return self.history["final"]

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train from the current step to the end of ``epoch`` (or to ``stop_step``); return its record."""
        t, device = self.cfg.trainer, self.device
        self.model.train()
        self.probe_accuracy.reset()
        self.diagnostics.reset()
        first = self.step - epoch * self.steps_per_epoch
        planned = min(self.steps_per_epoch, self.stop_step - epoch * self.steps_per_epoch) - first
        loss_sum, window_loss = torch.zeros((), device=device), torch.zeros((), device=device)
        start = window_start = time.perf_counter()
        steps = window_steps = 0
        bar = tqdm(total=planned, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not (self.main and t.progress_bar),
                   leave=False, dynamic_ncols=True)
        generator = torch.Generator(device=device)
        for batch in self.batches.epoch(epoch, start_step=first):
            generator.manual_seed(step_seed(self.cfg.seed, self.step, self.rank))
            self.method.set_epoch(self.step / self.steps_per_epoch)
            out, probe_logits = self.train_step(batch, generator)
            steps += 1
            window_steps += 1
            loss_sum += out.loss.detach()
            window_loss += out.loss.detach()
            self.probe_accuracy.update(probe_logits, out.feature_labels)
            self.diagnostics.update(out.stats)
            bar.update(1)
            if self.step % t.log_every_steps == 0 and self.main:  # the only host syncs inside an epoch
                elapsed = time.perf_counter() - window_start
                metrics = {"train/loss": (window_loss / window_steps).item(),
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "images_per_s": window_steps * t.batch_size / elapsed,
                           **{k: v.item() for k, v in out.stats.items() if v.ndim == 0}}
                self.logger.log(metrics, step=self.step)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", img_s=f"{metrics['images_per_s']:.0f}")
                window_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if self.step >= self.stop_step or self._stop_requested():
                break
        bar.close()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "step": self.step, "train/epoch_loss": (loss_sum / max(steps, 1)).item(),
                  "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
                  "images_per_s": steps * t.batch_size / seconds}
        record.update({f"online_probe/train_{k}": v for k, v in self.probe_accuracy.compute().items()})
        if steps:
            record.update(self.diagnostics.compute())
        return record

    def train_step(self, batch, generator: torch.Generator):
        t = self.cfg.trainer
        views = self.augment(batch.images, generator)
        if self.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        with autocast(t.precision, self.device):
            out, probe_loss, probe_logits = self.model(views, batch.labels, batch.indices)
        self.optimizer.zero_grad(set_to_none=True)
        self.probe_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss + probe_loss).backward()
        if t.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.step(self.probe_optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.on_train_step_end(self.step, self.schedule_steps)
        self.step += 1
        return out, probe_logits

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived, agreed by all processes.

        One process alone must not stop (the others would wait forever in the next collective), so
        under DDP the flag is all-reduced, every ``log_every_steps`` steps to keep host syncs rare.
        """
        local = self.guard.received is not None
        if self.world == 1:
            return local
        if self.step % self.cfg.trainer.log_every_steps:
            return False
        flag = torch.tensor([float(local)], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def evaluate(self, with_linear: bool, with_probe: bool = True) -> dict[str, float]:
        return evaluate_encoder(self.method, self.probe if with_probe else None, self.data, self.aug_cfg, self.device,
                                self.cfg.evaluation, with_linear=with_linear,
                                channels_last=self.channels_last, seed=self.cfg.seed)

    # ---- checkpoints ----
    def save(self) -> None:
        """Write ``checkpoints/last.pt`` and ``metrics.json`` (rank 0 only, atomically)."""
        if not self.main:
            return
        state = {
            "method": self.method.state_dict(), "probe": self.probe.state_dict(),
            "optimizer": self.optimizer.state_dict(), "probe_optimizer": self.probe_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "epoch": self.step // self.steps_per_epoch, "rng": rng_states(),
            "config": OmegaConf.to_container(self.cfg, resolve=True), "wandb_run_id": self.logger.run_id,
            "history": self.history,
        }
        ckpt.save_checkpoint(self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST, state)
        ckpt.write_json(self.run_dir / "metrics.json", self.history)

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        """``resume=auto``: this run dir's last checkpoint if there is one (a re-run of the same command,
        a requeued job); a path: that checkpoint or run dir; null: start fresh."""
        if resume is None:
            return None
        if resume == "auto":
            last = self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
            return last if last.is_file() else None
        return ckpt.resolve_checkpoint(resume)

    def _restore(self, path: Path) -> str | None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(state["method"])
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        set_rng_states(state["rng"])
        self._print(f"resumed from {path} at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f})")
        return state.get("wandb_run_id")

    def _print(self, text: str) -> None:
        if self.main:
            print(text)


def _fmt(metrics: dict[str, Any]) -> str:
    """One console line of the scalar metrics (histograms go to wandb and metrics.json only)."""
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                     if not is_histogram(v))


def _summary_table(history: dict) -> str:
    """Final numbers next to the same protocol at initialisation; each labelled with its protocol."""
    rows = [("kNN (frozen, un-augmented)", "knn/top1"), ("linear (frozen, cached features)", "linear/top1"),
            ("online probe (diagnostic, test set)", "online_probe/test_top1")]
    lines = ["", f"{'protocol':<38}{'init':>10}{'final':>10}"]
    for label, key in rows:
        init = history["init"].get(key)
        final = history["final"].get(key)
        if final is None:
            continue
        lines.append(f"{label:<38}{(f'{init:.2f}' if init is not None else '-'):>10}{final:>10.2f}")
    return "\n".join(lines) + "\n(top-1 accuracy, %, on the test split; final = last epoch)"
