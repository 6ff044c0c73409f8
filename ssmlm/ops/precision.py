"""The one precision policy of the SSM arithmetic. Complex exponentials and long FFTs have no half-precision path
(torch.fft has no bfloat16, and a half-precision FFT loses the long tail of a kernel), so the kernels and the FFT
convolution compute in float32 under autocast or with bf16 weights, and in float64 for a float64 model."""

import contextlib

import torch


def ssm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SSM arithmetic runs in for weights or inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where autocast does not lower the SSM arithmetic back to half precision."""
    return torch.autocast(device_type=device.type, enabled=False)
