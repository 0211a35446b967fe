"""CMC's NCE criterion (method.criterion=nce): the loss, its gradients and the normaliser Z against an
independent transcription of CMC's computation, Z as checkpointed state, the sampler check, a real run.

Run as a script (``python tests/test_cmc_nce.py out.pt``, or under torchrun) it does two training
steps of CMC with the NCE criterion on 1 or 2 processes and saves the state, for the DDP test below.
"""
import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from cl_suite.engine.build import DatasetFacts, build_method
from cl_suite.engine.trainer import train
from cl_suite.engine.validation import ConfigError, validate_train_config
from cl_suite.methods import CMC
from cl_suite.methods.cmc import cmc_nce_log_z, cmc_nce_loss
from cl_suite.models import SmallConvNet
from cl_suite.samplers import RingSampler, UniformSampler
from helpers import TINY, compose_train

EPS = 1e-7


# ---- CMC's computation, transcribed from its behaviour (rows given by index, column 0 the own row) ----

def reference_scores(l, ab, memory_l, memory_ab, idx, temperature, z_l, z_ab, n):
    """exp(s/T) / Z of the L anchors against the ab memory and of the ab anchors against the L memory,
    at the rows ``idx`` (B, K+1); a Z below 0 is first set to N times the mean of exp(s/T)."""
    out_l = torch.exp(torch.einsum("bkd,bd->bk", memory_ab[idx], l) / temperature)
    out_ab = torch.exp(torch.einsum("bkd,bd->bk", memory_l[idx], ab) / temperature)
    if z_l < 0:
        z_l = out_l.mean().item() * n
    if z_ab < 0:
        z_ab = out_ab.mean().item() * n
    return out_l / z_l, out_ab / z_ab, z_l, z_ab


def reference_criterion(probs, n):
    """Binary NCE: the positive (column 0) as data, the K other columns as noise of Pn = 1/N."""
    k = probs.shape[1] - 1
    noise = k / n
    log_data = torch.log(probs[:, 0] / (probs[:, 0] + noise + EPS))
    log_noise = torch.log(torch.full_like(probs[:, 1:], noise) / (probs[:, 1:] + noise + EPS))
    return -(log_data.sum() + log_noise.sum()) / probs.shape[0]


def reference_loss(l, ab, memory_l, memory_ab, idx, temperature, n, z_l=-1.0, z_ab=-1.0):
    out_l, out_ab, z_l, z_ab = reference_scores(l, ab, memory_l, memory_ab, idx, temperature, z_l, z_ab, n)
    return reference_criterion(out_l, n) + reference_criterion(out_ab, n), z_l, z_ab


def rows_of(own, drawn):
    """The (B, K+1) row indices the loss sees: own row first, then the drawn rows (shared or per anchor)."""
    drawn = drawn if drawn.ndim == 2 else drawn[None].expand(len(own), -1)
    return torch.cat([own[:, None], drawn], dim=1)


def suite_loss(l, ab, memory_l, memory_ab, idx, temperature, n, log_z=None):
    """The suite's functions on the same rows (both directions, summed)."""
    logits_l = torch.einsum("bkd,bd->bk", memory_ab[idx], l) / temperature
    logits_ab = torch.einsum("bkd,bd->bk", memory_l[idx], ab) / temperature
    if log_z is None:
        log_z = cmc_nce_log_z(logits_l, n), cmc_nce_log_z(logits_ab, n)
    return cmc_nce_loss(logits_l, log_z[0], n) + cmc_nce_loss(logits_ab, log_z[1], n), log_z


