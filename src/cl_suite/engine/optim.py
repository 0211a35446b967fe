"""Optimizers: parameter groups, LARS, and the linear learning-rate scaling rule."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cl_suite.errors import as_written

# Keys of an optimizer config that configure the suite, not the optimizer's constructor.
SUITE_KEYS = ("name", "batch_size_reference", "exclude_bias_and_norm")


TRUST_DENOMINATORS = ("update_norm", "grad_and_decay_norms")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017).

    For each parameter with ``lars_adaptation`` on, the update u = g + wd * w is scaled by the trust ratio

        trust_denominator="update_norm" (default):   eta * ||w|| / ||g + wd * w||
            as SimCLR's LARS (google-research/simclr, lars_optimizer.py: the norm of the decayed gradient);
        trust_denominator="grad_and_decay_norms":    eta * ||w|| / (||g|| + wd * ||w|| + 1e-8)
            as lightning-bolts' LARS, which solo-learn (solo/utils/lars.py) and the NNCLR/KMCLR CIFAR-100
            code (mwritescode/nnclr-cifar100, src/utils/training/optim.py) copy;

    1 where either norm is zero (with grad_and_decay_norms that parameter's step is then the bare gradient,
    without the decay, as in those codes; SimCLR's decayed update has a norm whenever w does). ``clip_lr`` (solo-learn's ``clip_lars_lr``): the scale is
    min(trust / lr, 1) with lr the group's current (scheduled) rate, so the layer's effective rate is
    min(trust, lr) instead of lr * trust. The step is w -= lr * v with v = momentum * v + scaled update
    (PyTorch's SGD momentum; the first step's buffer is the update). As in SimCLR and BYOL, biases and
    normalisation parameters are usually excluded from both weight decay and the adaptation:
    ``build_optimizer`` puts them in a group with ``lars_adaptation=False`` (plain momentum SGD).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 lars_adaptation: bool = True, clip_lr: bool = False, trust_denominator: str = "update_norm"):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: need lr > 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        if trust_denominator not in TRUST_DENOMINATORS:
            raise ValueError(f"optimizer.trust_denominator={as_written(trust_denominator)} is not allowed: expected "
                             f"one of {', '.join(TRUST_DENOMINATORS)}")
        if not isinstance(clip_lr, bool):
            raise ValueError(f"optimizer.clip_lr={as_written(clip_lr)} is not allowed: expected true or false")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_adaptation=lars_adaptation, clip_lr=clip_lr,
                                      trust_denominator=trust_denominator))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # One multi-tensor (_foreach) kernel per operation over all the group's parameters instead of a
        # Python loop of small kernels per parameter: a ResNet-50 has 161 parameter tensors.
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            weight_decay = group["weight_decay"]
            grad_and_decay = group.get("trust_denominator", "update_norm") == "grad_and_decay_norms"
            updates = grads
            if weight_decay != 0 and not (group["lars_adaptation"] and grad_and_decay):
                updates = torch._foreach_add(grads, params, alpha=weight_decay)
            if group["lars_adaptation"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                if grad_and_decay:
                    g_norm = torch.stack(torch._foreach_norm(grads))
                    denominator = g_norm + weight_decay * w_norm + 1e-8
                else:
                    g_norm = torch.stack(torch._foreach_norm(updates))
                    denominator = g_norm
                adapted = (w_norm > 0) & (g_norm > 0)  # elsewhere the scale is 1 (and never clipped)
                if grad_and_decay and weight_decay != 0:
                    # lightning-bolts/solo-learn add the decay only inside their `p_norm != 0 and g_norm != 0`
                    # branch: a parameter with an all-zero gradient (or all-zero weights) is left undecayed.
                    decay = list((adapted * weight_decay).to(grads[0].dtype).unbind())
                    updates = torch._foreach_add(grads, torch._foreach_mul(params, decay))
                trust = torch.where(adapted, group["eta"] * w_norm / denominator, torch.ones_like(w_norm))
                if group.get("clip_lr", False):
                    trust = torch.where(adapted, (trust / group["lr"]).clamp(max=1.0), trust)
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            old = [i for i, buf in enumerate(buffers) if buf is not None]
            if old:
                old_buffers = [buffers[i] for i in old]
                torch._foreach_mul_(old_buffers, group["momentum"])
                torch._foreach_add_(old_buffers, [updates[i] for i in old])
            for i, buf in enumerate(buffers):  # the first step of a parameter: the buffer is its update
                if buf is None:
                    buffers[i] = self.state[params[i]]["momentum_buffer"] = updates[i].clone()
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


def _is_bias_or_norm(name: str, param: torch.Tensor) -> bool:
    # Biases and the affine parameters of BN/LayerNorm/GroupNorm are the 1-d tensors.
    return param.ndim <= 1


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if exclude_bias_and_norm and _is_bias_or_norm(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        # lars_adaptation is read by LARS only; other optimizers keep it as an inert group key.
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adaptation": False})
    return groups


def scaled_lr(cfg: DictConfig, global_batch_size: int) -> float:
    """``lr`` is given for ``batch_size_reference`` images; scale it linearly (Goyal et al. 2017)."""
    ref = cfg.get("batch_size_reference")
    return float(cfg.lr) * (global_batch_size / ref if ref else 1.0)


def build_optimizer(cfg: DictConfig, model: nn.Module, global_batch_size: int) -> torch.optim.Optimizer:
    ctor = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in SUITE_KEYS])
    groups = parameter_groups(model, float(cfg.get("weight_decay", 0.0)), bool(cfg.exclude_bias_and_norm))
    from cl_suite.engine.build import instantiate_unwrapped  # build imports the model side; keep optim light

    return instantiate_unwrapped(ctor, params=groups, lr=scaled_lr(cfg, global_batch_size), _convert_="all")
