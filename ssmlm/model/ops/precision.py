"""The one precision policy of the SSM arithmetic. Complex exponentials and long FFTs have no half-precision path
(torch.fft has no bfloat16, and a half-precision FFT loses the long tail of a kernel), so the kernels and the FFT
convolution compute in float32 under autocast or with bf16 weights, and in float64 for a float64 model."""

import contextlib
import math

import torch


def ssm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SSM arithmetic runs in for weights or inputs of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where autocast does not lower the SSM arithmetic back to half precision (nothing to do where
    autocast is off: a decoding step enters this once per block)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def without_subnormals(x: torch.Tensor) -> torch.Tensor:
    """x with every entry below √(the dtype's smallest normal number) set to zero: what would multiply into a
    subnormal number. For the powers of a decaying state matrix (or its modes) before they enter a matrix product.

    Those powers fall toward zero through tiny values (float32: 1e-19 and below), and the CPU multiplies subnormal
    numbers, and products that underflow into them, many times slower than normal ones: in GSS's training step the
    gradient's product with DSS's powers, the gradients being small too, was far slower than the same product on
    random numbers (docs/benchmarks.md). What is dropped is below float32's 1e-19 (float64's 1e-154) of the first
    power, far under the rounding of any sum that holds that power.
    """
    # The gradient passes straight through, as if nothing were dropped: a factor's entry may be tiny (or zero) while
    # the output's derivative with respect to it is not.
    tiny = x.abs() < math.sqrt(torch.finfo(x.dtype).tiny)
    return x - torch.where(tiny, x, 0).detach()
