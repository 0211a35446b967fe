"""`python -m cl_suite.export`: a run's encoder as a backbone-only file (state_dict, torchvision, timm),
loaded back with the documented one-liners into the same features; damaged files refused; evaluate.py
on an exported file gives the run's numbers."""
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from cl_suite.engine import checkpoint as ckpt
from cl_suite.engine.trainer import train
from cl_suite.export import ExportError, export_backbone, load_backbone, read_export, torchvision_resnet
from cl_suite.export.__main__ import main as export_main
from helpers import CONF, ROOT, TINY, compose_train, run_cli

NOT_BACKBONE = ("backbone.", "method.projector")  # TINY's small_convnet and projector sizes


def tiny_run(run_dir, *overrides, keep=()):
    """A real 2-step training run in process, with the .hydra/config.yaml that train.py's Hydra writes."""
    base = [o for o in TINY if not o.startswith(tuple(p for p in NOT_BACKBONE if p not in keep))]
    cfg = compose_train(base + ["trainer.max_steps=2", "trainer.eval_at_init=false", *overrides], run_dir)
    final = train(cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return final


def suite_backbone(run_dir):
    """The backbone of the run's last checkpoint as the suite builds it (what evaluate.py encodes with)."""
    from hydra.utils import instantiate

    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    backbone = instantiate(state["config"]["backbone"])
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")})
    return backbone.eval()


def images(size, n=4):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("small") / "run"
    return run_dir, tiny_run(run_dir, keep=NOT_BACKBONE)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """backbone=resnet18 (CIFAR stem) for 2 steps of 16 digits, at their native 8 px (the run's final evaluation
    and the tests' evaluations encode all 1,797 images: 4x cheaper than the data set's 16 px)."""
    run_dir = tmp_path_factory.mktemp("resnet") / "run"
    tiny_run(run_dir, "backbone=resnet18", "trainer.batch_size=16", "dataset.image_size=8", "dataset.augment.crop_size=8")
    return run_dir


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("timm") / "run"
    tiny_run(run_dir, "backbone=timm_test", "trainer.batch_size=16")
    return run_dir


def test_state_dict_export_round_trips_through_load_backbone(small_run, capsys):
    run_dir, _ = small_run
    assert export_main([str(run_dir)]) == 0
    out = run_dir / "backbone_state_dict.pt"
    assert f'load:  cl_suite.export.load_backbone("{out}")' in capsys.readouterr().out  # runs from here
    raw = torch.load(out, weights_only=True)  # plain tensors and python types only
    header = raw["header"]
    assert raw["format"] == "cl_suite.backbone" and set(raw["state_dict"]) == set(suite_backbone(run_dir).state_dict())
    assert header["backbone"] == {"_target_": "cl_suite.models.SmallConvNet", "widths": [8, 16]}
    assert header["source"]["step"] == 2 and header["dataset"]["name"] == "digits" and header["input"]["size"] == 16
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)[ckpt.CHECKSUM]["sha256"]
    assert header["source"]["sha256"] == saved
    assert (run_dir / "backbone_state_dict.json").is_file()

    backbone = load_backbone(out)
    assert type(backbone).__name__ == "SmallConvNet" and not backbone.training and backbone.num_features == 16
    x = images(16)
    torch.testing.assert_close(backbone(x), suite_backbone(run_dir)(x), rtol=0, atol=0)


def test_torchvision_export_loads_strictly_into_resnet18_with_the_documented_lines(resnet_run):
    out, header = export_backbone(resnet_run, "torchvision")
    assert out == resnet_run / "backbone_torchvision.pt" and "fc.weight" not in torch.load(out, weights_only=True)
    # The README's lines: the classifier replaced by the identity, the CIFAR stem.
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.fc = nn.Identity()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True))  # strict
    helper = torchvision_resnet(18, cifar_stem=True)
    helper.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x, expected = images(16), suite_backbone(resnet_run)(images(16))
    torch.testing.assert_close(model.eval()(x), expected)
    torch.testing.assert_close(helper.eval()(x), expected)
    assert header["load"].startswith("model = torchvision.models.resnet18(); model.fc = nn.Identity(); "
                                     "model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)")
    torch.testing.assert_close(load_backbone(out)(x), expected)  # with the .json beside it


