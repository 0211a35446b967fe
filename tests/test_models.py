"""Backbones and heads: feature sizes, the CIFAR stem, timm by name, clear errors."""
import pytest
import torch
from torch import nn

from cl_suite.models import CifarResNet, SmallConvNet, TimmBackbone, mlp


def test_cifar_resnet18_keeps_a_4x4_map_at_32px():
    net = CifarResNet(depth=18).eval()
    assert net.net.conv1.kernel_size == (3, 3) and net.net.conv1.stride == (1, 1)
    assert isinstance(net.net.maxpool, nn.Identity)
    maps = {}
    net.net.layer4.register_forward_hook(lambda m, i, o: maps.update(layer4=o.shape))  # returns None
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))  # a batch of one works (flatten, not squeeze)
    assert out.shape == (1, 512) and maps["layer4"][-2:] == (4, 4)


def test_cifar_resnet_rejects_unknown_depth():
    with pytest.raises(ValueError, match="backbone.depth=34"):
        CifarResNet(depth=34)


def test_timm_backbone_by_name_with_and_without_stem_surgery():
    net = TimmBackbone("test_resnet").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.num_features)
    stem = TimmBackbone("resnet18", cifar_stem=True)
    assert stem.num_features == 512 and isinstance(stem.net.maxpool, nn.Identity)
    with pytest.raises(ValueError, match="not a timm model"):
        TimmBackbone("no_such_model_xyz")
    with pytest.raises(FileNotFoundError, match="pretrained_file"):
        TimmBackbone("test_resnet", pretrained_file="/nonexistent/weights.pth")


def test_timm_backbone_loads_local_pretrained_weights(tmp_path):
    source = TimmBackbone("test_resnet")
    path = tmp_path / "weights.pth"
    torch.save(source.net.state_dict(), path)
    loaded = TimmBackbone("test_resnet", pretrained_file=str(path))
    for key, value in source.net.state_dict().items():
        assert torch.equal(value, loaded.net.state_dict()[key]), key


def test_small_convnet_and_mlp_shapes():
    net = SmallConvNet(widths=[4, 8, 16])
    assert net(torch.randn(3, 3, 16, 16)).shape == (3, 16) and net.num_features == 16
    with pytest.raises(ValueError, match="backbone.widths"):
        SmallConvNet(widths=[])
    head = mlp(16, [32], 8, last_batch_norm=True)
    assert head(torch.randn(4, 16)).shape == (4, 8) and isinstance(head[-1], nn.BatchNorm1d)
    assert isinstance(mlp(16, [], 8)[0], nn.Linear)


@pytest.mark.parametrize("key, value", [("pretrained", True),
                                        ("pretrained_cfg_overlay", {"url": "http://example.invalid/w.pth"}),
                                        ("checkpoint_path", "/etc/passwd")])
def test_timm_backbone_never_downloads_or_reads_weights_itself(key, value):
    """A run config (or a user) can pass timm any argument: the ones through which timm would fetch or read
    weights are refused; a local file goes through backbone.pretrained_file."""
    with pytest.raises(ValueError, match=f"backbone.{key}=.* weights are never downloaded"):
        TimmBackbone("test_resnet", **{key: value})
