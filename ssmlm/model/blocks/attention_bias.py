"""Relative position biases for Mega's attention (Ma et al. 2022, Sec. 3.2: the b^rel of the attention; the two
kinds of the reference code).

In a causal attention the bias of query position i and key position j <= i depends only on the distance
d = i - j, so each kind gives a table r(d), d = 0 .. length-1, and the attention gathers from it:

    simple   r(d) is a learned scalar per distance, up to a fixed maximum distance
    rotary   r(d) = rot_i(a) · rot_j(b): learned vectors a, b rotated by RoPE (Su et al. 2021) to positions i
             and j. Pairing dimensions (f, f + D/2) as complex numbers, rot_i(a)_f = a_f e^{i θ_f i}, so
             r(d) = Σ_f Re(a_f · conj(b_f) · e^{i θ_f d}) with θ_f = 10000^(-f / (D/2)): any distance, no limit.
"""

import torch
from torch import nn

from transformers import initialization as init


class SimpleRelativeBias(nn.Module):
    def __init__(self, max_positions: int, std: float = 0.02, limit_name: str = "max_positions"):
        super().__init__()
        self.max_positions, self.std, self.limit_name = max_positions, std, limit_name
        self.bias = nn.Parameter(torch.empty(max_positions))  # r(d) for d = 0 .. max_positions-1
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init.normal_(self.bias, std=self.std)

    def table(self, length: int) -> torch.Tensor:
        if length > self.max_positions:
            raise ValueError(
                f"a sequence of {length} tokens is longer than the {self.max_positions} positions the simple "
                f"relative position bias covers ({self.limit_name}={self.max_positions}); raise it, or use the "
                "rotary bias or Mega-chunk"
            )
        return self.bias[:length]


class RotaryRelativeBias(nn.Module):
    def __init__(self, dim: int, std: float = 0.02):
        super().__init__()
        self.dim, self.std = dim, std
        self.a = nn.Parameter(torch.empty(dim))
        self.b = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init.normal_(self.a, std=self.std)
        init.normal_(self.b, std=self.std)

    def table(self, length: int) -> torch.Tensor:
        half = self.dim // 2
        a_re, a_im = self.a[:half], self.a[half:]
        b_re, b_im = self.b[:half], self.b[half:]
        frequencies = 10000.0 ** (-torch.arange(half, dtype=self.a.dtype, device=self.a.device) / half)
        angles = torch.arange(length, dtype=self.a.dtype, device=self.a.device).unsqueeze(-1) * frequencies
        # Re((a_re + i a_im)(b_re - i b_im) e^{iφ}) = (a_re b_re + a_im b_im) cos φ - (a_im b_re - a_re b_im) sin φ
        return torch.cos(angles) @ (a_re * b_re + a_im * b_im) - torch.sin(angles) @ (a_im * b_re - a_re * b_im)
