"""A memory bank: one L2-normalised embedding (and label) per training image (Wu et al., CVPR 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    """Rows are updated after each optimizer step as ``row <- normalize(m row + (1 - m) embedding)``
    (m = 0 overwrites, as the Ring configs do), the rule of Wu et al.'s code (zhirongw/lemniscate.pytorch,
    ``NCEAverage``/``LinearAverage`` backward) and of the Ring code's ``NCE``. Embeddings and labels are
    buffers, so a checkpoint holds the bank. Initialised as the Ring code's ``MemoryBank``: uniform in
    [-1/sqrt(d/3), 1/sqrt(d/3)], then normalised (lemniscate draws the same rows but leaves them raw, norms
    about 0.8-1.2, so there a row's first update at m > 0 mixes in an unnormalised row)."""

    def __init__(self, size: int, dim: int, momentum: float):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"method.bank_momentum={momentum} is not allowed: expected a value in [0, 1)")
        self.momentum = float(momentum)
        bound = 1.0 / (dim / 3) ** 0.5
        self.register_buffer("embeddings", F.normalize(torch.empty(size, dim).uniform_(-bound, bound), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def draw(self, count: int, device: torch.device) -> torch.Tensor:
        """``count`` row indices, uniformly with replacement (torch's global generator: seeded, checkpointed)."""
        return torch.randint(len(self), (count,), device=device)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        m = self.momentum
        rows = m * self.embeddings[indices] + (1 - m) * embeddings.to(self.embeddings.dtype)
        self.embeddings[indices] = F.normalize(rows, dim=1)
        self.labels[indices] = labels
