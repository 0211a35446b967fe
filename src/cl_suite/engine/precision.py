"""``trainer.precision``: the autocast dtype of the forward pass (losses are always computed in fp32)."""
from __future__ import annotations

import contextlib

import torch

# The one list of precisions: validation allows these keys, the loop autocasts to their dtypes.
PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    dtype = PRECISION_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
