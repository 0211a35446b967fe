"""The pre-training loop: plain PyTorch, one file to read top to bottom.

config -> dataset, augmentation, method(backbone, sampler), probe, optimizers -> for each step:
augment on the device, forward under autocast, backward, step, schedule -> per epoch: metrics,
periodic kNN monitor, checkpoint -> at the end: kNN and offline linear evaluation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cl_suite.data.augment import AugmentConfig, TwoViewAugment
from cl_suite.data.loader import TrainBatches
from cl_suite.distributed import (any_process, cleanup_distributed, get_rank, get_world_size, init_distributed,
                                  is_main_process, resolve_device)
from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.build import (DatasetFacts, build_augment_config, build_dataset, build_logger, build_method,
                                   instantiate_unwrapped)
from cl_suite.engine.diagnostics import EpochDiagnostics, is_histogram
from cl_suite.engine.embedding_snapshot import log_embedding_snapshot
from cl_suite.engine.evaluation import evaluate_encoder
from cl_suite.engine.logger import NullLogger, exit_code_of, run_summary
from cl_suite.engine.numerics import NonFiniteGuard, NonFiniteStateError, nonfinite_tensors
from cl_suite.engine.optim import build_optimizer, scaled_lr
from cl_suite.engine.precision import autocast
from cl_suite.engine.preemption import PreemptionGuard, StopRequested
from cl_suite.engine.pretrainer import Pretrainer
from cl_suite.engine.probe import OnlineProbe, RunningTopkAccuracy, build_probe_optimizer
from cl_suite.engine.profiling import StepProfiler
from cl_suite.engine.run_lock import RunFolderError, RunLock, check_room_for_checkpoint
from cl_suite.engine.run_log import RunLog, say
from cl_suite.engine.threads import set_threads
from cl_suite.engine.validation import ConfigError, validate_against_data, validate_train_config
from cl_suite.errors import UserError
from cl_suite.files import atomic_write
from cl_suite.paths import REFUSED_FILE
from cl_suite.sweeps import command_override



@contextlib.contextmanager
def own_run_folder(run_dir: Path):
    """Hold ``RunLock(run_dir)`` for the block: rank 0 takes it, every process agrees on the outcome (so
    under DDP all of them stop, none waits for a collective that never comes)."""
    lock, error = RunLock(run_dir), None
    if is_main_process():
        try:
            lock.acquire()
        except RunFolderError as err:
            error = err
    try:
        if any_process(error is not None) and error is None:
            raise RunFolderError(f"rank 0 could not take the run folder {run_dir} (see its message)")
        if error is not None:
            raise error
        if lock.took_over and is_main_process():
            print(f"run folder {run_dir}: took over the lock of a job that no longer holds it ({lock.took_over})")
        yield lock
    finally:
        lock.release()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Augmentation seed of one step: a function of (seed, step, rank) only, so a resumed run draws the
    same views as the uninterrupted one without restoring any generator state."""
    return ((seed * 1_000_003 + step) * 1024 + rank) % 2**63


def rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """The global generators. The loop itself draws from its own seeded generators, but models may not
    (dropout, stochastic depth in timm models), and the samplers' and banks' draws (MoCHi, IR/CMC, the
    IR-Ring's) use the global generator of the training device, so a resumed run restores these too.

    On CUDA, the generator of the training GPU only (``cuda_device``; ``device``, by default the current
    GPU, which torchrun's processes set to their own). Under torchrun every rank's generator is seeded and
    consumed alike (same ops, same shapes), so the state rank 0 saves is every rank's; all GPUs' states (as
    older checkpoints hold, ``cuda``) would give rank r rank 0's never-used generator of GPU r."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda_device"] = torch.cuda.get_rng_state(_cuda(device))
    return states


def _cuda(device: torch.device | None) -> torch.device | str:
    """The GPU whose generator a run draws from: its training device (``trainer.device=cuda:1`` in one
    process does not make GPU 1 the current one), else the current GPU."""
    return device if device is not None and device.type == "cuda" else "cuda"


def set_rng_states(states: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if not torch.cuda.is_available():
        return
    if "cuda_device" in states:  # into this process's GPU (torchrun's set_device), whichever rank saved it
        torch.cuda.set_rng_state(states["cuda_device"].cpu(), _cuda(device))
    elif "cuda" in states:
        # An older checkpoint: one state per GPU the saving machine showed. A run saved on 8 GPUs and
        # resumed on fewer would index the generator of a GPU this machine lacks (IndexError): those it has.
        saved = states["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in saved])


def save_hydra_record(run_dir: Path, cfg: DictConfig, config_only: bool = False) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra itself would, for a job
    started through Hydra (a config composed in Python has no job record). conf/train.yaml turns Hydra's
    own writing off (``hydra.output_subdir: null``) because Hydra writes before the job runs: a second job
    on the same folder, refused by its lock, would already have replaced the owner's record."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    record = run_dir / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    files = [("config.yaml", cfg), ("hydra.yaml", hydra_cfg), ("overrides.yaml", hydra_cfg.hydra.overrides.task)]
    for name, node in files[:1] if config_only else files:
        (record / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def drop_outdated_published(cfg: DictConfig) -> str | None:
    """A recipe's ``published`` number describes the recipe's own setting. A run started with overrides that
    change it (another data set, model, objective, optimizer, schedule or length) keeps no ``published``
    block, so neither its config, nor wandb, nor the report shows the number beside a run it does not
    describe. Returns the note to print, or None when nothing was dropped."""
    from hydra.core.hydra_config import HydraConfig

    from cl_suite.sweeps import deleted_keys, override_values, setting_changing_overrides

    if cfg.get("published") is None or not HydraConfig.initialized():
        return None
    task = list(HydraConfig.get().overrides.task)
    changed = setting_changing_overrides(override_values(task), deleted_keys(task))
    if not changed:
        return None
    cfg.published = None
    return (f"published=null: the recipe's published number is not this run's reference (the run changes its "
            f"setting: {', '.join(changed)})")


def has_record(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run's ``.hydra`` record (an earlier run of the folder)."""
    return (run_dir / ".hydra" / "config.yaml").is_file()


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an earlier run: its record or a checkpoint (a record deleted by hand, a run
    trained from Python). Such a folder is recorded only once its checkpoint is accepted."""
    folder = run_dir / ckpt.CHECKPOINT_DIR
    return has_record(run_dir) or (folder / ckpt.LAST).is_file() or bool(ckpt.step_checkpoints(folder))


def _record_refused_job(cfg: DictConfig, error: ConfigError) -> None:
    """A job whose config is refused still leaves its record and the reason (``REFUSED_FILE``; a sweep
    report then lists it as failed, saying why), unless another job owns the folder or the folder already
    holds a run (``holds_a_run``): a refused re-run into a finished run's folder must not relabel that run."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    run_dir = Path(cfg.paths.output_dir)
    lock = RunLock(run_dir)
    with contextlib.suppress(RunFolderError, OSError):
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return
        lock.acquire()
        try:
            if holds_a_run(run_dir):
                return
            save_hydra_record(run_dir, cfg)
            atomic_write(run_dir / REFUSED_FILE, lambda f: f.write(str(error).encode("utf-8")))
        finally:
            lock.release()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one pre-training job described by ``cfg``; return the final metrics."""
    try:
        augment = validate_train_config(cfg)
    except ConfigError as error:
        _record_refused_job(cfg, error)
        raise
    device_type = "cuda" if cfg.trainer.device != "cpu" and torch.cuda.is_available() else "cpu"
    run_log = RunLog()
    try:
        return _train(cfg, device_type, run_log, augment)
    finally:
        run_log.close()  # after the summary table: it belongs in train.log too


def _train(cfg: DictConfig, device_type: str, run_log: RunLog, augment: AugmentConfig) -> dict[str, Any]:
    with contextlib.ExitStack() as teardown:
        # Callbacks run last-in first-out: wandb finishes before the process group goes away (an
        # unfinished run hangs at exit, or is silently reused by the next job of a multirun), and the
        # run folder's lock is released after the last file of the run is written.
        init_distributed(device_type)
        # After an error no waiting for the others: they may be waiting in a collective for this process.
        teardown.push(lambda exc_type, exc, tb: cleanup_distributed(wait_for_all=exc_type is None))
        if cfg.trainer.batch_size % get_world_size():  # checked here: the process count is known from now on
            error = ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is not allowed with {get_world_size()} "
                                f"processes: the global batch is split evenly, so it must be a multiple of "
                                f"{get_world_size()}")
            _record_refused_job(cfg, error)  # as a refused config: the folder says why it holds no run
            raise error
        teardown.enter_context(own_run_folder(Path(cfg.paths.output_dir)))  # before the loop writes anything
        outdated = drop_outdated_published(cfg)  # before the config is recorded anywhere
        run_dir = Path(cfg.paths.output_dir)
        # A fresh folder gets its record now (a run that fails while starting is still listed with its
        # settings); a folder with an earlier run keeps its record until its checkpoint is accepted, so a
        # refused resume (another model or objective) does not relabel the earlier run.
        record_later = holds_a_run(run_dir)
        if is_main_process():
            (run_dir / REFUSED_FILE).unlink(missing_ok=True)  # an earlier refusal of this folder's job
            if not record_later:
                save_hydra_record(run_dir, cfg)
            run_log.open(run_dir)
            if outdated:
                say(outdated)
        # The process's thread count comes back when the job ends: a caller that trains in process (api.train
        # from a notebook, a multirun's next job) keeps its own setting.
        teardown.callback(torch.set_num_threads, torch.get_num_threads())
        threads, why = set_threads(cfg.trainer.threads, device_type)
        if is_main_process():
            say(f"device {device_type}, {threads} CPU thread(s) ({why}; trainer.threads={cfg.trainer.threads})")
        guard = teardown.enter_context(PreemptionGuard())
        try:
            trainer = Trainer(cfg, resolve_device(cfg.trainer.device), guard, augment)
        except UserError as error:  # refused once the data are read (their size, classes or files): as a refused
            if is_main_process() and not record_later:  # config, a fresh folder says why it holds no run
                atomic_write(run_dir / REFUSED_FILE, lambda f: f.write(str(error).encode("utf-8")))
            raise
        if record_later and is_main_process() and not trainer.nothing_to_do:
            # A run whose training was done before keeps its command line and Hydra record: only
            # config.yaml's evaluation node can change (the evaluation it now runs again).
            save_hydra_record(run_dir, trainer.record_config, config_only=trainer.training_was_done)
        final = None

        def finish_logger(exc_type, exc, tb) -> None:
            # The logger's run ends with the process's exit status: wandb shows a run stopped by a signal
            # (128 + signal) or ended by an exception (1) as failed, not as finished.
            stopped = exc is None and final is None
            trainer.logger.finish(exit_code=128 + (guard.received or 0) if stopped else exit_code_of(exc))

        teardown.push(finish_logger)
        final = trainer.fit()
    if final is None:  # stopped by a signal after saving its checkpoint
        during = " during the final evaluation" if trainer.stopped_in_final_evaluation else ""
        if not cfg.trainer.save_checkpoints:
            trainer._print(f"stopped by signal {guard.received} at step {trainer.step}; nothing to continue from "
                           "(trainer.save_checkpoints=false)")
        else:
            trainer._print(f"stopped by signal {guard.received}{during} at step {trainer.step}; checkpoint saved in "
                           f"{trainer.run_dir}. Run the same command again to continue (resume=auto)"
                           + (": it only runs the final evaluation." if during else "."))
        guard.hand_over()  # e.g. submitit requeues the job here
        raise SystemExit(128 + guard.received)  # the shell's "terminated by signal" status: not finished
    # After wandb has finished (and printed its own run summary): the run ends with the numbers.
    trainer._print(_summary_table(trainer.history))
    if trainer.nonfinite.total_skipped:
        trainer._warn(f"warning: {trainer.nonfinite.total_skipped} of this run's {trainer.step} steps had a non-finite "
                      "loss and were skipped (trainer.nonfinite=skip); see train/skipped_steps in metrics.json")
    if cfg.trainer.save_checkpoints:
        trainer._print(f"run folder: {trainer.run_dir}  "
                       f"(re-evaluate: python evaluate.py {command_override('run', trainer.run_dir)})")
    else:
        trainer._print(f"run folder: {trainer.run_dir}  (no checkpoint: trainer.save_checkpoints=false)")
    return final


class Trainer:
    """Owns the objects of one run and the step counter; ``fit`` runs it to the end.

    The position of a run is its global optimizer ``step`` alone: the epoch, the batch inside it, the
    augmentation seed and the learning rate all derive from it, so a checkpoint taken at any step
    continues exactly. ``trainer.max_steps`` stops a run early without changing its schedule (which
    always spans ``trainer.epochs``): a smoke run, or the first half of a split run.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, guard: PreemptionGuard | None = None,
                 augment: AugmentConfig | None = None):
        """``augment``: the parsed ``dataset.augment`` (``validate_train_config`` returns it); None: parse it."""
        self.cfg, self.device, t = cfg, device, cfg.trainer
        self.guard = guard or PreemptionGuard()
        self.run_dir = Path(cfg.paths.output_dir)
        self.rank, self.world = get_rank(), get_world_size()
        self.main = is_main_process()
        seed_everything(cfg.seed)

        self.data = build_dataset(cfg.dataset)
        validate_against_data(cfg, self.data)
        self.aug_cfg = augment if augment is not None else build_augment_config(cfg.dataset)
        self.augment = TwoViewAugment(self.aug_cfg)
        self.batches = TrainBatches(self.data.pretrain, t.batch_size, device, cfg.seed, self.rank, self.world,
                                    num_workers=t.num_workers, data_on_device=t.data_on_device,
                                    overfit_batches=t.overfit_batches, positive_pairs=t.positive_pairs)
        self.steps_per_epoch = len(self.batches)
        self.schedule_steps = t.epochs * self.steps_per_epoch
        self.stop_step = stop_step(t.epochs, t.max_steps, self.steps_per_epoch)

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
        self.probe_optimizer = build_probe_optimizer(cfg.probe, cfg.optimizer, self.probe, t.batch_size)
        self._probe_base_lrs = [group["lr"] for group in self.probe_optimizer.param_groups]
        self.scheduler = instantiate_unwrapped(cfg.scheduler, optimizer=self.optimizer, steps_per_epoch=self.steps_per_epoch,
                                     total_steps=self.schedule_steps)
        self._sync_probe_lr()
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.precision == "fp16")
        self.probe_accuracy = RunningTopkAccuracy((1, 5), self.data.num_classes, device)
        self.diagnostics = EpochDiagnostics()
        self.nonfinite = NonFiniteGuard(t.nonfinite, device, self.world)
        self.max_skipped_fraction = float(t.max_skipped_fraction)
        self.stopped_in_final_evaluation = False
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the learning rate of the last step taken (logged)
        self.profiler: StepProfiler | None = None  # trainer.profile_steps > 0, on the main process
        # The running sums of the current epoch (loss, probe accuracy, diagnostics, time) at the last
        # save inside an epoch, so a resumed epoch still gives one record of the whole epoch.
        self._epoch_progress: dict[str, Any] | None = None
        self._epoch_carry: dict[str, Any] | None = None
        self.best: dict[str, Any] = {"metric": t.best_metric, "value": None, "step": None}
        self.last_checkpoint: Path | None = None  # the newest good checkpoint, named in the NaN message
        # the evaluation settings of this run folder's own restored checkpoint (None: none, or resume=<other>)
        self._saved_evaluation: Any = None
        self._last_saved_step: int | None = None

        self.step = 0
        self.history: dict[str, Any] = {"init": {}, "epochs": [], "final": {}}
        # Whether this folder's own checkpoint had already trained every step (a finished run, or one
        # stopped in its final evaluation, started again): then nothing is trained, and the folder's
        # records keep the settings it trained with, whatever else this command says.
        self.training_was_done = False
        self.nothing_to_do = False  # ... and its final evaluation ran with this command's evaluation settings
        self._restored_config: dict = {}  # the restored checkpoint's config (older ones: with added defaults)
        checkpoint = self._checkpoint_to_resume(cfg.resume)
        wandb_id = self._restore(checkpoint) if checkpoint else None
        self.record_config = self._record_config()
        if not self.training_was_done:  # (a finished run trains with nothing: its note says so)
            self._print(_batch_and_rate(cfg.optimizer, t.batch_size, self.world))
            upsampled = _upsampling_warning(self.data.pretrain.images, self.aug_cfg.crop_size)
            if upsampled:
                self._warn(upsampled)
        if self.main and t.save_checkpoints:  # a full disk or read-only folder fails now, not at the first save
            folder = self.run_dir / ckpt.CHECKPOINT_DIR
            state_bytes = sum(v.numel() * v.element_size() for part in (self.method, self.probe)
                              for v in part.state_dict().values() if isinstance(v, torch.Tensor))
            check_room_for_checkpoint(folder if folder.is_dir() else self.run_dir, state_bytes)
        self.logger = NullLogger()
        if self.main and not self.nothing_to_do:  # a finished run started again logs nothing new
            self.logger = build_logger(cfg.logger, str(self.run_dir), self.record_config, run_id=wandb_id,
                                       resume_step=self.step if checkpoint else None)

    # ---- the run ----
    def fit(self) -> dict[str, Any] | None:
        """Train to ``stop_step`` and evaluate; return the final metrics, or None when a stop signal
        arrived (the checkpoint of the step it stopped at is saved)."""
        t = self.cfg.trainer
        if t.eval_at_init and self.step == 0:
            self.history["init"] = self.evaluate(with_linear=True, with_probe=False)  # the probe is untrained
            self.logger.log({f"init/{k}": v for k, v in self.history["init"].items()}, step=0)
            self._print("at initialisation: " + _fmt(self.history["init"]))
        if t.profile_steps and self.main:
            self.profiler = StepProfiler(self.run_dir, t.profile_steps, t.profile_warmup_steps, self.device, self._print)
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
                self.method.observe_accuracy(record["knn/top1"])  # a no-op unless a schedule follows it
                improved = self._improves_best(record)
            self.history["epochs"].append(record)
            self.logger.log(record, step=self.step)
            self._print(f"{self._epoch_label(epoch)}: " + _fmt(record))
            checkpoint_epoch = t.checkpoint_every_epochs and (epoch + 1) % t.checkpoint_every_epochs == 0
            if not last and (checkpoint_epoch or improved):  # a new best is saved even between checkpoint epochs
                self.save(best=improved)

        if self.profiler is not None:
            self.profiler.close()
            self.profiler = None
        if self.nothing_to_do:
            # A finished run started again (the same command, a resumed sweep): nothing left to do.
            self._print(f"this run already finished at step {self.step} with these evaluation settings; its final "
                        "metrics are in metrics.json (evaluate again: python evaluate.py "
                        f"{command_override('run', self.run_dir)})")
            return self.history["final"]
        if self._last_saved_step != self.step:  # the trained weights are on disk before the (long) evaluation
            self.save()
        self._print(f"final evaluation at step {self.step} ({self.epochs_done:g} of {t.epochs} epochs): kNN and the linear probe "
                    f"(evaluation.linear.epochs={self.cfg.evaluation.linear.epochs})")
        try:
            # A stop signal ends the evaluation at once: the checkpoint above holds everything, and the
            # same command then runs only the evaluation. Under DDP the processes would have to agree
            # first (a collective inside the evaluation), so there it runs to its end.
            with self.guard.raising() if self.world == 1 else contextlib.nullcontext():
                final = self.evaluate(with_linear=True)
        except StopRequested:
            self.stopped_in_final_evaluation = True
            return None
        self.history["final"] = {**final, "step": self.step, "epoch": self.epochs_done}
        # The run's cost, for compute-matched sweep reports: kept out of "final", which a resumed run
        # reproduces exactly. The epochs' seconds add up across resumes; evaluations are not counted.
        train_s = sum(record.get("epoch_time_s", 0.0) for record in self.history["epochs"])
        self.history["compute"] = {"time/wall_s": train_s, "time/images_per_s": self.step * t.batch_size / train_s
                                   if train_s else None, "device": self.device.type, "processes": self.world,
                                   "threads": torch.get_num_threads()}
        self.save(best=self._improves_best(self.history["final"]))
        final = {f"final/{k}": v for k, v in self.history["final"].items()}
        self.logger.log(final, step=self.step)
        self.logger.log_summary(run_summary(self.history))  # plain keys (knn/top1, linear/top1 ...) = final numbers
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
        carry, self._epoch_carry = self._epoch_carry, None
        if carry is not None and carry["epoch"] == epoch and first > 0:  # resumed inside this epoch
            loss_sum += carry["loss_sum"].to(device)
            steps = carry["steps"]
            start -= carry["seconds"]
            self.probe_accuracy.hits += carry["probe_hits"].to(device)
            self.probe_accuracy.count += carry["probe_count"].to(device)
            self.diagnostics.sums = {k: v.to(device) for k, v in carry["diag_sums"].items()}
            self.diagnostics.steps = carry["diag_steps"]
            self.nonfinite.skipped = carry["skipped"]
        bar = tqdm(total=planned, desc=self._epoch_label(epoch), disable=not (self.main and t.progress_bar),
                   leave=False, dynamic_ncols=True)
        generator = torch.Generator(device=device)
        for batch in self.batches.epoch(epoch, start_step=first):
            generator.manual_seed(step_seed(self.cfg.seed, self.step, self.rank))
            record_diagnostics = self._records_diagnostics(self.step)
            self.method.set_progress(self.step, self.steps_per_epoch, record_diagnostics)
            out, probe_logits = self.train_step(batch, generator)
            steps += 1
            window_steps += 1
            loss_sum += out.loss.detach()
            window_loss += out.loss.detach()
            self.probe_accuracy.update(probe_logits, out.feature_labels)
            if record_diagnostics:
                self.diagnostics.update(out.stats)
            bar.update(1)
            if self.profiler is not None:
                self.profiler.step()
            if self.step % t.log_every_steps == 0:
                self._check_finite()  # before the log line, so a NaN run stops instead of logging NaN
            if self.step % t.log_every_steps == 0 and self.main:  # the only host syncs inside an epoch
                elapsed = time.perf_counter() - window_start
                # The diagnostics (out.stats) are logged once, averaged in the epoch record (diag/*), as in
                # metrics.json: not also per step under their raw names.
                metrics = {"train/loss": (window_loss / window_steps).item(),
                           "lr": self.step_lr,  # of the last step taken, not the next one
                           "images_per_s": window_steps * t.batch_size / elapsed}
                self.logger.log(metrics, step=self.step)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", img_s=f"{metrics['images_per_s']:.0f}")
                window_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if self.step >= self.stop_step or self._stop_requested():
                break
        bar.close()
        seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, "step": self.step, "train/epoch_loss": (loss_sum / max(steps, 1)).item(),
                  # train/epoch_*: not the log step's lr/images_per_s, logged at the same step with other values
                  "train/epoch_lr": self.step_lr, "epoch_time_s": seconds,
                  "train/epoch_images_per_s": steps * t.batch_size / seconds}
        record.update({f"online_probe/train_{k}": v for k, v in self.probe_accuracy.compute().items()})
        self._epoch_progress = {
            "epoch": epoch, "loss_sum": loss_sum.detach().cpu(), "steps": steps, "seconds": seconds,
            "probe_hits": self.probe_accuracy.hits.detach().cpu().clone(),
            "probe_count": self.probe_accuracy.count.detach().cpu().clone(),
            "diag_sums": {k: v.detach().cpu().clone() for k, v in self.diagnostics.sums.items()},
            "diag_steps": self.diagnostics.steps, "skipped": self.nonfinite.skipped}
        if self.nonfinite.mode == "skip":
            record["train/skipped_steps"], self.nonfinite.skipped = self.nonfinite.skipped, 0
            if record["train/skipped_steps"]:
                self._warn(f"warning: {record['train/skipped_steps']} of the {steps} steps of epoch {epoch + 1} had a "
                           f"non-finite loss and were skipped ({self.nonfinite.total_skipped} in the run so far; it "
                           f"stops above trainer.max_skipped_fraction={self.max_skipped_fraction} of its "
                           f"{self.stop_step} steps)")
        if steps:
            record.update(self.diagnostics.compute())
            record.update({f"diag/{k}": v for k, v in self.method.epoch_diagnostics().items()})
        return record

    def _records_diagnostics(self, step: int) -> bool:
        """Whether the step about to run (``step`` steps taken) computes and records the per-step
        diagnostics: the steps that log (every ``trainer.log_every_steps``-th) and the last step of each
        epoch and of the run, so that every epoch record has them. They cost about as much as the loss,
        so the other steps skip them; the epoch record averages them over the recorded steps."""
        done = step + 1
        return (done % self.cfg.trainer.log_every_steps == 0 or done % self.steps_per_epoch == 0
                or done == self.stop_step)

    def train_step(self, batch, generator: torch.Generator):
        t = self.cfg.trainer
        views = self.augment(batch.images, generator, batch.pair_images)
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
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (a float: no sync)
        self.scheduler.step()
        self._sync_probe_lr()
        self.method.after_step(out.memory, self.step, self.schedule_steps)  # memory writes, momentum updates
        self.method.observe_loss(out.loss)  # a no-op unless a schedule follows the loss (ring adaptive_loss)
        self.step += 1
        return out, probe_logits

    def _apply_probe_settings(self) -> None:
        """The probe optimizer's hyper-parameters are this run's ``probe.*`` (a restored state brings back
        the checkpoint's): copied from a fresh build, then the schedule's factor on top."""
        fresh = build_probe_optimizer(self.cfg.probe, self.cfg.optimizer, self.probe, self.cfg.trainer.batch_size)
        for group, new in zip(self.probe_optimizer.param_groups, fresh.param_groups):
            group.update({k: v for k, v in new.items() if k != "params"})
        self._sync_probe_lr()

    def _sync_probe_lr(self) -> None:
        """``probe.schedule=backbone``: the probe's rate is its base rate times the backbone schedule's
        current factor (solo-learn's classifier is a parameter group of the backbone's scheduled
        optimizer). Derived from the checkpointed schedule, so it needs no state of its own."""
        if self.cfg.probe.get("schedule", "constant") != "backbone":
            return
        factor = self.scheduler.get_last_lr()[0] / self.scheduler.base_lrs[0]
        for group, base in zip(self.probe_optimizer.param_groups, self._probe_base_lrs):
            group["lr"] = base * factor

    def _skip_step(self, out):
        """``trainer.nonfinite=skip``: no update of weights, optimizer or method state. The position (step,
        schedule, data order) still advances past the batch. The step's loss counts as 0 in the epoch
        loss and its samples not in the probe accuracy."""
        self._print(f"step {self.step}: non-finite loss, update skipped (trainer.nonfinite=skip)")
        self.nonfinite.check_skipped_share(self.max_skipped_fraction, self.stop_step, self.step,
                                           self._last_checkpoint_text())
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self._sync_probe_lr()
        self.step += 1
        return dataclasses.replace(out, loss=torch.zeros_like(out.loss.detach()), stats={},
                                   feature_labels=torch.full_like(out.feature_labels, -1))

    def _last_checkpoint_text(self) -> str:
        return f"{self.last_checkpoint}, step {self._last_saved_step}" if self.last_checkpoint else "none was saved"

    def _check_finite(self) -> None:
        """Stop mode: raise if a loss since the start was not finite (a host sync; see engine.numerics)."""
        self.nonfinite.check(self.step, self.cfg, self._last_checkpoint_text())

    def _check_finite_state(self, states: dict[str, dict]) -> None:
        """Raise ``NonFiniteStateError`` (on every process) rather than save NaN/inf weights or buffers."""
        bad = nonfinite_tensors(states)
        if not any_process(bool(bad)):
            return
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "") if bad else "another process"
        raise NonFiniteStateError(
            f"not saving a checkpoint at step {self.step}: non-finite values in {names}. The last checkpoint "
            f"({self._last_checkpoint_text()}) is the last good state. With trainer.nonfinite=skip a skipped step's "
            "forward pass still updates BatchNorm statistics, so activations that overflow poison them: use "
            "trainer.nonfinite=stop, lower the learning rate, and run the same command to continue from there.")

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
        method_state, probe_state = self.method.state_dict(), self.probe.state_dict()
        self._check_finite_state({"method": method_state, "probe": probe_state})
        if not self.main:
            return
        if not self.cfg.trainer.save_checkpoints:  # debug=fast: the numbers only
            self._last_saved_step = self.step
            ckpt.write_json(self.run_dir / "metrics.json", self.history)
            return
        state = {
            "method": method_state, "probe": probe_state,
            "optimizer": self.optimizer.state_dict(), "probe_optimizer": self.probe_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
            "epoch": self.epochs_done, "rng": rng_states(self.device),
            "config": self._checkpoint_config(), "wandb_run_id": self.logger.run_id,
            "history": self.history, "best": self.best, "skipped_steps": self.nonfinite.total_skipped,
            "threads": torch.get_num_threads(),
            "steps_per_epoch": self.steps_per_epoch,  # the checkpoint's own stop step, under another batch size
        }
        progress = self._epoch_progress
        if self.step % self.steps_per_epoch and progress and progress["epoch"] == self.step // self.steps_per_epoch:
            state["epoch_progress"] = progress  # inside an epoch: its running sums, for one record per epoch
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
        ckpt.check_training_state(path, state)
        current = OmegaConf.to_container(self.cfg, resolve=True)
        saved = ckpt.with_added_defaults(state.get("config") or {}, current)
        ckpt.check_same_model(path, saved, current)
        if self.cfg.resume == "auto":  # the folder's own checkpoint: another objective is another run
            ckpt.check_same_objective(path, saved, current, OmegaConf.to_container(self.cfg, resolve=False))
        ckpt.load_state_or_explain(self.method, state["method"], path, "method", saved, current)
        ckpt.load_state_or_explain(self.probe, state["probe"], path, "online probe", saved, current)
        ckpt.check_known_keys(path, "lr schedule", state["scheduler"], self.scheduler.state_dict())
        parts = [("optimizer", self.optimizer, "optimizer"),
                 ("online probe's optimizer", self.probe_optimizer, "probe_optimizer"),
                 ("lr schedule", self.scheduler, "scheduler")]
        # A run saved without fp16 has an empty scaler state, which an enabled GradScaler refuses ("saved from a
        # disabled instance"): continued in fp16 (on a GPU) it starts from a fresh scaler, as a new fp16 run does.
        if state["scaler"] or not self.scaler.is_enabled():
            parts.append(("AMP scaler", self.scaler, "scaler"))
        for what, part, key in parts:
            ckpt.applied_or_explained(path, what, lambda part=part, key=key: part.load_state_dict(state[key]))
        ckpt.check_optimizer_state(path, self.optimizer, "optimizer")
        ckpt.check_optimizer_state(path, self.probe_optimizer, "online probe's optimizer")
        self.step, self.history = state["step"], state["history"]
        self._apply_probe_settings()
        ckpt.applied_or_explained(path, "random number generator", lambda: set_rng_states(state["rng"], self.device))
        self.best = state.get("best", self.best)
        self.last_checkpoint, self._last_saved_step = path, self.step
        self.nonfinite.total_skipped = int(state.get("skipped_steps", 0))
        epoch, inside = divmod(self.step, self.steps_per_epoch)
        if (inside and self.step < self.stop_step and self.history["epochs"]
                and self.history["epochs"][-1].get("epoch") == epoch + 1):
            # The record of the interrupted epoch (stop signal, max_steps) is replaced by the record of the
            # whole epoch when it ends: its running sums continue from the checkpoint's.
            self.history["epochs"].pop()
            self._epoch_carry = state.get("epoch_progress")
        own = path.resolve().parent == (self.run_dir / ckpt.CHECKPOINT_DIR).resolve()
        if own:
            self._saved_evaluation = saved.get("evaluation")
        # Done: this command asks for no more steps, and the run had reached its own end (a run stopped
        # early and started again with a shorter schedule is continued with it, not taken as finished).
        self.training_was_done = own and self.step >= max(self.stop_step,
                                                            self._stop_step_of(saved, state.get("steps_per_epoch")))
        self._restored_config = saved
        final = self.history.get("final") or {}
        self.nothing_to_do = (self.training_was_done and final.get("step") == self.step
                              and self._saved_evaluation == current.get("evaluation"))
        if self.training_was_done:
            differences = ckpt.continuation_differences(saved, current)
            if differences:
                self._print(f"note: this run's training is complete (step {self.step}), so nothing is trained and "
                            "its records keep the settings it trained with; these settings of this command differ "
                            "and are not applied (a run with them needs another run folder: hydra.run.dir=... or, "
                            "for a sweep, another SWEEP_DIR / hydra.sweep.dir):\n  " + "\n  ".join(differences))
        else:
            self._continue_with_this_config(saved, current, state.get("threads"))
        self._print(f"resumed from {path} at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f})")
        return state.get("wandb_run_id")

    def _continue_with_this_config(self, saved: dict, current: dict, threads: Any) -> None:
        """A continuation: apply this command's optimizer and schedule settings, list every setting that
        changed (console, and ``setting_changes`` in metrics.json), and set aside an extended run's old
        final numbers."""
        if self.history.get("final") and self.step < self.stop_step:
            # A finished run extended (more epochs or steps): its final numbers describe the shorter run, and
            # until the new end this run has none (a report must not show them for the longer setting).
            self.history.setdefault("earlier_finals", []).append(self.history["final"])
            self.history["final"] = {}
        applied, applied_keys = self._apply_changed_settings(saved, current)
        others = [line for line in ckpt.continuation_differences(saved, current)
                  if line.split(":", 1)[0] not in applied_keys]
        if applied or others:
            # metrics.json keeps them (the .hydra record and wandb's config show only the newest settings)
            self.history.setdefault("setting_changes", []).append({"step": self.step, "changes": applied + others})
        if isinstance(threads, int) and threads != torch.get_num_threads() and self.device.type == "cpu":
            others.append(f"CPU threads: checkpoint {threads}, this run {torch.get_num_threads()} (sums in another "
                          f"order: set trainer.threads={threads} for a bit-identical continuation)")
        if applied or others:
            self._print(f"warning: settings changed since the checkpoint; from step {self.step} this run continues "
                        "with them, so the continuation will differ from an uninterrupted run:\n  "
                        + "\n  ".join(applied + others))

    def _stop_step_of(self, saved: dict, saved_steps_per_epoch: Any) -> int:
        """The step a checkpoint's own config stopped at, in its own steps per epoch (this run's for a
        checkpoint that does not record them: they differ only where the batch size changed); 0 where the
        config does not say."""
        trainer = saved.get("trainer") if isinstance(saved.get("trainer"), dict) else {}
        epochs, max_steps = trainer.get("epochs"), trainer.get("max_steps")
        if not isinstance(epochs, int):
            return 0
        steps_per_epoch = saved_steps_per_epoch if (isinstance(saved_steps_per_epoch, int) and not isinstance(
            saved_steps_per_epoch, bool) and saved_steps_per_epoch >= 1) else self.steps_per_epoch
        return stop_step(epochs, max_steps if isinstance(max_steps, int) else None, steps_per_epoch)

    def _checkpoint_config(self) -> dict:
        """The config a checkpoint stores: this run's; a run whose training was done before keeps the one it
        trained with and takes this command's ``evaluation`` (as ``_record_config``)."""
        config = OmegaConf.to_container(self.cfg, resolve=True)
        if self.training_was_done:
            return {**self._restored_config, "evaluation": config["evaluation"]}
        return config

    def _record_config(self) -> DictConfig:
        """The config the run's records (``.hydra/config.yaml``, the logger's config) describe: this command's,
        except for a run whose training was already done, which keeps the settings of its own record and
        takes only this command's ``evaluation`` (the final evaluation it runs again, if that changed)."""
        if not self.training_was_done:
            return self.cfg
        try:  # the folder's own record, written by this suite (OmegaConf's YAML loader builds data only)
            record = OmegaConf.load(self.run_dir / ".hydra" / "config.yaml")
            if not isinstance(record, DictConfig):
                raise ValueError("not a mapping")
        except Exception:  # none (a run trained in Python) or damaged: the checkpoint's config, checksummed
            record = OmegaConf.create(self._restored_config)
        with open_dict(record):
            record.evaluation = copy.deepcopy(self.cfg.evaluation)
        return record

    def _apply_changed_settings(self, saved: dict, current: dict) -> tuple[list[str], set[str]]:
        """Make the optimizer and schedule settings of this run's config take effect on the restored state.

        ``load_state_dict`` brings back the checkpoint's hyper-parameters in the param groups and the
        base learning rates in the scheduler, so without this a changed ``optimizer.lr`` (the fix for a
        NaN run) would be silently ignored. The values come from an optimizer built from this run's
        config, so the batch-size scaling and the no-decay group of biases and norms are the same as in
        a fresh run. Returns the lines to print and the config keys handled.
        """
        old_opt, new_opt = saved.get("optimizer") or {}, current.get("optimizer") or {}
        old_sched, new_sched = saved.get("scheduler") or {}, current.get("scheduler") or {}
        changed_opt = [k for k in sorted(set(old_opt) | set(new_opt))
                       if k != "_target_" and old_opt.get(k) != new_opt.get(k)]
        changed_sched = [k for k in sorted(set(old_sched) | set(new_sched)) if old_sched.get(k) != new_sched.get(k)]
        if not changed_opt and not changed_sched:
            return [], set()
        fresh = build_optimizer(self.cfg.optimizer, self.method, self.cfg.trainer.batch_size)
        groups, fresh_groups = self.optimizer.param_groups, fresh.param_groups
        lines, keys, base_lr_changed = [], set(), bool(changed_sched)
        for key in changed_opt:
            change = f"optimizer.{key}: {old_opt.get(key)!r} -> {new_opt.get(key)!r}"
            if key in ("lr", "batch_size_reference"):
                base_lr_changed = True
            elif all(key in g for g in fresh_groups) and len(groups) == len(fresh_groups):
                for group, new in zip(groups, fresh_groups):
                    group[key] = new[key]
            else:  # e.g. exclude_bias_and_norm: the group structure itself; left to the warning below
                continue
            lines.append(f"{change} applied to the restored optimizer")
            keys.add(f"optimizer.{key}")
        for key in changed_sched:
            lines.append(f"scheduler.{key}: {old_sched.get(key)!r} -> {new_sched.get(key)!r} applied to the restored "
                         "schedule")
            keys.add(f"scheduler.{key}")
        if base_lr_changed and hasattr(self.scheduler, "lr_lambdas"):
            # The schedule multiplies the base rates it restored; the multiplier functions are this run's.
            base = [g["lr"] for g in fresh_groups]
            self.scheduler.base_lrs = base
            lrs = [b * f(self.scheduler.last_epoch) for b, f in zip(base, self.scheduler.lr_lambdas)]
            for group, b, lr in zip(groups, base, lrs):
                group["initial_lr"], group["lr"] = b, lr
            self.scheduler._last_lr = lrs
        return lines, keys

    @property
    def epochs_done(self) -> float:
        """Epochs trained so far, as a fraction where a run stopped inside one (metrics.json, checkpoints)."""
        return round(self.step / self.steps_per_epoch, 4)

    def _epoch_label(self, epoch: int) -> str:
        """``epoch 3/30``; a run that trainer.max_steps ends early says so, and where."""
        label = f"epoch {epoch + 1}/{self.cfg.trainer.epochs}"
        if self.stop_step < self.schedule_steps:
            label += f" (trainer.max_steps={self.stop_step} ends the run at epoch {self.stop_step / self.steps_per_epoch:g})"
        return label

    def _print(self, text: str) -> None:
        """A message of the run on the main process: console and train.log (engine.run_log)."""
        if self.main:
            say(text)

    def _warn(self, text: str) -> None:
        if self.main:
            say(text, logging.WARNING)


