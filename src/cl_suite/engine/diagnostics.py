"""Per-epoch sampler diagnostics: summed on the device on the steps that record them, averaged once per epoch."""
from __future__ import annotations

import torch


def is_histogram(value) -> bool:
    """Histograms travel as plain JSON-able dicts: ``{"range": [low, high], "counts": [...]}``."""
    return isinstance(value, dict) and set(value) == {"range", "counts"}


class EpochDiagnostics:
    """Accumulate the ``stats`` tensors a method returns on the steps that record diagnostics (no host
    sync until ``compute``).

    The loop records them only on its log steps (every ``trainer.log_every_steps``-th step) and on the
    last step of each epoch: computing them costs about as much as the loss, so the other steps skip
    them (``NegativeSampler.record_diagnostics``) and are not passed here. Scalars become their mean
    over the recorded steps of the epoch, keyed ``diag/<name>`` (e.g.
    ``diag/negatives/false_negative_rate``); ``hist/*`` count vectors are summed over those steps into
    one histogram over [-1, 1] (cosine similarities). A step with no stats (a skipped non-finite step)
    does not count.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0  # recorded steps

    def reset(self) -> None:
        self.sums, self.steps = {}, 0

    def update(self, stats: dict[str, torch.Tensor]) -> None:
        if not stats:
            return
        for key, value in stats.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.steps += 1

    def compute(self) -> dict:
        out = {}
        scalars = [key for key in self.sums if not key.startswith("hist/")]
        # One device-to-host transfer for all scalar means, not one per value.
        means = torch.stack([self.sums[key] for key in scalars]).tolist() if scalars else []
        for key, total in self.sums.items():
            if key.startswith("hist/"):
                out[f"diag/{key}"] = {"range": [-1.0, 1.0], "counts": total.tolist()}
            else:
                out[f"diag/{key}"] = means[scalars.index(key)] / self.steps
        return out
