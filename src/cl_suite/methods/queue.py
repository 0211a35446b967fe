"""A FIFO queue of embeddings and their labels: MoCo's negatives, NNCLR's support set, RINCE's bank."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureQueue(nn.Module):
    """``size`` rows of ``dim``-d embeddings with labels (-1 = unknown), written in FIFO order.

    Everything is a buffer, so a checkpoint restores the contents, the write pointer and how many rows
    hold real embeddings (``filled``). Rows start as random unit vectors with label -1 (MoCo's and
    RINCE's initialisation); a method that must not use never-written rows (NNCLR) masks them with
    ``valid_rows``. ``push`` wraps around the end, so the size need not be a multiple of the batch.
    """

    def __init__(self, size: int, dim: int, key: str = "method.queue_size"):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{key}={size!r} is not allowed: expected an integer >= 1")
        self.register_buffer("embeddings", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def valid_rows(self) -> torch.Tensor:
        """(size,) bool: rows written at least once (the first ``filled`` rows, as writing starts at 0)."""
        return torch.arange(len(self), device=self.embeddings.device) < self.filled

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write at the pointer and advance it; a batch larger than the queue keeps its newest rows."""
        size = len(self)
        embeddings, labels = embeddings[-size:], labels[-size:]
        rows = (self.ptr + torch.arange(embeddings.shape[0], device=embeddings.device)) % size
        self.embeddings[rows] = embeddings.to(self.embeddings.dtype)
        self.labels[rows] = labels
        self.ptr.copy_((self.ptr + embeddings.shape[0]) % size)
        self.filled.copy_(torch.clamp(self.filled + embeddings.shape[0], max=size))
