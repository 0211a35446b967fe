"""A FIFO queue of embeddings, their labels and their images' data set indices: MoCo's negatives,
NNCLR's support set, RINCE's bank."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_suite.errors import as_written


class FeatureQueue(nn.Module):
    """``size`` rows of ``dim``-d embeddings with labels and data set indices (-1 = unknown), written in
    FIFO order.

    Everything is a buffer, so a checkpoint restores the contents, the write pointer and how many rows
    hold real embeddings (``filled``). Rows start as random unit vectors with label -1 and index -1
    (MoCo's and RINCE's initialisation); a method that must not use never-written rows (NNCLR) masks
    them with ``valid_rows``. ``push`` wraps around the end, so the size need not be a multiple of the
    batch. ``indices`` holds the position in the pre-training split of the image each row was computed
    from, so that a method can recognise rows of an anchor's own image (MoCHi's same-image masking);
    rows pushed without indices get -1, which matches no image.

    A state dict saved before the queue kept indices (no ``indices`` entry) still loads: its rows get
    index -1, i.e. they are treated as rows of unknown images until the FIFO overwrites them. Nothing
    else is filled in: any other missing or mismatched entry fails as usual.
    """

    def __init__(self, size: int, dim: int, key: str = "method.queue_size"):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{key}={as_written(size)} is not allowed: expected an integer >= 1")
        self.register_buffer("embeddings", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def valid_rows(self) -> torch.Tensor:
        """(size,) bool: rows written at least once (the first ``filled`` rows, as writing starts at 0)."""
        return torch.arange(len(self), device=self.embeddings.device) < self.filled

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Write at the pointer and advance it; a batch larger than the queue keeps its newest rows.
        ``indices``: the data set index of each row's image (None: -1, unknown)."""
        size = len(self)
        if indices is None:
            indices = torch.full_like(labels, -1)
        embeddings, labels, indices = embeddings[-size:], labels[-size:], indices[-size:]
        rows = (self.ptr + torch.arange(embeddings.shape[0], device=embeddings.device)) % size
        self.embeddings[rows] = embeddings.to(self.embeddings.dtype)
        self.labels[rows] = labels
        self.indices[rows] = indices.to(self.indices.dtype)
        self.ptr.copy_((self.ptr + embeddings.shape[0]) % size)
        self.filled.copy_(torch.clamp(self.filled + embeddings.shape[0], max=size))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A queue saved without indices: one -1 per saved row (its own size, so that a size mismatch is
        # reported on the embeddings, as before). Only when the embeddings are there, so a state dict of
        # some other module still fails with every key it lacks.
        if prefix + "indices" not in state_dict and prefix + "embeddings" in state_dict:
            rows = state_dict[prefix + "embeddings"].shape[0]
            state_dict[prefix + "indices"] = torch.full((rows,), -1, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
