"""LARS, parameter groups and the warm-up + cosine schedule against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from cl_suite.engine.optim import LARS, parameter_groups
from cl_suite.engine.schedule import warmup_cosine, warmup_cosine_factor


def test_lars_step_matches_the_trust_ratio_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    w.grad = torch.randn(5, 3)
    w0, g = w.detach().clone(), w.grad.clone()
    lr, wd, eta = 0.5, 1e-2, 0.02
    LARS([w], lr=lr, momentum=0.9, weight_decay=wd, eta=eta).step()
    d = g + wd * w0
    trust = eta * w0.norm() / d.norm()
    torch.testing.assert_close(w.detach(), w0 - lr * trust * d)


def test_lars_momentum_accumulates_scaled_updates():
    w = nn.Parameter(torch.ones(4))
    opt = LARS([w], lr=0.25, momentum=0.5, eta=1.0)
    updates = []
    for _ in range(2):
        before = w.detach().clone()
        w.grad = torch.ones(4)
        opt.step()
        updates.append(before - w.detach())
    # step 1: trust = ||w0||/||g|| = 1, buffer = g; step 2: buffer = 0.5 g + (||w1||/||g||) g
    torch.testing.assert_close(updates[0], torch.full((4,), 0.25))
    w1 = torch.full((4,), 0.75)
    torch.testing.assert_close(updates[1], 0.25 * (0.5 + w1.norm() / 2) * torch.ones(4))


def lars_reference_step(params, buffers, lr, momentum, wd, eta, adapt):
    """One LARS step per parameter in plain Python (You et al. 2017, as SimCLR's LARS)."""
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        d = p.grad + wd * p.detach()
        if adapt:
            w_norm, g_norm = p.detach().norm(), d.norm()
            d = d * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
        buffers[i] = d.clone() if buffers[i] is None else momentum * buffers[i] + d
        p.data -= lr * buffers[i]


def test_multi_tensor_lars_matches_a_per_parameter_loop_over_steps_and_groups():
    torch.manual_seed(0)
    shapes = [(6, 4), (4,), (3, 3, 2), (5,)]
    fast = [nn.Parameter(torch.randn(s)) for s in shapes]
    fast[3].data.zero_()  # a zero weight: trust ratio 1
    slow = [nn.Parameter(p.detach().clone()) for p in fast]
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], "weight_decay": 0.0, "lars_adaptation": False}]
    opt = LARS(groups(fast), lr=0.3, momentum=0.9, weight_decay=1e-2, eta=0.02)
    buffers = [None] * len(slow)
    for step in range(4):
        grads = [torch.randn(s) for s in shapes]
        grads[1] = torch.zeros(shapes[1])  # a zero gradient: trust ratio 1
        for i, (f, s_, g) in enumerate(zip(fast, slow, grads)):
            # parameter 2 joins at step 2 (no gradient before): its buffer starts then
            f.grad = s_.grad = None if (i == 2 and step < 2) else g.clone()
        opt.step()
        lars_reference_step(slow[:3], buffers, 0.3, 0.9, 1e-2, 0.02, adapt=True)
        tail = buffers[3:]
        lars_reference_step(slow[3:], tail, 0.3, 0.9, 0.0, 0.02, adapt=False)
        buffers[3:] = tail
        for f, s_ in zip(fast, slow):
            torch.testing.assert_close(f.detach(), s_.detach(), rtol=1e-6, atol=1e-7)


def solo_learn_lars_step(params, buffers, lr, momentum, wd, eta, clip):
    """A transcription of solo-learn's LARS step (solo/utils/lars.py, copied from lightning-bolts), for the
    parameters it adapts: trust = eta ||p|| / (||g|| + wd ||p|| + eps) from the raw gradient's norm, with
    ``clip_lars_lr`` scaled to min(trust / lr, 1); then d = (g + wd p) * trust, PyTorch SGD momentum."""
    for i, p in enumerate(params):
        d = p.grad
        p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
        if p_norm != 0 and g_norm != 0:
            lars_lr = p_norm / (g_norm + p_norm * wd + 1e-8) * eta
            if clip:
                lars_lr = min(lars_lr / lr, 1)
            d = d.add(p, alpha=wd) * lars_lr
        buffers[i] = torch.clone(d).detach() if buffers[i] is None else buffers[i].mul_(momentum).add_(d)
        p.data.add_(buffers[i], alpha=-lr)


