"""Causal long convolution by FFT: the convolutional (training) mode of every SSM kernel."""

import torch


def next_fast_len(n: int) -> int:
    """Smallest 5-smooth integer (2^a 3^b 5^c) >= n: the sizes pocketfft and cuFFT handle fastest."""
    best = 1 << (n - 1).bit_length()  # the power of two is always a candidate
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


def fft_length(length: int, kernel_length: int, power_of_two: bool = False) -> int:
    """FFT size with no wrap-around into the first `length` outputs of a causal convolution."""
    needed = length + kernel_length - 1
    return 1 << (needed - 1).bit_length() if power_of_two else next_fast_len(needed)


def causal_fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{s <= t} kernel[..., s] * u[..., t - s], over the last (time) axis.

    u: (..., H, L) with time last and contiguous (rfft along the last axis is ~4x faster than along dim -2);
    kernel: (H, Lk) broadcast over the leading axes. Runs in float32 (or float64) even under autocast:
    torch.fft has no bfloat16, and half-precision FFTs lose the long tail of the kernel.
    """
    length = u.shape[-1]
    kernel = kernel[..., :length]
    compute_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    n = fft_length(length, kernel.shape[-1])
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_f = torch.fft.rfft(u.to(compute_dtype), n=n)
        k_f = torch.fft.rfft(kernel.to(compute_dtype), n=n)
        y = torch.fft.irfft(u_f * k_f, n=n)[..., :length]
    return y.to(u.dtype)
