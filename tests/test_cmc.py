"""CMC: the Lab conversion against reference colours, the cross-view banks, the concatenated features."""
import numpy as np
import pytest
import torch

from cl_suite.methods import CMC
from cl_suite.methods.cmc import rgb_to_lab
from cl_suite.models import SmallConvNet
from cl_suite.samplers import UniformSampler
from helpers import RecordingSampler


@pytest.mark.parametrize("rgb, lab", [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)), ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)), ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),
])
def test_rgb_to_lab_matches_reference_colours(rgb, lab):
    got = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(got, torch.tensor(lab), atol=0.02, rtol=0)


def skimage_rgb2lab(rgb):
    """A transcription of scikit-image's ``color.rgb2lab`` (what the CMC code calls) in float64: sRGB
    linearised, ``xyz_from_rgb``, divided by ``illuminants["D65"]["2"]``, then ``xyz2lab``."""
    rgb = torch.as_tensor(rgb, dtype=torch.float64)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz_from_rgb = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                                 [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
    xyz = (xyz_from_rgb @ linear) / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
    f = torch.where(xyz > 0.008856, xyz ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_rgb_to_lab_is_skimages_rgb2lab_white_point_included():
    colours = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    colours[0] = 1.0  # white: a = -0.0025 with skimage's white point, 0 with the matrix's own
    got = rgb_to_lab(colours.view(50, 3, 1, 1)).view(50, 3).double()
    expected = torch.stack([skimage_rgb2lab(c) for c in colours])
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
    assert got[0, 1] == pytest.approx(-0.0025, abs=2e-4)


def test_the_encoders_see_cmcs_normalised_lab_of_the_images_rgb():
    # The first view arrives normalised with the data set's mean/std: undone to RGB in [0, 1], then
    # rgb2lab and CMC's Normalize (train_CMC.py: mean (50, 6.025, -6.6895), std (50, 92.208, 101.1675)),
    # L to the L stem, ab to the ab stem (models/resnet.py: torch.split(x, [1, 2], dim=1)).
    torch.manual_seed(0)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    method = CMC(SmallConvNet(widths=[4]), UniformSampler(), num_samples=8, mean=mean, std=std, projector_dim=6)
    rgb = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    images = ((rgb - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1))
              / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)).float()
    seen = {}
    method.l_stem.register_forward_hook(lambda m, args, out: seen.update(l=args[0]))
    method.ab_stem.register_forward_hook(lambda m, args, out: seen.update(ab=args[0]))
    method.encode(images)
    lab = torch.empty_like(rgb)
    for n, i, j in np.ndindex(2, 4, 4):
        lab[n, :, i, j] = skimage_rgb2lab(rgb[n, :, i, j])
    cmc_mean = torch.tensor([(0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2], dtype=torch.float64)
    cmc_std = torch.tensor([(100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2], dtype=torch.float64)
    expected = (lab - cmc_mean.view(1, 3, 1, 1)) / cmc_std.view(1, 3, 1, 1)
    torch.testing.assert_close(seen["l"].double(), expected[:, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(seen["ab"].double(), expected[:, 1:], atol=1e-5, rtol=0)


def make(num_samples=8, **kwargs):
    torch.manual_seed(0)
    return CMC(SmallConvNet(widths=[4]), RecordingSampler(), num_samples=num_samples, mean=[0.5] * 3,
               std=[0.25] * 3, projector_dim=6, **kwargs)


def test_cross_view_loss_uses_the_other_views_bank_and_masks_the_own_rows():
    method = make(num_samples=8, num_negatives=100)
    indices = torch.tensor([0, 3, 5])
    x = torch.randn(3, 3, 8, 8)
    out = method((x, x), torch.tensor([1, 2, 3]), indices)
    seen = method.sampler.seen  # the last call: ab anchors against the L bank
    rows = method.bank_l.embeddings
    assert torch.equal(seen["positives"], rows[indices])
    own = (seen["candidates"][None] == rows[indices][:, None]).all(dim=-1)
    assert own.any(dim=1).all() and not (own & seen["mask"]).any()
    assert out.features.shape == (3, method.num_features) == (3, 8)
    assert method.encode(x).shape == (3, 8)


def test_both_banks_move_after_the_step():
    method = make(num_samples=6, bank_momentum=0.0)
    indices = torch.tensor([1, 2])
    x = torch.randn(2, 3, 8, 8)
    before_l, before_ab = method.bank_l.embeddings.clone(), method.bank_ab.embeddings.clone()
    out = method((x, x), torch.tensor([4, 5]), indices)
    method.after_step(out.memory, 0, 1)
    assert not torch.equal(method.bank_l.embeddings[indices], before_l[indices])
    assert not torch.equal(method.bank_ab.embeddings[indices], before_ab[indices])
    assert torch.equal(method.bank_l.embeddings[[0, 3, 4, 5]], before_l[[0, 3, 4, 5]])
    assert method.bank_l.labels[indices].tolist() == [4, 5] == method.bank_ab.labels[indices].tolist()


def test_softmax_loss_is_the_sum_of_both_directions_against_the_other_views_bank():
    """CMC's two-way loss (Tian et al. 2020; its code: ``loss = l_loss + ab_loss``): L anchors against the ab
    bank plus ab anchors against the L bank, each InfoNCE over the drawn rows with the own row masked,
    in a float64 loop; the gradient into each encoder's projector included."""
    torch.manual_seed(0)
    method = CMC(SmallConvNet(widths=[4]), UniformSampler(), num_samples=8, mean=[0.5] * 3, std=[0.25] * 3,
                 projector_dim=6, num_negatives=20, temperature=0.3)
    with torch.no_grad():  # banks that differ from each other, so that the wrong bank would show
        method.bank_ab.embeddings.copy_(torch.nn.functional.normalize(torch.randn(8, 6), dim=1))
    indices = torch.tensor([0, 3, 5])
    x = torch.randn(3, 3, 8, 8)
    torch.manual_seed(4)
    out = method((x, x), torch.tensor([1, 2, 3]), indices)
    params = (method.l_projector[0].weight, method.ab_projector[0].weight)
    grads = torch.autograd.grad(out.loss, params)
    torch.manual_seed(4)
    drawn = method.bank_l.draw(20, x.device)  # the same draw again

    h_l, h_ab = method._lab_features(x)
    z_l = torch.nn.functional.normalize(method.l_projector(h_l).double(), dim=1)
    z_ab = torch.nn.functional.normalize(method.ab_projector(h_ab).double(), dim=1)

    def direction(anchors, bank):
        total = 0.0
        for i, own in enumerate(indices.tolist()):
            pos = torch.exp(anchors[i] @ bank[own] / 0.3)
            neg = sum(torch.exp(anchors[i] @ bank[j] / 0.3) for j in drawn.tolist() if j != own)
            total = total - torch.log(pos / (pos + neg))
        return total / len(indices)

    expected = (direction(z_l, method.bank_ab.embeddings.double())
                + direction(z_ab, method.bank_l.embeddings.double()))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(grads, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-6)
