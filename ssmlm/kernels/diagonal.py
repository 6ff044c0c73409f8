"""The diagonal state-space machinery shared by every diagonal kernel (DSS, S4D, and Mega's damped EMA).

A diagonal SSM over H channels with N modes per channel, with B̄ folded into the output weights:

    z_t = Ā ⊙ z_{t-1} + u_t                     (state z: (batch, H, N))
    y_t = P(Σ_n C̃_n z_{t,n}) + D ⊙ u_t

where Ā = exp(log Ā). For complex modes the conjugate pairs are implicit and P(w) = 2·Re(w) (DESIGN.md,
S4D eq. (5)); for real modes (Mega's EMA) P is the identity. Everything below follows from the powers
Ā^t, a Vandermonde matrix computed once per call and shared by the whole batch:

    kernel      K_t = P(Σ_n C̃_n Ā_n^t)                                  (the convolution mode)
    from state  y_t += P(Σ_n C̃_n Ā_n^{t+1} z0_n)                       (a chunk that continues a sequence)
    new state   z_{T-1} = Ā^T z0 + Σ_k Ā^{T-1-k} u_k                     (the state a chunk hands on)

A kernel module supplies only `discretize() -> (log Ā, C̃)`; this class turns it into the mixer interface
`y, state = ssm(u, state)`.
"""

import torch
from torch import nn

from ..ops.fftconv import causal_fft_conv


def project(w: torch.Tensor) -> torch.Tensor:
    """Sum over a conjugate pair (2·Re) for complex modes; identity for real modes."""
    return 2 * w.real if w.is_complex() else w


def vandermonde(log_a: torch.Tensor, length: int) -> torch.Tensor:
    """Ā^t for t = 0 .. length-1: (G, N) -> (G, N, length); G is 1 when the modes are shared by all channels."""
    steps = torch.arange(length, device=log_a.device, dtype=log_a.real.dtype)
    return torch.exp(log_a.unsqueeze(-1) * steps)


def contract_modes(coeffs: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """Σ_n coeffs[..., h, n] · powers[h, n, t] -> (..., H, T).

    Modes shared across channels (powers of shape (1, N, T)) make this one matrix product, which is why the GSS
    variant of DSS, with one Λ for all channels, builds its kernel at matmul speed.
    """
    if powers.shape[0] == 1:
        return coeffs @ powers[0]
    return torch.einsum("...hn,hnt->...ht", coeffs, powers)


def convolution_kernel(c: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """K_t = P(Σ_n C̃_n Ā_n^t): (H, T)."""
    return project(contract_modes(c, powers))


def contract_time(u: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """Σ_t u[..., h, t] · powers[h, n, t] -> (..., H, N), for a real input u and real or complex powers."""
    def real_contract(p):
        if p.shape[0] == 1:
            return u @ p[0].transpose(0, 1)
        return torch.einsum("...ht,hnt->...hn", u, p)

    if powers.is_complex():
        return torch.complex(real_contract(powers.real), real_contract(powers.imag))
    return real_contract(powers)


class DiagonalSSM(nn.Module):
    """Base of the diagonal kernels: subclasses define `discretize()` and the parameters it reads.

    forward(u, state) with u: (batch, length, channels). `state=None` is the training mode: one FFT
    convolution, no state kept. With a state, the chunk continues the sequence the state summarises and the
    updated state is returned; a single token takes the recurrent step.
    """

    def __init__(self, channels: int, modes: int):
        super().__init__()
        self.channels = channels
        self.modes = modes
        self.D = nn.Parameter(torch.empty(channels))  # the skip term D ⊙ u

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (log Ā of shape (1 or H, N), C̃ of shape (H, N)), both in the parameters' precision."""
        raise NotImplementedError

    def compute_dtype(self) -> torch.dtype:
        """float64 for a float64 model, float32 otherwise: complex exponentials and long FFTs have no
        half-precision path, so the SSM runs in float32 under autocast or with bf16 weights."""
        return torch.float64 if self.D.dtype == torch.float64 else torch.float32

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel K of shape (H, length)."""
        log_a, c = self.discretize()
        return convolution_kernel(c, vandermonde(log_a, length))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        log_a, _ = self.discretize()
        return log_a.new_zeros(batch_size, self.channels, self.modes)

    def forward(self, u: torch.Tensor, state: torch.Tensor | None = None):
        input_dtype = u.dtype
        with torch.autocast(device_type=u.device.type, enabled=False):
            log_a, c = self.discretize()
            u = u.to(self.compute_dtype()).transpose(1, 2)  # (batch, H, length): time last for the FFT
            length = u.shape[-1]
            if state is None:
                y = causal_fft_conv(u.contiguous(), convolution_kernel(c, vandermonde(log_a, length)))
            elif length == 1:
                y, state = self._step(u[..., 0], state, log_a, c)
                y = y.unsqueeze(-1)
            else:
                y, state = self._chunk(u, state, log_a, c)
            y = y + self.D.to(u.dtype).unsqueeze(-1) * u
        return y.transpose(1, 2).to(input_dtype), state

    @staticmethod
    def _step(u, state, log_a, c):
        """One token: z = Ā z + u, y = P(C̃ · z)."""
        state = torch.exp(log_a) * state + u.unsqueeze(-1)
        return project((c * state).sum(-1)), state

    @staticmethod
    def _chunk(u, state, log_a, c):
        """A chunk of T tokens from state z0: FFT convolution plus the decayed initial state (module docstring)."""
        length = u.shape[-1]
        powers = vandermonde(log_a, length)  # Ā^t, t = 0 .. T-1
        y = causal_fft_conv(u.contiguous(), convolution_kernel(c, powers))
        y = y + project(contract_modes(c * torch.exp(log_a) * state, powers))
        new_state = torch.exp(length * log_a) * state + contract_time(u, powers.flip(-1))
        return y, new_state

