"""MoCo: the momentum rule, the FIFO queue (wrap, contents), the schedule."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from cl_suite.methods import MoCo
from cl_suite.models import SmallConvNet
from cl_suite.samplers import UniformSampler


def make(queue_size=16, momentum=0.9, momentum_final=0.9, **kwargs):
    torch.manual_seed(0)
    return MoCo(SmallConvNet(widths=[4, 8]), UniformSampler(), projector_hidden_dims=[16], projector_dim=8,
                queue_size=queue_size, momentum=momentum, momentum_final=momentum_final, **kwargs)


def one_step(method, x1, x2, labels):
    opt = torch.optim.SGD(method.query_parameters(), lr=0.5)
    out = method((x1, x2), labels)
    out.loss.backward()
    opt.step()
    method.after_step(out.memory, 0, 10)
    return out


def test_key_encoder_moves_by_the_momentum_rule_and_gets_no_gradient():
    method = make()
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    key_before = [p.detach().clone() for p in method.key_parameters()]
    one_step(method, x1, x2, torch.arange(4))
    for key, before, query in zip(method.key_parameters(), key_before, method.query_parameters()):
        assert key.grad is None
        torch.testing.assert_close(key, 0.9 * before + 0.1 * query.detach())
    assert not torch.equal(key_before[0], method.key_parameters()[0])


def test_enqueued_keys_are_this_steps_keys_and_the_loss_saw_the_old_queue():
    method = make(queue_size=16)
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    expected_keys = copy.deepcopy(method).keys(x2)  # the key encoder before the step
    old_queue = method.queue.embeddings.clone()
    one_step(method, x1, x2, torch.tensor([3, 1, 4, 1]))
    torch.testing.assert_close(method.queue.embeddings[:4], expected_keys)
    assert torch.equal(method.queue.labels[:4], torch.tensor([3, 1, 4, 1]))
    assert torch.equal(method.queue.embeddings[4:], old_queue[4:]) and int(method.queue.ptr) == 4


def test_a_queue_write_before_backward_fails_loudly_instead_of_changing_the_gradient():
    """The loss reads the queue buffer itself (no per-step copy): that is safe only because the loop writes
    it after backward. Were the order ever broken, autograd's version check must stop it."""
    method = make(queue_size=16)
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    out = method((x1, x2), torch.arange(4))
    method.after_step(out.memory, 0, 10)  # pushes this step's keys into the queue the graph saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


def test_queue_pointer_wraps_around_a_size_that_is_not_a_multiple_of_the_batch():
    method = make(queue_size=10)
    batches = [torch.full((4, 8), float(i)) for i in range(3)]
    for i, keys in enumerate(batches):
        method.queue.push(keys, torch.full((4,), i))
    assert int(method.queue.ptr) == 2  # 12 keys written into 10 rows
    assert torch.equal(method.queue.labels, torch.tensor([2, 2, 0, 0, 1, 1, 1, 1, 2, 2]))
    assert torch.equal(method.queue.embeddings[8:], batches[2][:2]) and torch.equal(method.queue.embeddings[:2], batches[2][2:])


def test_momentum_follows_a_cosine_from_start_to_final():
    method = make(momentum=0.99, momentum_final=1.0)
    assert method.momentum_at(0, 100) == pytest.approx(0.99)
    assert method.momentum_at(50, 100) == pytest.approx(0.995)
    assert method.momentum_at(100, 100) == pytest.approx(1.0)


def test_queue_and_pointer_are_in_the_state_dict():
    state = make().state_dict()
    assert {"queue.embeddings", "queue.labels", "queue.ptr", "queue.filled"} <= set(state)
    assert any(key.startswith("key_encoder.backbone.") for key in state)
    assert any(key.startswith("key_encoder.projector.") for key in state)


