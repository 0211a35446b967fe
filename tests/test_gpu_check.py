"""Checks for a GPU machine (``bench/gpu_check.sh``, stage ``correctness``) and the tests that keep
that script and the GPU image's situation (no wandb installed) working on the CPU.

The CUDA checks skip without CUDA. ``GPU_CHECK_ON_CPU=1`` (set by the script's dry run) runs them on the
CPU instead, with what the CPU cannot do (fp16 autocast, inductor) skipped or replaced: the dry run
exercises the same code paths, so the script cannot rot between GPU runs.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from cl_suite.distributed import resolve_device
from cl_suite.engine.trainer import Trainer, step_seed, train
from cl_suite.engine.validation import validate_train_config
from helpers import ROOT, SAMPLERLESS_METHODS, TINY, compose_train, group_options, tiny_overrides, valid_pair

ON_CUDA = torch.cuda.is_available()
ON_CPU_FORCED = os.environ.get("GPU_CHECK_ON_CPU", "0") == "1"
needs_cuda = pytest.mark.skipif(not (ON_CUDA or ON_CPU_FORCED),
                                reason="needs CUDA (GPU_CHECK_ON_CPU=1 runs it on the CPU, as the dry run does)")
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")


def _trainer(overrides: list[str], run_dir: Path, method: str = "simclr") -> Trainer:
    cfg = compose_train(tiny_overrides(method) + ["trainer.eval_at_init=false", "resume=null", *overrides], run_dir)
    validate_train_config(cfg)
    return Trainer(cfg, resolve_device(cfg.trainer.device))


def _steps(trainer: Trainer, n: int) -> torch.Tensor:
    """``n`` training steps as ``train_epoch`` takes them (same seeds, same batches); their fp32 losses."""
    generator = torch.Generator(device=trainer.device)
    losses = []
    for _, batch in zip(range(n), trainer.batches.epoch(0)):
        generator.manual_seed(step_seed(trainer.cfg.seed, trainer.step, 0))
        trainer.method.set_progress(trainer.step, trainer.steps_per_epoch)
        out, _ = trainer.train_step(batch, generator)
        assert out.loss.dtype == torch.float32  # losses stay fp32 under autocast
        losses.append(out.loss.detach())
    return torch.stack(losses).cpu()


# ------------------------------------------------------------------------------------------------
# Host syncs in the steady-state loop (first: the cheapest and most informative check)
# ------------------------------------------------------------------------------------------------

SYNC_WARMUP, SYNC_STEPS = 5, 20


def _in_checkout(filename: str) -> bool:
    path = str(Path(filename).resolve())
    return path.startswith(str(ROOT) + os.sep) and "site-packages" not in path


class SyncCapture:
    """``torch.cuda.set_sync_debug_mode("warn")`` between ``start`` and ``stop``; every synchronising call
    is recorded with the Python stack it came from (the warning hook runs inside the offending call)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, list[traceback.FrameSummary]]] = []
        self._catcher = None

    def start(self) -> None:
        if ON_CUDA:
            torch.cuda.synchronize()
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show  # restored by the catcher's __exit__
        if ON_CUDA:
            torch.cuda.set_sync_debug_mode("warn")

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" in str(message):
            self.records.append((str(message).splitlines()[0], traceback.extract_stack()[:-1]))

    def stop(self) -> None:
        if self._catcher is None:
            return
        if ON_CUDA:
            torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(None, None, None)
        self._catcher = None

    def sites(self) -> dict[tuple[str, str, str], int]:
        """(innermost project line 'file:line', its code, the project lines that called it) -> count;
        project = this checkout, not torch or other installed packages."""
        counts: dict[tuple[str, str, str], int] = {}
        for _, stack in self.records:
            own = [f for f in stack if _in_checkout(f.filename)]
            if not own:
                key = (f"{stack[-1].filename}:{stack[-1].lineno}", (stack[-1].line or "").strip(), "")
            else:
                def where(f):
                    return f"{Path(f.filename).resolve().relative_to(ROOT)}:{f.lineno}"

                callers = " < ".join(where(f) for f in reversed(own[-3:-1]))
                key = (where(own[-1]), (own[-1].line or "").strip(), callers)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def report(self, title: str) -> str:
        lines = [f"### {title}", ""]
        sites = self.sites()
        if not ON_CUDA:
            lines.append("(CPU: there are no CUDA host syncs to list; the window ran without the sync debug mode.)")
        elif not sites:
            lines.append("No host sync in the window.")
        else:
            lines += [f"{len(self.records)} warnings ({self.records[0][0][:100]}) at {len(sites)} source lines:", "",
                      "| syncs | source line | code | called from |", "|---:|---|---|---|"]
            for (where, code, callers), n in sorted(sites.items(), key=lambda kv: (-kv[1], kv[0][0])):
                lines.append(f"| {n} | `{where}` | `{code.replace('|', '/')[:90]}` | {callers} |")
        return "\n".join(lines) + "\n"


