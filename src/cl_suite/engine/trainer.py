"""The pre-training loop: plain PyTorch, one file to read top to bottom.

config -> dataset, augmentation, method(backbone, sampler), probe, optimizers -> for each step:
augment on the device, forward under autocast, backward, step, schedule -> per epoch: metrics,
periodic kNN monitor, checkpoint -> at the end: kNN and offline linear evaluation.
"""
from __future__ import annotations

import contextlib
import dataclasses
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
from cl_suite.engine.build import (DatasetFacts, build_augment_config, build_dataset, build_logger, build_method,
                                   instantiate_unwrapped)
from cl_suite.engine.diagnostics import EpochDiagnostics, is_histogram
from cl_suite.engine.distributed import (cleanup_distributed, get_rank, get_world_size, init_distributed,
                                         is_main_process)
from cl_suite.engine.embedding_snapshot import log_embedding_snapshot
from cl_suite.engine.evaluation import evaluate_encoder
from cl_suite.engine.logger import NullLogger
from cl_suite.engine.numerics import NonFiniteGuard
from cl_suite.engine.optim import build_optimizer
from cl_suite.engine.preemption import PreemptionGuard
from cl_suite.engine.pretrainer import Pretrainer
from cl_suite.engine.probe import OnlineProbe, RunningTopkAccuracy
from cl_suite.engine.validation import validate_against_data, validate_train_config

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
        validate_against_data(cfg, self.data)
        self.aug_cfg = build_augment_config(cfg.dataset)
        self.augment = TwoViewAugment(self.aug_cfg)
        self.batches = TrainBatches(self.data.pretrain, t.batch_size, device, cfg.seed, self.rank, self.world,
                                    num_workers=t.num_workers, data_on_device=t.data_on_device)
        self.steps_per_epoch = len(self.batches)
        self.schedule_steps = t.epochs * self.steps_per_epoch
        self.stop_step = self.schedule_steps if t.max_steps is None else min(self.schedule_steps, t.max_steps)

        self.method = build_method(cfg, DatasetFacts.of(self.data, t.batch_size)).to(device)
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
        self.nonfinite = NonFiniteGuard(t.nonfinite, device, self.world)
        self.best: dict[str, Any] = {"metric": t.best_metric, "value": None, "step": None}
        self.last_checkpoint: Path | None = None  # the newest good checkpoint, named in the NaN message
        self._last_saved_step: int | None = None

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
            improved = False
            if finished_epoch and not last and t.eval_every_epochs and (epoch + 1) % t.eval_every_epochs == 0:
                record.update(self.evaluate(with_linear=False))
                improved = self._improves_best(record)
            self.history["epochs"].append(record)
            self.logger.log(record, step=self.step)
            self._print(f"epoch {epoch + 1}/{t.epochs}: " + _fmt(record))
            checkpoint_epoch = t.checkpoint_every_epochs and (epoch + 1) % t.checkpoint_every_epochs == 0
            if not last and (checkpoint_epoch or improved):  # a new best is saved even between checkpoint epochs
                self.save(best=improved)

        self.history["final"] = {**self.evaluate(with_linear=True), "step": self.step,
                                 "epoch": self.step / self.steps_per_epoch}
        self.save(best=self._improves_best(self.history["final"]))
        final = {f"final/{k}": v for k, v in self.history["final"].items()}
        self.logger.log(final, step=self.step)
        self.logger.log_summary(final)
        log_embedding_snapshot(self.logger, self.method, self.data.test, self.aug_cfg, self.device,
                               self.cfg.evaluation.get("embedding_snapshot", 0), self.data.classes, self.channels_last)
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
            self.method.set_progress(self.step, self.steps_per_epoch)
            out, probe_logits = self.train_step(batch, generator)
            steps += 1
            window_steps += 1
            loss_sum += out.loss.detach()
            window_loss += out.loss.detach()
            self.probe_accuracy.update(probe_logits, out.feature_labels)
            self.diagnostics.update(out.stats)
            bar.update(1)
            if self.step % t.log_every_steps == 0:
                self._check_finite()  # before the log line, so a NaN run stops instead of logging NaN
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
        if self.nonfinite.mode == "skip":
            record["train/skipped_steps"], self.nonfinite.skipped = self.nonfinite.skipped, 0
        if steps:
            record.update(self.diagnostics.compute())
            record.update({f"diag/{k}": v for k, v in self.method.epoch_diagnostics().items()})
        return record

    def train_step(self, batch, generator: torch.Generator):
        t = self.cfg.trainer
        views = self.augment(batch.images, generator)
        if self.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        with autocast(t.precision, self.device):
            out, probe_loss, probe_logits = self.model(views, batch.labels, batch.indices)
        total = out.loss + probe_loss
        if self.nonfinite.mode == "skip" and self.nonfinite.should_skip(total):
            return self._skip_step(out), probe_logits
        self.nonfinite.record(total, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.probe_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
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

    def _skip_step(self, out):
        """``trainer.nonfinite=skip``: no update of weights, optimizer or method state. The position (step,
        schedule, data order) still advances past the batch. The step's loss counts as 0 in the epoch
        loss and its samples not in the probe accuracy."""
        self._print(f"step {self.step}: non-finite loss, update skipped (trainer.nonfinite=skip)")
        self.scheduler.step()
        self.step += 1
        return dataclasses.replace(out, loss=torch.zeros_like(out.loss.detach()), stats={},
                                   feature_labels=torch.full_like(out.feature_labels, -1))

    def _check_finite(self) -> None:
        """Stop mode: raise if a loss since the start was not finite (a host sync; see engine.numerics)."""
        last = f"{self.last_checkpoint}, step {self._last_saved_step}" if self.last_checkpoint else "none was saved"
        self.nonfinite.check(self.step, self.cfg, last)

    def _improves_best(self, metrics: dict[str, Any]) -> bool:
        """Whether ``metrics`` hold a better value of ``trainer.best_metric`` than any save so far."""
        t = self.cfg.trainer
        value = metrics.get(t.best_metric) if t.best_metric else None
        if value is None:
            return False
        best = self.best["value"]
        if best is not None and (value <= best if t.best_mode == "max" else value >= best):
            return False
        self.best = {"metric": t.best_metric, "value": value, "step": self.step}
        return True

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
        self._check_finite()
        return evaluate_encoder(self.method, self.probe if with_probe else None, self.data, self.aug_cfg, self.device,
                                self.cfg.evaluation, with_linear=with_linear,
                                channels_last=self.channels_last, seed=self.cfg.seed)

    # ---- checkpoints ----
    def save(self, best: bool = False) -> None:
        """Write ``checkpoints/step_<step>.pt`` (then ``last.pt``, and ``best.pt`` if ``best``, point at it)
        and ``metrics.json``, on rank 0, atomically. Never after a non-finite loss (stop mode raises)."""
        self._check_finite()  # on every process: the check all-reduces under DDP
        if not self.main:
            return
        state = {
            "method": self.method.state_dict(), "probe": self.probe.state_dict(),
            "optimizer": self.optimizer.state_dict(), "probe_optimizer": self.probe_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "epoch": self.step // self.steps_per_epoch, "rng": rng_states(),
            "config": OmegaConf.to_container(self.cfg, resolve=True), "wandb_run_id": self.logger.run_id,
            "history": self.history, "best": self.best,
        }
        self.last_checkpoint = ckpt.save_run_checkpoint(self.run_dir / ckpt.CHECKPOINT_DIR, state, self.step,
                                                        self.cfg.trainer.keep_last_checkpoints, best=best)
        self._last_saved_step = self.step
        ckpt.write_json(self.run_dir / "metrics.json", self.history)

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        """``resume=auto``: this run dir's last checkpoint if there is one (a re-run of the same command,
        a requeued job); a path: that checkpoint or run dir; null: start fresh."""
        if resume is None:
            return None
        if resume == "auto":
            folder = self.run_dir / ckpt.CHECKPOINT_DIR
            if (folder / ckpt.LAST).is_file():
                return folder / ckpt.LAST
            steps = ckpt.step_checkpoints(folder)  # last.pt deleted by hand: the newest step file
            return steps[-1] if steps else None
        return ckpt.resolve_checkpoint(resume)

    def _restore(self, path: Path) -> str | None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        saved, current = state.get("config") or {}, OmegaConf.to_container(self.cfg, resolve=True)
        ckpt.check_same_model(path, saved, current)
        ckpt.load_state_or_explain(self.method, state["method"], path, "method", saved, current)
        ckpt.load_state_or_explain(self.probe, state["probe"], path, "online probe", saved, current)
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe_optimizer.load_state_dict(state["probe_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        set_rng_states(state["rng"])
        self.best = state.get("best", self.best)
        self.last_checkpoint, self._last_saved_step = path, self.step
        changed = ckpt.continuation_differences(saved, current)
        if changed:
            self._print("warning: settings changed since the checkpoint; the continuation will differ from an "
                        "uninterrupted run:\n  " + "\n  ".join(changed))
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
