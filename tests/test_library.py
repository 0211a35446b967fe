"""The suite used as a library: the losses in one's own loop, the tested README example, and a
non-editable install that still trains (its configs ship as package data)."""
import importlib.util
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cl_suite.losses import ContrastiveLoss
from cl_suite.samplers import DebiasedSampler, UniformSampler
from helpers import ROOT


def nt_xent_by_cross_entropy(z1, z2, t):
    """NT-Xent the way most code writes it: cross-entropy over the 2B - 1 other views, target the partner."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, b = len(z), len(z1)
    logits = (z @ z.T / t).masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, (torch.arange(n) + b) % n)


def dcl_by_its_equation(z1, z2, t, tau_plus):
    """DCL (Chuang et al. 2020, eq. 6 with the N e^{-1/t} floor of its code), N = 2B - 2 negatives."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = torch.exp(z[i] @ z[(i + b) % n] / t)
        neg = sum(torch.exp(z[i] @ z[k] / t) for k in range(n) if k not in (i, (i + b) % n))
        count = n - 2
        ng = torch.clamp((neg - tau_plus * count * pos) / (1 - tau_plus), min=count * math.exp(-1 / t))
        total = total - torch.log(pos / (pos + ng))
    return total / n


@pytest.mark.parametrize("make, reference", [
    (lambda: ContrastiveLoss(UniformSampler(), temperature=0.2), lambda a, b: nt_xent_by_cross_entropy(a, b, 0.2)),
    (lambda: ContrastiveLoss(DebiasedSampler(tau_plus=0.1), temperature=0.5),
     lambda a, b: dcl_by_its_equation(a, b, 0.5, 0.1)),
])
def test_contrastive_loss_matches_the_equations_values_and_gradients(make, reference):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    loss = make()(z1, z2)
    grads = torch.autograd.grad(loss, (z1, z2))
    a, b = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    expected = reference(a, b)
    expected_grads = torch.autograd.grad(expected, (a, b))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-6)


def test_contrastive_loss_refuses_mismatched_views_and_keeps_diagnostics_on_request():
    with pytest.raises(ValueError, match=r"z1 and z2 must be \(B, D\) of the same shape"):
        ContrastiveLoss()(torch.randn(4, 3), torch.randn(5, 3))
    criterion = ContrastiveLoss(diagnostics=True)
    criterion(torch.randn(4, 3), torch.randn(4, 3), labels=torch.arange(4))
    assert "negatives/effective" in criterion.last_stats and ContrastiveLoss().sampler.record_diagnostics is False


def test_the_readme_library_example_trains():
    spec = importlib.util.spec_from_file_location("own_training_loop", ROOT / "examples" / "own_training_loop.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    losses = example.main(steps=40, batch_size=64)
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-10:]) < sum(losses[:10])  # the encoder learns


@pytest.mark.slow
def test_a_non_editable_install_trains_from_its_packaged_configs(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, timeout=600, capture_output=True)
    assert (target / "cl_suite" / "conf" / "train.yaml").is_file()
    assert (target / "cl_suite" / "conf" / "method" / "simclr.yaml").is_file()
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    # From a folder outside any checkout: nothing but the installed package to find configs in.
    proc = subprocess.run([sys.executable, "-m", "cl_suite.train", "debug=fast", "method=dcl",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(target) in subprocess.run([sys.executable, "-c", "import cl_suite; print(cl_suite.__file__)"],
                                         cwd=tmp_path, env=env, capture_output=True, text=True,
                                         timeout=300).stdout
    assert (run_dir / "metrics.json").is_file() and "kNN" in proc.stdout


def test_an_option_that_needs_a_missing_hydra_plugin_names_what_to_install(monkeypatch):
    import importlib.util

    from cl_suite import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_optuna") else real(name, *a))
    hint = cli.missing_plugin(["-m", "method=hcl", "hydra/sweeper=tau_plus_beta"])
    assert hint == ("error: hydra/sweeper=tau_plus_beta needs the Hydra plugin hydra_plugins.hydra_optuna_sweeper, "
                    'which is not installed: pip install -e ".[optuna]"')
    assert cli.missing_plugin(["method=hcl", "hydra/launcher=local"]) is None  # submitit: a dev dependency


def test_a_logger_setting_in_a_debug_run_says_to_choose_the_logger_too():
    from cl_suite import cli

    hint = cli.logger_setting_under_debug(["debug=fast", "logger.mode=offline"])
    assert hint == ("error: logger.mode=offline sets the logger, but debug=fast turns the experiment logger off "
                    "(logger=none, which has no settings). To log the debug run, choose the logger too (wandb has "
                    "it): debug=fast logger=wandb logger.mode=offline")
    assert cli.logger_setting_under_debug(["debug=fast", "logger.filename=m.csv"]).endswith(
        "(csv has it): debug=fast logger=csv logger.filename=m.csv")
    assert cli.logger_setting_under_debug(["debug=fast", "logger.group=g"]).endswith(
        "(many, wandb have it): debug=fast logger=<option> logger.group=g")
    assert cli.logger_setting_under_debug(["debug=fast", "logger=wandb", "logger.mode=offline"]) is None
    assert cli.logger_setting_under_debug(["logger.mode=offline"]) is None  # no debug mode: wandb is the default
    assert cli.logger_setting_under_debug(["debug=null", "logger.mode=offline"]) is None
    assert cli.logger_setting_under_debug(["+debug=overfit", "++logger.project=x"]).startswith("error: ++logger.project=x")


def test_a_launcher_needs_a_multirun_and_slurm_needs_a_cluster(monkeypatch):
    import shutil

    from cl_suite import cli

    hint = cli.launcher_without_its_setting(["hydra/launcher=local", "seed=0"])
    assert hint.startswith("error: hydra/launcher=local launches the jobs of a multirun only") and "-m" in hint
    assert cli.launcher_without_its_setting(["-m", "hydra/launcher=local", "seed=0,1"]) is None
    assert cli.launcher_without_its_setting(["hydra.mode=MULTIRUN", "hydra/launcher=local"]) is None
    assert cli.launcher_without_its_setting(["seed=0"]) is None
    assert cli.launcher_without_its_setting(["--cfg", "hydra", "hydra/launcher=slurm"]) is None  # nothing runs
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    hint = cli.launcher_without_its_setting(["--multirun", "hydra/launcher=slurm"])
    assert "no srun on PATH" in hint and "hydra/launcher=local" in hint
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    assert cli.launcher_without_its_setting(["--multirun", "hydra/launcher=slurm"]) is None


def test_the_entry_points_refuse_those_command_lines_before_composing(tmp_path):
    for script, args, expected in [
        ("train.py", ["debug=fast", "logger.mode=offline"], "choose the logger too"),
        ("train.py", ["hydra/launcher=local"], "launches the jobs of a multirun only"),
        ("evaluate.py", ["run=x", "hydra/launcher=local"], "python evaluate.py -m hydra/launcher=local"),
    ]:
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 1 and expected in proc.stderr, (script, args, proc.stderr[-2000:])
        assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run folder
