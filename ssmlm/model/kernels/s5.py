"""S5: one multi-input, multi-output diagonal state space over all H channels (Smith, Warrington, Linderman,
ICLR 2023, "Simplified State Space Layers for Sequence Modeling", Sec. 3 and 4; the lindermanlab/S5 reference).

    x_k = Λ̄ ⊙ x_{k−1} + B̄ u_k        x: (batch, N) complex, shared by the channels; u_k: (H,)
    y_k = 2·Re(C̃ x_k) + D ⊙ u_k       B̄: (N, H), C̃: (H, N)

with ZOH per state, Λ̄ = exp(ΛΔ), B̄ = (Λ̄ − 1)/Λ · B̃, and conjugate symmetry: of the full state of P = 2N, the N
modes of one sign are kept and the output is 2·Re. Init (the reference's defaults): Λ and V from the normal part of
HiPPO-LegS in J blocks of 2N/J (block-diagonal V, Λ = −1/2 + iω), B̃ = V⁻¹B with B lecun-normal (2N × H),
C̃ = CV with each row of C lecun-normal over 2N, D standard normal, log Δ uniform per state in
[log dt_min, log dt_max]. `clip_eigs` keeps Re Λ <= −1e-4 in the forward, so generation stays bounded however the
training moved Λ.

Training is not a scan. The system is linear and time-invariant: project the input to the states (v = B̄u, a
complex H → N product), convolve each state's sequence with its own kernel Λ̄^t by FFT, and read out 2·Re(C̃ x).
That is the reference's parallel scan's result in O(N L log L), with the FFTs every other kernel here uses and no
sequential or associative-scan operator (PyTorch has none). A chunk adds Λ̄^{t+1} x0 to the states and hands on its
last state; a step is the recurrence itself.
"""

import math

import torch
from torch import nn

from transformers import initialization as init

from ..ops.fftconv import fft_length, real_fft_flops
from .base import SSMKernel
from .diagonal import check_dt_range
from .s4 import hippo


# The standard deviation of a standard normal cut to [-2, 2]: JAX's lecun_normal divides its scale by it, so that
# the cut samples still have variance 1 / fan_in.
TRUNCATED_NORMAL_STD = 0.87962566103423978


def lecun_normal(*shape: int, fan_in: int) -> torch.Tensor:
    """JAX's lecun_normal, with which S5's reference initialises B and C: a normal of variance 1 / fan_in, cut at
    two of its (uncut) standard deviations."""
    scale = fan_in ** -0.5 / TRUNCATED_NORMAL_STD
    return torch.nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=scale, a=-2 * scale, b=2 * scale)