def test_a_state_dict_from_before_the_key_encoder_component_loads_strictly():
    """Checkpoints written when MoCo held its key copies itself (key_backbone.*, key_projector.*) load."""
    method = make()
    one_step(method, torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.arange(4))
    old = {key.replace("key_encoder.backbone.", "key_backbone.").replace("key_encoder.projector.", "key_projector."):
           value for key, value in method.state_dict().items()}
    assert any(key.startswith("key_backbone.") for key in old) and not any("key_encoder" in key for key in old)
    fresh = make(queue_size=16)
    torch.manual_seed(1)
    fresh.load_state_dict(old)  # strict
    for a, b in zip(fresh.key_parameters(), method.key_parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("key, value", [("queue_size", 0), ("momentum", 1.5), ("temperature", 0.0)])
def test_bad_moco_settings_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"method.{key}={value}"):
        make(**{key: value})


def test_symmetric_loss_is_the_mean_of_both_query_key_directions():
    """symmetric=True: q1 against k2 and q2 against k1, each InfoNCE over the queue, averaged (a float64
    loop from MoCo's eq. 1, He et al. 2020), gradients into the query encoder included."""
    method = make(queue_size=12, symmetric=True).eval()  # eval: BN on running statistics, no enqueue
    t = method.temperature
    x1, x2 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    out = method((x1, x2), torch.arange(4))
    got = torch.autograd.grad(out.loss, method.projector[0].weight)[0]

    def info_nce(q, k, queue):  # mean over the batch of -log e^{q.k/t} / (e^{q.k/t} + sum_j e^{q.c_j/t})
        total = 0.0
        for i in range(q.shape[0]):
            pos = torch.exp(q[i] @ k[i] / t)
            total = total - torch.log(pos / (pos + sum(torch.exp(q[i] @ c / t) for c in queue)))
        return total / q.shape[0]

    reference = copy.deepcopy(method).double()
    q1, q2 = (torch.nn.functional.normalize(reference.projector(reference.backbone(x.double())), dim=1)
              for x in (x1, x2))
    with torch.no_grad():
        k1, k2 = (reference.keys(x.double()).double() for x in (x1, x2))
    queue = reference.queue.embeddings
    expected = (info_nce(q1, k2, queue) + info_nce(q2, k1, queue)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    want = torch.autograd.grad(expected, reference.projector[0].weight)[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_a_batch_larger_than_the_queue_keeps_its_newest_rows():
    method = make(queue_size=10)
    method.queue.push(torch.zeros(3, 8), torch.full((3,), -5))  # the pointer is at 3
    keys = torch.randn(12, 8)
    method.queue.push(keys, torch.arange(12), torch.arange(100, 112))
    rows = (3 + torch.arange(10)) % 10  # the newest 10 of the 12 keys, written from the pointer on
    assert torch.equal(method.queue.embeddings[rows], keys[2:])
    assert torch.equal(method.queue.labels[rows], torch.arange(2, 12))
    assert torch.equal(method.queue.indices[rows], torch.arange(102, 112))
    assert int(method.queue.ptr) == 3 and int(method.queue.filled) == 10


# ---- the moco preset and the solo_mocov2plus recipe against transcriptions of the reference code ----
#
# facebookresearch/moco moco/builder.py (at f515ef4, the last commit that has it), restated: the key encoder
# starts as a copy of the query encoder's parameters; at the start of every forward, under no_grad, each key
# parameter becomes m * key + (1 - m) * query (the query parameters of that moment: after the previous
# step's optimizer step); q and k are L2-normalised; logits = [q . k | q . queue] / T (the positive in
# column 0, the queue a (dim, K) matrix of past keys, read as it was before this step), cross entropy with
# label 0; then the batch's keys are written into columns ptr .. ptr + B - 1 and ptr <- (ptr + B) mod K,
# after `assert K % B == 0`. The suite moves the key encoder after the optimizer step, i.e. with the same
# query parameters the reference reads at the next forward.
#
# vturrisi/solo-learn solo/methods/mocov2plus.py + solo/losses/mocov2plus.py + solo/utils/momentum.py,
# restated: both views are queries and keys; loss = (CE(q1, k2, queue[1]) + CE(q2, k1, queue[0])) / 2 with
# queue a (2, dim, K) buffer, queue[0] of view-1 keys and queue[1] of view-2 keys, read as a detached clone
# before the step; then keys = stack(gather(k1), gather(k2)) is written into queue[:, :, ptr:ptr + B] and
# ptr <- (ptr + B) mod K, one pointer for both (K % B asserted); the momentum update after the optimizer
# step with tau_s = final - (final - base) * (cos(pi s / S) + 1) / 2 for the s-th step (s from 0). The
# suite's method.queue_per_view=true (the solo_mocov2plus recipes) is this; false keeps one queue for both
# views, asserted below as well.

class AuthorsMoCo:
    def __init__(self, method, m, t):
        self.key_net = copy.deepcopy(method.key_encoder).double().train()
        for pk, pq in zip(self.key_net.parameters(), method.query_parameters()):
            pk.data.copy_(pq.data)  # param_k.data.copy_(param_q.data)
        self.queue = method.queue_for(0).embeddings.double().T.clone()  # (dim, K): view 1's queries' queue
        self.ptr, self.m, self.t = 0, m, t

    @torch.no_grad()
    def momentum_update(self, query_params, m=None):
        m = self.m if m is None else m
        for pk, pq in zip(self.key_net.parameters(), query_params):
            pk.mul_(m).add_(pq.double() * (1.0 - m))

    @torch.no_grad()
    def keys(self, x):
        return F.normalize(self.key_net.projector(self.key_net.backbone(x.double())), dim=1)

    def loss(self, q, k, queue=None):
        queue = self.queue if queue is None else queue
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / self.t
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))

    def enqueue(self, keys, queue=None):
        queue = self.queue if queue is None else queue
        b = keys.shape[0]
        assert queue.shape[1] % b == 0  # for simplicity
        queue[:, self.ptr:self.ptr + b] = keys.T


