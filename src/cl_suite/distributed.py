"""Process-group helpers and each process's device. Everything is a no-op in a single process, so the
loop has one code path.

Launch with ``torchrun``: it sets RANK/WORLD_SIZE/LOCAL_RANK, which ``init_distributed`` reads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; under torchrun, a process's cuda is its own GPU.

    A CUDA device always carries its index (``cuda:0``, not ``cuda``), as a tensor's ``.device`` does:
    ``torch.device("cuda") != torch.device("cuda:0")``, so code that asks whether a tensor is already on
    the training device (the loader's GPU-resident data) would otherwise always answer no."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu or auto")
        if get_world_size() > 1 or device.index is None:  # torchrun: one GPU per process (set_device)
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def _export_slurm_task_environment() -> None:
    """A SLURM job with several tasks (submitit launcher, tasks_per_node > 1) and no torchrun: derive
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from the SLURM variables, as torchrun would. The
    same for submitit's local launcher (``hydra/launcher=local``), whose tasks carry SUBMITIT_LOCAL_*
    variables instead: without this, each of its tasks trained alone on the same run folder."""
    tasks = max(int(os.environ.get("SLURM_NTASKS", "1")), int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")))
    if "RANK" in os.environ or tasks <= 1:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as err:
        raise RuntimeError("a SLURM job with several tasks needs submitit to set up DDP: "
                           "pip install -e '.[slurm]', or launch one torchrun per node instead") from err
    TorchDistributedEnvironment().export()


def init_distributed(device_type: str, timeout_s: int = 600) -> bool:
    """Join the process group torchrun (or a multi-task SLURM job) prepared; return whether the run is
    distributed.

    nccl on GPUs, gloo on CPUs (nccl has no CPU path). The backend is always passed explicitly:
    without it torch builds a multi-backend group whose behaviour differs between versions.
    """
    _export_slurm_task_environment()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def worker_rank_hydra_overrides() -> list[str]:
    """Extra Hydra overrides for torchrun processes other than rank 0.

    torchrun starts every process with the same command line, so every process would write
    ``.hydra/`` and the job log into the shared run folder; only rank 0 should.
    """
    if int(os.environ.get("RANK", "0")) > 0:
        return ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return []


# What a CPU (gloo) process of a torchrun job prints when it aborts after its work, at interpreter exit: once
# DistributedDataParallel has been built, torch keeps the gloo process group's threads alive after
# destroy_process_group (measured on torch 2.14.1 and 2.11: 'pt_gloo_runloop' threads outlive it even with
# the DDP module, its reducer and its logger deleted and collected), and tearing them down at exit aborts now
# and then (2 of 180 launches of a test script with 3-4 launches at once on 2 cores; none of 8 alone). The
# job's results are complete: tests and benchmarks that launch torchrun on CPUs run such a launch once more.
GLOO_EXIT_ABORT = "terminate called without an active exception"


def aborted_at_exit(stderr: str) -> bool:
    """Whether a failed torchrun launch's ``stderr`` is the gloo exit-time abort (``GLOO_EXIT_ABORT``)."""
    return GLOO_EXIT_ABORT in stderr and "SIGABRT" in stderr


def run_torchrun(cmd: list[str], what: str, before_retry: Callable[[], None] | None = None,
                 **run_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` of a torchrun command line, its output captured as text; once more (after
    ``before_retry``, e.g. removing what the first launch wrote) when it failed with the gloo exit-time
    abort, saying so on stderr (``what`` names the launch). Any other failure is returned as it is."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **run_kwargs)
    if proc.returncode != 0 and aborted_at_exit(proc.stderr):
        print(f"{what}: a process aborted at exit ({GLOO_EXIT_ABORT!r}); launching once more", file=sys.stderr)
        if before_retry is not None:
            before_retry()
        proc = subprocess.run(cmd, capture_output=True, text=True, **run_kwargs)
    return proc


# How long the processes of a finished CPU job wait for each other before leaving: rank 0 may still be
# finishing the logger's run (a wandb upload) after the others are done.
EXIT_WAIT = timedelta(hours=1)


def cleanup_distributed(wait_for_all: bool = False) -> None:
    """Leave the process group. ``wait_for_all`` (a job that ended without an error), on CPUs (gloo): first
    wait until every process got here (up to ``EXIT_WAIT``), so no process exits while rank 0 still writes
    the run's files: a process that aborts at exit (``GLOO_EXIT_ABORT``) makes torchrun stop the others. On
    GPUs (nccl) the processes leave at once, as before: torchrun waits for the ones that exit normally."""
    if is_distributed():
        if wait_for_all and dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=EXIT_WAIT, wait_all_ranks=True)
        dist.destroy_process_group()


def mean_over_processes(value: torch.Tensor) -> float:
    """The mean of a scalar tensor over all processes, as a Python float (a collective: every process must
    call it; one host sync)."""
    if not is_distributed():
        return float(value)
    total = value.detach().reshape(1).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total) / get_world_size()


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (a collective: every process must call it; one host sync)."""
    if not is_distributed():
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice.

    ``dist.all_gather`` is not differentiable, and the common "put my live tensor back in my slot"
    trick drops the gradient other ranks' losses send to my samples (they are their negatives).
    Summing over ranks in backward, with DDP averaging parameter gradients, gives exactly the
    gradient of the global-batch loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // dist.get_world_size()
        return grad[get_rank() * n:(get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order (rank 0 first), keeping gradients."""
    return _GatherWithGrad.apply(x) if get_world_size() > 1 else x


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from every rank, without gradients."""
    if get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffle a batch across processes (MoCo's shuffle BN): every process gets a random slice of the
    global batch. Returns the local slice and the permutation for ``batch_unshuffle``. One process: no-op
    (a permutation inside one BN batch changes nothing)."""
    if get_world_size() == 1:
        return x, None
    gathered = gather_no_grad(x)
    order = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(order, src=0)  # the same permutation everywhere
    n = x.shape[0]
    return gathered[order[get_rank() * n:(get_rank() + 1) * n]], order


@torch.no_grad()
def batch_unshuffle(y: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Undo ``batch_shuffle`` on the outputs: this process gets back the rows of its own inputs."""
    if order is None:
        return y
    gathered = gather_no_grad(y)
    restore = torch.argsort(order)
    n = y.shape[0]
    return gathered[restore[get_rank() * n:(get_rank() + 1) * n]]