def test_sync_capture_lists_a_warning_by_its_source_line():
    """The capture's own logic on any machine: a sync-debug-style warning, its line, count and callers."""
    capture = SyncCapture()
    capture.start()
    try:
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)  # the sync debug mode's text
        warnings.warn("an unrelated warning", UserWarning)
    finally:
        capture.stop()
    ((where, code, callers), count), = capture.sites().items()
    assert where.startswith("tests/test_gpu_check.py:") and "warnings.warn" in code and count == 2
    assert len(capture.records) == 2 and warnings.showwarning is not capture._show


@needs_cuda
def test_sync_capture_names_the_source_line():
    capture = SyncCapture()
    capture.start()
    try:
        value = torch.ones(3, device="cuda" if ON_CUDA else "cpu").sum().item()  # one deliberate host sync
    finally:
        capture.stop()
    assert value == 3.0
    if ON_CUDA:
        ((where, code, _),) = capture.sites()
        assert where.startswith("tests/test_gpu_check.py:") and ".item()" in code


@needs_cuda
@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_steady_state_host_syncs_are_listed(tmp_path, method):
    """SYNC_STEPS whole loop iterations (``train_epoch``: batch, augmentation, step, loss/probe/diagnostic
    accumulation, the log step every ``trainer.log_every_steps``) after SYNC_WARMUP, under the sync debug
    mode; the list goes to ``$GPU_CHECK_SYNC_REPORT`` (the correctness stage prints it)."""
    trainer = _trainer([f"method={method}", "trainer.batch_size=32",
                        f"trainer.max_steps={SYNC_WARMUP + SYNC_STEPS + 1}"], tmp_path, method)
    assert trainer.steps_per_epoch > SYNC_WARMUP + SYNC_STEPS  # the window ends before the end-of-epoch record
    capture, real_step, calls = SyncCapture(), trainer.train_step, []

    def step(batch, generator):
        if len(calls) == SYNC_WARMUP:
            capture.start()
        if len(calls) == SYNC_WARMUP + SYNC_STEPS:
            capture.stop()
        calls.append(1)
        return real_step(batch, generator)

    trainer.train_step = step
    try:
        trainer.train_epoch(0)
    finally:
        capture.stop()
    assert len(calls) == SYNC_WARMUP + SYNC_STEPS + 1
    log_every = trainer.cfg.trainer.log_every_steps
    report = capture.report(f"{method}: host syncs in {SYNC_STEPS} loop iterations after {SYNC_WARMUP} warm-up "
                            f"(trainer.log_every_steps={log_every}: {SYNC_STEPS // log_every} log steps in the window)")
    print(report)
    if os.environ.get("GPU_CHECK_SYNC_REPORT"):
        with open(os.environ["GPU_CHECK_SYNC_REPORT"], "a") as f:
            f.write(report + "\n")
    # Every sync is attributed to a line of this checkout (the loop, a method, a sampler): the list is usable.
    assert all(not where.startswith("/") for where, _, _ in capture.sites())


# ------------------------------------------------------------------------------------------------
# Precision and memory format (compile: after the per-method runs, below)
# ------------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=cuda_only)])
def test_mixed_precision_steps_train_close_to_fp32(tmp_path, precision):
    reference = _trainer(["trainer.precision=fp32"], tmp_path / "fp32")
    trainer = _trainer([f"trainer.precision={precision}"], tmp_path / precision)
    before = [p.detach().clone() for p in trainer.method.parameters()]
    losses, fp32_losses = _steps(trainer, 3), _steps(reference, 1)
    assert torch.isfinite(losses).all()
    # Same initial weights and views: the first loss differs by the low-precision rounding only.
    assert abs(losses[0] - fp32_losses[0]) / fp32_losses[0] < 0.05, (losses, fp32_losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.parameters()))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    if precision == "fp16":  # the GradScaler ran: a finite, positive scale and no skipped update left behind
        assert 0 < trainer.scaler.get_scale() < math.inf


