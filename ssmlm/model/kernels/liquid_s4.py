"""Liquid-S4 in a causal form (Hasani et al., ICLR 2023, "Liquid Structural State-Space Models", Sec. 3; the
"PB" kernel of the raminmh/liquid-s4 reference), on S4D.

The liquid system x_k = (Ā + B̄ u_k) ⊙ x_{k−1} + B̄ u_k adds to S4D's linear recurrence terms in products of the
inputs. Unrolled, the order-p term with the Ā powers dropped (the paper's "polynomial of B" approximation) is
C B̄^p u_k u_{k−1} ⋯ u_{k−p+1}: one coefficient per channel, times the product of the p latest inputs:

    y_t = (K * u)_t + D u_t + Σ_{p=2}^{order} κ_p · u_t u_{t−1} ⋯ u_{t−p+1},    κ_p = 2·Re(Σ_n C_n B̄_n^p)

(the conjugate pairs implicit, as in S4D, with B = 1). The state is S4D's and the last order − 1 inputs, so
training, chunks and steps agree to rounding.

How the reference differs, and why not here:
  * it flips the product sequence in time before adding it (output t gets the products of inputs near the end of
    the sequence): not causal, a language model would read the future;
  * its default `allcombs` builds the products from all p-combinations of the last ~√(2L) positions of the
    sequence, not of the latest inputs: also not causal, and its length-L list of products depends on L;
  * its coefficients are computed from copies of B, C and Δ taken at initialisation, so they never train, and
    its `dB ← dB·Σ dB` recursion gives B̄·S^(2^{p−1}−1) (S = Σ_n B̄_n) rather than C·B̄^p;
  * its step drops the liquid terms, so its generation does not match its training.
Here κ_p comes from the trained parameters, by the formula above, in every mode.
"""

from typing import NamedTuple

import torch

from .diagonal import project
from .s4d import S4DKernel


class LiquidState(NamedTuple):
    ssm: torch.Tensor  # S4D's state (B, H, N)
    inputs: torch.Tensor  # the last order − 1 inputs (B, H, order − 1), the oldest first


class LiquidS4Kernel(S4DKernel):
    OPTIONS = {**S4DKernel.OPTIONS, "order": int}
    EXAMPLE_OPTIONS = ({"order": 2}, {"order": 3, "discretization": "bilinear"})
    BOUNDARY_LENGTHS = (2, 3, 4)  # around the orders' windows of inputs
    EXAMPLE_MODEL_SETTINGS = dict(ssm_kernel_options={"order": 3})
    BENCHMARK_SETTINGS = dict(ssm_kernel_options={"order": 2})

    def __init__(self, channels: int, modes: int, order: int = 2, **s4d_options):
        self.validate_options({"order": order})
        super().__init__(channels, modes, **s4d_options)
        self.order = order

    @classmethod
    def check_options(cls, options):
        if options["order"] < 2:
            raise ValueError(f"order must be at least 2 (order 1 is S4D itself), got {options['order']}")
        super().check_options(options)

    def liquid_coefficients(self) -> torch.Tensor:
        """κ_p = 2·Re(Σ_n C_n B̄_n^p) for p = 2 .. order: (order − 1, H)."""
        _, b_bar, c = self.discrete()
        return torch.stack([project((c * b_bar ** p).sum(-1)) for p in range(2, self.order + 1)])

    def liquid(self, u: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_p κ_p u_t ⋯ u_{t−p+1} for a chunk u (B, H, T) after `inputs`, and the last order − 1 inputs."""
        history = torch.cat([inputs.to(u.dtype), u], dim=-1)  # (B, H, order − 1 + T)
        length, past = u.shape[-1], inputs.shape[-1]
        product, total = u, 0
        for lag, coefficient in enumerate(self.liquid_coefficients(), start=1):
            product = product * history[..., past - lag:past - lag + length]  # times u_{t−lag}
            total = total + coefficient.unsqueeze(-1) * product
        return total, history[..., history.shape[-1] - past:]

    def initial_state(self, batch_size: int) -> LiquidState:
        ssm = super().initial_state(batch_size)
        return LiquidState(ssm, ssm.real.new_zeros(batch_size, self.channels, self.order - 1))

    def convolve(self, u):
        empty = u.new_zeros(u.shape[0], self.channels, self.order - 1)
        return super().convolve(u) + self.liquid(u, empty)[0]

    def chunk(self, u, state):
        y, ssm = super().chunk(u, state.ssm)
        liquid, inputs = self.liquid(u, state.inputs)
        return y + liquid, LiquidState(ssm, inputs)

    def step(self, u, state):
        y, ssm = super().step(u, state.ssm)
        liquid, inputs = self.liquid(u.unsqueeze(-1), state.inputs)
        return y + liquid[..., 0], LiquidState(ssm, inputs)

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        return super().flops(tokens, cached, batch) + batch * self.channels * tokens * 3 * (self.order - 1)

    def reference(self, u):
        """S4D's recurrence plus, for p = 2..order, 2Re(Σ_n C_n B̄_n^p) · u_t u_{t-1} ⋯ u_{t-p+1} (inputs before the
        start count as 0)."""
        y = super().reference(u)
        lam = torch.complex(-self.log_neg_lambda_re.exp(), self.lambda_im)
        dt = self.log_dt.exp().unsqueeze(-1)
        b_bar = (torch.exp(dt * lam) - 1) / lam if self.discretization == "zoh" else dt / (1 - dt * lam / 2)
        c = torch.complex(self.C_re, self.C_im)
        for t in range(u.shape[1]):
            for p in range(2, self.order + 1):
                product = torch.ones_like(u[:, t])
                for lag in range(p):
                    product = product * (u[:, t - lag] if t - lag >= 0 else 0)
                y[:, t] += 2 * (c * b_bar ** p).sum(-1).real * product
        return y
