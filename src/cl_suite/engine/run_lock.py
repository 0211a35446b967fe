"""One owner per run folder, and a run folder that can take a checkpoint, checked before training.

Two jobs with the same ``hydra.run.dir`` (an overlapping SLURM requeue, two array tasks with one
folder) would both run to the end and mix their metrics and checkpoints. ``RunLock`` takes an
advisory ``fcntl.flock`` on ``<run dir>/run.lock`` for the whole run. The kernel releases a flock when
its process dies, however it dies (SIGKILL, OOM killer, node reboot on NFS with lock recovery), so a
lock file left by a dead job is simply taken over: no staleness guess, no time bound. The file's text
(host, pid, start time) only names the owner in the refusal message. The file is deleted on a normal
release, so a finished run folder holds no lock file.

Where the file system has no flock at all (it answers ENOLCK/EOPNOTSUPP), the host and pid in the file
decide: the same host and a dead pid is taken over; a live pid, or another host (whose processes cannot
be checked from here), is refused, naming the file to delete once that job is known to be gone.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from cl_suite.errors import UserError

LOCK_NAME = "run.lock"
# A checkpoint holds the parameters and buffers, the optimizer state (SGD momentum: 1x the parameters,
# Adam/AdamW: 2x) and small extras: 3x the model's bytes covers every optimizer here, plus a margin.
CHECKPOINT_SIZE_FACTOR = 3
CHECKPOINT_MARGIN_BYTES = 64 * 2**20


class RunFolderError(UserError, RuntimeError):
    """The run folder cannot be used: another live job owns it, it is not writable, or it is full."""


def _read_owner(path: Path) -> dict | None:
    """The lock file's record, or None when it is unreadable or not a JSON object (a planted ``[1]``)."""
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _owner_text(path: Path) -> str:
    owner = _read_owner(path)
    if owner is None:
        return "an unknown owner (the lock file is unreadable)"
    return (f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, started {owner.get('started', '?')}"
            if owner else "an owner that has not written its name yet")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists. A pid no process can have (0 or negative: os.kill would signal a
    process group; too large for the system) is a planted or damaged record: no owner."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` -- exclusive ownership of ``run_dir`` for the block, or ``RunFolderError``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self.took_over: str | None = None  # the previous owner's text when a stale lock was taken over

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self) -> RunFolderError:
        return RunFolderError(
            f"run folder {self.run_dir} is in use by another job ({_owner_text(self.path)}; lock file {self.path}). "
            "Two jobs writing one run folder mix their config, metrics and checkpoints, so this one stops before "
            "writing anything. Wait for that job to finish (or stop it), then run this command again to continue "
            "from its checkpoint; or give this run its own folder: hydra.run.dir=...")

    def acquire(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise not_writable(self.run_dir, err) from None
        for _ in range(10):  # retried only when an owner deleted the file between our open and our lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise not_writable(self.run_dir, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse() from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                self._check_owner_without_flock(fd)
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)
        else:
            raise RunFolderError(f"run folder {self.run_dir}: could not take {self.path} (it keeps being replaced)")
        previous = os.read(fd, 4096)
        if previous.strip():
            self.took_over = _owner_text(self.path)
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _check_owner_without_flock(self, fd: int) -> None:
        """No flock on this file system: refuse a live owner on this host, or any owner on another host."""
        owner = _read_owner(self.path) or {}
        if not owner:
            return
        if owner.get("host") == socket.gethostname():
            pid = owner.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid != os.getpid() and _pid_alive(pid):
                os.close(fd)
                raise self._refuse()
            return
        os.close(fd)
        raise RunFolderError(
            f"run folder {self.run_dir} has a lock of a job on another host ({_owner_text(self.path)}) and this file "
            "system has no file locks to tell whether it is still running. If that job is gone, delete "
            f"{self.path} and run this command again; otherwise give this run its own folder: hydra.run.dir=...")

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # delete while still holding the lock, and only if the name is still our file
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def not_writable(folder: Path, err: OSError) -> RunFolderError:
    return RunFolderError(f"run folder {folder} is not writable ({type(err).__name__}: {err}); nothing was trained. "
                          "Fix its permissions or give the run another folder: hydra.run.dir=...")


def check_room_for_checkpoint(folder: Path, model_bytes: int) -> None:
    """Before training: ``folder`` is writable and has room for one more checkpoint (about
    ``CHECKPOINT_SIZE_FACTOR`` x ``model_bytes`` + a margin), or ``RunFolderError``. Saving fails only
    at the end of an epoch (or of the whole run) otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"0")
            probe.flush()
    except OSError as err:
        raise not_writable(folder, err) from None
    needed = CHECKPOINT_SIZE_FACTOR * model_bytes + CHECKPOINT_MARGIN_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        mib = 2**20
        raise RunFolderError(
            f"run folder {folder} has {free / mib:.1f} MiB free, less than the ~{needed / mib:.1f} MiB a checkpoint "
            f"needs ({CHECKPOINT_SIZE_FACTOR} x the model's {model_bytes / mib:.1f} MiB of parameters and buffers, "
            f"for the optimizer state, + {CHECKPOINT_MARGIN_BYTES // mib} MiB); nothing was trained. Free some space "
            "(fewer trainer.keep_last_checkpoints of other runs) or give the run another folder: hydra.run.dir=...")
