"""The diagonal state-space machinery shared by every diagonal kernel (DSS, S4D, and Mega's damped EMA).

A diagonal SSM over H channels with N modes per channel, with B̄ folded into the output weights:

    z_t = Ā ⊙ z_{t-1} + u_t                     (state z: (batch, H, N))
    y_t = P(Σ_n C̃_n z_{t,n}) + D ⊙ u_t

where Ā = exp(log Ā). For complex modes the conjugate pairs are implicit and P(w) = 2·Re(w) (S4D,
eq. (5)); for real modes (Mega's EMA) P is the identity. Everything below follows from the powers
Ā^t (a Vandermonde matrix, kept factored: `Powers`), computed once per call and shared by the whole batch:

    kernel      K_t = P(Σ_n C̃_n Ā_n^t)                                  (the convolution mode)
    from state  y_t += P(Σ_n C̃_n Ā_n^{t+1} z0_n)                       (a chunk that continues a sequence)
    new state   z_{T-1} = Ā^T z0 + Σ_k Ā^{T-1-k} u_k                     (the state a chunk hands on)

A kernel module supplies only `discretize() -> (log Ā, C̃)`; this class turns it into the SSMKernel contract
(kernels/base.py): `y, state = ssm(u, state)`.
"""

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

from ..ops.fftconv import causal_fft_conv, convolution_flops
from ..ops.precision import without_subnormals
from .base import SSMKernel


def check_dt_range(options: dict) -> None:
    """The step sizes Δ are drawn log-uniformly from [dt_min, dt_max]: both positive, in order. `options` holds
    both, the defaults filled in (SSMKernel.with_defaults)."""
    low, high = options["dt_min"], options["dt_max"]
    if not 0 < low <= high:
        raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {low} and {high}")


def project(w: torch.Tensor) -> torch.Tensor:
    """Sum over a conjugate pair (2·Re) for complex modes; identity for real modes."""
    return 2 * w.real if w.is_complex() else w


class Powers(NamedTuple):
    """Ā^t for t = 0 .. length-1, factored as Ā^t = Ā^{m·q} · Ā^r with t = m·q + r and m = ⌈√length⌉.

    Two tables of G·N·√length entries stand for the G·N·length Vandermonde matrix (G is 1 when the modes are
    shared by all channels, as in GSS's DSS, and H otherwise), for 2·G·N·√length exponentials instead of
    G·N·length. Shared modes (G = 1) then form the (N, length) matrix by products and contract it with one matrix
    product. Per-channel modes (Mega's EMA, S4D) never form it: sums over the modes or over time become products
    of the two tables, per channel, in O(H·N·√length) memory; the full matrix would be H·N·length entries (for Mega's
    EMA, a large share of its training step's time and memory: docs/benchmarks.md).
    """
    low: torch.Tensor  # Ā^r, r < m: (G, N, m)
    high: torch.Tensor  # Ā^{m·q}, q < Q = ⌈length/m⌉: (G, N, Q)
    length: int

    @property
    def shared(self) -> bool:
        return self.low.shape[0] == 1

    def shared_matrix(self) -> torch.Tensor:
        """Ā^t as an (N, length) matrix, for modes shared by all channels."""
        return (self.high[0].unsqueeze(-1) * self.low[0].unsqueeze(-2)).flatten(-2)[:, :self.length]


