"""MoCHi's same-image masking (Kalantidis et al., NeurIPS 2020, as in the davidsvy implementation): the
queue keeps each key's data set index, and with ``method.mask_same_image`` the queue entries of an
anchor's own image are neither negatives nor hard negatives to mix.

Run as a script (``python tests/test_mochi_masking.py out.pt``, plain or under torchrun), this file is
the two-step masked-MoCHi job of the 2-process check at the end.
"""
import sys

import pytest
import torch
import torch.nn.functional as F

from cl_suite.methods import MoCo
from cl_suite.methods.queue import FeatureQueue
from cl_suite.models import SmallConvNet
from cl_suite.samplers import Contrast, MixingSampler

T = 0.2
N_HARD, S1, S2 = 4, 3, 2


def make(mask_same_image=True, queue_size=12, sampler=None, **kwargs):
    torch.manual_seed(0)
    sampler = sampler or MixingSampler(n_hard=N_HARD, s1=S1, s2=S2)
    return MoCo(SmallConvNet(widths=[4, 8]), sampler, temperature=T, projector_hidden_dims=[16], projector_dim=8,
                queue_size=queue_size, momentum=0.9, momentum_final=0.9, mask_same_image=mask_same_image, **kwargs)


def query_and_key(method, x1, x2):
    q = F.normalize(method.projector(method.backbone(x1)).float(), dim=1)
    with torch.no_grad():
        k = F.normalize(method.key_encoder.projector(method.key_encoder.backbone(x2)).float(), dim=1)
    return q, k


def queue_with_own_keys(method, x1, indices):
    """Fill the queue: for anchors 0 and 2, an older key of their own image, nearly equal to their query
    (their hardest entry by far); the other rows random keys of other images."""
    torch.manual_seed(1)
    with torch.no_grad():
        q = F.normalize(method.projector(method.backbone(x1)), dim=1)
    size, dim = method.queue.embeddings.shape
    rows = F.normalize(torch.randn(size, dim), dim=1)
    rows[3] = F.normalize(q[0] + 0.05 * torch.randn(dim), dim=0)
    rows[7] = F.normalize(q[2] + 0.05 * torch.randn(dim), dim=0)
    row_indices = 100 + torch.arange(size)
    row_indices[3], row_indices[7] = indices[0], indices[2]
    method.queue.push(rows, torch.full((size,), -1), row_indices)
    return rows, row_indices


def reference_mochi_loss(q, k, queue, queue_indices, indices, seed):
    """The reference MoCHi step in float64, from its behaviour: logits [pos | queue | type 1 | type 2] / T,
    queue logits of the anchor's own image set to -inf before the n_hard hardest are taken (topk of the
    detached logits), type 1 = normalize(alpha n_i + (1 - alpha) n_j), type 2 = normalize(beta sg(q) +
    (1 - beta) n_j) with beta in [0, 0.5), the synthetics detached, cross entropy with label 0. The
    random draws are replayed in the sampler's order (i, j, alpha, then j', beta); the hard set is in
    descending order (the reference's unsorted topk only permutes it)."""
    q, k, queue = q.double(), k.double(), queue.double()
    b = q.shape[0]
    l_pos = (q * k).sum(1, keepdim=True) / T
    l_neg = q @ queue.T / T
    l_neg = l_neg.masked_fill(indices[:, None] == queue_indices[None, :], float("-inf"))
    hard_rows = l_neg.detach().topk(N_HARD, dim=1).indices  # (B, n_hard)
    torch.manual_seed(seed)
    i, j = torch.randint(N_HARD, (b, S1)), torch.randint(N_HARD, (b, S1))
    alpha = torch.rand(b, S1, 1).double()
    j2 = torch.randint(N_HARD, (b, S2))
    beta = 0.5 * torch.rand(b, S2, 1).double()
    hard = queue.detach()[hard_rows]  # (B, n_hard, D)
    pick = lambda idx: torch.stack([hard[a, idx[a]] for a in range(b)])  # noqa: E731
    type1 = F.normalize(alpha * pick(i) + (1 - alpha) * pick(j), dim=-1).detach()
    type2 = F.normalize(beta * q.detach()[:, None] + (1 - beta) * pick(j2), dim=-1).detach()
    logits = torch.cat([l_pos, l_neg, torch.einsum("bd,bsd->bs", q, type1) / T,
                        torch.einsum("bd,bsd->bs", q, type2) / T], dim=1)
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))


