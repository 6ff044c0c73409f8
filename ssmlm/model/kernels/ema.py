"""Mega's multi-dimensional damped EMA (Ma et al. 2022, "Mega: Moving Average Equipped Gated Attention", Sec. 3.1)
as a real diagonal SSM.

Per channel h of the model width and expansion dimension j = 1..n, with α, δ ∈ (0, 1):

    u_t = β_j x_t                                      expand each channel to n dimensions
    h_t = α_j ⊙ u_t + (1 - α_j ⊙ δ_j) ⊙ h_{t-1}         the damped EMA
    y_t = η^T h_t / √n                                  project back (the 1/√n scale is the reference code's)

Writing h_t = α β z_t gives z_t = (1 - α δ) z_{t-1} + x_t: the diagonal SSM of diagonal.py with real modes,

    log Ā = log(1 - α ⊙ δ),    C̃ = η ⊙ α ⊙ β / √n,    D = ω (Mega's residual ω ⊙ x),

so the kernel, the chunk from a state and the single step are the shared ones. α = sigmoid(·) and
δ = sigmoid(·) keep 0 < Ā < 1, so the state stays bounded however long generation runs.
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from .diagonal import DiagonalSSM


class DampedEMA(DiagonalSSM):
    EXAMPLE_MODEL_SETTINGS = None  # whole models with it are Mega's (test_mega.py)

    def __init__(self, channels: int, expansion: int):
        super().__init__(channels, expansion)
        self.alpha_logit = nn.Parameter(torch.empty(channels, expansion))  # α = sigmoid(alpha_logit)
        self.delta_logit = nn.Parameter(torch.empty(channels, expansion))  # δ = sigmoid(delta_logit)
        self.beta = nn.Parameter(torch.empty(channels, expansion))
        self.eta = nn.Parameter(torch.empty(channels, expansion))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init.normal_(self.alpha_logit, std=0.2)
        init.normal_(self.delta_logit, std=0.2)
        # β near (1, -1, 1, -1, ...) along the expansion: the reference code found alternating signs more stable.
        signs = 1 - 2 * (torch.arange(self.modes) % 2)
        init.copy_(self.beta, signs.to(self.beta.dtype) + 0.02 * torch.randn(self.channels, self.modes))
        init.normal_(self.eta, std=1.0)
        init.normal_(self.D, std=1.0)

    def discretize(self):
        dtype = self.compute_dtype()
        alpha_logit, delta_logit = self.alpha_logit.to(dtype), self.delta_logit.to(dtype)
        alpha = torch.sigmoid(alpha_logit)
        # 1 - αδ = σ(-a) + σ(a)·σ(-d) has no cancellation as αδ -> 1; where even that underflows, Ā is the
        # smallest positive number rather than 0, whose log (-inf) would turn Ā^0 into NaN.
        one_minus_alpha_delta = torch.sigmoid(-alpha_logit) + alpha * torch.sigmoid(-delta_logit)
        log_a = torch.log(one_minus_alpha_delta).clamp(min=math.log(torch.finfo(dtype).tiny))  # (H, n), < 0
        c = self.eta.to(dtype) * alpha * self.beta.to(dtype) * self.modes ** -0.5
        return log_a, c

    def reference(self, u):
        """Mega eq. (2): h_t = α ⊙ β u_t + (1 - α ⊙ δ) ⊙ h_{t-1}, y_t = η·h_t / √n + ω u_t."""
        from .reference import diagonal_recurrence

        alpha, delta = torch.sigmoid(self.alpha_logit), torch.sigmoid(self.delta_logit)
        return diagonal_recurrence(1 - alpha * delta, alpha * self.beta, self.eta / math.sqrt(self.modes), self.D, u,
                                   lambda w: w)
