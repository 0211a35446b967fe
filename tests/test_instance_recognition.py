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


# ---- the ir preset against transcriptions of the reference code ----
#
# Memory bank (zhirongw/lemniscate.pytorch lib/NCEAverage.py and lib/LinearAverage.py, backward; the Ring
# code's NCE.updated_new_data_memory, src/objectives/instdisc.py, the same rule): after the step the batch's
# rows become w = m * (row read at the forward) + (1 - m) * (normalised feature of the forward), divided by
# sqrt(sum w^2); no other row moves. Loss (contrastive-ring-public src/objectives/instdisc.py NCE.get_loss,
# which the preset's docstring and README claim): per anchor, the positive logit q . bank[own] / t, the
# partition the log-sum-exp over [own row, k - 1 drawn rows] / t, the loss the batch mean of
# partition - positive; bank rows carry no gradient. The suite's documented difference: one set of draws
# shared by the batch, the anchor's own row removed from it (the code draws per anchor and keeps it).

def authors_bank_update(bank, idx, x, m):
    w = bank[idx] * m + x * (1 - m)
    bank = bank.clone()
    bank[idx] = w / w.pow(2).sum(1, keepdim=True).pow(0.5)
    return bank


def authors_nce_loss(q, bank, idx, noise, t):
    """``noise``: one list of drawn bank rows per anchor (the code's (B, k - 1) randint)."""
    terms = []
    for a in range(q.shape[0]):
        pos = q[a] @ bank[idx[a]]
        partition = torch.logsumexp(torch.cat([pos[None], bank[noise[a]] @ q[a]]) / t, dim=0)
        terms.append(partition - pos / t)
    return torch.stack(terms).mean()


def ir_preset(*overrides, num_samples=12):
    from cl_suite.engine.build import DatasetFacts, build_method
    from helpers import compose_train

    cfg = compose_train(["method=ir", "backbone.widths=[4,8]", "method.num_negatives=10", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, DatasetFacts(num_samples=num_samples, num_classes=10)).train()
    drawn = []
    draw = method.bank.draw
    method.bank.draw = lambda count, device: drawn.append(draw(count, device)) or drawn[-1]
    return method, cfg, drawn


@pytest.mark.parametrize("overrides, m", [([], 0.5), (["method.bank_momentum=0.0"], 0.0)],
                         ids=["lemniscate_m0.5", "ring_m0"])
def test_ir_preset_steps_equal_the_reference_loss_and_bank(overrides, m):
    """Three steps of the ir preset (bank 12, 10 draws, batch 4; rows revisited): the loss and every
    gradient equal the reference's (float64, the suite's draws less the own row), and the bank after each
    step equals the reference's update (m 0.5: lemniscate's --nce-m default; m 0: the Ring configs)."""
    method, cfg, drawn = ir_preset(*overrides)
    t = cfg.method.temperature
    assert (t, cfg.method.bank_momentum, type(method.sampler).__name__) == (0.07, m, "UniformSampler")
    bank = method.bank.embeddings.double()
    params = [p for p in method.parameters() if p.requires_grad]
    own_drawn = 0
    for step, idx in enumerate([[1, 4, 6, 9], [4, 0, 9, 11], [1, 4, 7, 0]]):
        idx = torch.tensor(idx)
        x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        out = method((x, x.flip(3)), torch.tensor([3, 1, 4, 1]), idx)
        grads = torch.autograd.grad(out.loss, params)
        q = F.normalize(method.projector(method.backbone(x)).double(), dim=1)
        noise = [[j for j in drawn[-1].tolist() if j != i] for i in idx.tolist()]
        own_drawn += sum(len(n) < 10 for n in noise)
        ref = authors_nce_loss(q, bank, idx, noise, t)
        ref_grads = torch.autograd.grad(ref, params)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for g, h in zip(grads, ref_grads):
            torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-6)  # float32 convolutions on both sides
        method.after_step(out.memory, step, 3)
        bank = authors_bank_update(bank, idx, q.detach(), m)
        torch.testing.assert_close(method.bank.embeddings.double(), bank, rtol=1e-6, atol=1e-6)
    assert own_drawn > 0  # the documented difference was exercised: the code would keep these draws


def test_ir_documented_differences_from_lemniscate():
    """README's fidelity table, ``ir``: (1) the bank starts as lemniscate's uniform rows in +-1/sqrt(d/3)
    but L2-normalised (the Ring code's MemoryBank; lemniscate keeps them raw, norms about 0.8-1.2), so a
    row's first update at m = 0.5 differs from lemniscate's and at m = 0 it does not; (2) with
    ``num_negatives=null`` (every row) and the uniform sampler the own row is in the sum besides the
    positive, -log e^p / (e^p + sum_j e^s_j); lemniscate's full softmax (``--nce-k 0``: LinearAverage +
    CrossEntropyLoss) counts it once, -log e^p / sum_j e^s_j."""
    from cl_suite.methods.memory_bank import MemoryBank

    d = 6
    torch.manual_seed(3)
    bank = MemoryBank(5, d, 0.5)
    torch.manual_seed(3)
    bound = 1 / (d / 3) ** 0.5
    raw = torch.rand(5, d) * (2 * bound) - bound  # lemniscate: torch.rand(N, d).mul_(2 stdv).add_(-stdv)
    torch.testing.assert_close(bank.embeddings, F.normalize(raw, dim=1))
    assert (raw.norm(dim=1) - 1).abs().max() > 0.05
    x = F.normalize(torch.randn(2, d), dim=1)
    idx = torch.tensor([0, 3])
    for m, differs in [(0.5, True), (0.0, False)]:
        ours = MemoryBank(5, d, m)
        ours.embeddings.copy_(bank.embeddings)
        ours.update(idx, x, torch.zeros(2, dtype=torch.long))
        theirs = authors_bank_update(raw, idx, x, m)
        assert torch.allclose(ours.embeddings[idx], theirs[idx]) != differs

    method, cfg, _ = ir_preset("method.num_negatives=null", num_samples=6)
    idx = torch.tensor([2, 5, 0])
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = method((x, x), torch.zeros(3, dtype=torch.long), idx)
    t, rows = cfg.method.temperature, method.bank.embeddings.double()
    q = F.normalize(method.projector(method.backbone(x)).double(), dim=1)
    logits = q @ rows.T / t
    pos = logits[torch.arange(3), idx]
    ours = (torch.logsumexp(torch.cat([pos[:, None], logits], dim=1), dim=1) - pos).mean()
    lemniscate = F.cross_entropy(logits, idx)  # LinearAverage's x . memory^T / T, then CrossEntropyLoss
    assert out.loss.item() == pytest.approx(ours.item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(lemniscate.item(), rel=1e-3)


def test_ir_cifar10_partition_has_the_ring_configs_size():
    """contrastive-ring-public config/pretrain/nce/nce.json: k 4096, the size of the partition (the own
    row prepended to k - 1 = 4095 draws). The recipe draws 4,095 rows besides the positive, the same count
    (the preset's 4,096 is lemniscate's --nce-k, the noise draws besides the positive)."""
    from helpers import compose_train

    assert compose_train(["experiment=ir_cifar10"]).method.num_negatives == 4096 - 1
    assert compose_train(["method=ir"]).method.num_negatives == 4096