@pytest.mark.parametrize("clip", [False, True])
def test_lars_with_solo_learns_trust_ratio_and_clip_matches_its_code(clip):
    # lr changes between steps (as under a schedule): the clip compares trust with the current rate. The
    # rates fall below the trust ratios, so the clip binds.
    torch.manual_seed(0)
    shapes = [(6, 4), (3, 3, 2), (8, 5)]
    fast = [nn.Parameter(torch.randn(s)) for s in shapes]
    slow = [nn.Parameter(p.detach().clone()) for p in fast]
    unclipped = [nn.Parameter(p.detach().clone()) for p in fast]
    opt = LARS(fast, lr=0.4, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=clip,
               trust_denominator="grad_and_decay_norms")
    plain = LARS(unclipped, lr=0.4, momentum=0.9, weight_decay=1e-4, eta=0.02, trust_denominator="grad_and_decay_norms")
    buffers = [None] * len(slow)
    for step, lr in enumerate([0.4, 0.01, 0.005]):
        for group in opt.param_groups + plain.param_groups:
            group["lr"] = lr
        grads = [torch.randn(s) * (10.0 ** (i - 1)) for i, s in enumerate(shapes)]
        if step == 1:  # an all-zero gradient: solo-learn neither adapts nor decays that parameter
            grads[1] = torch.zeros(shapes[1])
        for f, s_, u, g in zip(fast, slow, unclipped, grads):
            f.grad, s_.grad, u.grad = g.clone(), g.clone(), g.clone()
        opt.step()
        plain.step()
        solo_learn_lars_step(slow, buffers, lr, 0.9, 1e-4, 0.02, clip)
        for f, s_ in zip(fast, slow):
            torch.testing.assert_close(f.detach(), s_.detach(), rtol=1e-6, atol=1e-7)
    clipped_layers = sum(not torch.allclose(f, u, rtol=0, atol=1e-7) for f, u in zip(fast, unclipped))
    assert (clipped_layers > 0) == clip  # the clip binds here (the rates fall below the trust ratios)
    # the two forms differ: the default divides by the decayed gradient's norm
    moved, grad = [], torch.randn_like(slow[0])
    for form in ("update_norm", "grad_and_decay_norms"):
        w = nn.Parameter(slow[0].detach().clone())
        w.grad = grad.clone()
        LARS([w], lr=0.1, weight_decay=0.5, eta=0.02, trust_denominator=form).step()
        moved.append((w.detach() - slow[0].detach()).norm().item())
    assert moved[0] > 1.05 * moved[1]  # ||g + wd w|| <= ||g|| + wd ||w||: the default's steps are longer


def test_bias_and_norm_parameters_get_no_decay_and_no_adaptation():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    decay, no_decay = parameter_groups(model, weight_decay=0.1, exclude_bias_and_norm=True)
    assert {p.ndim for p in decay["params"]} == {2} and len(decay["params"]) == 2
    assert {p.ndim for p in no_decay["params"]} == {1} and len(no_decay["params"]) == 4
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_adaptation"] is False
    (only,) = parameter_groups(model, weight_decay=0.1, exclude_bias_and_norm=False)
    assert len(only["params"]) == 6


def test_lars_leaves_excluded_group_as_plain_momentum_sgd():
    w = nn.Parameter(torch.full((3,), 2.0))
    w.grad = torch.ones(3)
    LARS([{"params": [w], "weight_decay": 0.0, "lars_adaptation": False}], lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 1.9))


def test_warmup_cosine_values():
    total, warm = 100, 10
    assert warmup_cosine_factor(0, total, warm, 0.0) == pytest.approx(0.1)
    assert warmup_cosine_factor(9, total, warm, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(10, total, warm, 0.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, total, warm, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(100, total, warm, 0.1) == pytest.approx(0.1)
    mid = warmup_cosine_factor(32, total, warm, 0.2)
    assert mid == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))


def scheduled_lrs(opt, sched, steps: int) -> list[float]:
    """The rate of each of ``steps`` optimizer steps under ``sched``."""
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_scheduler_drives_the_optimizer_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, steps_per_epoch=5, total_steps=20, warmup_epochs=1, min_lr_ratio=0.0)
    lrs = scheduled_lrs(opt, sched, 20)
    assert lrs[:5] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    assert lrs[5] == pytest.approx(2.0) and lrs[-1] < 0.05
    with pytest.raises(ValueError, match="min_lr_ratio"):
        warmup_cosine(opt, 5, 20, warmup_epochs=1, min_lr_ratio=2.0)