@needs_cuda
def test_channels_last_steps_match_nchw(tmp_path):
    nhwc = _trainer(["trainer.channels_last=true"], tmp_path / "nhwc")
    nchw = _trainer(["trainer.channels_last=false"], tmp_path / "nchw")
    conv = next(m for m in nhwc.method.backbone.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_steps(nhwc, 3), _steps(nchw, 3), rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Every method, with its own sampler and with ring and mixing, through the real train() path
# ------------------------------------------------------------------------------------------------

# What a preset needs on digits at TINY's batch 64 (B-1 = 63 candidates for NNCLR/KMCLR).
METHOD_EXTRA = {"nnclr": ["method.support_set_size=256"]}


def _method_cases() -> list:
    cases = []
    for method in group_options("method"):
        cases.append(pytest.param(method, None, id=f"preset_{method}"))
        for sampler in ("ring", "mixing"):
            if method not in SAMPLERLESS_METHODS and valid_pair(method, sampler):
                cases.append(pytest.param(method, sampler, id=f"{method}_with_{sampler}"))
    return cases


@needs_cuda
@pytest.mark.parametrize(("method", "sampler"), _method_cases())
def test_every_method_two_steps(tmp_path, method, sampler):
    overrides = [f"method={method}", *METHOD_EXTRA.get(method, [])]
    if sampler:
        overrides.append(f"sampler={sampler}")
    if sampler == "mixing" and method in ("nnclr", "kmclr"):
        overrides.append("sampler.n_hard=32")
    cfg = compose_train(tiny_overrides(method) + overrides + [
        "trainer.max_steps=2", "trainer.eval_at_init=false", "evaluation.linear.epochs=1", "resume=null"], tmp_path)
    final = train(cfg)
    record = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    assert final["step"] == 2 and math.isfinite(record["train/epoch_loss"])
    assert 0 <= final["knn/top1"] <= 100


@needs_cuda
def test_compiled_steps_match_eager(tmp_path, monkeypatch):
    eager = _trainer([], tmp_path / "eager")
    if not ON_CUDA:  # dry run on the CPU: trace with dynamo, skip inductor's minutes of C++ compilation
        real_compile = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, *args, mode=None, **kw: real_compile(fn, backend="eager"))
    compiled = _trainer(["trainer.compile=true"], tmp_path / "compiled")
    torch.testing.assert_close(_steps(compiled, 3), _steps(eager, 3), rtol=1e-2, atol=1e-3)  # last of the CUDA checks: inductor's compilation is the slowest


# ------------------------------------------------------------------------------------------------
# The GPU image's situation and the script itself, on the CPU
# ------------------------------------------------------------------------------------------------

NO_WANDB = textwrap.dedent("""
    import importlib, pkgutil, runpy, sys
    sys.modules["wandb"] = None  # `import wandb` raises ImportError, as on the GPU image (not installed)
    import cl_suite
    failed = []
    for info in pkgutil.walk_packages(cl_suite.__path__, "cl_suite."):
        if info.name == "cl_suite.report.__main__":
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as err:
            failed.append(f"{info.name}: {err}")
    if failed:
        sys.exit("modules that need wandb at import: " + "; ".join(failed))
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
""")


def child_pythonpath(*first: str) -> str:
    """PYTHONPATH of a child Python: ``first``, then this process's PYTHONPATH. On the GPU image hydra-core
    and omegaconf are importable only from the wheels' folder that bench/gpu_check.sh puts on PYTHONPATH,
    so a child given a PYTHONPATH of its own without it cannot import them."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*first, *inherited])


def test_child_pythonpath_keeps_the_wheels_folder(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", str(ROOT / "src")]))
    assert child_pythonpath(str(ROOT / "src")).split(os.pathsep) == [str(ROOT / "src"), "/tmp/site", str(ROOT / "src")]
    monkeypatch.delenv("PYTHONPATH")
    assert child_pythonpath("a") == "a"


@pytest.mark.slow
def test_imports_and_trains_without_wandb(tmp_path):
    args = TINY + ["trainer.max_steps=3", "trainer.eval_at_init=false", "evaluation.linear.epochs=1",
                   f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": child_pythonpath(str(ROOT / "src"))}
    proc = subprocess.run([sys.executable, "-c", NO_WANDB, *args], cwd=ROOT, env=env, timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["step"] == 3


@pytest.mark.parametrize("workers", ["0", "2"])
def test_pytest_stream_logs_each_test_once(tmp_path, workers):
    """The correctness stage's pytest runs under pytest-xdist (pyproject's addopts: -n auto; the GPU image
    has it): each finished test is one line of the stage's log, not one from the worker and one from the
    controller (which doubled every count of the stage's table). Started as from a test in an xdist
    worker (the correctness stage's own pytest), whose environment marks the worker."""
    (tmp_path / "test_two.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    log = tmp_path / "pytest.jsonl"
    env = {**os.environ, "GPU_CHECK_PYTEST_LOG": str(log), "PYTHONPATH": child_pythonpath(str(ROOT / "bench" / "gpu_check")),
           "PYTEST_XDIST_WORKER": "gw0"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_stream",
                           "-n", workers, "test_two.py"], cwd=tmp_path, env=env, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tests = sorted(json.loads(line)["test"] for line in log.read_text().splitlines())
    assert tests == ["test_two.py::test_a", "test_two.py::test_b"]


DRY_STAGES = {"data", "correctness", "throughput", "costs", "study"}


@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_stage_ok(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(out), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script sets its own (the wheels' folder and src)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=env, timeout=1500,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = (out / "summary.md").read_text()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| stage")]
    status = {row[0]: row[1] for row in rows}
    assert set(status) == DRY_STAGES and set(status.values()) == {"ok"}, summary
    assert proc.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the table is printed last
    tables = (out / "tables.md").read_text()
    assert "## Throughput" in tables and "## Study" in tables and "test_every_method_two_steps" in tables
    assert len(list(out.rglob("*"))) <= 8