def blockwise_legs(modes: int, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Λ (N,), V (2N, N)): the eigenvalues and eigenvectors of the normal part of HiPPO-LegS in `blocks`
    diagonal blocks of 2N/blocks, one of each conjugate pair kept per block, complex128, on the CPU."""
    size = 2 * modes // blocks
    with torch.device("cpu"):
        a, _, p = hippo("legs", size, 1)
        normal = a + p.T @ p  # -1/2 I + a skew-symmetric matrix
        frequencies, vectors = torch.linalg.eigh(-1j * (normal + 0.5 * torch.eye(size, dtype=torch.float64)))
        keep = frequencies.argsort(descending=True)[:size // 2]
        lam = torch.complex(torch.full((size // 2,), -0.5, dtype=torch.float64), frequencies[keep])
        return lam.repeat(blocks), torch.block_diag(*[vectors[:, keep]] * blocks)


def default_blocks(state_size: int) -> int:
    """The default of S5Kernel's `blocks` (None in its signature, as it depends on the state size), computed here
    only: the reference's 8 blocks, or the largest count below it that divides the state size (which need not be a
    multiple of 8: any hidden size sets a default state size)."""
    return max(blocks for blocks in range(1, 9) if state_size % blocks == 0)


class S5Kernel(SSMKernel):
    OPTIONS = {"blocks": int, "dt_min": float, "dt_max": float, "clip_eigs": bool}
    EXAMPLE_OPTIONS = ({"blocks": 3}, {"blocks": 1, "clip_eigs": False})
    EXAMPLE_MODEL_SETTINGS = dict(ssm_kernel_options={"blocks": 4})
    BENCHMARK_SETTINGS = dict(ssm_state_size=128, ssm_kernel_options={"blocks": 8})  # S5's P = 256: 128 pairs

    def __init__(self, channels: int, state_size: int, blocks: int | None = None, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, clip_eigs: bool = True):
        super().__init__(channels, state_size)
        blocks = default_blocks(state_size) if blocks is None else blocks
        options = dict(blocks=blocks, dt_min=dt_min, dt_max=dt_max, clip_eigs=clip_eigs)
        self.validate_options(options)
        self.check_state_size(state_size, options)
        self.blocks, self.dt_min, self.dt_max, self.clip_eigs = blocks, dt_min, dt_max, clip_eigs
        self.lambda_re = nn.Parameter(torch.empty(state_size))
        self.lambda_im = nn.Parameter(torch.empty(state_size))
        self.B_re = nn.Parameter(torch.empty(state_size, channels))
        self.B_im = nn.Parameter(torch.empty(state_size, channels))
        self.C_re = nn.Parameter(torch.empty(channels, state_size))
        self.C_im = nn.Parameter(torch.empty(channels, state_size))
        self.log_dt = nn.Parameter(torch.empty(state_size))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        if options["blocks"] is not None and options["blocks"] < 1:  # None: default_blocks, from the state size
            raise ValueError(f"blocks must be at least 1, got {options['blocks']}")
        check_dt_range(options)

    @torch.no_grad()
    def reset_parameters(self):
        lam, vectors = blockwise_legs(self.state_size, self.blocks)
        full = 2 * self.state_size
        init.copy_(self.lambda_re, lam.real)
        init.copy_(self.lambda_im, lam.imag)
        b_tilde = vectors.conj().T @ lecun_normal(full, self.channels, fan_in=full).to(torch.complex128)  # V⁻¹ B
        c = lecun_normal(self.channels, full, 2, fan_in=full)
        c_tilde = torch.complex(c[..., 0], c[..., 1]) @ vectors
        init.copy_(self.B_re, b_tilde.real)
        init.copy_(self.B_im, b_tilde.imag)
        init.copy_(self.C_re, c_tilde.real)
        init.copy_(self.C_im, c_tilde.imag)
        init.copy_(self.log_dt, torch.empty(self.state_size).uniform_(math.log(self.dt_min), math.log(self.dt_max)))
        init.normal_(self.D, std=1.0)

    @classmethod
    def check_state_size(cls, state_size: int, options: dict) -> None:
        blocks = default_blocks(state_size) if options["blocks"] is None else options["blocks"]
        if state_size % blocks:
            raise ValueError(f"blocks: S5's {2 * state_size} states (ssm_state_size = {state_size} conjugate "
                             f"pairs) must divide into {blocks} blocks of an even size; choose blocks dividing "
                             f"{state_size}")

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ΛΔ = log Λ̄ (N,), B̄ (N, H), C̃ (H, N)) in the compute precision."""
        dtype = self.compute_dtype()
        re = self.lambda_re.to(dtype)
        lam = torch.complex(re.clamp(max=-1e-4) if self.clip_eigs else re, self.lambda_im.to(dtype))
        log_a = lam * torch.exp(self.log_dt.to(dtype))
        b = torch.complex(self.B_re.to(dtype), self.B_im.to(dtype))
        c = torch.complex(self.C_re.to(dtype), self.C_im.to(dtype))
        return log_a, (torch.expm1(log_a) / lam).unsqueeze(-1) * b, c

    def states(self, u, log_a, b_bar):
        """The states x_t = Σ_{s<=t} Λ̄^{t−s} B̄ u_s from a zero start: (B, N, T), by FFT per state."""
        length = u.shape[-1]
        v = torch.einsum("nh,bht->bnt", b_bar, u.to(b_bar.dtype))
        powers = torch.exp(log_a.unsqueeze(-1) * torch.arange(length, dtype=u.dtype, device=u.device))
        n = fft_length(length, length)
        return torch.fft.ifft(torch.fft.fft(v, n=n) * torch.fft.fft(powers, n=n), n=n)[..., :length]

    @staticmethod
    def read_out(c, x):
        return 2 * torch.einsum("hn,bnt->bht", c, x).real

    def convolve(self, u):
        log_a, b_bar, c = self.discrete()
        return self.read_out(c, self.states(u, log_a, b_bar))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        dtype = torch.complex128 if self.compute_dtype() == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.state_size, dtype=dtype, device=self.D.device)

    def chunk(self, u, state):
        log_a, b_bar, c = self.discrete()
        steps = torch.arange(1, u.shape[-1] + 1, dtype=u.dtype, device=u.device)
        x = self.states(u, log_a, b_bar) + state.unsqueeze(-1) * torch.exp(log_a.unsqueeze(-1) * steps)  # + Λ̄^{t+1} x0
        return self.read_out(c, x), x[..., -1]

    def step(self, u, state):
        lam_bar, b_bar, c = self.inference_constant(lambda: self.step_coefficients())
        state = lam_bar * state + u.to(b_bar.dtype) @ b_bar.T
        return 2 * (state @ c.T).real, state

    def step_coefficients(self):
        log_a, b_bar, c = self.discrete()
        return torch.exp(log_a), b_bar, c

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        channels, modes = self.channels, self.state_size
        if cached and tokens == 1:  # Λ̄ x + B̄ u, then 2·Re(C̃ x)
            return batch * (8 * modes + 4 * 2 * modes * channels)
        size = fft_length(tokens, tokens)
        projections = batch * 2 * 4 * modes * channels * tokens  # B̄ u (real input) and Re(C̃ x), complex
        # Complex FFTs of the states (and of the kernel, once): twice a real FFT's, and the complex product.
        ffts = (2 * batch + 1) * modes * 2 * real_fft_flops(size) + batch * modes * 6 * size
        return projections + ffts + (batch * 8 * modes * tokens if cached else 0)

    def reference(self, u):
        """S5 eq. (4)-(6), sequentially: x_k = Λ̄ x_{k-1} + B̄ u_k with ZOH per state, y_k = 2Re(C̃ x_k) + D u_k."""
        re = self.lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.lambda_re
        lam = torch.complex(re, self.lambda_im)
        lam_bar = torch.exp(lam * self.log_dt.exp())
        b_bar = ((lam_bar - 1) / lam)[:, None] * torch.complex(self.B_re, self.B_im)
        c = torch.complex(self.C_re, self.C_im)
        x = torch.zeros(u.shape[0], self.state_size, dtype=torch.complex128)
        outputs = []
        for t in range(u.shape[1]):
            x = lam_bar * x + u[:, t].to(torch.complex128) @ b_bar.T
            outputs.append(2 * (x @ c.T).real + self.D * u[:, t])
        return torch.stack(outputs, 1)
