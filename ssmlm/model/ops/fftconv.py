"""Causal long convolution by FFT: the convolutional (training) mode of every SSM kernel."""

import math

import torch

from .precision import full_precision, ssm_dtype


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
    if torch.compiler.is_compiling():
        # Under torch.compile(dynamic=True) the length is symbolic: next_fast_len's loops (and bit_length) would pin
        # the graph to one length, while this formula traces, so one graph serves every length.
        return 2 ** math.ceil(math.log2(needed))
    return 1 << (needed - 1).bit_length() if power_of_two else next_fast_len(needed)


class CausalFFTConv(torch.autograd.Function):
    """y = irfft(rfft(u)·rfft(k))[:L], with a backward made of real FFTs too.

    Autograd would differentiate rfft through a complex FFT of the full size n (two of them per call); the
    gradients of a causal convolution are correlations, which real FFTs give directly (g the output gradient,
    zero-padded to n like the inputs, so nothing wraps around):

        ∂/∂u_j = Σ_t g_t k_{t-j} = irfft(rfft(g)·conj(rfft(k)))_j
        ∂/∂k_s = Σ_t g_t u_{t-s} = irfft(Σ_batch rfft(g)·conj(rfft(u)))_s
    """

    @staticmethod
    def forward(ctx, u, kernel, n):
        u_f, k_f = torch.fft.rfft(u, n=n), torch.fft.rfft(kernel, n=n)
        ctx.save_for_backward(u_f, k_f)
        ctx.n, ctx.input_length, ctx.kernel_length = n, u.shape[-1], kernel.shape[-1]
        return torch.fft.irfft(u_f * k_f, n=n)[..., :u.shape[-1]]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        u_f, k_f = ctx.saved_tensors
        g_f = torch.fft.rfft(grad_y, n=ctx.n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(g_f * k_f.conj(), n=ctx.n)[..., :ctx.input_length]
        if ctx.needs_input_grad[1]:
            batch_dims = tuple(range(g_f.dim() - k_f.dim()))
            correlation = (g_f * u_f.conj()).sum(batch_dims) if batch_dims else g_f * u_f.conj()
            grad_k = torch.fft.irfft(correlation, n=ctx.n)[..., :ctx.kernel_length]
        return grad_u, grad_k, None


def causal_fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[..., t] = sum_{s <= t} kernel[..., s] * u[..., t - s], over the last (time) axis.

    u: (..., H, L) with time last and contiguous (rfft along the last, contiguous axis is far faster than along dim -2);
    kernel: (H, Lk) broadcast over the leading axes. Runs in float32 (float64 for float64 inputs) even under
    autocast (precision.py).
    """
    length = u.shape[-1]
    kernel = kernel[..., :length]
    compute_dtype = ssm_dtype(u.dtype)
    with full_precision(u.device):
        y = CausalFFTConv.apply(u.to(compute_dtype), kernel.to(compute_dtype), fft_length(length, kernel.shape[-1]))
    return y.to(u.dtype)


def real_fft_flops(size: int) -> float:
    """A real FFT of `size` points: half the 5·n·log2(n) of a complex FFT, the usual convention."""
    return 2.5 * size * math.log2(size)


def convolution_flops(channels: int, length: int, batch: int) -> float:
    """One causal_fft_conv of `batch` inputs with a kernel shared by the batch: rfft(K) once, then rfft(u),
    the complex product and irfft(y) per input."""
    size = fft_length(length, length)
    return channels * real_fft_flops(size) + batch * channels * (2 * real_fft_flops(size) + 6 * (size // 2 + 1))
