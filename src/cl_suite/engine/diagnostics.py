"""Per-epoch sampler diagnostics: summed on the device every step, averaged once per epoch."""
from __future__ import annotations

import torch


def is_histogram(value) -> bool:
    """Histograms travel as plain JSON-able dicts: ``{"range": [low, high], "counts": [...]}``."""
    return isinstance(value, dict) and set(value) == {"range", "counts"}


class EpochDiagnostics:
    """Accumulate the ``stats`` tensors a method returns each step (no host sync until ``compute``).

    Scalars become their mean over the epoch's steps, keyed ``diag/<name>`` (e.g.
    ``diag/negatives/false_negative_rate``); ``hist/*`` count vectors are summed into one histogram of
    the whole epoch over [-1, 1] (cosine similarities).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def reset(self) -> None:
        self.sums, self.steps = {}, 0

    def update(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.steps += 1

    def compute(self) -> dict:
        out = {}
        for key, total in self.sums.items():
            if key.startswith("hist/"):
                out[f"diag/{key}"] = {"range": [-1.0, 1.0], "counts": total.tolist()}
            else:
                out[f"diag/{key}"] = total.item() / self.steps
        return out
