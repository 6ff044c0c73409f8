"""The SSM kernels and the FFT convolution: against their defining formulas, and the core invariant
one pass == arbitrary chunks with the state carried == token by token."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmlm.kernels import DSSKernel, S4DKernel
from ssmlm.kernels.diagonal import mode_sum, powers_of, time_sum
from ssmlm.ops.fftconv import causal_fft_conv, fft_length, next_fast_len

from invariants import assert_close, run_in_pieces

KERNELS = {
    "dss": lambda h, n: DSSKernel(h, n),
    "s4d-lin-zoh": lambda h, n: S4DKernel(h, n, "lin", "zoh"),
    "s4d-inv-zoh": lambda h, n: S4DKernel(h, n, "inv", "zoh"),
    "s4d-lin-bilinear": lambda h, n: S4DKernel(h, n, "lin", "bilinear"),
    "s4d-inv-bilinear": lambda h, n: S4DKernel(h, n, "inv", "bilinear"),
}


def make_kernel(name, dtype, channels=6, modes=8, seed=0):
    torch.manual_seed(seed)
    return KERNELS[name](channels, modes).to(dtype)


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


# ---- kernels against their papers' formulas ----

def test_dss_kernel_matches_the_gss_pseudocode():
    """K_l = 2·Re(Σ_n C_n (e^Λn - 1)/Λn · e^{lΛn}) with Λ shared by all channels and Δ = 1."""
    ssm = make_kernel("dss", torch.float64)
    length = 50
    lam = torch.complex(-ssm.log_neg_lambda_re.exp(), ssm.lambda_im)
    c = torch.complex(ssm.C_re, ssm.C_im)
    expected = torch.stack(
        [2 * (c * (lam.exp() - 1) / lam * torch.exp(lam * l)).sum(-1).real for l in range(length)], dim=-1
    )
    torch.testing.assert_close(ssm.kernel(length), expected, rtol=1e-12, atol=1e-12)
    assert (lam.real < 0).all()


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_kernel_equals_the_discretised_recurrence(discretization):
    """Run x_t = Ā x_{t-1} + B̄ u_t, y_t = 2·Re(C x_t) from the continuous (Λ, Δ) with an impulse."""
    ssm = S4DKernel(3, 4, "inv", discretization).double()
    lam = torch.complex(-ssm.log_neg_lambda_re.exp(), ssm.lambda_im)
    dt = ssm.log_dt.exp().unsqueeze(-1)
    c = torch.complex(ssm.C_re, ssm.C_im)
    if discretization == "zoh":
        a_bar, b_bar = torch.exp(dt * lam), (torch.exp(dt * lam) - 1) / lam
    else:
        a_bar, b_bar = (1 + dt * lam / 2) / (1 - dt * lam / 2), dt / (1 - dt * lam / 2)
    x = torch.zeros_like(a_bar)
    impulse_response = []
    for t in range(40):
        x = a_bar * x + b_bar * (1.0 if t == 0 else 0.0)
        impulse_response.append(2 * (c * x).sum(-1).real)
    torch.testing.assert_close(ssm.kernel(40), torch.stack(impulse_response, -1), rtol=1e-12, atol=1e-12)


def test_s4d_initialisations():
    lin = S4DKernel(2, 5, "lin")
    torch.testing.assert_close(lin.lambda_im[0], torch.pi * torch.arange(5.0))
    inv = S4DKernel(2, 5, "inv")
    n, real_size = torch.arange(5.0), 10
    torch.testing.assert_close(inv.lambda_im[1], (real_size / math.pi) * (real_size / (2 * n + 1) - 1))
    torch.testing.assert_close(-lin.log_neg_lambda_re.exp(), torch.full((2, 5), -0.5))
    with pytest.raises(ValueError, match="init"):
        S4DKernel(2, 5, "hippo")
    with pytest.raises(ValueError, match="discretization"):
        S4DKernel(2, 5, "lin", "euler")


# ---- the core invariant ----

@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_pass_equals_chunks_equals_steps(name, dtype, data):
    length = data.draw(st.one_of(st.integers(2, 400), st.integers(1000, 3000)), label="length")
    boundaries = sorted(data.draw(st.sets(st.integers(1, length - 1), max_size=6), label="boundaries"))
    ssm = make_kernel(name, dtype)
    x = torch.randn(2, length, ssm.channels, dtype=dtype)
    one_pass, no_state = ssm(x)
    assert no_state is None
    chunked, state = run_in_pieces(ssm, x, boundaries)
    assert_close(chunked, one_pass, dtype)
    if length <= 400:  # token by token: every position a boundary
        stepped, stepped_state = run_in_pieces(ssm, x, list(range(1, length)))
        assert_close(stepped, one_pass, dtype)
        assert_close(stepped_state, state, dtype)


def test_chunk_state_equals_step_state_exactly_in_float64():
    ssm = make_kernel("s4d-inv-zoh", torch.float64)
    x = torch.randn(3, 257, ssm.channels, dtype=torch.float64)
    _, chunk_state = ssm(x, ssm.initial_state(3))
    _, step_state = run_in_pieces(ssm, x, list(range(1, 257)))
    torch.testing.assert_close(chunk_state, step_state, rtol=1e-10, atol=1e-10)


def test_gradients_flow_to_every_kernel_parameter():
    for name in KERNELS:
        ssm = make_kernel(name, torch.float64)
        y, _ = ssm(torch.randn(1, 30, ssm.channels, dtype=torch.float64))
        y.square().sum().backward()
        for pname, p in ssm.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


def test_step_coefficients_kept_during_generation_follow_parameter_changes():
    """Without autograd the step reuses Ā and C̃; an in-place update, load_state_dict or a dtype change must
    still be seen by the next step."""
    ssm = make_kernel("s4d-inv-zoh", torch.float64)
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
        other = make_kernel("s4d-inv-zoh", torch.float64, seed=1)
        ssm.load_state_dict(other.state_dict())
        assert torch.equal(ssm(x, state)[0], fresh_step(other))
        ssm.float()
        y32 = ssm(x.float(), state.to(torch.complex64))[0]
        assert y32.dtype == torch.float32
        torch.testing.assert_close(y32, fresh_step(other).float(), rtol=1e-5, atol=1e-5)


def test_kernel_gradcheck():
    ssm = S4DKernel(2, 3, "lin", "bilinear").double()
    x = torch.randn(1, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: ssm(inp)[0], (x,))


def test_state_stays_bounded_over_100k_steps():
    """|Ā| < 1 by parameterisation, so |z| <= max|u| / (1 - max|Ā|) however long generation runs."""
    ssm = make_kernel("dss", torch.float32, channels=4, modes=8)
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
