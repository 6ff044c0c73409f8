"""The SSM kernels and the FFT convolution. Every kernel of the registry (ssmlm.model.kernels.KERNELS), in each of the
option variants its class declares (EXAMPLE_OPTIONS), is checked for the core invariant one pass == arbitrary chunks
with the state carried == token by token, for causality, against its paper's defining formula written out naively
(its `reference`), for gradients, and for a bounded state. The tests take the kernel's name and look it up in the
registry when they run, so a kernel registered later (test_extending.py) gets them all by calling KERNEL_INVARIANTS
with its name; a kernel without a reference fails `test_every_registered_kernel_has_a_reference`."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from ssmlm.model.kernels import KERNELS, SSMKernel, build_ssm
from ssmlm.model.kernels.diagonal import mode_sum, powers_of, time_sum
from ssmlm.model.kernels.reference import conjugate_pairs
from ssmlm.model.kernels.s4 import hippo, nplr
from ssmlm.model.ops.fftconv import causal_fft_conv, fft_length, next_fast_len

from invariants import assert_close, draw_pieces, run_in_pieces


def kernel_cases() -> list:
    """(kind, options) for every registered kernel and each of its EXAMPLE_OPTIONS, as pytest params."""
    return [pytest.param(kind, options, id=f"{kind}{'-' if options else ''}{'-'.join(map(str, options.values()))}")
            for kind, kernel in KERNELS.items() for options in kernel.EXAMPLE_OPTIONS]


CASES = kernel_cases()


def make_kernel(kind, options, dtype, channels=5, state_size=6, seed=0):
    torch.manual_seed(seed)
    return build_ssm(kind, channels, state_size, options).to(dtype)


def test_every_registered_kernel_has_a_reference():
    """A kernel is checked against its paper's formula only if it writes it out: `reference` of its own."""
    missing = [kind for kind, kernel in KERNELS.items() if kernel.reference is SSMKernel.reference]
    assert not missing, f"kernels without a reference(u) (docs/kernels.md, 'Adding a kernel or a block'): {missing}"


# ---- the FFT convolution ----

def test_next_fast_len_is_smallest_5_smooth():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 3000):
        size = next_fast_len(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size)), n
    assert fft_length(1000, 1000) == next_fast_len(1999)
    assert fft_length(1000, 1000, power_of_two=True) == 2048


@pytest.mark.parametrize("length", [1, 2, 7, 64, 125, 301])
def test_fft_conv_equals_direct_causal_convolution(length):
    torch.manual_seed(length)
    u = torch.randn(2, 3, length, dtype=torch.float64)
    kernel = torch.randn(3, length, dtype=torch.float64)
    direct = torch.zeros_like(u)
    for t in range(length):
        for s in range(t + 1):
            direct[..., t] += kernel[:, s] * u[..., t - s]
    torch.testing.assert_close(causal_fft_conv(u, kernel), direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel_length", [1, 6, 13])
def test_fft_conv_gradients_by_real_ffts_match_finite_differences(kernel_length):
    """The hand-written backward (correlations by real FFTs), for the input and for a kernel shared by the
    batch and shorter than, or as long as, the input."""
    torch.manual_seed(kernel_length)
    u = torch.randn(2, 3, 13, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, kernel_length, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_fft_conv, (u, kernel))


def test_fft_conv_runs_in_float32_under_bfloat16_autocast():
    u = torch.randn(1, 4, 100)
    kernel = torch.randn(4, 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_fft_conv(u.bfloat16(), kernel)
    reference = causal_fft_conv(u.bfloat16().float(), kernel)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=1e-2, atol=1e-2)


# ---- the factored powers Ā^t = Ā^{m·q}·Ā^r ----

@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 16, 17, 99, 1000])
@pytest.mark.parametrize("modes", ["real", "complex", "complex-shared"])
def test_factored_powers_give_the_vandermonde_sums(length, modes):
    """mode_sum and time_sum against the explicit (G, N, length) Vandermonde matrix, at lengths that are and are
    not perfect squares or multiples of the block size, with a batch of coefficients and inputs."""
    torch.manual_seed(length)
    channels, n = 3, 4
    decay = -torch.rand(1 if modes == "complex-shared" else channels, n, dtype=torch.float64) * 0.05
    if modes == "real":
        log_a, coeffs = decay, torch.randn(2, channels, n, dtype=torch.float64)
    else:
        log_a = torch.complex(decay, torch.randn_like(decay) * 3)
        coeffs = torch.randn(2, channels, n, dtype=torch.complex128)
    vandermonde = torch.exp(log_a.unsqueeze(-1) * torch.arange(length, dtype=torch.float64))  # (G, N, length)
    expected = torch.einsum("bhn,hnt->bht", coeffs, vandermonde.expand(channels, -1, -1))
    expected = 2 * expected.real if expected.is_complex() else expected
    powers = powers_of(log_a, length)
    torch.testing.assert_close(mode_sum(coeffs, powers), expected, rtol=1e-12, atol=1e-12)

    u = torch.randn(2, channels, length, dtype=torch.float64)
    folded = torch.einsum("bht,hnt->bhn", u.to(vandermonde.dtype), vandermonde.expand(channels, -1, -1).flip(-1))
    torch.testing.assert_close(time_sum(u, powers), folded, rtol=1e-12, atol=1e-12)


