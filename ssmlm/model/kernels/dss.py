"""DSS-exp as the GSS paper uses it (Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured
State Spaces"; Mehta et al. 2022, Sec. 3.1 and its pseudocode).

    Λ = -exp(λ_re) + i·λ_im         one set of N modes shared by all H channels (GSS's simplification)
    Ā = exp(ΛΔ) with Δ fixed at 1   (GSS fixes the step; the gate and the projections learn the scale)
    C̃ = C ⊙ (exp(ΛΔ) - 1) / Λ        the zero-order-hold input weight folded into C (DSS-exp, B = 1)

Re Λ < 0 by construction, so |Ā| < 1 and the recurrent state cannot blow up in generation. Λ is initialised
randomly (GSS found it as good as DSS's skew-HiPPO init): decay rates log-uniform over [1e-3, 1] per step, so
memories span one to a few thousand tokens, and phases uniform in [0, π).
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from .diagonal import DiagonalSSM


class DSSKernel(DiagonalSSM):
    OPTIONS = {"min_decay": float, "max_decay": float}

    def __init__(self, channels: int, modes: int, min_decay: float = 1e-3, max_decay: float = 1.0):
        super().__init__(channels, modes)
        self.validate_options(dict(min_decay=min_decay, max_decay=max_decay))
        self.min_decay, self.max_decay = min_decay, max_decay
        self.log_neg_lambda_re = nn.Parameter(torch.empty(modes))
        self.lambda_im = nn.Parameter(torch.empty(modes))
        self.C_re = nn.Parameter(torch.empty(channels, modes))
        self.C_im = nn.Parameter(torch.empty(channels, modes))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        low, high = options["min_decay"], options["max_decay"]
        if not 0 < low <= high:
            raise ValueError(f"min_decay and max_decay must satisfy 0 < min_decay <= max_decay, got {low} and {high}")

    @torch.no_grad()
    def reset_parameters(self):
        log_decay = torch.empty(self.modes).uniform_(math.log(self.min_decay), math.log(self.max_decay))
        init.copy_(self.log_neg_lambda_re, log_decay)
        init.copy_(self.lambda_im, torch.empty(self.modes).uniform_(0, math.pi))
        # Complex normal with total variance 1/N, so the summed kernel starts at unit scale.
        init.normal_(self.C_re, std=(2 * self.modes) ** -0.5)
        init.normal_(self.C_im, std=(2 * self.modes) ** -0.5)
        init.ones_(self.D)

    def discretize(self):
        dtype = self.compute_dtype()
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.to(dtype)), self.lambda_im.to(dtype))  # (N,)
        c = torch.complex(self.C_re.to(dtype), self.C_im.to(dtype))
        c_tilde = c * torch.expm1(lam) / lam  # Δ = 1
        return lam.unsqueeze(0), c_tilde

    def reference(self, u):
        """GSS's DSS: Λ = -exp(λ_re) + iλ_im shared, Δ = 1, ZOH: x_t = e^Λ x_{t-1} + u_t, y = 2Re(C (e^Λ-1)/Λ · x)."""
        from .reference import diagonal_recurrence

        lam = torch.complex(-self.log_neg_lambda_re.exp(), self.lambda_im).expand(self.channels, -1)
        c = torch.complex(self.C_re, self.C_im) * (lam.exp() - 1) / lam
        return diagonal_recurrence(lam.exp(), torch.ones_like(lam), c, self.D, u, lambda w: 2 * w.real)