def test_masked_loss_equals_the_reference_and_differs_from_the_unmasked_loss():
    method = make()
    torch.manual_seed(2)
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    indices = torch.tensor([5, 9, 11, 2])
    rows, row_indices = queue_with_own_keys(method, x1, indices)
    # The stale keys are each anchor's most similar entry, so without the mask they would be mixed.
    with torch.no_grad():
        q, _ = query_and_key(method, x1, x2)
    assert (q @ rows.T).argmax(1)[[0, 2]].tolist() == [3, 7]

    params = method.query_parameters()
    torch.manual_seed(7)
    masked = method((x1, x2), torch.zeros(4, dtype=torch.long), indices).loss
    grads = torch.autograd.grad(masked, params)

    q, k = query_and_key(method, x1, x2)
    ref = reference_mochi_loss(q, k, rows, row_indices, indices, seed=7)
    ref_grads = torch.autograd.grad(ref, params)
    assert masked.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)

    method.mask_same_image = False
    torch.manual_seed(7)
    unmasked = method((x1, x2), torch.zeros(4, dtype=torch.long), indices).loss
    no_mask_ref = reference_mochi_loss(q.detach(), k, rows, row_indices, torch.full((4,), -2), seed=7)
    assert unmasked.item() == pytest.approx(no_mask_ref.item(), rel=1e-5)
    assert unmasked.item() > masked.item() + 0.1  # a near-copy of the query counted (and mixed) as a negative


def test_the_mask_removes_exactly_the_rows_of_the_anchors_own_image():
    method = make(queue_size=6)
    method.queue.push(F.normalize(torch.randn(6, 8), dim=1), torch.zeros(6, dtype=torch.long),
                      torch.tensor([4, 1, 4, 7, -1, 1]))
    mask = method.candidate_mask(torch.tensor([4, 1, 3]))
    assert mask.tolist() == [[False, True, False, True, True, True],
                             [True, False, True, True, True, False],
                             [True] * 6]
    assert make(mask_same_image=False).candidate_mask(torch.tensor([4])) is None
    with pytest.raises(ValueError, match="method.mask_same_image=true needs the data set index"):
        method((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="method.mask_same_image='yes'"):
        make(mask_same_image="yes")


@pytest.mark.parametrize("n_hard", [3, 6])  # 6 > the 4 unmasked candidates of anchor 0: the fallback path
def test_the_mixing_sampler_never_mixes_a_masked_queue_entry(n_hard):
    # Orthonormal queue rows: a type-1 synthetic normalize(alpha e_i + (1 - alpha) e_j) is non-zero only
    # on rows i and j, so its support names the hard candidates it was mixed from.
    method = make(queue_size=8, sampler=MixingSampler(n_hard=n_hard, s1=64, s2=0))
    method.queue.push(torch.eye(8), torch.zeros(8, dtype=torch.long), torch.tensor([0, 0, 1, 0, 2, 0, 3, 4]))
    indices = torch.tensor([0, 1, 2])
    mask = method.candidate_mask(indices)
    # Each anchor is closest to its own image's rows (the worst case: they top the unmasked ranking).
    anchors = F.normalize(0.2 + 0.01 * torch.arange(8) + 3.0 * (~mask).float(), dim=1)
    ctx = Contrast(anchors, method.queue.embeddings, torch.ones(3), anchors @ method.queue.embeddings.T, mask, T)
    torch.manual_seed(0)
    (type1,) = method.sampler.synthetic_negatives(ctx, 64, 0)
    used = type1.abs().amax(dim=1) > 1e-6  # (3, 8): rows that entered some synthetic of the anchor
    assert not (used & ~mask).any()
    assert used[1].sum() >= 2 and used[2].sum() >= 2  # real mixing happened


def test_queue_indices_follow_the_fifo_pointer_and_survive_a_state_dict_round_trip():
    queue = FeatureQueue(10, 4)
    assert queue.indices.tolist() == [-1] * 10
    for i in range(3):
        queue.push(torch.full((4, 4), float(i)), torch.full((4,), i), 10 * i + torch.arange(4))
    assert int(queue.ptr) == 2
    assert queue.indices.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]
    queue.push(torch.ones(1, 4), torch.zeros(1, dtype=torch.long))  # no indices: unknown image
    assert int(queue.indices[2]) == -1 and int(queue.ptr) == 3

    state = queue.state_dict()
    assert set(state) == {"embeddings", "labels", "indices", "ptr", "filled"}
    restored = FeatureQueue(10, 4)
    restored.load_state_dict(state)
    for key, value in queue.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key

    # A queue saved before indices were kept: loads, every row of unknown image; a wrong size still fails.
    old = {key: value for key, value in state.items() if key != "indices"}
    restored.load_state_dict(old)
    assert restored.indices.tolist() == [-1] * 10 and torch.equal(restored.embeddings, queue.embeddings)
    with pytest.raises(RuntimeError, match="size mismatch for embeddings"):
        FeatureQueue(12, 4).load_state_dict(old)
    with pytest.raises(RuntimeError, match="Missing key"):
        FeatureQueue(10, 4).load_state_dict({key: value for key, value in old.items() if key != "embeddings"})