def test_a_torchvision_resnet_exports_to_timms_resnet_with_the_same_features(resnet_run, tmp_path):
    import timm

    out, _ = export_backbone(resnet_run / "checkpoints" / "last.pt", "timm", out=tmp_path / "r18.pt")
    model = timm.create_model("resnet18", num_classes=0)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True))
    torch.testing.assert_close(model.eval()(images(16)), suite_backbone(resnet_run)(images(16)))


def test_timm_export_loads_strictly_into_create_model(timm_run):
    import timm

    out, header = export_backbone(timm_run, "timm")
    model = timm.create_model("test_resnet", num_classes=0)
    model.load_state_dict(torch.load(out, weights_only=True))
    torch.testing.assert_close(model.eval()(images(16)), suite_backbone(timm_run)(images(16)))
    assert header["load"].startswith('model = timm.create_model("test_resnet", num_classes=0)')


def test_formats_without_a_library_counterpart_are_refused_with_the_way_out(small_run, timm_run):
    with pytest.raises(ExportError, match="SmallConvNet is the suite's own network.*--format state_dict"):
        export_backbone(small_run[0], "torchvision")
    with pytest.raises(ExportError, match="'test_resnet' has no torchvision counterpart.*--format timm"):
        export_backbone(timm_run, "torchvision")
    with pytest.raises(ExportError, match="has no checkpoints/nope.pt; available: \\['best', 'last'"):
        export_backbone(small_run[0], checkpoint="nope")


def test_damaged_or_crafted_exports_are_refused_naming_the_file(small_run, resnet_run, tmp_path):
    out, _ = export_backbone(small_run[0], out=tmp_path / "b.pt")
    raw = torch.load(out, weights_only=True)
    first = next(iter(raw["state_dict"]))
    raw["state_dict"][first] = raw["state_dict"][first] + 1e-3  # a bit flip's worth, checksum kept
    flipped = tmp_path / "flipped.pt"
    torch.save(raw, flipped)
    with pytest.raises(ExportError, match=f"{flipped}.*is corrupted: its content does not match the checksum"):
        load_backbone(flipped)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(out.read_bytes()[:2000])
    with pytest.raises(ExportError, match=f"{truncated}.*cannot be read"):
        load_backbone(truncated)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "cl_suite.backbone", "x": Payload()}, crafted)
    with pytest.raises(ExportError, match=r"refused: its pickle holds more than tensors and plain data \(it names the "
                                          r"global print\)"):
        load_backbone(crafted)

    library, _ = export_backbone(resnet_run, "torchvision", out=tmp_path / "tv.pt")
    tensors = torch.load(library, weights_only=True)
    tensors["bn1.weight"][0] += 1.0
    torch.save(tensors, library)
    with pytest.raises(ExportError, match="tv.pt.*is corrupted: its tensors do not match the sha256 in tv.json"):
        load_backbone(library)
    (tmp_path / "tv.json").unlink()
    with pytest.raises(ExportError, match="without its header tv.json"):
        load_backbone(library)
    with pytest.raises(ExportError, match="is a training checkpoint, not an exported backbone"):
        read_export(small_run[0] / "checkpoints" / "last.pt")


