"""MoCo: the momentum rule, the FIFO queue (wrap, contents), the schedule."""
import copy

import pytest
import torch

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
