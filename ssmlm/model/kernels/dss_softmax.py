"""DSS-softmax (Gupta, Gu, Berant 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
Sec. 3.2 and Prop. 1; the ag1988/dss reference's `DSSKernel` with version "softmax"), normalised at a fixed length.

Per channel h, with Λ: N complex modes shared by all channels, and two step sizes Δ_re, Δ_im per channel:

    x_n = Δ_re Re Λ_n + i Δ_im Im Λ_n
    K_k = Re Σ_n W_n · (1/Λ_n) · exp(k x_n) · (exp(x_n) - 1) / (exp(L x_n) - 1)

The last factor is 1 / Σ_{j<L} exp(j x_n): a softmax of the mode's powers over positions 0 .. L-1. The reference
normalises at each call's length L, so a position's kernel depends on how long the sequence is: its first outputs
change when the sequence grows, which no causal model, and no recurrence, can do. Here L is fixed
(`normalization_length`, None in the signature: train.py sets it to the training length, data.seq_len), so the
kernel is that of the diagonal SSM

    x_t = exp(x) ⊙ x_{t-1} + u_t,    y_t = Re(W̃ · x_t),    W̃ = W (exp(x) - 1) / (Λ (exp(Lx) - 1))

exact in every mode at any length (past L it keeps decaying; it is a softmax over the first L positions only).
The reference lets Re Λ grow positive and rescales to avoid overflow; a recurrent state would then grow without
bound, so here Re Λ = -exp(·) < 0 as in DSS-exp. The output is Re(·), not 2·Re(·): C̃ = W̃/2 in the diagonal
machinery. W̃ is computed as W / (Λ S) with the normaliser S = Σ_{j<L} exp(jx) = (exp(Lx) - 1) / (exp(x) - 1)
formed first (for small steps both factors vanish while S tends to L, so the kernel stays exact however small
Δ is), and 1/(Λ S) as z̄ / max(|z|², 1e-7): exact unless S nearly vanishes (Lx close to 2πik with almost no
decay), where it would blow the kernel up. The reference guards the same division by adding ε to it instead, which
perturbs every mode a little; the clamp leaves all others exact.
Init (the reference's "hippo_skew_pos_imag"): Λ_n = -1/2 + iω_n, the ω_n > 0 the eigenvalues of the
skew-symmetric part of the 2N×2N HiPPO-LegS matrix; W complex normal; Δ log-uniform in [dt_min, dt_max].
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from .diagonal import DiagonalSSM, check_dt_range


def hippo_skew_frequencies(modes: int) -> torch.Tensor:
    """The N positive ω of the eigenvalues ±iω of the skew part of the 2N×2N LegS matrix, largest first (on the
    CPU, whatever the default device)."""
    n = torch.arange(2 * modes, dtype=torch.float64, device="cpu")
    m = torch.sqrt(2 * n + 1)
    lower = torch.tril(m[:, None] * m[None, :], diagonal=-1)
    omega = torch.linalg.eigvals((lower - lower.T) / 2).imag
    return omega.sort(descending=True).values[:modes]


class DSSSoftmaxKernel(DiagonalSSM):
    OPTIONS = {"normalization_length": int, "dt_min": float, "dt_max": float}
    TRAINING_LENGTH_OPTION = "normalization_length"
    EXAMPLE_OPTIONS = ({"normalization_length": 48},)
    BOUNDARY_LENGTHS = (47, 48, 49)  # around the example's normalisation length
    REFERENCE_LENGTH = 60  # past the normalisation length
    EXAMPLE_MODEL_SETTINGS = dict(ssm_kernel_options={"normalization_length": 40})
    # Normalised at the 1k tokens of the benchmark's shortest training length; DSS's 64 modes.
    BENCHMARK_SETTINGS = dict(ssm_state_size=64, ssm_kernel_options={"normalization_length": 1024})

    def __init__(self, channels: int, modes: int, normalization_length: int | None = None, dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(channels, modes)
        self.validate_options(dict(normalization_length=normalization_length, dt_min=dt_min, dt_max=dt_max))
        self.normalization_length, self.dt_min, self.dt_max = normalization_length, dt_min, dt_max
        self.log_neg_lambda_re = nn.Parameter(torch.empty(modes))
        self.lambda_im = nn.Parameter(torch.empty(modes))
        self.log_dt = nn.Parameter(torch.empty(channels, 2))  # log Δ_re, log Δ_im
        self.W_re = nn.Parameter(torch.empty(channels, modes))
        self.W_im = nn.Parameter(torch.empty(channels, modes))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        length = options["normalization_length"]
        if length is None:
            raise ValueError("normalization_length is required: the length the softmax normalises over, which "
                             "train.py sets to data.seq_len")
        if length < 1:
            raise ValueError(f"normalization_length must be at least 1, got {length}")
        check_dt_range(options)

    @torch.no_grad()
    def reset_parameters(self):
        init.copy_(self.log_neg_lambda_re, torch.full((self.modes,), math.log(0.5)))
        init.copy_(self.lambda_im, hippo_skew_frequencies(self.modes))
        log_dt = torch.empty(self.channels, 1).uniform_(math.log(self.dt_min), math.log(self.dt_max))
        init.copy_(self.log_dt, log_dt.expand(-1, 2))
        init.normal_(self.W_re, std=1.0)
        init.normal_(self.W_im, std=1.0)
        init.normal_(self.D, std=1.0)

    def discretize(self):
        dtype = self.compute_dtype()
        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.to(dtype)), self.lambda_im.to(dtype))  # (N,)
        dt = torch.exp(self.log_dt.to(dtype))  # (H, 2)
        x = torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)  # (H, N)
        w = torch.complex(self.W_re.to(dtype), self.W_im.to(dtype))
        # W̃ = W / (Λ S) with S = Σ_{j<L} exp(jx) = expm1(Lx) / expm1(x), the ratio taken first: for small steps
        # both factors vanish while S tends to L. 1/(Λ S) with |Λ S|² clamped (the docstring).
        denominator = lam * (torch.expm1(self.normalization_length * x) / torch.expm1(x))
        inverse = denominator.conj() / denominator.abs().square().clamp(min=1e-7)
        return x, w * inverse / 2

    def reference(self, u):
        """DSS-softmax (DSS eq. 6) as a convolution, with the softmax over positions 0 .. L-1 written as a sum."""
        from .reference import naive_convolution

        lam = torch.complex(-self.log_neg_lambda_re.exp(), self.lambda_im)
        dt = self.log_dt.exp()
        x = torch.complex(dt[:, :1] * lam.real, dt[:, 1:] * lam.imag)  # (H, N)
        normaliser = sum(torch.exp(j * x) for j in range(self.normalization_length))
        w = torch.complex(self.W_re, self.W_im)
        steps = torch.arange(u.shape[1], dtype=torch.float64)
        kernel = (w[..., None] / lam[:, None] * torch.exp(steps * x[..., None]) / normaliser[..., None]).sum(1).real
        return naive_convolution(kernel, self.D, u)