def powers_of(log_a: torch.Tensor, length: int) -> Powers:
    """The factored powers of Ā = exp(log_a), log_a of shape (G, N)."""
    # m = ⌈√length⌉ (exact in float64 up to 2^52). math.sqrt, unlike math.isqrt, traces on a symbolic length, so
    # torch.compile(dynamic=True) keeps one graph for every length.
    m = math.ceil(math.sqrt(length))
    blocks = -(-length // m)
    steps = torch.arange(max(m, blocks), device=log_a.device, dtype=log_a.real.dtype)
    log_a = log_a.unsqueeze(-1)
    return Powers(torch.exp(log_a * steps[:m]), torch.exp(log_a * (m * steps[:blocks])), length)


def projected_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P(a @ b): for complex modes only the real part is needed, Re(a·b) = Re a·Re b - Im a·Im b, so one real
    product with twice the inner terms instead of a complex product (four real ones)."""
    if a.is_complex():
        a, b = torch.cat([a.real, -a.imag], -1), torch.cat([b.real, b.imag], -2)
        return 2 * (without_subnormals(a) @ without_subnormals(b))
    return without_subnormals(a) @ without_subnormals(b)


def real_input_product(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ b for a real x and real or complex b (two real products for a complex b)."""
    if b.is_complex():
        return torch.complex(x @ without_subnormals(b.real), x @ without_subnormals(b.imag))
    return x @ without_subnormals(b)


def mode_sum(coeffs: torch.Tensor, powers: Powers) -> torch.Tensor:
    """P(Σ_n coeffs[..., h, n] · Ā_{h,n}^t) for t < length: (..., H, N) -> (..., H, length).

    Per channel, Σ_n coeffs Ā^{m·q} Ā^r is the product of a (Q, N) and an (N, m) matrix.
    """
    if powers.shared:
        return projected_product(coeffs, powers.shared_matrix())
    weighted = (coeffs.unsqueeze(-1) * powers.high).transpose(-1, -2)  # (..., H, Q, N)
    return projected_product(weighted, powers.low).flatten(-2)[..., :powers.length]


def time_sum(u: torch.Tensor, powers: Powers) -> torch.Tensor:
    """Σ_t u[..., h, t] · Ā_{h,n}^{T-1-t} -> (..., H, N): a chunk's input folded into the state it hands on.

    With v the input reversed in time (v_s = u_{T-1-s}) cut into blocks of m, this is Σ_q Ā^{m·q} Σ_r v_{q,r} Ā^r.
    """
    if powers.shared:
        return real_input_product(u.flip(-1), powers.shared_matrix().transpose(0, 1))
    m, blocks = powers.low.shape[-1], powers.high.shape[-1]
    reversed_blocks = F.pad(u.flip(-1), (0, m * blocks - u.shape[-1])).unflatten(-1, (blocks, m))
    inner = real_input_product(reversed_blocks, powers.low.transpose(-1, -2))  # (..., H, Q, N)
    return (inner * powers.high.transpose(-1, -2)).sum(-2)


class DiagonalSSM(SSMKernel):
    """Base of the diagonal kernels: subclasses define `discretize()` and the parameters it reads; the modes
    are the state size (complex modes: the real state is twice as large)."""

    def __init__(self, channels: int, modes: int):
        super().__init__(channels, modes)
        self.modes = modes

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (log Ā of shape (1 or H, N), C̃ of shape (H, N)), both in the compute precision."""
        raise NotImplementedError

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel K of shape (H, length)."""
        log_a, c = self.discretize()
        return mode_sum(c, powers_of(log_a, length))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        log_a, _ = self.discretize()
        return log_a.new_zeros(batch_size, self.channels, self.modes)

    def step_coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a step needs, computed once per parameter version while generating: Ā; the read-out weights of the
        previous state, C̃Ā as a column per channel, (H, 2N or N, 1) (for complex modes conj(C̃Ā)'s (real,
        imaginary) pairs times 2, so that P(C̃Ā · z) = 2·Re(Σ_n C̃_n Ā_n z_n) is a real dot product with z's pairs);
        the kernel's first tap K_0 = P(Σ_n C̃_n)."""
        def compute():
            log_a, c = self.discretize()
            a_bar = torch.exp(log_a)
            weights = c * a_bar  # (H, N)
            if weights.is_complex():
                weights = 2 * torch.view_as_real(weights.conj().resolve_conj()).flatten(-2)  # (H, 2N)
            return a_bar, weights.unsqueeze(-1), project(c.sum(-1))
        return self.inference_constant(compute)

    def convolve(self, u):
        return causal_fft_conv(u.contiguous(), self.kernel(u.shape[-1]))

    def step(self, u, state):
        """One token: z = Ā z + u and y = P(C̃ · z), read from the previous state: y = P(C̃Ā · z_prev) + K_0 u.

        With Ā, P and its factor 2 folded into the read-out weights, the output is one real matrix-vector product
        per channel (no complex product, no real part taken, no (batch, H, N) product written out: in batched
        decoding the state is the largest tensor a step touches, and each pass over it counts), and the state
        update one fused pass."""
        a_bar, weights, first_tap = self.step_coefficients()
        pairs = torch.view_as_real(state).flatten(-2) if state.is_complex() else state  # (B, H, 2N or N)
        read_out = torch.bmm(pairs.transpose(0, 1), weights)[..., 0].T  # per channel h: (B, 2N) @ (2N, 1)
        y = (first_tap * u).add_(read_out)  # laid out as u: the read-out is (H, B) transposed
        # u made complex first: adding a real tensor to a complex one takes a slower mixed-dtype path.
        state = torch.addcmul(u.unsqueeze(-1).to(state.dtype), a_bar, state)
        return y, state

    def chunk(self, u, state):
        """A chunk of T tokens from state z0: FFT convolution plus the decayed initial state (module docstring)."""
        log_a, c = self.discretize()
        length = u.shape[-1]
        powers = powers_of(log_a, length)  # Ā^t, t = 0 .. T-1
        y = causal_fft_conv(u.contiguous(), mode_sum(c, powers))
        y = y + mode_sum(c * torch.exp(log_a) * state, powers)
        new_state = torch.exp(length * log_a) * state + time_sum(u, powers)
        return y, new_state

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        with torch.no_grad():
            is_complex = self.discretize()[0].is_complex()
        mode_mac = 8 if is_complex else 2  # a multiply-add of two complex (real) numbers
        input_mac = 4 if is_complex else 2  # a real input times a complex (real) power
        channels, modes = self.channels, self.modes
        if cached and tokens == 1:  # the step: z = Ā z + u, and P(C̃Ā·z) as a real dot product of z's components
            return batch * (mode_mac + input_mac) * channels * modes
        kernel = mode_mac * channels * modes * tokens  # K = P(C̃ Ā^t): one matrix product for the whole batch
        flops = kernel + convolution_flops(channels, tokens, batch)
        if cached:  # a chunk continuing a state: the state's contribution to y, and the state handed on
            flops += batch * (mode_mac + input_mac) * channels * modes * tokens
        return flops
