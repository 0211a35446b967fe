"""Experiment loggers behind one small interface, so the loop never imports wandb itself."""
from __future__ import annotations

import math
import netrc
import os
import re
import shlex
from pathlib import Path
from typing import Any

from cl_suite.engine.diagnostics import is_histogram
from cl_suite.errors import ConfigError, UserError, as_written


class LoggerUnavailable(UserError, ImportError):
    """A logger whose optional package is not installed; the message says what to install."""


# What the loop gives every logger's constructor (NullLogger's docstring says what each one is).
LOGGER_ARGUMENTS = ("run_dir", "run_config", "run_id", "resume_step")


def check_logger_config(cfg, key: str = "logger") -> None:
    """Start-up validation of one logger config: its class's own ``check_config(cfg, key)``, where it has
    one (a logger class without it is only checked for its constructor arguments)."""
    from hydra.utils import get_class

    check = getattr(get_class(cfg._target_), "check_config", None)
    if check is not None:
        check(cfg, key)


class NullLogger:
    """``logger=none``: logs nothing (``metrics.json`` and the console still get every number).

    The interface every logger has. It is built with ``run_dir``, ``run_config`` (the resolved config as
    plain data), ``run_id`` (the id a resumed run had, or None) and ``resume_step`` (the optimizer step of
    the checkpoint a run resumes from, or None for a fresh run: rows a killed run logged past it are logged
    again by the resumed run, so a logger that can forget them does).
    """

    wants_media = False  # callers skip work (e.g. encoding an embedding snapshot) whose only use is media

    def __init__(self, run_dir: str | None = None, run_config: dict | None = None, run_id: str | None = None,
                 resume_step: int | None = None):
        self.run_id = run_id

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def wandb_credentials_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


WANDB_MODES = ("auto", "online", "offline", "disabled")


WANDB_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older names, still accepted by wandb


def wandb_mode_from_environment() -> str | None:
    """``WANDB_MODE`` of the environment (which wins over ``logger.mode``), or None; a value wandb would not
    take either raises, naming the variable."""
    env = os.environ.get("WANDB_MODE")
    if env is None:
        return None
    mode = WANDB_MODE_ALIASES.get(env, env)
    if mode not in WANDB_MODES:
        raise ConfigError(f"the environment variable WANDB_MODE={env!r} (it wins over logger.mode) is not one of "
                          f"{WANDB_MODES} (or wandb's older dryrun, run): fix or unset it")
    return mode


def resolve_wandb_mode(mode: str) -> str:
    """``auto``: online when credentials exist, offline otherwise; ``WANDB_MODE`` in the environment wins."""
    mode = wandb_mode_from_environment() or mode
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={mode!r} is not one of {WANDB_MODES}")
    if mode == "auto":
        return "online" if wandb_credentials_available() else "offline"
    return mode


# The summary a run ends with (``run_summary``): the plain evaluation keys (``knn/top1``, ``linear/top1``,
# ``online_probe/test_top1`` ...) hold the final evaluation's numbers, the same as ``final/*``, so a runs
# table sorted on the obvious key ranks runs by their results; ``best/<key>`` keeps the best of that key
# over the evaluations during training and the final one. Losses keep their minimum and last value
# (``define_metric`` summary ``min,last``).
SUMMARY_BEST = ("knn/", "online_probe/", "linear/")
SUMMARY_MIN = ("train/loss", "train/epoch_loss")
# An embedding snapshot keeps this many principal components per point, not the raw features (2048
# columns for a ResNet-50): a small table, and enough for the UI's UMAP/t-SNE to work on.
SNAPSHOT_COMPONENTS = 32
EPOCH_METRICS = ("knn/*", "online_probe/*", "linear/*", "epoch_time_s", "train/epoch_*", "diag/*")