def moco_preset(*overrides):
    from cl_suite.engine.build import DatasetFacts, build_method
    from helpers import compose_train

    cfg = compose_train([*overrides, "backbone=small_convnet", "backbone.widths=[4,8]",
                         "method.projector_hidden_dims=[16]", "method.projector_dim=8"])
    torch.manual_seed(0)
    return build_method(cfg, DatasetFacts(num_samples=100, num_classes=10)).train(), cfg


def sgd_step(params, grads, lr=0.5):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


def test_moco_preset_steps_equal_the_reference_logits_queue_and_key_encoder():
    """Four steps of the moco preset (queue 12, batch 4: a multiple, as the reference requires; the
    pointer wraps at the third step) with an SGD step between them: the loss and the query encoder's
    gradients equal the reference's (float64), the key encoder's parameters equal the reference's at each
    forward (momentum update order), and the queue and pointer equal the reference's after each step."""
    method, cfg = moco_preset("method=moco", "method.queue_size=12")
    m, t = cfg.method.momentum, cfg.method.temperature
    assert (m, cfg.method.momentum_final, t, cfg.method.symmetric, type(method.sampler).__name__) == \
        (0.99, 0.99, 0.2, False, "UniformSampler")
    authors = AuthorsMoCo(method, m, t)
    params = method.query_parameters()
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        x1, x2 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
        authors.momentum_update(params)  # the reference's forward starts with the momentum update
        for ours, theirs in zip(method.key_parameters(), authors.key_net.parameters()):
            torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-7)
        out = method((x1, x2), torch.arange(4), torch.arange(4) + 4 * step)
        grads = torch.autograd.grad(out.loss, params)
        q = F.normalize(method.projector(method.backbone(x1)).double(), dim=1)
        k = authors.keys(x2)
        ref = authors.loss(q, k)
        ref_grads = torch.autograd.grad(ref, params)
        assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # float32 convolutions on both sides
        authors.enqueue(k)
        authors.ptr = (authors.ptr + 4) % 12
        sgd_step(params, grads)
        method.after_step(out.memory, step, 4)
        torch.testing.assert_close(method.queue.embeddings.double(), authors.queue.T, rtol=1e-5, atol=1e-6)
        assert int(method.queue.ptr) == authors.ptr
    # documented: the suite's queue wraps where the reference asserts K % B == 0 (README, method=moco)
    with pytest.raises(AssertionError):
        authors.enqueue(torch.zeros(5, 8, dtype=torch.float64))