def test_a_moco_step_enqueues_the_batch_indices_and_old_moco_state_loads():
    method = make(mask_same_image=False, symmetric=True)
    x1, x2 = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    out = method((x1, x2), torch.tensor([0, 1, 2]), torch.tensor([8, 3, 5]))
    out.loss.backward()
    method.after_step(out.memory, 0, 10)
    assert method.queue.indices[:6].tolist() == [8, 3, 5, 8, 3, 5] and int(method.queue.ptr) == 6
    assert method.queue.labels[:6].tolist() == [0, 1, 2, 0, 1, 2]
    # A MoCo checkpoint from before the indices buffer loads strictly, as a queue of unknown images.
    state = {key: value for key, value in method.state_dict().items() if key != "queue.indices"}
    fresh = make()
    fresh.load_state_dict(state)
    assert fresh.queue.indices.tolist() == [-1] * 12
    assert torch.equal(fresh.queue.embeddings, method.queue.embeddings)


def test_mochi_preset_masks_and_trains_two_steps(tmp_path):
    from cl_suite.engine.trainer import train
    from helpers import TINY, compose_train

    overrides = TINY + ["method=mochi", "trainer.max_steps=2", "trainer.eval_at_init=false",
                        "method.queue_size=256", "sampler.n_hard=32", "sampler.s1=16", "sampler.s2=16"]
    cfg = compose_train(overrides, tmp_path)
    assert cfg.method.mask_same_image is True and cfg.method._target_ == "cl_suite.methods.MoCo"
    assert compose_train(TINY + ["method=moco"]).method.mask_same_image is False
    train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 2
    stored = state["method"]["queue.indices"]
    assert int(state["method"]["queue.ptr"]) == 128
    assert stored[:128].min() >= 0 and len(set(stored[:128].tolist())) == 128  # 2 batches of distinct images
    assert (stored[128:] == -1).all()


# ---- the mochi preset as the trainer builds it, against davidsvy/hard-negative-mixing src/moco.py ----
#
# MoCo.forward restated (beyond reference_mochi_loss above, which restates its logits and loss): the key
# encoder starts as a copy of the query encoder and moves as key <- m key + (1 - m) query at the start of
# every forward (with the query parameters after the previous optimizer step); the keys are normalised;
# after the logits, _dequeue_and_enqueue writes the keys into rows ptr .. ptr + B - 1 of the (K, d) queue
# and the batch's file indices into queue_file (which starts at -1), and ptr <- (ptr + B) mod K.

def test_mochi_preset_steps_equal_the_reference_loss_and_queue_write():
    """Three steps of the composed mochi preset (queue 12, batch 4, N/s/s' = 4/3/2; step 2 and 3 meet
    older keys of their own images), with an SGD step between them: loss and gradients equal the
    reference's in float64 with the same draws, and the key encoder, the queue, its image indices and the
    pointer equal the reference's after each step."""
    import copy

    from cl_suite.engine.build import DatasetFacts, build_method
    from helpers import compose_train

    cfg = compose_train(["method=mochi", "backbone=small_convnet", "backbone.widths=[4,8]",
                         "method.projector_hidden_dims=[16]", "method.projector_dim=8", "method.queue_size=12",
                         f"sampler.n_hard={N_HARD}", f"sampler.s1={S1}", f"sampler.s2={S2}"])
    torch.manual_seed(0)
    method = build_method(cfg, DatasetFacts(num_samples=100, num_classes=10)).train()
    m = cfg.method.momentum
    assert isinstance(method.sampler, MixingSampler) and method.mask_same_image and method.temperature == T
    key_net = copy.deepcopy(method.key_encoder).double()
    queue, queue_file, ptr = method.queue.embeddings.double().clone(), torch.full((12,), -1), 0
    params = method.query_parameters()
    for step, idx in enumerate([[5, 9, 11, 2], [9, 3, 5, 7], [2, 7, 0, 1]]):
        indices = torch.tensor(idx)
        g = torch.Generator().manual_seed(step)
        x1, x2 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
        with torch.no_grad():  # the reference's forward: momentum update first
            for pk, pq in zip(key_net.parameters(), params):
                pk.mul_(m).add_(pq.double() * (1 - m))
            k = F.normalize(key_net.projector(key_net.backbone(x2.double())), dim=1)
        method.set_progress(step, 3)
        torch.manual_seed(100 + step)
        out = method((x1, x2), torch.zeros(4, dtype=torch.long), indices)
        grads = torch.autograd.grad(out.loss, params)
        q = F.normalize(method.projector(method.backbone(x1)).double(), dim=1)
        ref = reference_mochi_loss(q, k, queue, queue_file, indices, seed=100 + step)
        ref_grads = torch.autograd.grad(ref, params)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        queue[ptr:ptr + 4], queue_file[ptr:ptr + 4], ptr = k, indices, (ptr + 4) % 12
        with torch.no_grad():
            for p, grad in zip(params, grads):
                p.sub_(0.5 * grad)
        method.after_step(out.memory, step, 3)
        torch.testing.assert_close(method.queue.embeddings.double(), queue, rtol=1e-5, atol=1e-6)
        assert method.queue.indices.tolist() == queue_file.tolist() and int(method.queue.ptr) == ptr
        if step:  # an anchor met an older key of its own image: the mask was exercised
            assert (indices[:, None] == method.queue.indices[None, :ptr - 4]).any()
    with torch.no_grad():
        for pk, pq in zip(key_net.parameters(), params):
            pk.mul_(m).add_(pq.double() * (1 - m))
    for ours, theirs in zip(method.key_parameters(), key_net.parameters()):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-7)


