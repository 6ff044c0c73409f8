"""S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space Models").

Per channel h a step Δ_h and N complex modes Λ_{h,n} (conjugate pairs implicit, so the real state size is 2N):

    S4D-Lin  Λ_n = -1/2 + iπn                         (eq. 9)
    S4D-Inv  Λ_n = -1/2 + i(N'/π)(N'/(2n+1) - 1)       (eq. 8), N' = 2N the real state size
    ZOH       Ā = exp(ΔΛ),                 B̄ = (exp(ΔΛ) - 1)/Λ · B      (eq. 4)
    bilinear  Ā = (1 + ΔΛ/2)/(1 - ΔΛ/2),   B̄ = Δ/(1 - ΔΛ/2) · B

B is fixed at 1 and folded into C̃ = C ⊙ B̄ (as the S4D reference code does). Re Λ = -exp(·) < 0 keeps |Ā| < 1.
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from .diagonal import DiagonalSSM, check_dt_range


class S4DKernel(DiagonalSSM):
    OPTIONS = {"init": ("lin", "inv"), "discretization": ("zoh", "bilinear"), "dt_min": float, "dt_max": float}
    EXAMPLE_OPTIONS = tuple({"init": init, "discretization": discretization} for init in ("lin", "inv")
                            for discretization in ("zoh", "bilinear"))

    def __init__(self, channels: int, modes: int, init: str = "inv", discretization: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__(channels, modes)
        self.validate_options(dict(init=init, discretization=discretization, dt_min=dt_min, dt_max=dt_max))
        self.init_method, self.discretization = init, discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_neg_lambda_re = nn.Parameter(torch.empty(channels, modes))
        self.lambda_im = nn.Parameter(torch.empty(channels, modes))
        self.C_re = nn.Parameter(torch.empty(channels, modes))
        self.C_im = nn.Parameter(torch.empty(channels, modes))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        check_dt_range(options)

    @torch.no_grad()
    def reset_parameters(self):
        n = torch.arange(self.modes, dtype=torch.float64)
        if self.init_method == "lin":
            imag = math.pi * n
        else:
            real_size = 2 * self.modes
            imag = (real_size / math.pi) * (real_size / (2 * n + 1) - 1)
        init.copy_(self.log_neg_lambda_re, torch.full((self.channels, self.modes), math.log(0.5)))
        init.copy_(self.lambda_im, imag.to(torch.float32).expand(self.channels, -1))
        log_dt = torch.empty(self.channels).uniform_(math.log(self.dt_min), math.log(self.dt_max))
        init.copy_(self.log_dt, log_dt)
        init.normal_(self.C_re, std=0.5 ** 0.5)
        init.normal_(self.C_im, std=0.5 ** 0.5)
        init.ones_(self.D)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log Ā, B̄, C), each (H, N), in the compute precision."""
        dtype = self.compute_dtype()
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.to(dtype)), self.lambda_im.to(dtype))  # (H, N)
        dt = torch.exp(self.log_dt.to(dtype)).unsqueeze(-1)
        c = torch.complex(self.C_re.to(dtype), self.C_im.to(dtype))
        if self.discretization == "zoh":
            return dt * lam, torch.expm1(dt * lam) / lam, c
        return torch.log((1 + dt * lam / 2) / (1 - dt * lam / 2)), dt / (1 - dt * lam / 2), c

    def discretize(self):
        log_a, b_bar, c = self.discrete()
        return log_a, c * b_bar

    def reference(self, u):
        """S4D eq. (4): ZOH Ā = e^{ΔΛ}, B̄ = (e^{ΔΛ}-1)/Λ; bilinear Ā = (1+ΔΛ/2)/(1-ΔΛ/2), B̄ = Δ/(1-ΔΛ/2)."""
        from .reference import diagonal_recurrence

        lam = torch.complex(-self.log_neg_lambda_re.exp(), self.lambda_im)
        dt = self.log_dt.exp().unsqueeze(-1)
        if self.discretization == "zoh":
            a_bar, b_bar = torch.exp(dt * lam), (torch.exp(dt * lam) - 1) / lam
        else:
            a_bar, b_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2), dt / (1 - dt * lam / 2)
        return diagonal_recurrence(a_bar, b_bar, torch.complex(self.C_re, self.C_im), self.D, u, lambda w: 2 * w.real)
