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
# two (dim, K) queues, queue[0] of view-1 keys and queue[1] of view-2 keys, both written at the same ptr
# (K % B asserted); the momentum update after the optimizer step with tau_s = final - (final - base) *
# (cos(pi s / S) + 1) / 2 for the s-th step (s from 0). The suite keeps one queue for both views: the
# documented difference, asserted below.

class AuthorsMoCo:
    def __init__(self, method, m, t):
        self.key_net = copy.deepcopy(method.key_encoder).double().train()
        for pk, pq in zip(self.key_net.parameters(), method.query_parameters()):
            pk.data.copy_(pq.data)  # param_k.data.copy_(param_q.data)
        self.queue = method.queue.embeddings.double().T.clone()  # (dim, K)
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


def test_solo_mocov2plus_recipe_steps_equal_solo_learn_up_to_the_documented_shared_queue():
    """Three steps of the solo_mocov2plus_cifar10 recipe's method (queue 16, batch 4) against the
    solo-learn transcription above: the key encoder follows solo-learn's cosine tau (0.99 -> 0.999, s-th
    step's tau after its optimizer step). The documented difference (the recipe's comment): solo-learn
    keeps one queue per view (q1 meets past view-2 keys, q2 past view-1 keys), the suite one queue that
    receives both views' keys (view 2's, then view 1's, 2B rows a step) and serves both directions. So
    the loss equals solo-learn's at the first step (both of its queues started as the suite's rows), and
    at every step equals solo-learn's loss function applied to the suite's shared queue; after the first
    write it differs from solo-learn's."""
    method, cfg = moco_preset("experiment=solo_mocov2plus_cifar10", "method.queue_size=16")
    c = cfg.method
    assert (c.symmetric, c.momentum, c.momentum_final, c.temperature, c.shuffle_bn, c.queue_size) == \
        (True, 0.99, 0.999, 0.2, False, 16)
    solo = AuthorsMoCo(method, None, c.temperature)
    queues = [solo.queue.clone(), solo.queue.clone()]  # solo-learn's queue[0] (view-1 keys), queue[1] (view 2)
    shared = solo.queue.clone()  # the suite's documented queue, written with solo-learn's FIFO
    shared_ptr = 0
    params = method.query_parameters()
    total = 3
    for step in range(total):
        g = torch.Generator().manual_seed(10 + step)
        x1, x2 = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
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
        solo.momentum_update(params, tau)  # on_train_batch_end, after the optimizer step
        for ours, ref in zip(method.key_parameters(), solo.key_net.parameters()):
            torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(method.queue.embeddings.double(), shared.T, rtol=1e-5, atol=1e-6)
        assert int(method.queue.ptr) == shared_ptr
    # solo-learn's queues after three steps: view-1 keys in queue[0], view-2 keys in queue[1], 12 columns each
    assert not torch.allclose(queues[0][:, :12], queues[1][:, :12])
