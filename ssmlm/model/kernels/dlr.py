"""DLR, the diagonal linear RNN (Gupta, Mehta, Berant 2022, "Simplifying and Understanding State Space Models with
Diagonal Linear RNNs", Sec. 2; the ag1988/dlr reference's `DLRKernel`): no discretisation, no Δ, no B.

    x_k = exp(Λ) ⊙ x_{k-1} + u_k          Λ: N complex modes shared by all H channels
    y_k = Re(W · x_k) + D u_k               W: (H, N) complex, per channel
    K_k = Re(Σ_n W_n exp(kΛ_n))

with Re Λ = -p², so |exp Λ| <= 1. The output is Re(·), not 2·Re(·): in the diagonal machinery, where the conjugate
pairs are implicit and y = 2·Re(C̃·x), C̃ = W/2. Init: Λ_n = -dt_n/2 + i·(2πn/N mod 2π) with dt_n log-uniform in
[dt_min, dt_max] (p_n = √(dt_n/2)), W complex normal scaled by 1/N.

The paper's models use N = 1024 to 4096 states per channel: the decoding state is N complex numbers per channel
per layer, e.g. 8 MB per sequence and layer at H = 1024, N = 1024 in float32, against 0.5 MB for S4's N = 64
(docs/kernels.md).
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from .diagonal import DiagonalSSM, check_dt_range


class DLRKernel(DiagonalSSM):
    OPTIONS = {"dt_min": float, "dt_max": float}
    # Modes that decay by as little as 5e-5 a step (Re Λ = -dt/2, dt from 1e-4): an output sums thousands of barely
    # damped terms, so in float32 the FFT's rounding and the recurrence's differ by several times DSS's.
    FLOAT32_TOLERANCE = 5e-4
    BENCHMARK_SETTINGS = dict(ssm_state_size=1024)  # DLR's N

    def __init__(self, channels: int, modes: int, dt_min: float = 1e-4, dt_max: float = 1e-1):
        super().__init__(channels, modes)
        self.validate_options(dict(dt_min=dt_min, dt_max=dt_max))
        self.dt_min, self.dt_max = dt_min, dt_max
        self.lambda_re_root = nn.Parameter(torch.empty(modes))  # p: Re Λ = -p²
        self.lambda_im = nn.Parameter(torch.empty(modes))
        self.W_re = nn.Parameter(torch.empty(channels, modes))
        self.W_im = nn.Parameter(torch.empty(channels, modes))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        check_dt_range(options)

    @torch.no_grad()
    def reset_parameters(self):
        dt = torch.exp(torch.empty(self.modes).uniform_(math.log(self.dt_min), math.log(self.dt_max)))
        init.copy_(self.lambda_re_root, torch.sqrt(dt / 2))
        init.copy_(self.lambda_im, (2 * math.pi * torch.arange(self.modes) / self.modes) % (2 * math.pi))
        init.normal_(self.W_re, std=1 / self.modes)
        init.normal_(self.W_im, std=1 / self.modes)
        init.normal_(self.D, std=1.0)

    def discretize(self):
        dtype = self.compute_dtype()
        lam = torch.complex(-self.lambda_re_root.to(dtype).square(), self.lambda_im.to(dtype))  # (N,)
        w = torch.complex(self.W_re.to(dtype), self.W_im.to(dtype))
        return lam.unsqueeze(0), w / 2

    def reference(self, u):
        """DLR eq. (2): x_k = e^Λ x_{k-1} + u_k, y_k = Re(W x_k), Λ shared, Re Λ = -p²."""
        from .reference import diagonal_recurrence

        lam = torch.complex(-self.lambda_re_root.square(), self.lambda_im).expand(self.channels, -1)
        w = torch.complex(self.W_re, self.W_im)
        return diagonal_recurrence(lam.exp(), torch.ones_like(lam), w, self.D, u, lambda v: v.real)
