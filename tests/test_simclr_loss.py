"""NT-Xent (SimCLR eq. 1) through the real method + sampler path, against a slow float64 loop."""
import math

import torch

from helpers import simclr_on_raw_embeddings


def nt_xent_slow(x1, x2, t):
    """Eq. 1 of SimCLR, literally: for every view i of 2B, -log exp(s(i,j)/t) / sum_{k != i} exp(s(i,k)/t)."""
    z = torch.cat([x1, x2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n, b = z.shape[0], x1.shape[0]
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        num = torch.exp(z[i] @ z[j] / t)
        den = sum(torch.exp(z[i] @ z[k] / t) for k in range(n) if k != i)
        total = total - torch.log(num / den)
    return total / n


def test_nt_xent_matches_slow_loop_values_and_gradients():
    torch.manual_seed(0)
    for b, d, t in [(4, 8, 0.5), (7, 3, 0.1), (2, 16, 0.07)]:
        x1 = torch.randn(b, d, requires_grad=True)
        x2 = torch.randn(b, d, requires_grad=True)
        out = simclr_on_raw_embeddings(d, t)((x1, x2), labels=torch.zeros(b, dtype=torch.long))
        g1, g2 = torch.autograd.grad(out.loss, (x1, x2))

        r1, r2 = x1.detach().double().requires_grad_(), x2.detach().double().requires_grad_()
        ref = nt_xent_slow(r1, r2, t)
        h1, h2 = torch.autograd.grad(ref, (r1, r2))
        assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-5)
        torch.testing.assert_close(g1.double(), h1, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g2.double(), h2, rtol=1e-4, atol=1e-6)


def test_identical_views_far_from_other_images_give_small_loss():
    # Orthogonal images, identical views: the positive dominates, loss -> log(1 + (2B-2) e^{-1/t}) small.
    x = torch.eye(4) * 3
    out = simclr_on_raw_embeddings(4, 0.1)((x, x.clone()), labels=torch.zeros(4, dtype=torch.long))
    expected = math.log(1 + 6 * math.exp(-1 / 0.1))
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-4)


def test_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(1)
    x1, x2 = torch.randn(8, 16), torch.randn(8, 16)
    method = simclr_on_raw_embeddings(16, 0.1)
    ref = method((x1, x2), labels=torch.zeros(8, dtype=torch.long)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = method((x1, x2), labels=torch.zeros(8, dtype=torch.long)).loss
    assert amp.dtype == torch.float32
    assert math.isclose(amp.item(), ref.item(), rel_tol=1e-6)


def test_in_batch_negatives_mask_matches_brute_force_and_is_reused_unchanged():
    from cl_suite.losses import in_batch_negatives

    b, world, rank = 3, 2, 1
    rows, columns, offset = 2 * b, 2 * b * world, rank * 2 * b
    expected = torch.tensor([[not (c == offset + i or c == offset + (i + b) % rows) for c in range(columns)]
                             for i in range(rows)])
    mask = in_batch_negatives(rows, columns, offset, (0, b), torch.device("cpu"))
    assert torch.equal(mask, expected)
    assert in_batch_negatives(rows, columns, offset, (0, b), torch.device("cpu")) is mask  # built once per layout
    # A real training step leaves the shared mask as it was (no sampler writes into it).
    method = simclr_on_raw_embeddings(dim=8, temperature=0.5)
    single = in_batch_negatives(2 * 4, 2 * 4, 0, (0, 4), torch.device("cpu"))
    before = single.clone()
    x = torch.randn(4, 8, requires_grad=True)
    method((x, x + 0.1 * torch.randn(4, 8)), torch.arange(4)).loss.backward()
    assert in_batch_negatives(8, 8, 0, (0, 4), torch.device("cpu")) is single and torch.equal(single, before)


def test_a_later_process_masks_its_own_rows_of_the_gathered_batch(monkeypatch):
    """Under DDP the candidates are the all-gathered batch, rank-major: process 1's anchors must mask their
    own rows and positives at its offset 2b in that batch, not at 0. Simulated here on one process: the
    gather returns process 0's block before this one, and the loss of process 1's 2b anchors must equal
    SimCLR eq. 1 over the global batch for those anchors (float64 loop), gradients included."""
    import torch.nn.functional as F

    from cl_suite import losses
    from cl_suite.losses import ContrastiveLoss

    torch.manual_seed(0)
    b, d, t = 3, 5, 0.4
    other = F.normalize(torch.randn(2 * b, d), dim=1)  # process 0's [view 1, view 2] rows
    x1, x2 = torch.randn(b, d, requires_grad=True), torch.randn(b, d, requires_grad=True)
    monkeypatch.setattr(losses, "get_rank", lambda: 1)
    monkeypatch.setattr(losses, "gather_with_grad", lambda z: torch.cat([other, z]))
    loss = ContrastiveLoss(temperature=t)(x1, x2)
    g1, g2 = torch.autograd.grad(loss, (x1, x2))

    r1, r2 = x1.detach().double().requires_grad_(), x2.detach().double().requires_grad_()
    mine = torch.cat([r1, r2])
    z = torch.cat([other.double(), mine / mine.norm(dim=1, keepdim=True)])  # the global batch
    total = 0.0
    for i in range(2 * b, 4 * b):  # process 1's anchors; positive: the other view of the same image
        j = 2 * b + (i - 2 * b + b) % (2 * b)
        den = sum(torch.exp(z[i] @ z[k] / t) for k in range(4 * b) if k != i)
        total = total - torch.log(torch.exp(z[i] @ z[j] / t) / den)
    ref = total / (2 * b)
    h1, h2 = torch.autograd.grad(ref, (r1, r2))
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(g1.double(), h1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g2.double(), h2, rtol=1e-4, atol=1e-6)