def stop_step(epochs: int, max_steps: int | None, steps_per_epoch: int) -> int:
    """The optimizer step a run stops at: the end of its schedule, or ``max_steps`` if that comes first."""
    schedule = epochs * steps_per_epoch
    return schedule if max_steps is None else min(schedule, max_steps)


def _batch_and_rate(optimizer_cfg: DictConfig, batch_size: int, world: int) -> str:
    """The start-up line of what a step is: the global batch, its split over DDP processes, and the peak
    learning rate with its linear scaling (``optim.scaled_lr``), so a DDP run's settings are on screen."""
    split = f" = {world} processes x {batch_size // world}" if world > 1 else ""
    ref, lr = optimizer_cfg.get("batch_size_reference"), scaled_lr(optimizer_cfg, batch_size)
    rate = (f"optimizer.lr {optimizer_cfg.lr:g} x {batch_size}/{ref} = {lr:g}" if ref
            else f"{lr:g} (optimizer.batch_size_reference=null: not scaled with the batch)")
    return f"batch {batch_size} images per step{split}; peak learning rate {rate}"


def _upsampling_warning(images: torch.Tensor | None, crop_size: int) -> str | None:
    """A warning when the stored training images (in memory: ``images``) are smaller than the crop: every
    view is then upsampled (an image folder at its default 32 px with crop_size=224 trains on blurred-up
    thumbnails without a word); None when they are not, or are read from files at their own sizes."""
    if images is None or min(images.shape[-2:]) >= crop_size:
        return None
    height, width = images.shape[-2:]
    return (f"warning: the training images are stored at {height}x{width} px, smaller than "
            f"dataset.augment.crop_size={crop_size}: every view is upsampled from them (an image folder stores "
            f"its images at dataset.image_size: set it >= the crop size, e.g. dataset.image_size=256 for 224)")


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
