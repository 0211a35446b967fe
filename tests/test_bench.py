"""Every benchmark script still runs (the slow tier): bench/ is not imported by the suite, so an API change
would otherwise break a script unnoticed until someone needs its numbers. Smallest sizes; the numbers
themselves are not checked (benchmarks are not tests). bench/gpu_check.sh has its own dry run
(tests/test_gpu_check.py)."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SMALLEST = {
    "augment_throughput.py": ["--images", "64", "--pil-images", "8", "--batch", "32", "--repeats", "1",
                              "--workers", "0"],
    # one layout without a process group, one DDP layout (gloo): each is a torchrun launch of its own
    "ddp_scaling.py": ["--layouts", "1x1", "2x1", "--batch", "16", "--iters", "1", "--warmup", "1"],
    "diagnostics_cost.py": ["--batches", "64", "--iters", "2", "--rounds", "1"],
    "framework_cost.py": ["--methods", "simclr", "moco", "--iters", "1", "--rounds", "1"],
    "hcl_estimator.py": ["--anchors", "16", "--candidates", "30", "--iters", "1", "--rounds", "1"],
    "precision.py": ["--batch", "8", "--iters", "1", "--warmup", "1", "--rounds", "1"],
    "ring_fidelity.py": [],
    "sampler_cost.py": ["--iters", "1", "--rounds", "1"],  # batch 128: MoCHi's n_hard=128 needs the candidates
    "startup.py": ["--pairs", "1"],
    "step_overhead.py": ["--runs", "small_convnet:32", "resnet18:4", "--iters", "1", "--warmup", "1"],
}
MODULES = {"common.py", "tables.py"}  # imported by the scripts, not run
# Run at tiny sizes by the GPU check's dry run (stage costs, tests/test_gpu_check.py), so not again here.
IN_GPU_CHECK_DRY_RUN = {"framework_cost.py", "hcl_estimator.py", "sampler_cost.py"}


def test_every_bench_script_is_listed():
    assert {p.name for p in (ROOT / "bench").glob("*.py")} == set(SMALLEST) | MODULES


def test_the_scripts_left_to_the_gpu_check_dry_run_are_run_there():
    sys.path.insert(0, str(ROOT / "bench" / "gpu_check"))
    try:
        import costs
    finally:
        sys.path.remove(str(ROOT / "bench" / "gpu_check"))
    assert {f"bench/{name}" for name in IN_GPU_CHECK_DRY_RUN} <= set(costs.SCRIPTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(set(SMALLEST) - IN_GPU_CHECK_DRY_RUN))
def test_bench_script_runs_at_its_smallest_size(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *SMALLEST[script]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|" in proc.stdout  # a table was printed


def test_the_peers_loader_is_timed_from_its_second_round_and_within_one_epoch():
    """bench/gpu_check/throughput.py: the workers' first batches, made at once at start-up, are taken
    untimed (a window starting earlier counted up to that many ready batches as free), and a
    window longer than one epoch of the persistent iterator is refused before it is started."""
    import argparse

    sys.path.insert(0, str(ROOT / "bench" / "gpu_check"))
    try:
        import throughput
    finally:
        sys.path.remove(str(ROOT / "bench" / "gpu_check"))
    args = argparse.Namespace(workers=16, batch=512, peer_warmup=None, peer_steps=None)
    assert throughput.peer_window(args, batches_per_epoch=50_000 // 512) == (16, 32)
    with pytest.raises(SystemExit, match="need 82 batches of 512, more than the 60 of one epoch"):
        throughput.peer_window(args, batches_per_epoch=60)
    assert throughput.peer_window(argparse.Namespace(workers=2, batch=16, peer_warmup=1, peer_steps=2), 12) == (1, 2)