# ---- the core invariant, causality, gradients and bounded states, for every kernel ----

@pytest.mark.parametrize("kind, options", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=6)
@given(data=st.data())
def test_one_pass_equals_chunks_equals_steps(kind, options, dtype, data):
    lengths = st.one_of(st.integers(2, 300), st.integers(1000, 3000),
                        st.sampled_from(KERNELS[kind].BOUNDARY_LENGTHS or [2]))
    length, boundaries = draw_pieces(data, lengths, max_boundaries=6)
    ssm = make_kernel(kind, options, dtype)
    tolerance = KERNELS[kind].FLOAT32_TOLERANCE if dtype == torch.float32 else None
    x = torch.randn(2, length, ssm.channels, dtype=dtype)
    one_pass, no_state = ssm(x)
    assert no_state is None
    chunked, state = run_in_pieces(ssm, x, boundaries)
    assert_close(chunked, one_pass, dtype, tolerance)
    if length <= 300:  # token by token: every position a boundary
        stepped, stepped_state = run_in_pieces(ssm, x, list(range(1, length)))
        assert_close(stepped, one_pass, dtype, tolerance)
        assert_close(stepped_state, state, dtype, tolerance)


@pytest.mark.parametrize("kind, options", CASES)
def test_two_thousand_steps_equal_one_chunk(kind, options):
    """The recurrent step, run for 2,000 tokens (past any block or normalisation length), lands on the output and
    the state of one chunk, in float64."""
    ssm = perturbed(make_kernel(kind, options, torch.float64, channels=3))
    x = torch.randn(1, 2000, 3, dtype=torch.float64)
    with torch.no_grad():
        chunk, chunk_state = ssm(x, ssm.initial_state(1))
        stepped, step_state = run_in_pieces(ssm, x, list(range(1, 2000)))
    assert_close(stepped, chunk, torch.float64)
    assert_close(step_state, chunk_state, torch.float64)


@pytest.mark.parametrize("kind, options", CASES)
def test_chunks_at_the_kernels_own_boundaries(kind, options):
    """Pieces that end exactly at, and one past, each boundary length, in float64."""
    ssm = make_kernel(kind, options, torch.float64)
    for length in KERNELS[kind].BOUNDARY_LENGTHS or [33]:
        x = torch.randn(2, length + 3, ssm.channels, dtype=torch.float64)
        one_pass, _ = ssm(x)
        chunked, _ = run_in_pieces(ssm, x, sorted({1, length - 1, length, length + 1} - {0}))
        assert_close(chunked, one_pass, torch.float64)


