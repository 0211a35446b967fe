"""Instance recognition: the memory bank's momentum rule, and the own entry is never a negative."""
import pytest
import torch
import torch.nn.functional as F

from cl_suite.methods import InstanceRecognition
from cl_suite.models import SmallConvNet
from helpers import RecordingSampler


def make(num_samples=8, **kwargs):
    torch.manual_seed(0)
    return InstanceRecognition(SmallConvNet(widths=[4]), RecordingSampler(), num_samples=num_samples,
                               projector_dim=6, **kwargs)


def test_own_bank_row_is_the_positive_and_never_a_negative():
    method = make(num_samples=8, num_negatives=200)  # 200 draws from 8 rows: every row is drawn
    indices = torch.tensor([5, 2, 7])
    method((torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)), torch.tensor([0, 1, 2]), indices)
    seen = method.sampler.seen
    rows = method.bank.embeddings
    assert torch.equal(seen["positives"], rows[indices])
    own = (seen["candidates"][None, :, :] == rows[indices][:, None, :]).all(dim=-1)  # (3, 200)
    assert own.any(dim=1).all() and not (own & seen["mask"]).any()
    assert seen["mask"].sum(dim=1).tolist() == (200 - own.sum(dim=1)).tolist()


def test_bank_rows_of_the_batch_move_by_the_momentum_rule():
    method = make(num_samples=10, bank_momentum=0.5)
    indices = torch.tensor([1, 4, 6])
    x = torch.randn(3, 3, 8, 8)
    before = method.bank.embeddings.clone()
    out = method((x, x), torch.tensor([3, 3, 9]), indices)
    embedding = F.normalize(method.projector(method.backbone(x)), dim=1).detach()
    method.after_step(out.memory, 0, 1)
    expected = F.normalize(0.5 * before[indices] + 0.5 * embedding, dim=1)
    torch.testing.assert_close(method.bank.embeddings[indices], expected)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(method.bank.embeddings[untouched], before[untouched])
    assert method.bank.labels[indices].tolist() == [3, 3, 9] and (method.bank.labels[untouched] == -1).all()


def test_bank_starts_normalised_and_is_checkpoint_state():
    method = make(num_samples=12)
    torch.testing.assert_close(method.bank.embeddings.norm(dim=1), torch.ones(12))
    assert {"bank.embeddings", "bank.labels"} <= set(method.state_dict())


@pytest.mark.parametrize("key, value", [("num_negatives", 0), ("bank_momentum", 1.0), ("temperature", -1.0)])
def test_bad_ir_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"method.{key}={value}"):
        make(**{key: value})