def solo_step_inputs(step):
    g = torch.Generator().manual_seed(10 + step)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)


def test_solo_mocov2plus_recipe_steps_equal_solo_learns_per_view_queues():
    """Four steps of the solo_mocov2plus_cifar10 recipe's method (queue_per_view; queue 12, batch 4: the
    pointer wraps at the fourth step) against the solo-learn transcription above, its (2, dim, K) queue
    starting as the suite's two queues: the loss and the query encoder's gradients equal solo-learn's
    (q1 against k2 and the view-2 queue, q2 against k1 and the view-1 queue), the key encoder follows its
    cosine tau (0.99 -> 0.999, the s-th step's tau after its optimizer step), and after each step queue[0]
    holds the view-1 keys and queue[1] the view-2 keys at the shared pointer; the suite's queues also hold
    each key's label and image index."""
    method, cfg = moco_preset("experiment=solo_mocov2plus_cifar10", "method.queue_size=12")
    c = cfg.method
    assert (c.symmetric, c.queue_per_view, c.momentum, c.momentum_final, c.temperature, c.shuffle_bn,
            c.queue_size, type(method.sampler).__name__) == (True, True, 0.99, 0.999, 0.2, False, 12, "UniformSampler")
    solo = AuthorsMoCo(method, None, c.temperature)
    queue = torch.stack([q.embeddings.double().T.clone() for q in method.queues])  # (2, dim, K)
    assert not torch.allclose(queue[0], queue[1])  # two queues, not one twice
    queue_ptr, size = 0, 12
    labels_written, indices_written = torch.full((size,), -1), torch.full((size,), -1)
    params = method.query_parameters()
    total = 4
    for step in range(total):
        x1, x2 = solo_step_inputs(step)
        labels, indices = torch.tensor([3, 1, 4, 1]) + step, torch.arange(4) + 4 * step
        out = method((x1, x2), labels, indices)
        grads = torch.autograd.grad(out.loss, params)
        q1, q2 = (F.normalize(method.projector(method.backbone(x)).double(), dim=1) for x in (x1, x2))
        k1, k2 = solo.keys(x1), solo.keys(x2)
        theirs = (solo.loss(q1, k2, queue[1]) + solo.loss(q2, k1, queue[0])) / 2
        ref_grads = torch.autograd.grad(theirs, params)
        assert out.loss.item() == pytest.approx(theirs.item(), rel=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        keys = torch.stack((k1, k2))  # _dequeue_and_enqueue
        batch = keys.shape[1]
        assert size % batch == 0
        queue[:, :, queue_ptr:queue_ptr + batch] = keys.permute(0, 2, 1)
        labels_written[queue_ptr:queue_ptr + batch], indices_written[queue_ptr:queue_ptr + batch] = labels, indices
        queue_ptr = (queue_ptr + batch) % size
        sgd_step(params, grads)
        method.after_step(out.memory, step, total)
        tau = c.momentum_final - (c.momentum_final - c.momentum) * (math.cos(math.pi * step / total) + 1) / 2
        solo.momentum_update(params, tau)  # on_train_batch_end, after the optimizer step
        for ours, ref in zip(method.key_parameters(), solo.key_net.parameters()):
            torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-7)
        for view, ours in enumerate(method.queues):
            torch.testing.assert_close(ours.embeddings.double(), queue[view].T, rtol=1e-5, atol=1e-6)
            assert torch.equal(ours.labels, labels_written) and torch.equal(ours.indices, indices_written)
            assert int(ours.ptr) == queue_ptr
    assert queue_ptr == 4  # wrapped


