"""S4: the diagonal-plus-low-rank (DPLR) state space with HiPPO initialisation (Gu, Goel, Ré, ICLR 2022,
"Efficiently Modeling Long Sequences with Structured State Spaces", Sec. 3; Gu et al. 2023, "How to Train Your
HiPPO", for LegT and FouT).

The continuous system x' = A x + B u, y = C x over a real state of size 2N, with A = Λ − P Pᴴ in the basis that
diagonalises its normal part: Λ holds N complex modes (their conjugates implicit, as in S4D), P is a rank-r
correction tied to itself (Q = P, the "Hurwitz" form that keeps generation stable), Re Λ = −exp(·) < 0. Λ, P and
B are shared by the H channels (the reference's language-model setting, n_ssm = 1); Δ and C are per channel.
Bilinear discretisation with D0 = 2/Δ (S4 eq. 3):

    Ā = (D0 − A)⁻¹ (D0 + A),    B̄ = (D0 − A)⁻¹ 2B,    K_j = C Ā^j B̄,    y = K * u + D u

The step is that recurrence, (D0 − A) x_k = (D0 + A) x_{k−1} + 2B u_k, with (D0 − A)⁻¹ by Woodbury: O(N r) a token
(the reference's "linear" step), on the N kept modes.

The kernel. S4's Algorithm 1 evaluates the generating function Σ_{j<L} K_j z^j = C̃ [(1 − z) D0 − (1 + z) A]⁻¹ 2B
at the L-th roots of unity by Cauchy sums and Woodbury, with C̃ = C (I − Ā^L), and inverts an FFT. The reference
stores C̃ as its parameter, rewrites it in place when a longer L comes, and must invert (I − Ā^L) to step, which
is ill-conditioned when Ā^L ≈ I (s4 issues #52, #115). With a Δ per channel, the Cauchy sums are H·(L/2)·N complex
reciprocals that on a CPU run memory-bound, far slower than DSS-GSS's step (measured in docs/kernels.md). This
file computes the same kernel exactly from the powers of the dense real Ā instead, factored
as in the diagonal kernels, K_{qm+r} = (C Ā^{qm}) (Ā^r B̄) with m a power of two >= √L: the columns Ā^r B̄ and the
rows C Ā^{qm} come by doubling (log m products of 2N×2N matrices each), and the kernel is one (L/m × 2N) by
(2N × m) product per channel. C stays the parameter; nothing is truncated or inverted. The tests check the
kernel against Algorithm 1 (Cauchy sums and Woodbury at the roots of unity) and against the Krylov sum C Ā^j B̄.

A chunk continuing a state x0 adds C Ā^{t+1} x0 = (C Ā^{qm}) (Ā^{r+1} x0), and hands on
x_T = Ā^T x0 + Σ_j Ā^j B̄ u_{T−1−j}, the sum folded block by block (Σ_q Ā^{qm} (Σ_r Ā^r B̄ v_{qm+r})) and the blocks
combined by doubling. The dense work is O(H (2N)³ log T) (the squarings), the rest O(B H 2N T).

The real coordinates. The full state [x, x̄] maps to the real state √2 [Re x, Im x] by a unitary U; Ā, B̄ and C
are real there (C becomes √2 [Re C, −Im C]), so the dense products are real, a quarter of the complex work.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from transformers import initialization as init

from ..ops.fftconv import causal_fft_conv, convolution_flops
from ..ops.precision import without_subnormals
from .base import SSMKernel
from .diagonal import check_dt_range

MEASURES = ("legs", "legt", "fout")


def hippo(measure: str, size: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The HiPPO matrices (A, B) of `measure` over a real state of `size`, and the low-rank P (rank, size) that
    makes A + Pᵀ P normal (a multiple of the identity plus a skew-symmetric matrix), in float64."""
    n = torch.arange(size, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    p = torch.zeros(rank, size, dtype=torch.float64)
    if measure == "legs":  # HiPPO-LegS (S4 eq. 2), P_n = √(n + 1/2)
        a = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1)
        b = root
        p[0] = torch.sqrt(n + 0.5)
    elif measure == "legt":  # HiPPO-LegT, halved as in the reference; rank 2: the odd and the even rows
        sign = torch.where(n[:, None] >= n[None, :], 1.0, (-1.0) ** (n[:, None] - n[None, :]))
        a = -0.5 * root[:, None] * root[None, :] * sign
        b = 0.5 * root
        p[0] = torch.where(n % 2 == 1, root / math.sqrt(2), 0.0)
        p[1] = torch.where(n % 2 == 0, root / math.sqrt(2), 0.0)
    elif measure == "fout":  # HiPPO-FouT: B_0 = 1, B_2k = √2, frequencies πk; P = B
        b = torch.zeros(size, dtype=torch.float64)
        b[0::2] = math.sqrt(2)
        b[0] = 1.0
        rotation = torch.zeros(size, size, dtype=torch.float64)
        k = torch.arange(size // 2, dtype=torch.float64)
        rotation[2 * k.long(), 2 * k.long() + 1] = -k
        rotation[2 * k.long() + 1, 2 * k.long()] = k
        a = math.pi * rotation - b[:, None] * b[None, :]
        p[0] = b
    else:
        raise ValueError(f"unknown HiPPO measure {measure!r}; expected one of {MEASURES}")
    return a, b, p


def nplr(measure: str, modes: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Λ (N,), P̃ (rank, N), B̃ (N,), V (2N, N)), complex128: the HiPPO system of a real state of size 2N written
    as A = Vf (diag(Λ, Λ̄) − P̃f P̃fᴴ) Vfᴴ with Vf = [V, V̄] unitary and P̃f = [P̃, P̃̄], one mode of each conjugate
    pair kept (positive frequency). Unlike the reference, B̃ is not clipped: the system is exactly HiPPO's."""
    with torch.device("cpu"):  # whatever the default device (meta, when a model is only being sized)
        return nplr_on_cpu(measure, modes, rank)


def nplr_on_cpu(measure: str, modes: int, rank: int):
    a, b, p = hippo(measure, 2 * modes, rank)
    normal = a + p.T @ p  # w·I + S with S skew-symmetric
    w_re = normal.diagonal().mean()
    skew = normal - w_re * torch.eye(2 * modes, dtype=torch.float64)
    frequencies, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # S v = iω v
    keep = frequencies.argsort(descending=True)[:modes]
    frequencies, vectors = frequencies[keep], vectors[:, keep]
    zero = frequencies.abs() < 1e-8
    if zero.any():  # FouT's zero frequency: states 0 and 1 span it; pick the vector whose conjugate is its pair
        vectors[:, zero] = 0
        vectors[0, zero], vectors[1, zero] = 2 ** -0.5, 1j * 2 ** -0.5
    lam = torch.complex(w_re.expand(modes), frequencies)
    v_h = vectors.conj().T
    return lam, (v_h @ p.T.to(torch.complex128)).T, v_h @ b.to(torch.complex128), vectors


def to_real(x: torch.Tensor) -> torch.Tensor:
    """The kept modes x (..., N) of a full state [x, x̄] as its real coordinates √2 [Re x, Im x] (..., 2N)."""
    return math.sqrt(2) * torch.cat([x.real, x.imag], dim=-1)


def from_real(r: torch.Tensor) -> torch.Tensor:
    """The inverse of to_real."""
    half = r.shape[-1] // 2
    return torch.complex(r[..., :half], r[..., half:]) / math.sqrt(2)


def squarings(a: torch.Tensor, count: int) -> list[torch.Tensor]:
    """[a, a², a⁴, ..., a^(2^(count−1))] for a (H, n, n)."""
    powers = [a]
    while len(powers) < count:
        powers.append(without_subnormals(powers[-1] @ powers[-1]))
    return powers


def doubling(powers: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """[a^0 x, a^1 x, ..., a^(2^k − 1) x] along a new last axis, for x (..., H, n) and the powers
    [a, a², ..., a^(2^(k−1))]: each step doubles the columns with one product."""
    columns = x.unsqueeze(-1)
    for power in powers:
        columns = torch.cat([columns, without_subnormals(power @ columns)], dim=-1)
    return columns


def combine_blocks(blocks: torch.Tensor, powers: list[torch.Tensor]) -> torch.Tensor:
    """Σ_q b^q blocks[..., q] for blocks (..., H, n, Q) and powers = [b, b², b⁴, ...] (at least log2 Q of them),
    pairing neighbours: log2 Q levels."""
    for power in powers:
        if blocks.shape[-1] == 1:
            break
        if blocks.shape[-1] % 2:
            blocks = F.pad(blocks, (0, 1))
        blocks = blocks[..., 0::2] + power @ blocks[..., 1::2]
    return blocks[..., 0]


class S4Kernel(SSMKernel):
    OPTIONS = {"measure": MEASURES, "rank": int, "dt_min": float, "dt_max": float}
    # S4's N = 64 real: the dense setup is cubic in the state, so not SSMLMConfig's 2H (docs/kernels.md).
    DEFAULT_STATE_SIZE = 32
    EXAMPLE_OPTIONS = ({"measure": "legs"}, {"measure": "legt", "rank": 2}, {"measure": "fout"},
                       {"measure": "legs", "rank": 2})
    BOUNDARY_LENGTHS = (63, 64, 65, 257)  # where the powers' blocks and squarings end
    EXAMPLE_MODEL_SETTINGS = dict(ssm_state_size=8)
    BENCHMARK_SETTINGS = dict(ssm_state_size=32)  # S4's N = 64 real, 32 complex modes

    def __init__(self, channels: int, state_size: int, measure: str = "legs", rank: int = 1, dt_min: float = 1e-3,
                 dt_max: float = 1e-1):
        super().__init__(channels, state_size)
        self.validate_options(dict(measure=measure, rank=rank, dt_min=dt_min, dt_max=dt_max))
        self.measure, self.rank, self.dt_min, self.dt_max = measure, rank, dt_min, dt_max
        modes = state_size
        self.log_neg_lambda_re = nn.Parameter(torch.empty(modes))
        self.lambda_im = nn.Parameter(torch.empty(modes))
        self.P_re = nn.Parameter(torch.empty(rank, modes))
        self.P_im = nn.Parameter(torch.empty(rank, modes))
        self.B_re = nn.Parameter(torch.empty(modes))
        self.B_im = nn.Parameter(torch.empty(modes))
        self.C_re = nn.Parameter(torch.empty(channels, modes))
        self.C_im = nn.Parameter(torch.empty(channels, modes))
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    @classmethod
    def check_options(cls, options):
        rank = options["rank"]
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if options["measure"] == "legt" and rank < 2:
            raise ValueError(f"measure 'legt' needs rank >= 2: its A + PPᵀ is normal only with two low-rank terms "
                             f"(its odd and its even rows), got rank {rank}")
        check_dt_range(options)

    @torch.no_grad()
    def reset_parameters(self):
        lam, p, b, _ = nplr(self.measure, self.state_size, self.rank)
        # LegT and FouT have Re Λ = 0; Re Λ = −exp(·) needs a little decay (the reference's 1e-4).
        init.copy_(self.log_neg_lambda_re, torch.log((-lam.real).clamp(min=1e-4)))
        init.copy_(self.lambda_im, lam.imag)
        init.copy_(self.P_re, p.real)
        init.copy_(self.P_im, p.imag)
        init.copy_(self.B_re, b.real)
        init.copy_(self.B_im, b.imag)
        init.normal_(self.C_re, std=0.5 ** 0.5)
        init.normal_(self.C_im, std=0.5 ** 0.5)
        init.copy_(self.log_dt, torch.empty(self.channels).uniform_(math.log(self.dt_min), math.log(self.dt_max)))
        init.normal_(self.D, std=1.0)

    def system(self):
        """(Λ (N,), P (r, N), B (N,), C (H, N), D0 = 2/Δ (H,)) in the compute precision."""
        dtype = self.compute_dtype()

        def complex_of(re, im):
            return torch.complex(re.to(dtype), im.to(dtype))

        lam = torch.complex(-torch.exp(self.log_neg_lambda_re.to(dtype)), self.lambda_im.to(dtype))
        d0 = 2 * torch.exp(-self.log_dt.to(dtype))
        return (lam, complex_of(self.P_re, self.P_im), complex_of(self.B_re, self.B_im),
                complex_of(self.C_re, self.C_im), d0)

    def discrete_real(self):
        """(Ā (H, 2N, 2N), B̄ (H, 2N), C (H, 2N)) in the real coordinates. With E = D0 − Λ (diagonal) and
        (D0 − A)⁻¹ = E⁻¹ − E⁻¹P S⁻¹ PᴴE⁻¹, S = I + PᴴE⁻¹P (Woodbury), Ā = 2 D0 (D0 − A)⁻¹ − I and
        B̄ = (D0 − A)⁻¹ 2B are formed in O((2N)² r) a channel: no dense solve."""
        lam, p, b, c, d0 = self.system()
        g = 1 / (d0[:, None] - lam)  # E⁻¹ on the kept modes: (H, N)
        p_real = to_real(p)  # (r, 2N)
        e_inv_p = to_real(g[:, None, :] * p)  # (H, r, 2N): E⁻¹ P, a row per rank
        p_e_inv = to_real(g.conj()[:, None, :] * p)  # (H, r, 2N): Pᴴ E⁻¹ (E⁻¹ acts on (Re, Im) pairs)
        eye_r = torch.eye(self.rank, dtype=g.real.dtype, device=g.device)
        s_inv = torch.linalg.inv(eye_r + p_real @ e_inv_p.transpose(-1, -2))  # (H, r, r)
        e_inv = torch.cat([torch.cat([torch.diag_embed(g.real), -torch.diag_embed(g.imag)], -1),
                           torch.cat([torch.diag_embed(g.imag), torch.diag_embed(g.real)], -1)], -2)
        inverse = e_inv - e_inv_p.transpose(-1, -2) @ s_inv @ p_e_inv  # (D0 − A)⁻¹: (H, 2N, 2N)
        eye = torch.eye(inverse.shape[-1], dtype=inverse.dtype, device=inverse.device)
        a_bar = 2 * d0[:, None, None] * inverse - eye
        e_inv_b = to_real(g * b)  # (H, 2N)
        b_bar = 2 * (e_inv_b - torch.einsum("hri,hrs,hs->hi", e_inv_p, s_inv, e_inv_b @ p_real.T))
        c_real = math.sqrt(2) * torch.cat([c.real, -c.imag], dim=-1)
        return a_bar, b_bar, c_real

    @staticmethod
    def block_exponents(length: int) -> tuple[int, int]:
        """(log2 m, ⌈log2 Q⌉): m is the smallest power of two at least √length, Q = ⌈length/m⌉ the blocks. Float
        log2 (exact at powers of two) rather than isqrt and bit_length, because it traces on a symbolic length:
        torch.compile(dynamic=True) then recompiles only when these loop counts change, once per doubling of the
        length."""
        doublings = math.ceil(math.log2(length) / 2)
        return doublings, math.ceil(math.log2(-(-length // 2 ** doublings)))

    def kernel(self, length: int) -> torch.Tensor:
        """K_j = C Ā^j B̄ for j < length: (H, length)."""
        return self.kernel_from(*self.discrete_real(), length)[0]

    def kernel_from(self, a_bar, b_bar, c, length):
        """(the kernel, the rows C Ā^{qm} (H, Q', 2N), the columns Ā^r B̄ (H, 2N, m), the powers Ā, Ā², ... up to
        Ā^m and beyond). The rows come by doubling with the squarings past Ā^m, so log2 L squarings serve both."""
        doublings, row_doublings = self.block_exponents(length)
        powers = squarings(a_bar, doublings + max(row_doublings, 1))  # Ā^m is powers[doublings]
        columns = doubling(powers[:doublings], b_bar)
        rows = doubling([power.transpose(-1, -2) for power in powers[doublings:doublings + row_doublings]], c)
        rows = rows.transpose(-1, -2)
        return (rows @ columns).flatten(-2)[..., :length], rows, columns, powers

    # ---- the modes ----

    def convolve(self, u):
        return causal_fft_conv(u.contiguous(), self.kernel(u.shape[-1]))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        dtype = torch.complex128 if self.compute_dtype() == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.channels, self.state_size, dtype=dtype, device=self.D.device)

    def chunk(self, u, state):
        a_bar, b_bar, c = self.discrete_real()
        length = u.shape[-1]
        kernel, rows, columns, powers = self.kernel_from(a_bar, b_bar, c, length)
        doublings, m = self.block_exponents(length)[0], columns.shape[-1]
        a_m = powers[doublings]
        y = causal_fft_conv(u.contiguous(), kernel)
        # The state's own output, C Ā^{qm} Ā^{r+1} x0 for t = qm + r < T, with the rows C Ā^{qm} of the kernel.
        start = to_real(state)  # (B, H, 2N)
        from_start = doubling(powers[:doublings], torch.einsum("hij,bhj->bhi", a_bar, start))  # (..., m)
        y = y + (rows @ from_start).flatten(-2)[..., :length]
        # The state handed on: Ā^T x0 + Σ_q Ā^{qm} Σ_r Ā^r B̄ v_{qm+r}, v the input reversed in time.
        blocks = -(-length // m)
        reversed_blocks = F.pad(u.flip(-1), (0, m * blocks - length)).unflatten(-1, (blocks, m))  # (B, H, Q, m)
        folded = combine_blocks(columns @ reversed_blocks.transpose(-1, -2), powers[doublings:])
        whole, rest = length // m, length % m  # not divmod, which torch.compile cannot trace on a symbolic length
        partial = start if rest == 0 else from_start[..., rest - 1]  # Ā^rest x0
        carried = torch.einsum("hij,bhj->bhi", torch.linalg.matrix_power(a_m, whole), partial)
        return y, from_real(carried + folded)

    def step_coefficients(self):
        """What a step needs, per channel: 1/(D0 − Λ), D0 + Λ, the Woodbury (I + Pᴴ(D0 − Λ)⁻¹P)⁻¹, P, 2B, C."""
        def compute():
            lam, p, b, c, d0 = self.system()
            e_inv = 1 / (d0[:, None] - lam)  # (H, N)
            pp = 2 * torch.einsum("in,jn,hn->hij", p.conj(), p, e_inv).real  # (H, r, r): real over the full state
            r_inv = torch.linalg.inv(torch.eye(self.rank, dtype=pp.dtype, device=pp.device) + pp)
            return e_inv, d0[:, None] + lam, r_inv, p, 2 * b, c
        return self.inference_constant(compute)

    @staticmethod
    def low_rank_product(p, x):
        """Pᴴ x over the full state (x and its conjugate): 2·Re(Σ_n P̄_n x_n), (B, H, N) -> (B, r, H)."""
        return 2 * torch.einsum("rn,bhn->brh", p.conj(), x).real

    def step(self, u, state):
        """(D0 − A) x' = (D0 + A) x + 2B u, with (D0 − A)⁻¹ = E⁻¹ − E⁻¹ P R Pᴴ E⁻¹ (E = D0 − Λ); y = C x'."""
        e_inv, d0_plus_lam, r_inv, p, two_b, c = self.step_coefficients()
        t = d0_plus_lam * state - torch.einsum("rn,brh->bhn", p, self.low_rank_product(p, state).to(state.dtype))
        t = t + two_b * u.unsqueeze(-1).to(t.dtype)
        correction = torch.einsum("hrs,bsh->brh", r_inv, self.low_rank_product(p, e_inv * t)).to(t.dtype)
        new_state = e_inv * (t - torch.einsum("rn,brh->bhn", p, correction))
        return 2 * (c * new_state).sum(-1).real, new_state

    def flops(self, tokens: int, cached: bool, batch: int) -> float:
        """The products this file runs: forming Ā and B̄ by Woodbury, the squarings, the doubled columns and
        rows, the kernel's product; and for a chunk from a state, its own doubling, output and folding."""
        channels, modes, rank, size = self.channels, self.state_size, self.rank, 2 * self.state_size
        if cached and tokens == 1:  # the step: O(N·r) complex products per channel
            return batch * 8 * channels * modes * (4 + 3 * rank)

        def product(rows, inner, columns):  # one (rows × inner)·(inner × columns) product per channel
            return 2 * channels * rows * inner * columns

        doublings, row_doublings = self.block_exponents(tokens)
        m, rows = 1 << doublings, 1 << row_doublings
        flops = product(size, rank, size) + product(size, size, 1)  # Ā and B̄ by Woodbury
        flops += (doublings + max(row_doublings, 1) - 1) * product(size, size, size)  # the squarings
        flops += product(size, size, m) + product(size, size, rows)  # the doubled columns and rows
        flops += product(rows, size, m) + convolution_flops(channels, tokens, batch)  # the kernel, the convolution
        if cached:  # from the state: Ā x0 and its doubling, its output; the input folded into blocks and combined
            whole = tokens // m
            flops += batch * (product(size, size, 1 + m) + product(rows, size, m) + product(size, m, -(-tokens // m))
                              + product(size, size, rows))
            power_products = whole.bit_length() + bin(whole).count("1") - 2 if whole else 0  # matrix_power(Ā^m, T//m)
            flops += power_products * product(size, size, size) + batch * product(size, size, 1)
        return flops

    def reference(self, u):
        """S4 eq. (3): the bilinear recurrence of the full 2N-state DPLR system A = Λ - PPᴴ, with dense matrices."""
        from .reference import conjugate_pairs, run_recurrence

        lam = torch.complex(-self.log_neg_lambda_re.exp(), self.lambda_im)
        p = conjugate_pairs(torch.complex(self.P_re, self.P_im))
        a = torch.diag(conjugate_pairs(lam)) - p.T @ p.conj()
        eye = torch.eye(a.shape[0], dtype=a.dtype)
        dt = self.log_dt.exp()[:, None, None].to(a.dtype)
        a_bar = torch.linalg.solve(eye - dt / 2 * a, eye + dt / 2 * a)
        b = conjugate_pairs(torch.complex(self.B_re, self.B_im))
        b_bar = torch.linalg.solve(eye - dt / 2 * a, (dt[..., 0] * b).unsqueeze(-1))[..., 0]
        return run_recurrence(a_bar, b_bar, conjugate_pairs(torch.complex(self.C_re, self.C_im)), self.D, u)