def run_summary(history: dict) -> dict[str, Any]:
    """The summary of a finished run from its ``metrics.json`` history: ``final/<key>`` and ``<key>``
    (the final numbers) and ``best/<key>`` (the highest value of an accuracy over the epoch records and
    the final record; the history spans every resume of the run, so does the best)."""
    final = {k: v for k, v in history.get("final", {}).items() if k not in ("step", "epoch")}
    out: dict[str, Any] = {f"final/{k}": v for k, v in history.get("final", {}).items()}
    out.update(final)
    for record in [*history.get("epochs", []), final]:
        for key, value in record.items():
            if key.startswith(SUMMARY_BEST) and _is_number(value) and math.isfinite(value):
                out[f"best/{key}"] = max(out.get(f"best/{key}", value), value)
    return out


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exit_code_of(exc: BaseException | None) -> int:
    """The exit status a run ends with: 0, ``SystemExit``'s own (128 + signal after a stop signal), 130
    for Ctrl-C, 1 for any other exception."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 130 if isinstance(exc, KeyboardInterrupt) else 1


def offline_run_folders(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every offline folder of one run id, oldest first: a resumed run writes a new one per resume
    (``offline-run-<date>_<time>-<id>``, with ``-1``, ``-2`` ... appended within the same second)."""
    pattern = re.compile(rf"offline-run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?")
    found = [(m[1], int(m[2] or 0), p) for p in wandb_dir.glob(f"offline-run-*-{run_id}*")
             if (m := pattern.fullmatch(p.name)) and p.is_dir()]
    return [p for *_, p in sorted(found)]


def wandb_sync_command(folders: list[Path]) -> str:
    """One ``wandb sync`` per folder, in order, joined by ``&&``: given several paths at once, wandb
    syncs them in parallel and in no fixed order, and the parts of one resumed run must go in order."""
    return " && ".join(f"wandb sync {shlex.quote(str(f))}" for f in folders)


class WandbLogger:
    """Logs to Weights & Biases; one run per training job, written under the run dir.

    Inside a Hydra multirun every job joins one group (``group``, default: the sweep dir) and the
    values it swept become the config key ``sweep`` (``{"sampler.tau_plus": 0.05, "seed": 1}``) and
    the run name, so the dashboard can group, filter and plot by them.

    The run is finished in ``finish`` (the loop calls it in a ``finally``): under a Hydra multirun an
    unfinished run would be silently reused by the next job's ``wandb.init``. Its exit code is the run's
    exit status: wandb marks a run that ends with a non-zero code as failed, not finished. It is a run of
    its own beside any other of the process (``reinit="create_new"``): a notebook's own wandb run, active
    while ``cl_suite.api.train`` runs, stays active and stays ``wandb.run``.
    """

    wants_media = True

    def __init__(self, run_dir: str, run_config: dict, project: str = "cl_suite", entity: str | None = None,
                 mode: str = "auto", group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, name: str | None = None, run_id: str | None = None,
                 resume_step: int | None = None, join_sweep: bool = True):
        # resume_step is not needed: wandb keeps the steps a killed run logged past its checkpoint, and
        # ``log`` skips a step below the run's last one, as wandb would (without its warning per call).
        import wandb

        from cl_suite.sweeps import current_sweep_job

        self.mode = resolve_wandb_mode(mode)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        # join_sweep=False: a process that only writes into an existing run (evaluate.py, also as a multirun
        # over runs) must keep the run's own name, group and sweep values, not take its own multirun's.
        sweep = current_sweep_job() if join_sweep else None
        if sweep is not None:
            sweep_dir, swept = sweep
            group = group or "/".join(Path(sweep_dir).parts[-2:])
            name = name or ",".join(f"{k}={v}" for k, v in swept.items()) or None
            run_config = {**run_config, "sweep": swept}
        self._run = wandb.init(
            project=project, entity=entity, mode=self.mode, group=group, job_type=job_type,
            tags=list(tags) if tags else None, name=name, dir=run_dir, config=run_config,
            id=run_id, resume="allow" if run_id else None, reinit="create_new",
        )
        self.run_id = self._run.id
        self._run.define_metric("epoch")
        for pattern in EPOCH_METRICS:
            self._run.define_metric(pattern, step_metric="epoch")
        for pattern in SUMMARY_MIN:
            self._run.define_metric(pattern, summary="min,last")
        self._offline_folder = Path(self._run.dir).parent if self.mode == "offline" else None
        self._print_sync_command()

    def _print_sync_command(self) -> None:
        """Offline: how to upload the run (all its folders, in order: wandb's own closing line names only
        the newest part of a resumed run), at the start and again at the end."""
        if self._offline_folder is None:
            return
        folder = self._offline_folder  # <wandb dir>/offline-run-<date>_<time>-<id>
        folders = offline_run_folders(folder.parent, self.run_id) or [folder]
        parts = f" (its {len(folders)} offline folders, in order)" if len(folders) > 1 else ""
        print(f"wandb is offline; upload the run later{parts} with: {wandb_sync_command(folders)}")

    @classmethod
    def check_config(cls, cfg, key: str) -> None:
        if "mode" in cfg and cfg.mode not in WANDB_MODES:
            raise ConfigError(f"{key}.mode={cfg.mode!r} is not one of {WANDB_MODES}")
        wandb_mode_from_environment()  # at start-up, not when the logger is built
        if "project" in cfg and not (isinstance(cfg.project, str) and cfg.project):
            raise ConfigError(f"{key}.project={as_written(cfg.project)} is not allowed: expected a non-empty name")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if step < self._run.step:  # a resumed run's steps up to its last logged one: wandb would drop them
            return
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

    def finish(self, exit_code: int = 0) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=exit_code)
            self._print_sync_command()  # after wandb's own summary, which names the newest folder only