def test_solo_mocov2plus_with_queue_per_view_false_shares_one_queue():
    """The recipe with method.queue_per_view=false: one queue receives both views' keys (view 2's, then
    view 1's, 2B rows a step) and serves both directions. So the loss equals solo-learn's at the first
    step (both of its queues started as the suite's rows), and at every step equals solo-learn's loss
    function applied to the shared queue; after the first write it differs from solo-learn's."""
    method, cfg = moco_preset("experiment=solo_mocov2plus_cifar10", "method.queue_size=16",
                              "method.queue_per_view=false")
    c = cfg.method
    assert (c.symmetric, c.queue_per_view, c.queue_size) == (True, False, 16)
    solo = AuthorsMoCo(method, None, c.temperature)
    queues = [solo.queue.clone(), solo.queue.clone()]  # solo-learn's queue[0] (view-1 keys), queue[1] (view 2)
    shared = solo.queue.clone()  # the suite's queue, written with solo-learn's FIFO
    shared_ptr = 0
    params = method.query_parameters()
    total = 3
    for step in range(total):
        x1, x2 = solo_step_inputs(step)
        out = method((x1, x2), torch.arange(4), torch.arange(4))
        grads = torch.autograd.grad(out.loss, params)
        q1, q2 = (F.normalize(method.projector(method.backbone(x)).double(), dim=1) for x in (x1, x2))
        k1, k2 = solo.keys(x1), solo.keys(x2)
        theirs = (solo.loss(q1, k2, queues[1]) + solo.loss(q2, k1, queues[0])) / 2
        documented = (solo.loss(q1, k2, shared) + solo.loss(q2, k1, shared)) / 2
        ref_grads = torch.autograd.grad(documented, params, retain_graph=True)
        assert out.loss.item() == pytest.approx(documented.item(), rel=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        if step == 0:
            assert out.loss.item() == pytest.approx(theirs.item(), rel=1e-5)
        else:
            assert abs(out.loss.item() - theirs.item()) > 1e-4
        solo.ptr = step * 4 % 16
        solo.enqueue(k1, queues[0])
        solo.enqueue(k2, queues[1])
        solo.ptr, shared_ptr = shared_ptr, (shared_ptr + 8) % 16
        solo.enqueue(torch.cat([k2, k1]), shared)
        sgd_step(params, grads)
        method.after_step(out.memory, step, total)
        tau = c.momentum_final - (c.momentum_final - c.momentum) * (math.cos(math.pi * step / total) + 1) / 2
        solo.momentum_update(params, tau)
        for ours, ref in zip(method.key_parameters(), solo.key_net.parameters()):
            torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(method.queue.embeddings.double(), shared.T, rtol=1e-5, atol=1e-6)
        assert int(method.queue.ptr) == shared_ptr
    # solo-learn's queues after three steps: view-1 keys in queue[0], view-2 keys in queue[1], 12 columns each
    assert not torch.allclose(queues[0][:, :12], queues[1][:, :12])


# ---- method.queue_per_view: one queue per view (solo-learn's mocov2plus) ----

@pytest.mark.parametrize("value, written", [("yes", "'yes'"), (1, "1"), (None, "null")])
def test_queue_per_view_must_be_true_or_false(value, written):
    with pytest.raises(ValueError, match=f"method.queue_per_view={written} is not allowed: expected true or false"):
        make(symmetric=True, queue_per_view=value)


def test_queue_per_view_without_symmetric_is_refused_naming_both_settings():
    """With symmetric=false only view 1 is a query: a second queue would never be read."""
    with pytest.raises(ValueError, match="method.queue_per_view=true is not allowed with method.symmetric=false") as err:
        make(queue_per_view=True)
    assert "set method.symmetric=true, or method.queue_per_view=false" in str(err.value)
    from cl_suite.errors import ConfigError

    with pytest.raises(ConfigError, match="method.queue_per_view=true is not allowed with method.symmetric=false"):
        moco_preset("method=moco", "method.queue_per_view=true")


def test_queue_per_view_gives_each_direction_the_other_views_queue_labels_and_mask():
    """What the sampler gets: q1 (positive k2) the view-2 queue's rows, labels and same-image mask, q2
    (positive k1) the view-1 queue's, so every sampler (ring, mixing, hard, ...) works on the right queue."""
    calls = []

    class Recording(UniformSampler):
        def forward(self, **kwargs):
            calls.append(kwargs)
            return super().forward(**kwargs)

    torch.manual_seed(0)
    method = MoCo(SmallConvNet(widths=[4, 8]), Recording(), projector_hidden_dims=[16], projector_dim=8,
                  queue_size=6, symmetric=True, queue_per_view=True, mask_same_image=True)
    assert len(method.queues) == 2 and not hasattr(method, "queue")
    for view, queue in enumerate(method.queues):  # view 1's queue holds image 7, view 2's image 8
        queue.push(F.normalize(torch.randn(6, 8), dim=1), torch.full((6,), 10 + view), torch.full((6,), 7 + view))
    x1, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    method((x1, x2), torch.zeros(2, dtype=torch.long), torch.tensor([7, 8]))
    first, second = calls
    assert first["candidates"] is method.queues[1].embeddings and second["candidates"] is method.queues[0].embeddings
    assert first["candidate_labels"].tolist() == [11] * 6 and second["candidate_labels"].tolist() == [10] * 6
    assert first["candidate_mask"].tolist() == [[True] * 6, [False] * 6]  # image 8 is in the view-2 queue
    assert second["candidate_mask"].tolist() == [[False] * 6, [True] * 6]  # image 7 in the view-1 queue
    assert MoCo.candidates_per_anchor({"queue_size": 6, "queue_per_view": True}, 2) == 6


def test_queue_per_view_state_dict_restores_both_queues_and_refuses_the_other_layout():
    """Both queues (rows, labels, indices, pointer) are in the state dict and come back; a checkpoint of the
    one-queue layout, or the other way round, is refused naming method.queue_per_view."""
    from cl_suite.engine import checkpoint as ckpt

    method = make(queue_size=12, symmetric=True, queue_per_view=True)
    one_step(method, torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.arange(4))
    state = method.state_dict()
    assert {f"queues.{v}.{key}" for v in (0, 1) for key in ("embeddings", "labels", "indices", "ptr", "filled")} <= set(state)
    assert not any(key.startswith("queue.") for key in state)
    fresh = make(queue_size=12, symmetric=True, queue_per_view=True)
    fresh.load_state_dict(state)
    for ours, saved in zip(fresh.queues, method.queues):
        for key in ("embeddings", "labels", "indices", "ptr", "filled"):
            assert torch.equal(getattr(ours, key), getattr(saved, key))
    assert int(fresh.queues[0].ptr) == int(fresh.queues[1].ptr) == 4
    shared = make(queue_size=12, symmetric=True)
    for saved_flag, source, target in [(True, method, shared), (False, shared, method)]:
        saved_cfg = {"method": {"symmetric": True, "queue_per_view": saved_flag}}
        current_cfg = {"method": {"symmetric": True, "queue_per_view": not saved_flag}}
        with pytest.raises(ckpt.CheckpointError, match=(
                f"method.queue_per_view: checkpoint {saved_flag}, this run {not saved_flag}")):
            ckpt.load_state_or_explain(target, source.state_dict(), "last.pt", "method", saved_cfg, current_cfg)


def test_a_moco_checkpoint_from_before_queue_per_view_resumes_as_one_queue_without_a_change():
    from cl_suite.engine import checkpoint as ckpt

    current = {"method": {"_target_": "cl_suite.methods.MoCo", "symmetric": True, "queue_per_view": False}}
    saved = {"method": {"_target_": "cl_suite.methods.MoCo", "symmetric": True}}
    assert ckpt.config_differences(saved, current, ("method",))  # without the default: a false "change"
    assert ckpt.config_differences(ckpt.with_added_defaults(saved, current), current, ("method",)) == []
    per_view = {"method": {**current["method"], "queue_per_view": True}}
    assert ckpt.config_differences(ckpt.with_added_defaults(saved, per_view), per_view, ("method",)) == [
        "method.queue_per_view: checkpoint False, this run True"]