@pytest.mark.parametrize("kind, options", CASES)
def test_outputs_depend_only_on_earlier_inputs(kind, options):
    """∂y_i/∂u_j = 0 for j > i in float64 (to FFT rounding, 1e-12 of the largest entry, which leaks both ways):
    the training convolution and a chunk from a state."""
    ssm = make_kernel(kind, options, torch.float64, channels=3)
    length = 20
    x = torch.randn(1, length, 3, dtype=torch.float64)
    state = run_in_pieces(ssm, torch.randn(1, 5, 3, dtype=torch.float64), [])[1]
    for run in (lambda inp: ssm(inp)[0], lambda inp: ssm(inp, state)[0]):
        jacobian = torch.autograd.functional.jacobian(run, x)[0, :, :, 0]  # (i, h, j, g)
        future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)  # j > i
        assert jacobian.permute(0, 2, 1, 3)[future].abs().max() <= 1e-12 * jacobian.abs().max()


@pytest.mark.parametrize("kind, options", CASES)
def test_gradients_flow_to_every_kernel_parameter(kind, options):
    ssm = make_kernel(kind, options, torch.float64)
    y, _ = ssm(torch.randn(1, 60, ssm.channels, dtype=torch.float64))  # longer than any window kernel's taps here
    y.square().sum().backward()
    for name, parameter in ssm.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{kind}.{name} got no gradient"


MATRIX_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default,
                   torch.ops.aten.baddbmm.default}