def test_a_checkpoint_that_fails_its_checksum_is_not_exported(small_run, tmp_path, capsys):
    state = torch.load(small_run[0] / "checkpoints" / "last.pt", weights_only=True)
    key = next(k for k in state["method"] if k.startswith("backbone."))
    state["method"][key] = state["method"][key] * 1.001
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ckpt.CheckpointError, match="is corrupted: its content does not match"):
        export_backbone(bad, out=tmp_path / "out.pt")
    assert export_main([str(bad), "--out", str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint '{bad}' is corrupted") and "Traceback" not in err
    assert not (tmp_path / "out.pt").exists()


def evaluate(*overrides):
    from cl_suite.run_evaluation import evaluate_run

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="evaluate", overrides=["protocol=[knn,linear]", "wandb=false",
                                                         "evaluation.linear.epochs=5", *overrides])
    return evaluate_run(cfg)


def test_evaluate_on_an_exported_file_gives_the_runs_numbers(small_run, resnet_run, tmp_path):
    run_dir, final = small_run
    from_run = evaluate(f"run={run_dir}")["metrics"]
    assert math.isclose(from_run["knn/top1"], final["knn/top1"], abs_tol=1e-6)
    out, _ = export_backbone(run_dir, out=tmp_path / "encoder.pt")
    result = evaluate(f"checkpoint={out}")
    assert result["step"] == 2 and result["checkpoint"] == str(out)
    for key in ("knn/top1", "knn/top5", "linear/top1"):
        assert math.isclose(result["metrics"][key], from_run[key], abs_tol=1e-6), key
    assert "online_probe/test_top1" not in result["metrics"]  # the probe is not part of an export
    assert (tmp_path / "encoder.eval.json").is_file()
    # dataset= replaces the header's data set (here by the same one, composed on this machine).
    assert evaluate(f"checkpoint={out}", "dataset=digits", "protocol=knn")["metrics"]["knn/top1"] == result[
        "metrics"]["knn/top1"]
    # The torchvision format (header in the .json beside it) evaluates like its run.
    tv, _ = export_backbone(resnet_run, "torchvision", out=tmp_path / "tv.pt")
    run_knn = evaluate(f"run={resnet_run}", "protocol=knn")["metrics"]["knn/top1"]
    assert math.isclose(evaluate(f"checkpoint={tv}", "protocol=knn")["metrics"]["knn/top1"], run_knn, abs_tol=1e-6)


def test_evaluate_refuses_mixed_up_arguments_and_untrusted_headers(small_run, tmp_path):
    from cl_suite.engine.validation import ConfigError

    run_dir, _ = small_run
    # In a folder whose name Hydra would read as a sweep (the comma) and the shell would split (the space):
    # the command the error suggests is pasted as printed.
    out, _ = export_backbone(run_dir, out=tmp_path / "my exports, v1" / "encoder.pt")
    with pytest.raises(ConfigError, match="is an exported backbone, not a training checkpoint: evaluate it without "
                                          "run=") as refused:
        evaluate(f"run={run_dir}", f"'checkpoint=\"{out}\"'"[1:-1])
    suggested = shlex.split(str(refused.value).rpartition(": ")[2])
    assert suggested[:2] == ["python", "evaluate.py"] and len(suggested) == 3
    assert evaluate("protocol=knn", suggested[2])["metrics"]["knn/top1"] > 0.2
    with pytest.raises(ConfigError, match="dataset= is for an exported backbone file"):
        evaluate(f"run={run_dir}", "dataset=digits")
    with pytest.raises(ConfigError, match="checkpoint='last' without run=: expected an exported backbone file"):
        evaluate()
    # A header is untrusted like a run config: a foreign dataset reader is refused before anything runs.
    raw = torch.load(out, weights_only=True)
    raw.pop(ckpt.CHECKSUM)
    raw["header"]["dataset"]["_target_"] = "os.system"
    ckpt.save_checkpoint(tmp_path / "evil.pt", raw)  # a valid checksum: only the target check stands
    with pytest.raises(ConfigError, match="dataset._target_: 'os.system' is not one of the suite's own targets"):
        evaluate(f"checkpoint={tmp_path / 'evil.pt'}")
    raw["header"]["backbone"] = {"_target_": "cl_suite.models.TimmBackbone", "name": "resnet18",
                                 "checkpoint_path": "/etc/passwd"}
    ckpt.save_checkpoint(tmp_path / "weights.pt", raw)
    with pytest.raises(ExportError, match=r"backbone settings \['checkpoint_path'\] would read or download"):
        load_backbone(tmp_path / "weights.pt")


def test_methods_whose_encoder_is_more_than_the_backbone_are_not_exported(small_run, tmp_path):
    """CMC evaluates two encoders on the L and ab channels: its backbone alone is not its encoder."""
    state = ckpt.load_checkpoint(small_run[0] / "checkpoints" / "last.pt")
    state["config"]["method"]["_target_"] = "cl_suite.methods.CMC"
    ckpt.save_checkpoint(tmp_path / "cmc.pt", state)
    with pytest.raises(ExportError, match="method CMC does not evaluate the backbone's features alone"):
        export_backbone(tmp_path / "cmc.pt")


@pytest.mark.slow
def test_export_and_evaluate_command_lines(small_run, tmp_path):
    run_dir, _ = small_run
    out = tmp_path / "cli" / "encoder.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "cl_suite.export", str(run_dir), "--out", str(out)], cwd=tmp_path,
                          env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and str(out) in proc.stdout
    proc = run_cli("evaluate.py", [f"checkpoint={out}", "protocol=knn"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "knn/top1" in proc.stdout and (out.parent / "encoder.eval.json").is_file()
    proc = run_cli("evaluate.py", ["protocol=knn"], timeout=300, env={"HYDRA_FULL_ERROR": ""})  # a user's shell
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: checkpoint='last' without run=" in proc.stderr