def unit(*shape, generator):
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("per_anchor", [False, True], ids=["shared_draws", "per_anchor_draws"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_loss_gradients_and_z_equal_cmc_computation(per_anchor, temperature):
    g = torch.Generator().manual_seed(0)
    n, b, k, d = 13, 5, 9, 7
    memory_l, memory_ab = unit(n, d, generator=g), unit(n, d, generator=g)
    own = torch.tensor([0, 4, 7, 8, 12])
    drawn = torch.randint(n, (b, k) if per_anchor else (k,), generator=g)
    drawn[..., 0] = own[0]  # the own row drawn as noise stays noise: covered
    idx = rows_of(own, drawn)

    def both(l, ab, **kw):
        leaves = [t.clone().requires_grad_(True) for t in (l, ab)]
        ref, z_l, z_ab = reference_loss(*leaves, memory_l, memory_ab, idx, temperature, n, **kw)
        ref_grads = torch.autograd.grad(ref, leaves)
        mine_leaves = [t.clone().requires_grad_(True) for t in (l, ab)]
        log_z = None if not kw else (math.log(kw["z_l"]), math.log(kw["z_ab"]))
        mine, log_z = suite_loss(*mine_leaves, memory_l, memory_ab, idx, temperature, n, log_z)
        mine_grads = torch.autograd.grad(mine, mine_leaves)
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=0)
        for a, r in zip(mine_grads, ref_grads):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-14)
        return z_l, z_ab, log_z

    # First batch: Z is estimated from it (N * mean exp(s/T), per direction, positives included).
    z_l, z_ab, log_z = both(unit(b, d, generator=g), unit(b, d, generator=g))
    torch.testing.assert_close(torch.stack(log_z).exp(), torch.tensor([z_l, z_ab], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    assert z_l != z_ab
    # Later batches: the same Z, fixed.
    both(unit(b, d, generator=g), unit(b, d, generator=g), z_l=z_l, z_ab=z_ab)


def test_loss_is_finite_where_exp_of_the_scores_overflows():
    logits = torch.tensor([[1.0, 0.9, -1.0], [0.2, 1.0, 0.5]]) / 1e-3  # exp(1000): inf in float32
    loss = cmc_nce_loss(logits, cmc_nce_log_z(logits, 50), 50)
    expected = cmc_nce_loss(logits.double(), cmc_nce_log_z(logits.double(), 50), 50)
    assert torch.isfinite(loss) and math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


# ---- the method ----

def make(criterion="nce", sampler=None, num_samples=10, **kwargs):
    torch.manual_seed(0)
    return CMC(SmallConvNet(widths=[4]), sampler or UniformSampler(), num_samples=num_samples, mean=[0.5] * 3,
               std=[0.25] * 3, projector_dim=6, criterion=criterion, **kwargs)


def record_draws(method):
    seen = []
    draw = method.bank_l.draw

    def recording(count, device):
        seen.append(draw(count, device))
        return seen[-1]
    method.bank_l.draw = recording
    return seen


def embeddings(method, x):
    h_l, h_ab = method._lab_features(x)
    return F.normalize(method.l_projector(h_l), dim=1), F.normalize(method.ab_projector(h_ab), dim=1)


def test_method_loss_z_and_gradients_match_cmc_and_z_is_fixed_after_the_first_step():
    method = make(num_negatives=7, temperature=0.2)
    seen = record_draws(method)
    n = len(method.bank_l)
    own = torch.tensor([1, 4, 6])
    zs = []
    for step in range(2):
        x = torch.randn(3, 3, 8, 8)
        memory_l, memory_ab = method.bank_l.embeddings.clone(), method.bank_ab.embeddings.clone()
        out = method((x, x), torch.tensor([0, 1, 2]), own)
        z_l, z_ab = (-1.0, -1.0) if step == 0 else zs[0]
        ref, z_l, z_ab = reference_loss(*embeddings(method, x), memory_l, memory_ab, rows_of(own, seen[-1]),
                                        0.2, n, z_l=z_l, z_ab=z_ab)
        torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)
        params = list(method.l_projector.parameters()) + list(method.ab_stem.parameters())
        for a, r in zip(torch.autograd.grad(out.loss, params), torch.autograd.grad(ref, params)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(method.z_l.item(), z_l, rtol=1e-5, atol=0)
        torch.testing.assert_close(method.z_ab.item(), z_ab, rtol=1e-5, atol=0)
        zs.append((method.z_l.item(), method.z_ab.item()))
        method.after_step(out.memory, step, 2)
    assert zs[1] == zs[0]  # estimated once, bit for bit the same afterwards
    # The MethodOutput contract, with the sampler's diagnostics and the NCE numbers.
    assert out.loss.ndim == 0 and out.features.shape == (3, method.num_features)
    assert torch.equal(out.feature_labels, torch.tensor([0, 1, 2]))
    assert {"sim/positive_mean", "sim/negative_mean", "negatives/effective", "hist/negative",
            "nce/log_z_l", "nce/log_z_ab", "nce/loss_l", "nce/loss_ab", "nce/p_positive_l"} <= set(out.stats)
    assert out.stats["negatives/effective"].item() == pytest.approx(7)
    assert out.stats["nce/log_z_l"].item() == pytest.approx(math.log(zs[0][0]), rel=1e-6)
    torch.testing.assert_close(out.stats["nce/loss_l"] + out.stats["nce/loss_ab"], out.loss.detach())
    assert all(not v.requires_grad for v in out.stats.values())


def test_z_survives_a_state_dict_round_trip_and_a_load_replaces_an_estimate():
    x, labels, indices = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 5, 9])
    trained = make()
    assert trained.z_l.item() == -1.0 == trained.z_ab.item()
    trained((x, x), labels, indices)
    state = trained.state_dict()
    assert state["z_l"].item() > 0 and state["z_ab"].item() > 0 and state["z_l"].dtype == torch.float64
    other = make()
    other((-x, -x), labels, indices)  # its own, different estimate ...
    assert other.z_l.item() != trained.z_l.item()
    other.load_state_dict(state)  # ... replaced by the checkpoint's, and kept at the next step
    other((torch.randn(4, 3, 8, 8),) * 2, labels, indices)
    assert other.z_l.item() == state["z_l"].item() and other.z_ab.item() == state["z_ab"].item()
    assert "z_l" not in make(criterion="softmax").state_dict()  # the softmax form's state is unchanged