class CSVLogger:
    """``logger=csv``: every logged scalar as one row ``step,key,value`` of ``<run dir>/metrics.csv``.

    The long format, not one column per key: the keys differ from row to row (a log step has the loss,
    an epoch record the evaluations and diagnostics), so a wide file would have to be rewritten whenever
    a new key appears; this one is only appended to, each call flushed, so a killed run keeps every row
    it logged. A resumed run first drops the rows past its checkpoint's step and any corrupted line (the
    file is rewritten to a temporary file and renamed over, so a crash leaves the old file or the new
    one), then appends: every (step, key) appears once. A key already written at the checkpoint's step is
    not written again (a finished run started again evaluates again at its last step: the first final
    rows stay). Histograms and media are not written (metrics.json has the histograms). Wide table:
    ``pd.read_csv(f).pivot_table(index="step", columns="key", values="value")``.
    """

    wants_media = False
    FILENAME = "metrics.csv"
    COLUMNS = ("step", "key", "value")

    def __init__(self, run_dir: str, run_config: dict | None = None, run_id: str | None = None,
                 resume_step: int | None = None, filename: str = FILENAME):
        import csv

        self.run_id = run_id
        self.path = Path(run_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._resume_step, self._written_at_resume_step = resume_step, set()
        if resume_step is not None and self.path.is_file():
            self._written_at_resume_step = self._keep_rows_up_to(resume_step)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.COLUMNS)
            self._file.flush()

    def _keep_rows_up_to(self, step: int) -> set[str]:
        """Rewrite the file with its header and the rows of steps <= ``step``; return the keys of the rows
        at ``step``. The file is the killed run's output, so anything may be in it: a row that does not
        parse as ``int step, key, number`` (the torn last line, bytes that are no UTF-8, a NUL) is
        dropped, never the resume."""
        import csv

        kept = []
        # One line at a time (the writer never writes a field across lines, and an unclosed quote must
        # not swallow the rows after it); a line with a NUL or bytes that are no UTF-8 is corrupted.
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            if "\0" in line or "\ufffd" in line:
                continue
            try:
                (row,) = csv.reader([line])
            except (csv.Error, ValueError):  # malformed, or no row at all
                continue
            # (the header row's step is no number, so it goes too and is written anew)
            if len(row) == len(self.COLUMNS) and _int_or_none(row[0]) is not None and _int_or_none(row[0]) <= step \
                    and (_float_or_none(row[2]) is not None or row[2] in ("True", "False")):
                kept.append(row)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.COLUMNS)
            writer.writerows(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        return {key for row_step, key, _ in kept if int(row_step) == step}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        rows = [(step, key, value) for key, value in metrics.items() if _is_number(value) or isinstance(value, bool)]
        if step == self._resume_step:
            rows = [row for row in rows if row[1] not in self._written_at_resume_step]
        if rows and self._file is not None:
            self._writer.writerows(rows)
            self._file.flush()

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass  # the final numbers are already rows (final/*); metrics.json has the rest

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


TENSORBOARD_HINT = ("logger=tensorboard needs the tensorboard package, which is not installed: "
                    "pip install -e \".[tensorboard]\" (or pip install tensorboard); then view the runs with "
                    "tensorboard --logdir <run dir or sweep dir>")


def tags_shown_at(log_dir: Path, step: int) -> set[str]:
    """The scalar and histogram keys the event files under ``log_dir`` show at ``step``, as TensorBoard
    reads them (the purges of earlier resumes applied). Reads every event once: done at a resume only."""
    if not log_dir.is_dir():
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    return ({tag for tag in tags["scalars"] if any(e.step == step for e in events.Scalars(tag))}
            | {tag for tag in tags["histograms"] if any(e.step == step for e in events.Histograms(tag))})


class TensorBoardLogger:
    """``logger=tensorboard``: TensorBoard event files under ``<run dir>/<subdir>`` (torch's SummaryWriter;
    needs the optional ``tensorboard`` package: ``pip install -e ".[tensorboard]"``).

    Scalars by their keys (``train/loss``, ``knn/top1``, ``diag/sim/positive_mean`` ...) against the
    optimizer step, diagnostics histograms as TensorBoard histograms, the embedding snapshot in the
    projector (its top principal components, labelled). A resumed run adds an event file to the same
    folder and purges the events past its checkpoint's step (SummaryWriter's ``purge_step``), and it does
    not write again a key TensorBoard already shows at the checkpoint's step (a finished run started
    again evaluates again there; a run stopped during its final evaluation has no final keys yet), so
    TensorBoard shows every (step, key) once.
    """

    wants_media = True

    def __init__(self, run_dir: str, run_config: dict | None = None, run_id: str | None = None,
                 resume_step: int | None = None, subdir: str = "tensorboard"):
        if not tensorboard_available():
            raise LoggerUnavailable(TENSORBOARD_HINT)
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = run_id
        self.log_dir = Path(run_dir) / subdir
        purge = None if resume_step is None else resume_step + 1  # events at steps >= purge are hidden
        self._resume_step = resume_step
        self._shown_at_resume = set() if resume_step is None else tags_shown_at(self.log_dir, resume_step)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        self._step = 0
        if run_config is not None and resume_step is None:  # the resolved config, readable in the TEXT tab
            import json

            self._writer.add_text("config", "```\n" + json.dumps(run_config, indent=2, default=str) + "\n```", 0)

    @classmethod
    def check_config(cls, cfg, key: str) -> None:
        if not tensorboard_available():
            raise ConfigError(TENSORBOARD_HINT)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._step = step
        for key, value in metrics.items():
            if step == self._resume_step and key in self._shown_at_resume:
                continue
            if is_histogram(value):
                self._histogram(key, value, step)
            elif _is_number(value) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def _histogram(self, key: str, value: dict, step: int) -> None:
        import numpy as np

        counts = np.asarray(value["counts"], dtype=np.float64)
        total = counts.sum()
        if not total:
            return
        edges = np.linspace(*value["range"], len(counts) + 1)
        centres = (edges[:-1] + edges[1:]) / 2  # the sums are estimated from the bin centres
        filled = np.nonzero(counts)[0]
        self._writer.add_histogram_raw(
            key, min=float(edges[filled[0]]), max=float(edges[filled[-1] + 1]), num=int(total),
            sum=float((counts * centres).sum()), sum_squares=float((counts * centres**2).sum()),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        pass  # TensorBoard has no run summary; the final numbers are scalars (final/*) at the last step

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
        from cl_suite.engine.embedding_snapshot import principal_components

        tag = key.replace("/", "_")
        if (self.log_dir / str(self._step).zfill(5) / tag).is_dir():  # SummaryWriter's folder for this step
            return  # written before this run was resumed at its last step: a second copy would be listed twice
        coords = principal_components(features, SNAPSHOT_COMPONENTS)
        labels = labels.cpu().tolist()
        names = [class_names[y] if class_names and 0 <= y < len(class_names) else str(y) for y in labels]
        self._writer.add_embedding(coords, metadata=names, tag=tag, global_step=self._step)
        self._writer.flush()

    def finish(self, exit_code: int = 0) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MultiLogger:
    """``logger=many``: several loggers at once, behind the one interface the loop sees. ``loggers`` maps a
    name to a logger config (``conf/logger/loggers/``: ``logger/loggers=[wandb,csv,tensorboard]``); each
    is built with the run dir, config and run id, and every call goes to each of them in that order. The
    run id is the first one a logger has (wandb's), so a resumed run continues the same wandb run.
    ``group`` (set by the sweep recipes as ``logger.group``, like ``logger=wandb``'s) goes to each logger
    that has a group.
    """

    def __init__(self, loggers: dict, run_dir: str, run_config: dict | None = None, run_id: str | None = None,
                 resume_step: int | None = None, group: str | None = None):
        from hydra.utils import instantiate

        self.loggers: dict[str, Any] = {}
        try:
            for name, cfg in loggers.items():
                if group is not None and "group" in cfg:
                    cfg = {**cfg, "group": group}
                self.loggers[name] = instantiate(cfg, run_dir=run_dir, run_config=run_config, run_id=run_id,
                                                 resume_step=resume_step, _recursive_=False, _convert_="all")
        except BaseException as err:
            self.finish(exit_code_of(err))  # the ones already started (a wandb run) must not stay open
            raise
        self.run_id = next((lg.run_id for lg in self.loggers.values() if getattr(lg, "run_id", None)), run_id)
        self.wants_media = any(getattr(lg, "wants_media", False) for lg in self.loggers.values())

    @classmethod
    def check_config(cls, cfg, key: str) -> None:
        """Each logger of the mapping, its constructor arguments included (the group's own argument check
        stops at this class's ``loggers`` mapping)."""
        from cl_suite.engine.config_arguments import ArgumentError, check_group_arguments

        for name in cfg.get("loggers") or {}:
            child = cfg.loggers[name]
            try:
                check_group_arguments(f"{key}.loggers.{name}", child, injected=LOGGER_ARGUMENTS)
            except ArgumentError as err:
                raise ConfigError(str(err)) from None
            check_logger_config(child, f"{key}.loggers.{name}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for lg in self.loggers.values():
            lg.log(metrics, step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        for lg in self.loggers.values():
            lg.log_summary(metrics)

    def log_embeddings(self, key: str, features, labels, class_names: list[str] | None = None) -> None:
        for lg in self.loggers.values():
            if getattr(lg, "wants_media", False):
                lg.log_embeddings(key, features, labels, class_names)

    def finish(self, exit_code: int = 0) -> None:
        """Finish every logger, also when one of them fails (then raise the first error)."""
        error = None
        for lg in self.loggers.values():
            try:
                lg.finish(exit_code=exit_code)
            except Exception as err:  # noqa: BLE001  (the others must still close)
                error = error or err
        self.loggers = {}
        if error is not None:
            raise error
