"""What every framework gives the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.distributed import mean_over_processes
from cl_suite.errors import ConfigError
from cl_suite.samplers.base import NegativeSampler, class_name


def unit_projection(projector: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The L2-normalised projections every contrastive loss here compares, in fp32 (also under autocast:
    the losses are computed in fp32)."""
    return F.normalize(projector(features).float(), dim=1)


@dataclass
class MethodOutput:
    loss: torch.Tensor  # scalar training loss
    features: torch.Tensor  # (n, F) detached backbone features, for the online probe
    feature_labels: torch.Tensor  # (n,) labels aligned with ``features`` (-1 = unlabelled)
    # detached diagnostics; may be empty on a step that records none (``set_progress``)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    # What this step writes into the method's memory (queue, bank, support set): detached, all-gathered
    # tensors that the loop hands back to ``after_step`` once the optimizer has stepped. None: nothing.
    memory: tuple[torch.Tensor, ...] | None = None


def check_output(method: nn.Module, out: object) -> None:
    """What a method's ``forward`` returned must be a ``MethodOutput`` with a scalar loss and one label per
    feature row (the loop backpropagates the loss, the online probe reads the features); a method of one's
    own that returns something else is named here instead of failing deep in the loop. Shapes only."""
    if not isinstance(out, MethodOutput):
        raise ConfigError(f"method._target_={class_name(method)!r}: forward returned {type(out).__name__}; "
                          "expected cl_suite.methods.base.MethodOutput(loss=<scalar>, features=<(n, F)>, "
                          "feature_labels=<(n,)>)")
    if not isinstance(out.loss, torch.Tensor) or out.loss.ndim != 0:
        got = tuple(out.loss.shape) if isinstance(out.loss, torch.Tensor) else type(out.loss).__name__
        raise ConfigError(f"method._target_={class_name(method)!r}: forward returned a loss of shape {got}; "
                          "expected a scalar (shape (), e.g. the mean over anchors)")
    if out.features.ndim != 2 or out.feature_labels.shape != out.features.shape[:1]:
        raise ConfigError(f"method._target_={class_name(method)!r}: forward returned features of shape "
                          f"{tuple(out.features.shape)} and feature_labels of shape {tuple(out.feature_labels.shape)}; "
                          "expected (n, F) and (n,)")


class ContrastiveMethod(nn.Module):
    """A framework: owns the backbone, its heads and any state (queues, banks, momentum encoders).

    ``forward(views, labels, indices)`` returns a ``MethodOutput``. State that must survive a restart
    lives in parameters or buffers, so the module's ``state_dict`` is the whole method state.
    """

    backbone: nn.Module
    needs_labels = False  # True: every pre-training image needs a class label (SupCon, RINCE, supervised)

    @classmethod
    def candidates_per_anchor(cls, method_cfg: Any, batch_size: int, dataset_size: int | None = None) -> int | None:
        """How many candidate negatives each anchor of this framework has, from its config group
        (``method_cfg``, read before anything is built: ``cl_suite.samplers.base.config_value``), the
        global batch size and, once the data set is read, its size (``dataset_size``; None before).
        The sampler's start-up check (``NegativeSampler.check_candidates``) is run against it.

        None: no fixed count to check, either because the method has no negative candidates (a loss
        with several positives per anchor: SupCon, RINCE, supervised; the default) or because the
        count needs the data set's size and ``dataset_size`` is None. A method with a ``sampler``
        declares its count here, so the sampler's requirements are checked at start-up."""
        return None

    @classmethod
    def candidates_source(cls, method_cfg: Any, batch_size: int, dataset_size: int | None = None) -> str:
        """Where ``candidates_per_anchor``'s candidates come from, in words, for the start-up messages
        ("... larger than the 126 candidate negatives per anchor of <this>")."""
        return f"method={cls.__name__} with trainer.batch_size={batch_size}"

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The representation that is evaluated (kNN, linear probe): the backbone's pooled features."""
        return self.backbone(images)

    # Whether the current step computes its per-step diagnostics (``MethodOutput.stats``); see set_progress.
    record_diagnostics = True

    def set_progress(self, step: int, steps_per_epoch: int, record_diagnostics: bool = True) -> None:
        """Training progress (optimizer steps taken, steps per epoch), set before every step, for
        schedules inside the method's sampler (ring and HCL annealing, MoCHi start epochs).

        ``record_diagnostics``: whether this step's diagnostics are recorded (the loop's log steps and
        the last step of each epoch). When False the sampler skips them (``NegativeSampler``) and so may
        the method: its ``stats`` may be empty; the loss must be the same either way."""
        self.record_diagnostics = bool(record_diagnostics)
        sampler = getattr(self, "sampler", None)  # a method's negative sampler, if it has one
        if isinstance(sampler, NegativeSampler):
            sampler.set_progress(step, steps_per_epoch, record_diagnostics)

    def after_step(self, memory: tuple[torch.Tensor, ...] | None, step: int, total_steps: int) -> None:
        """Called by the loop after each optimizer step with the step's ``MethodOutput.memory``: memory
        writes (enqueueing, bank updates) and momentum updates go here, never in forward, so the loss and
        its backward saw the memory as it was before the step."""

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Called by the loop after each optimizer step (after ``after_step``) with the step's loss. A sampler
        whose schedule follows the loss (``NegativeSampler.follows_loss``: the ring's ``anneal=adaptive_loss``)
        gets its mean over all processes, the global batch's loss (an all-reduce and a host sync per step,
        only then); nothing happens otherwise."""
        sampler = getattr(self, "sampler", None)
        if isinstance(sampler, NegativeSampler) and sampler.follows_loss:
            sampler.observe_loss(mean_over_processes(loss.detach().float()))

    def observe_accuracy(self, accuracy: float) -> None:
        """Called by the loop after each evaluation during training with its kNN top-1 (%): handed to a
        sampler that follows it (``NegativeSampler.follows_accuracy``: the ring's
        ``anneal=adaptive_accuracy``), averaged over the processes, which evaluate the same weights on
        the same data, so that a last-bit difference between devices cannot split their rings."""
        sampler = getattr(self, "sampler", None)
        if isinstance(sampler, NegativeSampler) and sampler.follows_accuracy:
            value = torch.tensor(float(accuracy), dtype=torch.float64, device=next(self.parameters()).device)
            sampler.observe_accuracy(mean_over_processes(value))

    def epoch_diagnostics(self) -> dict[str, float]:
        """Method-specific numbers for the epoch record (e.g. k-means cluster usage), read once per epoch."""
        return {}