class TinyOperands(TorchDispatchMode):
    """Records, for each matrix product run, the share of its operands' entries that would multiply into subnormal
    numbers (nonzero and below √tiny): the CPU's slow path."""

    def __init__(self):
        super().__init__()
        self.shares = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATRIX_PRODUCTS:
            for operand in args:
                if isinstance(operand, torch.Tensor) and (operand.is_floating_point() or operand.is_complex()):
                    parts = torch.view_as_real(operand.resolve_conj()) if operand.is_complex() else operand  # S5
                    tiny = (parts != 0) & (parts.abs() < math.sqrt(torch.finfo(parts.dtype).tiny))
                    self.shares.append((func.__name__, tuple(operand.shape), tiny.float().mean().item()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind, options", CASES)
def test_no_matrix_product_of_a_training_step_runs_on_subnormal_numbers(kind, options):
    """Powers of a decaying state fall through the subnormal range on their way to zero, and the CPU multiplies
    such numbers many times slower (docs/benchmarks.md: GSS's DSS step). The kernels drop them before they enter a
    product (ops/precision.py, without_subnormals); what is left is the odd entry of a gradient."""
    ssm = make_kernel(kind, options, torch.float32, channels=16, state_size=48 if kind == "s5" else 16)
    u = torch.randn(1, 4096, ssm.channels, requires_grad=True, generator=torch.Generator().manual_seed(0))
    with TinyOperands() as seen:
        y, _ = ssm(u)
        (y.square().mean() * 1e-6).backward()  # the small gradients of a language model's loss
    worst = max(seen.shares, key=lambda share: share[2], default=("none", (), 0.0))
    assert worst[2] < 1e-5, f"{kind}: {worst[2]:.1%} of a {worst[0]} operand {worst[1]} would multiply into subnormals"


def test_a_zero_coefficient_still_learns_through_the_subnormal_filter():
    """The filter drops tiny entries of a product's factors in the forward only: a channel whose output weights C
    are zero still gets their gradient (its output's derivative with respect to them is the powers, not tiny)."""
    ssm = make_kernel("dss", {}, torch.float32, channels=4, state_size=8)
    with torch.no_grad():
        ssm.C_re[0], ssm.C_im[0] = 0, 0
    y, _ = ssm(torch.randn(1, 256, 4, generator=torch.Generator().manual_seed(0)))
    y.square().sum().backward()
    assert ssm.C_re.grad[0].abs().sum() > 0 and ssm.C_im.grad[0].abs().sum() > 0


@pytest.mark.parametrize("kind, options", CASES)
def test_the_state_stays_bounded_in_long_generation(kind, options):
    """20k tokens of bounded input, in chunks (the same recurrence the steps take): the state stops growing."""
    ssm = make_kernel(kind, options, torch.float32, channels=4)
    generator = torch.Generator().manual_seed(0)
    state, largest = ssm.initial_state(1), []
    with torch.no_grad():
        for _ in range(20):
            y, state = ssm(torch.rand(1, 1000, 4, generator=generator) * 2 - 1, state)
            largest.append(max(s.abs().max().item() for s in (state if isinstance(state, tuple) else [state])))
    assert torch.isfinite(y).all() and max(largest[10:]) <= 1.5 * max(largest[:10])


# ---- every kernel against its paper's formula, written out naively (its `reference`) ----

def perturbed(ssm, seed=0):
    """The kernel with every parameter moved off its initialisation (Δ_re ≠ Δ_im, LegS's Re Λ not all -1/2, a
    second row of P that is not zero), so that a formula checked here is checked in general."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in ssm.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return ssm


@pytest.mark.parametrize("kind, options", CASES)
def test_each_kernel_is_its_papers_formula(kind, options):
    ssm = perturbed(make_kernel(kind, options, torch.float64))
    u = torch.randn(2, ssm.REFERENCE_LENGTH, ssm.channels, dtype=torch.float64)
    with torch.no_grad():
        expected = ssm.reference(u)
        torch.testing.assert_close(ssm(u)[0], expected, rtol=1e-10, atol=1e-10)


def test_the_s4_kernel_is_algorithm_1():
    """S4's Algorithm 1: the generating function C̃ [(1-z)D0 - (1+z)A]⁻¹ 2B at the roots of unity, by Cauchy sums
    over the modes and their conjugates and Woodbury for the low-rank term, with C̃ = C(I - Ā^L), inverted by an
    FFT, is the kernel the library builds from powers of Ā."""
    ssm = perturbed(make_kernel("s4", {"measure": "legt", "rank": 2}, torch.float64, channels=3, state_size=5))
    length = 40
    lam = torch.complex(-ssm.log_neg_lambda_re.exp(), ssm.lambda_im)
    p = torch.complex(ssm.P_re, ssm.P_im)
    b = torch.complex(ssm.B_re, ssm.B_im)
    c = torch.complex(ssm.C_re, ssm.C_im)
    d0 = 2 / ssm.log_dt.exp()
    with torch.no_grad():
        full_p = conjugate_pairs(p)
        a = torch.diag(conjugate_pairs(lam)) - full_p.T @ full_p.conj()
        eye = torch.eye(a.shape[0], dtype=a.dtype)
        a_bar = torch.linalg.solve(d0[:, None, None] * eye - a, d0[:, None, None] * eye + a)
        full_c = conjugate_pairs(c)
        c_tilde = (full_c - torch.einsum("hi,hij->hj", full_c, torch.linalg.matrix_power(a_bar, length)))
        c_tilde = c_tilde[:, :lam.shape[0]]
        z = torch.exp(-2j * math.pi * torch.arange(length // 2 + 1, dtype=torch.float64) / length)

        def cauchy(v):  # Σ_n v_n / Dz_n + v̄_n / D̄z_n, Dz = (1-z) D0 - (1+z) Λ: (..., H, N) -> (..., H, K)
            dz = (1 - z)[None, :, None] * d0[:, None, None] - (1 + z)[None, :, None] * lam
            dz_conj = (1 - z)[None, :, None] * d0[:, None, None] - (1 + z)[None, :, None] * lam.conj()
            return (v.unsqueeze(-2) / dz).sum(-1) + (v.conj().unsqueeze(-2) / dz_conj).sum(-1)

        c_b = cauchy(c_tilde * b)
        c_p = torch.stack([cauchy(c_tilde * p_i) for p_i in p], -1)  # (H, K, r)
        p_b = torch.stack([cauchy((p_i.conj() * b).expand_as(c_tilde)) for p_i in p], -1)
        p_p = torch.stack([torch.stack([cauchy((p_i.conj() * p_j).expand_as(c_tilde)) for p_j in p], -1)
                           for p_i in p], -2)  # (H, K, r, r)
        one_plus = (1 + z)[None, :, None, None]
        woodbury = torch.linalg.solve(torch.eye(2) + one_plus * p_p, p_b.unsqueeze(-1))[..., 0]
        generating = 2 * (c_b - (1 + z) * (c_p * woodbury).sum(-1))
        expected = torch.fft.irfft(generating, n=length)
        torch.testing.assert_close(ssm.kernel(length), expected, rtol=1e-10, atol=1e-10)


def hippo_by_hand(measure, size):
    """HiPPO's (A, B), entry by entry from the papers' definitions (S4 eq. 2 for LegS; "How to Train Your HiPPO"
    for LegT, halved as the reference does, and FouT), independently of ssmlm.model.kernels.s4.hippo."""
    a = [[0.0] * size for _ in range(size)]
    b = [0.0] * size
    for n in range(size):
        for k in range(size):
            if measure == "legs":
                a[n][k] = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else -(n + 1) if n == k else 0.0
            elif measure == "legt":
                a[n][k] = -0.5 * math.sqrt((2 * n + 1) * (2 * k + 1)) * (1 if n >= k else (-1) ** (n - k))
        b[n] = math.sqrt(2 * n + 1) if measure == "legs" else 0.5 * math.sqrt(2 * n + 1)
    if measure == "fout":
        b = [1.0 if n == 0 else math.sqrt(2) if n % 2 == 0 else 0.0 for n in range(size)]
        for j in range(size // 2):
            a[2 * j][2 * j + 1], a[2 * j + 1][2 * j] = -math.pi * j, math.pi * j
        a = [[a[n][k] - b[n] * b[k] for k in range(size)] for n in range(size)]
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)


@pytest.mark.parametrize("measure, rank", [("legs", 1), ("legt", 2), ("fout", 1)])
def test_s4_init_is_the_hippo_system_in_a_unitary_basis(measure, rank):
    """NPLR: A_hippo = V (diag(Λ, Λ̄) - P̃P̃ᴴ) Vᴴ and B_hippo = V B̃ with V unitary, so the initialised S4 is exactly
    the HiPPO system (the reference clips Im B̃ to [-2, 2]; this does not)."""
    a, b = hippo_by_hand(measure, 10)
    torch.testing.assert_close(hippo(measure, 10, rank)[:2], (a, b))
    lam, p, b_tilde, v = nplr(measure, 5, rank)
    full_v = torch.cat([v, v.conj()], -1)
    torch.testing.assert_close(full_v.conj().T @ full_v, torch.eye(10, dtype=torch.complex128), atol=1e-12,
                               rtol=0)
    full_p = conjugate_pairs(p)
    rebuilt = full_v @ (torch.diag(conjugate_pairs(lam)) - full_p.T @ full_p.conj()) @ full_v.conj().T
    torch.testing.assert_close(rebuilt, a.to(torch.complex128), atol=1e-10, rtol=0)
    torch.testing.assert_close(full_v @ conjugate_pairs(b_tilde), b.to(torch.complex128), atol=1e-10, rtol=0)
    if measure == "legs":
        torch.testing.assert_close(lam.real, torch.full((5,), -0.5, dtype=torch.float64))


@pytest.mark.parametrize("rank, length, cached", [(1, 1024, False), (1, 4096, True), (2, 300, True)])
def test_s4_flops_formula_counts_the_products_it_runs(rank, length, cached):
    from torch.utils.flop_counter import FlopCounterMode

    from ssmlm.model.ops.fftconv import convolution_flops

    ssm = make_kernel("s4", {"measure": "legt" if rank == 2 else "legs", "rank": rank}, torch.float32, channels=16,
                      state_size=8)
    u = torch.randn(2, length, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ssm(u, ssm.initial_state(2) if cached else None)
    formula = ssm.flops(length, cached, 2) - convolution_flops(16, length, 2)  # FFTs are not counted by torch
    assert formula == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_dss_softmax_init_is_the_skew_hippo_spectrum():
    ssm = make_kernel("dss-softmax", {"normalization_length": 8}, torch.float64, state_size=4)
    torch.testing.assert_close(-ssm.log_neg_lambda_re.exp(), torch.full((4,), -0.5, dtype=torch.float64))
    lower = torch.tensor([[math.sqrt((2 * i + 1) * (2 * j + 1)) if i > j else 0.0 for j in range(8)]
                          for i in range(8)], dtype=torch.float64)
    frequencies = torch.linalg.eigvals((lower - lower.T) / 2).imag  # the skew part: eigenvalues ±iω
    torch.testing.assert_close(ssm.lambda_im, frequencies[frequencies > 0].sort(descending=True).values)


def test_dss_softmax_kernel_sums_to_the_softmax_over_the_normalisation_length():
    """With W = Λ the kernel over positions 0..L-1 of each mode is a softmax: its real parts sum to Re Σ_n 1."""
    ssm = make_kernel("dss-softmax", {"normalization_length": 30}, torch.float64, channels=2, state_size=3)
    with torch.no_grad():
        lam = torch.complex(-ssm.log_neg_lambda_re.exp(), ssm.lambda_im)
        ssm.W_re.copy_(lam.real.expand(2, -1))
        ssm.W_im.copy_(lam.imag.expand(2, -1))
        torch.testing.assert_close(ssm.kernel(30).sum(-1), torch.full((2,), 3.0, dtype=torch.float64))


@pytest.mark.parametrize("log_dt", [-7.0, -12.0, -15.0, -20.0])
def test_dss_softmax_is_its_formula_for_small_step_sizes(log_dt):
    """For small Δ the normaliser's two factors, e^{Lx} − 1 and e^x − 1, both vanish while their ratio tends to L:
    the kernel stays the formula's (it vanished before the ratio was taken first)."""
    ssm = perturbed(make_kernel("dss-softmax", {"normalization_length": 64}, torch.float64))
    u = torch.randn(2, 80, ssm.channels, dtype=torch.float64)
    with torch.no_grad():
        ssm.log_dt.fill_(log_dt)
        expected = ssm.reference(u)
        torch.testing.assert_close(ssm(u)[0], expected, rtol=1e-10, atol=1e-10)
        assert expected.abs().max() > 0.1


def test_an_s5_state_that_does_not_divide_into_its_blocks_is_named():
    from ssmlm import SSMLMConfig

    with pytest.raises(Exception, match=r"ssm_kernel_options.blocks: S5's 12 states .* must divide into 4 blocks"):
        SSMLMConfig(hidden_size=32, ssm_kernel="s5", ssm_state_size=6, ssm_kernel_options={"blocks": 4})


def test_s4_state_defaults_to_its_papers_not_2h():
    from ssmlm import SSMLMConfig

    assert SSMLMConfig(hidden_size=256, ssm_kernel="s4").ssm_state_size == 32
    assert SSMLMConfig(hidden_size=256, ssm_kernel="s4", ssm_state_size=64).ssm_state_size == 64
    assert SSMLMConfig(hidden_size=256).ssm_state_size == 128  # 2H for the others


def test_dss_softmax_stays_finite_where_its_normaliser_vanishes():
    """Σ_{j<L} exp(jx) = 0 when Lx = 2πi with no decay: the clamped reciprocal keeps the kernel finite."""
    ssm = make_kernel("dss-softmax", {"normalization_length": 16}, torch.float64, channels=1, state_size=2)
    with torch.no_grad():
        ssm.log_dt.zero_()  # Δ_re = Δ_im = 1
        ssm.lambda_im[0] = 2 * math.pi / 16
        ssm.log_neg_lambda_re[0] = -40.0
        assert torch.isfinite(ssm.kernel(64)).all()


def test_s4d_initialisations():
    lin = build_ssm("s4d", 2, 5, {"init": "lin"})
    torch.testing.assert_close(lin.lambda_im[0], torch.pi * torch.arange(5.0))
    inv = build_ssm("s4d", 2, 5, {"init": "inv"})
    n, real_size = torch.arange(5.0), 10
    torch.testing.assert_close(inv.lambda_im[1], (real_size / math.pi) * (real_size / (2 * n + 1) - 1))
    torch.testing.assert_close(-lin.log_neg_lambda_re.exp(), torch.full((2, 5), -0.5))


def test_dss_kernel_matches_the_gss_pseudocode():
    """K_l = 2·Re(Σ_n C_n (e^Λn - 1)/Λn · e^{lΛn}) with Λ shared by all channels and Δ = 1."""
    ssm = make_kernel("dss", {}, torch.float64)
    length = 50
    lam = torch.complex(-ssm.log_neg_lambda_re.exp(), ssm.lambda_im)
    c = torch.complex(ssm.C_re, ssm.C_im)
    expected = torch.stack(
        [2 * (c * (lam.exp() - 1) / lam * torch.exp(lam * l)).sum(-1).real for l in range(length)], dim=-1
    )
    torch.testing.assert_close(ssm.kernel(length), expected, rtol=1e-12, atol=1e-12)
    assert (lam.real < 0).all()


# ---- options: one field, validated by the kernel ----

@pytest.mark.parametrize("kind, options, message", [
    ("s4d", {"init": "hippo"}, "options.init must be one of 'lin', 'inv', got 'hippo'"),
    ("s9", {}, "unknown SSM kernel 's9'; expected one of dss, s4d, ema, dss-softmax, dlr, s4"),
    ("s4d", {"discretization": "euler"}, "options.discretization must be one of 'zoh', 'bilinear'"),
    ("s4d", {"dt_min": "small"}, "options.dt_min expected float, got str 'small'"),
    ("s4d", {"dt_min": 0.5, "dt_max": 0.1}, "0 < dt_min <= dt_max"),
    ("s4", {"measure": "legt"}, "measure 'legt' needs rank >= 2"),
    ("s4", {"measure": "hippo"}, "options.measure must be one of 'legs', 'legt', 'fout'"),
    ("s4", {"rank": 0}, "rank must be at least 1"),
    ("s4", {"order": 2}, "options.order: S4Kernel has no such option; it takes measure, rank, dt_min, dt_max"),
    ("dss-softmax", {}, "normalization_length is required"),
    ("dss-softmax", {"normalization_length": 0}, "normalization_length must be at least 1, got 0"),
    ("dss-softmax", {"normalization_length": 2.5}, "options.normalization_length expected int, got float 2.5"),
    ("dlr", {"rank": 1}, "options.rank: DLRKernel has no such option"),
    ("liquid-s4", {"order": 1}, "order must be at least 2 (order 1 is S4D itself), got 1"),
    ("sgconv", {"kernel_length": 8, "kernel_dim": 16},
     "kernel_length (8; train.py sets it to data.seq_len when it is not given) must be at least kernel_dim (16)"),
    ("sgconv", {"kernel_length": 64, "decay_min": 3.0, "decay_max": 2.0}, "decay_max, got 3.0 and 2.0"),
    ("sgconv", {}, "kernel_length is required"),
    ("sgconv", {"kernel_length": 64, "init": "zeros"}, "options.init must be one of 'randn', 'cos'"),
    ("s5", {"blocks": 0}, "blocks must be at least 1, got 0"),
    ("s4", {"measure": None}, "options.measure must be one of 'legs', 'legt', 'fout', got None"),
    ("s4d", {"init": None}, "options.init must be one of 'lin', 'inv', got None"),
    ("s4", {"rank": None}, "options.rank expected int, got NoneType None"),
])
def test_bad_options_name_the_option_and_the_choices(kind, options, message):
    with pytest.raises(ValueError) as error:
        build_ssm(kind, 3, 4, options)
    assert message in str(error.value)


@pytest.mark.parametrize("kind, options", CASES)
def test_a_kernel_built_on_the_meta_device_initialises_as_a_fresh_one(kind, options):
    """Built without memory, then given it (to_empty) and reset_parameters(): every parameter and buffer as a
    kernel built directly with the same seed (a buffer set only in __init__ would be left uninitialised)."""
    fresh = make_kernel(kind, options, torch.float32)
    with torch.device("meta"):
        materialised = build_ssm(kind, 5, 6, options)
    materialised.to_empty(device="cpu")
    torch.manual_seed(0)
    materialised.reset_parameters()
    expected = fresh.state_dict()
    for name, tensor in materialised.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


# ---- the step's coefficients while generating ----

def test_step_coefficients_kept_during_generation_follow_parameter_changes():
    """Without autograd the step reuses Ā and C̃; an in-place update, load_state_dict or a dtype change must
    still be seen by the next step."""
    ssm = make_kernel("s4d", {"init": "inv"}, torch.float64)
    state = ssm.initial_state(2)
    x = torch.randn(2, 1, ssm.channels, dtype=torch.float64)

    def fresh_step(module):
        with torch.enable_grad():  # the uncached path
            return module(x, state)[0]

    with torch.no_grad():
        assert torch.equal(ssm(x, state)[0], fresh_step(ssm))
        assert ssm.step_coefficients()[0] is ssm.step_coefficients()[0]  # computed once
        ssm.log_dt.add_(0.3)
        assert torch.equal(ssm(x, state)[0], fresh_step(ssm))
        other = make_kernel("s4d", {"init": "inv"}, torch.float64, seed=1)
        ssm.load_state_dict(other.state_dict())
        assert torch.equal(ssm(x, state)[0], fresh_step(other))
        ssm.float()
        y32 = ssm(x.float(), state.to(torch.complex64))[0]
        assert y32.dtype == torch.float32
        torch.testing.assert_close(y32, fresh_step(other).float(), rtol=1e-5, atol=1e-5)


def test_kernel_gradcheck():
    ssm = build_ssm("s4d", 2, 3, {"init": "lin", "discretization": "bilinear"}).double()
    x = torch.randn(1, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: ssm(inp)[0], (x,))


@pytest.mark.slow
def test_diagonal_state_stays_within_its_bound_over_100k_steps():
    """|Ā| < 1 by parameterisation, so |z| <= max|u| / (1 - max|Ā|) however long generation runs."""
    ssm = make_kernel("dss", {}, torch.float32, channels=4, state_size=8)
    with torch.no_grad():
        log_a, _ = ssm.discretize()
        decay = torch.exp(log_a.real).max().item()
        assert decay < 1
        bound = 1.0 / (1.0 - decay) * 1.001
        inputs = torch.rand(100_000, 1, 1, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
        state = ssm.initial_state(1)
        for t in range(100_000):
            y, state = ssm(inputs[t], state)
            if t % 10_000 == 0:
                assert state.abs().max() <= bound
        assert torch.isfinite(state).all() and state.abs().max() <= bound and torch.isfinite(y).all()


def test_ema_decay_stays_in_the_unit_interval_at_the_extremes_of_its_sigmoids():
    ema = build_ssm("ema", 4, 8)
    with torch.no_grad():
        ema.alpha_logit[0].fill_(30.0)  # α, δ -> 1 and -> 0
        ema.delta_logit[0].fill_(30.0)
        ema.alpha_logit[1].fill_(-8.0)
        decay = torch.exp(ema.discretize()[0])
        assert (decay >= 0).all() and (decay < 1).all()
        bound = 1.0 / (1.0 - decay.max().item()) * 1.001  # |z| <= max|x| / (1 - max Ā)
        generator = torch.Generator().manual_seed(0)
        state = ema.initial_state(1)
        for _ in range(50):  # 100k tokens, in chunks: the same recurrence the steps take
            y, state = ema(torch.rand(1, 2000, 4, generator=generator) * 2 - 1, state)
        assert torch.isfinite(y).all() and state.abs().max() <= bound


def test_step_coefficients_kept_during_generation_follow_buffer_changes():
    """SGConv's taps depend on buffers (the decay and the norm fixed at init) as well as on parameters."""
    ssm = make_kernel("sgconv", KERNELS["sgconv"].EXAMPLE_OPTIONS[0], torch.float64)
    state = ssm.initial_state(2)
    x = torch.randn(2, 1, ssm.channels, dtype=torch.float64)
    with torch.no_grad():
        before = ssm(x, state)[0]
        ssm.kernel_norm.mul_(2)
        after = ssm(x, state)[0]
        with torch.enable_grad():
            assert torch.equal(after, ssm(x, state)[0])
        assert not torch.equal(before, after)


# Every test above that runs over CASES: the suite a kernel gets, each called with (kind, options), and a dtype
# where it takes one; test_extending.py runs it on a kernel registered inside the test.
KERNEL_INVARIANTS = (test_one_pass_equals_chunks_equals_steps, test_two_thousand_steps_equal_one_chunk,
                     test_chunks_at_the_kernels_own_boundaries, test_outputs_depend_only_on_earlier_inputs,
                     test_gradients_flow_to_every_kernel_parameter,
                     test_no_matrix_product_of_a_training_step_runs_on_subnormal_numbers,
                     test_the_state_stays_bounded_in_long_generation, test_each_kernel_is_its_papers_formula,
                     test_a_kernel_built_on_the_meta_device_initialises_as_a_fresh_one)
