"""Kernels with no recurrence: a finite causal filter of K taps per channel, y_t = Σ_{j<K} k_j u_{t−j} + D u_t.

Training is one FFT convolution with the taps (zero past K). Generation keeps the last K − 1 inputs of each channel
as the state, a window in time order (the oldest first): a step is one dot product of the taps with the window and
the new input, O(K) a token, and a chunk convolves the window and the chunk together and keeps the last K − 1
inputs. So all three modes are the same filter, exactly, and the state's memory is bounded by K whatever the
length. A subclass sets `kernel_length` (K) and supplies `taps()`, (H, K) in the compute precision.
"""

import torch

from ..ops.fftconv import causal_fft_conv, convolution_flops
from .base import SSMKernel


class WindowConv(SSMKernel):
    def taps(self) -> torch.Tensor:
        raise NotImplementedError

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.zeros(batch_size, self.channels, self.kernel_length - 1, dtype=self.compute_dtype(),
                           device=self.D.device)

    def step_taps(self) -> torch.Tensor:
        """The taps reversed in time, kept while generating: the step's dot product is with the window as it is."""
        return self.inference_constant(lambda: self.taps().flip(-1))

    def convolve(self, u):
        return causal_fft_conv(u.contiguous(), self.taps()[:, :u.shape[-1]])

    def chunk(self, u, window):
        inputs = torch.cat([window.to(u.dtype), u], dim=-1)  # (B, H, K − 1 + T)
        y = causal_fft_conv(inputs.contiguous(), self.taps()[:, :inputs.shape[-1]])[..., window.shape[-1]:]
        return y, inputs[..., inputs.shape[-1] - window.shape[-1]:]

    def step(self, u, window):
        inputs = torch.cat([window.to(u.dtype), u.unsqueeze(-1)], dim=-1)  # (B, H, K)
        return (inputs * self.step_taps()).sum(-1), inputs[..., 1:]

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        channels, length = self.channels, self.kernel_length
        if cached and tokens == 1:
            return batch * 2 * channels * length
        return convolution_flops(channels, tokens + (length - 1 if cached else 0), batch)