def test_an_evaluation_call_before_training_keeps_no_estimate():
    method = make().eval()
    x = torch.randn(2, 3, 8, 8)
    out = method((x, x), torch.tensor([0, 1]), torch.tensor([3, 4]))
    assert torch.isfinite(out.loss) and method.z_l.item() == -1.0 == method.z_ab.item()


def test_other_samplers_are_refused_with_the_key_and_the_sampler():
    with pytest.raises(ValueError, match=r"method\.criterion=nce cannot be used with sampler=ring \(RingSampler\)"
                                         r".*allowed: sampler=uniform"):
        make(sampler=RingSampler())
    with pytest.raises(ValueError, match=r"method\.criterion='hinge' is not allowed: expected one of softmax, nce"):
        make(criterion="hinge")
    make(criterion="softmax", sampler=RingSampler())


@pytest.mark.parametrize("overrides", [["method=cmc", "sampler=hard"], ["method=cmc_ring"]])
def test_composed_config_with_another_sampler_is_refused(overrides):
    cfg = compose_train(TINY + overrides + ["method.criterion=nce"])
    validate_train_config(cfg)
    with pytest.raises(ValueError, match=r"method\.criterion=nce cannot be used with sampler="):
        build_method(cfg, DatasetFacts(num_samples=20, num_classes=10))


def test_unknown_criterion_fails_the_start_up_check():
    with pytest.raises(ConfigError, match=r"method\.criterion='hinge' is not allowed: expected one of 'softmax', 'nce'"):
        validate_train_config(compose_train(TINY + ["method=cmc", "method.criterion=hinge"]))


def test_two_step_training_run_with_the_nce_criterion(tmp_path):
    cfg = compose_train(TINY + ["method=cmc", "method.criterion=nce", "trainer.max_steps=2",
                                "trainer.eval_at_init=false", "evaluation.linear.epochs=1"], tmp_path)
    assert cfg.method.criterion == "nce" and cfg.sampler._target_.endswith("UniformSampler")
    final = train(cfg)
    assert final["step"] == 2
    record = json.loads((tmp_path / "metrics.json").read_text())["epochs"][-1]
    assert math.isfinite(record["train/epoch_loss"])
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["method"]
    assert state["z_l"].item() > 0 and state["z_ab"].item() > 0
    # Set on the first step, then fixed: both steps report the same log Z.
    assert record["diag/nce/log_z_l"] == pytest.approx(math.log(state["z_l"].item()), rel=1e-6)
    assert 0 <= record["diag/negatives/false_negative_rate"] <= 1


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    """Two steps (the first estimates Z from both processes' scores, the second uses it): parameters,
    banks and Z of 2 processes x B/2 equal 1 process x B."""
    from test_ddp import one_and_two_processes

    one, two = one_and_two_processes("test_cmc_nce.py", tmp_path)
    assert one["method.z_l"].item() > 0
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-6, msg=key)


def _two_steps_on_this_many_processes(out_path: str) -> None:
    from helpers import LinearBackbone, one_step

    from cl_suite.distributed import cleanup_distributed, get_rank, get_world_size, init_distributed

    init_distributed("cpu")
    rank, world = get_rank(), get_world_size()
    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)) for _ in range(2)]
    labels = torch.arange(8) % 3
    torch.manual_seed(4)
    cmc = CMC(LinearBackbone(), UniformSampler(), num_samples=8, mean=[0.5] * 3, std=[0.25] * 3,
              temperature=0.3, projector_dim=6, num_negatives=5, criterion="nce")
    for step, (x1, x2) in enumerate(batches):
        torch.manual_seed(7 + step)  # the same generator state on every process, as the trainer's seeding gives
        state = one_step(cmc, x1, x2, labels, rank, world)
    if rank == 0:
        torch.save(state, out_path)
    cleanup_distributed(wait_for_all=True)  # rank 0 has written its file before any process exits


if __name__ == "__main__":
    _two_steps_on_this_many_processes(sys.argv[1])