# ---- 2 processes x B/2 equal 1 process x B (torchrun, gloo), with masking and mixing active ----

@pytest.mark.slow
def test_masked_mochi_on_two_processes_equals_one_process(tmp_path):
    """Two steps of masked MoCHi over a shared queue: in step 2 the queue holds step 1's keys of the same
    images, all-gathered with their indices, so each process must mask the keys the other one enqueued."""
    from test_ddp import one_and_two_processes

    one, two = one_and_two_processes("test_mochi_masking.py", tmp_path)
    assert one["masked_rows"] > 0
    for key in one["state"]:
        torch.testing.assert_close(two["state"][key], one["state"][key], rtol=1e-6, atol=1e-6, msg=key)
    # 12 rows, 2 steps of the images 0..7: step 2's keys wrap around over step 1's.
    assert one["state"]["method.queue.indices"].tolist() == [4, 5, 6, 7, 4, 5, 6, 7, 0, 1, 2, 3]
    assert int(one["state"]["method.queue.ptr"]) == 4


def test_a_later_process_draws_its_block_of_the_one_process_draws(monkeypatch):
    """Every process draws the numbers of all W x A anchors and keeps its own block, so process 1 of 2
    gets the synthetics one process computes for the second half of the 2A anchors (rank-major layout):
    simulated here by telling the sampler it is process 1 of 2."""
    from cl_suite.samplers import mixing

    torch.manual_seed(0)
    anchors = F.normalize(torch.randn(6, 8), dim=1)
    candidates = F.normalize(torch.randn(20, 8), dim=1)
    sim = anchors @ candidates.T
    mask = torch.rand(6, 20) > 0.2

    def context(rows):
        return Contrast(anchors[rows], candidates, torch.ones(len(range(6)[rows])), sim[rows], mask[rows], T)

    sampler = MixingSampler(n_hard=N_HARD, s1=S1, s2=S2)
    torch.manual_seed(5)
    one_process = sampler.synthetic_negatives(context(slice(0, 6)), S1, S2)
    monkeypatch.setattr(mixing, "get_rank", lambda: 1)
    monkeypatch.setattr(mixing, "get_world_size", lambda: 2)
    torch.manual_seed(5)
    process_one = sampler.synthetic_negatives(context(slice(3, 6)), S1, S2)
    for whole, block in zip(one_process, process_one):
        torch.testing.assert_close(block, whole[3:])


def _two_step_job(out_path: str) -> None:
    from helpers import LinearBackbone, one_step

    from cl_suite.distributed import cleanup_distributed, get_rank, get_world_size, init_distributed

    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    x1, x2 = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    labels = torch.arange(8) % 3
    torch.manual_seed(2)
    # No shuffle BN (the backbone has no BN): its permutation is drawn from the global generator on 2
    # processes only, and would shift the mixing draws away from the 1-process ones.
    method = MoCo(LinearBackbone(), MixingSampler(n_hard=4, s1=3, s2=2), temperature=0.3, projector_hidden_dims=[16],
                  projector_dim=6, queue_size=12, momentum=0.9, momentum_final=0.9, shuffle_bn=False,
                  mask_same_image=True)
    masked_rows = 0
    for step in range(2):  # one_step passes the indices 0..7 of the global batch, split over the processes
        masked_rows += int((~method.candidate_mask(torch.arange(8))).sum())
        torch.manual_seed(7 + step)
        state = one_step(method, x1, x2, labels, rank, world)
    if rank == 0:
        torch.save({"state": state, "masked_rows": masked_rows}, out_path)
    cleanup_distributed(wait_for_all=True)  # rank 0 has written its file before any process exits


if __name__ == "__main__":
    _two_step_job(sys.argv[1])