@pytest.mark.parametrize("warmup_prefix", [True, False])
def test_cosine_after_warmup_matches_timms_cosine_scheduler(warmup_prefix):
    # davidsvy's MoCHi code: timm CosineLRScheduler(t_initial=total, warmup_t=10%, lr_min, t_in_epochs=False),
    # warmup_prefix left at timm's default (False): the recipe's scheduler.warmup_prefix=false. Compared after
    # the warm-up (timm's warm-up starts at warmup_lr_init, the suite's at lr / warmup_steps).
    from timm.scheduler.cosine_lr import CosineLRScheduler

    total, warm, base, lr_min = 1000, 100, 2e-4, 2.5e-6
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    # timm's prefixed cosine lasts t_initial steps after the warm-up; the suite's ends with the run
    timm_sched = CosineLRScheduler(opt, t_initial=total - warm if warmup_prefix else total, lr_min=lr_min,
                                   warmup_lr_init=1e-7, warmup_t=warm, cycle_limit=1, t_in_epochs=False,
                                   warmup_prefix=warmup_prefix)
    for step in [warm, warm + 1, 250, 500, 999, 1000, 1200]:
        expected = timm_sched._get_lr(step)[0]
        ours = base * warmup_cosine_factor(step, total, warm, lr_min / base, warmup_prefix=warmup_prefix)
        assert ours == pytest.approx(expected, rel=1e-9), step
    assert warmup_cosine_factor(warm, total, warm, 0.0, warmup_prefix=False) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.1)))  # 0.976: the rate is already decayed when the warm-up ends


def test_the_online_probe_can_train_as_solo_learns_classifier(tmp_path):
    """probe.optimizer=lars with the run's LARS settings, lr scaled by batch/256, following the backbone's
    warm-up + cosine (schedule=backbone): at every step the probe's rate is its base times the schedule's
    factor, also after a resume; sgd and the refusals."""
    from cl_suite.engine.optim import LARS as SuiteLARS
    from cl_suite.engine.trainer import Trainer
    from cl_suite.engine.validation import ConfigError, validate_train_config
    from helpers import TINY, compose_train

    solo = ["optimizer=lars", "optimizer.clip_lr=true", "optimizer.trust_denominator=grad_and_decay_norms",
            "probe.optimizer=lars", "probe.lr=0.1", "probe.batch_size_reference=256", "probe.schedule=backbone",
            "scheduler.warmup_epochs=1", "trainer.eval_at_init=false"]
    cfg = compose_train(TINY + solo, tmp_path / "run")
    validate_train_config(cfg)
    trainer = Trainer(cfg, torch.device("cpu"))
    opt = trainer.probe_optimizer
    assert isinstance(opt, SuiteLARS) and opt.defaults["clip_lr"] and opt.defaults["trust_denominator"] == (
        "grad_and_decay_norms")
    base = 0.1 * 64 / 256
    weight, bias = opt.param_groups  # the bias is excluded from the adaptation, as solo-learn's
    assert weight["lars_adaptation"] is not False and bias["lars_adaptation"] is False
    for _ in range(3):
        factor = trainer.scheduler.get_last_lr()[0] / trainer.scheduler.base_lrs[0]
        assert weight["lr"] == pytest.approx(base * factor) and factor < 1  # inside the warm-up
        trainer.train_step(next(iter(trainer.batches.epoch(0))), torch.Generator().manual_seed(0))
    trainer.save()
    resumed = Trainer(compose_train(TINY + solo, tmp_path / "run"), torch.device("cpu"))
    factor = resumed.scheduler.get_last_lr()[0] / resumed.scheduler.base_lrs[0]
    assert resumed.step == 3 and resumed.probe_optimizer.param_groups[0]["lr"] == pytest.approx(base * factor)

    sgd = Trainer(compose_train(TINY + ["probe.optimizer=sgd", "probe.lr=0.3", "probe.momentum=0.8"], tmp_path / "s"),
                  torch.device("cpu")).probe_optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.3 and sgd.defaults["momentum"] == 0.8
    with pytest.raises(ConfigError, match="probe.optimizer=lars takes its eta, clip_lr and trust_denominator"):
        validate_train_config(compose_train(TINY + ["probe.optimizer=lars"]))
    with pytest.raises(ConfigError, match=r"probe.optimizer='adam' is not one of"):
        validate_train_config(compose_train(TINY + ["probe.optimizer=adam"]))


def test_warmup_of_a_fraction_of_an_epoch_rounds_to_the_nearest_step():
    """warmup_epochs=0.9 at 3 steps per epoch is round(2.7) = 3 warm-up steps (lr/3, 2lr/3, lr), not 2."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=3.0)
    sched = warmup_cosine(opt, steps_per_epoch=3, total_steps=30, warmup_epochs=0.9, min_lr_ratio=0.0)
    lrs = scheduled_lrs(opt, sched, 4)
    assert lrs == pytest.approx([1.0, 2.0, 3.0, 3.0])


def test_warmup_longer_than_the_run_is_capped_at_the_run():
    """10 warm-up epochs in a 3-epoch run: the warm-up spans the run's 6 steps and reaches the base rate at
    its last step, instead of stopping at 6/20 of it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=6.0)
    sched = warmup_cosine(opt, steps_per_epoch=2, total_steps=6, warmup_epochs=10, min_lr_ratio=0.0)
    lrs = scheduled_lrs(opt, sched, 6)
    assert lrs == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
