"""Naive loops for the kernels' `reference` methods: each kernel's paper formula written out token by token or tap by
tap, slow and obviously right, which the tests hold the fast paths to. Imported only by those methods; nothing on
a training or generation path runs them."""

import math

import torch


def conjugate_pairs(x: torch.Tensor) -> torch.Tensor:
    """A DPLR system's full state representation [x, x̄] along the last axis (the kept modes and their conjugates)."""
    return torch.cat([x, x.conj()], dim=-1)


def run_recurrence(a_bar, b_bar, c, d, u, project=lambda w: w.real):
    """x_t = Ā x_{t-1} + B̄ u_t, y_t = project(C x_t) + D u_t, one channel at a time, by a Python loop: Ā (H, n, n),
    B̄ (H, n), C (H, n), u (B, T, H)."""
    x = torch.zeros(u.shape[0], *b_bar.shape, dtype=a_bar.dtype)
    outputs = []
    for t in range(u.shape[1]):
        x = torch.einsum("hij,bhj->bhi", a_bar, x) + b_bar * u[:, t, :, None].to(a_bar.dtype)
        outputs.append(project(torch.einsum("hi,bhi->bh", c, x)) + d * u[:, t])
    return torch.stack(outputs, 1)


def diagonal_recurrence(a_bar, b_bar, c, d, u, project):
    """run_recurrence with a diagonal Ā, given as its diagonal (H, n)."""
    return run_recurrence(torch.diag_embed(a_bar), b_bar, c, d, u, project)


def naive_convolution(kernel, d, u):
    """y_t = Σ_{s<=t} k_s u_{t-s} + D u_t, term by term: kernel (H, >= T), u (B, T, H)."""
    return torch.stack([sum(kernel[:, s] * u[:, t - s] for s in range(t + 1)) + d * u[:, t]
                        for t in range(u.shape[1])], 1)


def finite_filter(taps, d, u):
    """naive_convolution with a filter of K taps (H, K), zero past its last tap."""
    padded = torch.cat([taps, taps.new_zeros(taps.shape[0], max(0, u.shape[1] - taps.shape[1]))], -1)
    return naive_convolution(padded, d, u)


def linear_upsample(taps, factor):
    """Linear interpolation with align_corners=False, written out: output i samples the input at
    (i + 1/2) / factor - 1/2, clamped to the ends."""
    d = taps.shape[-1]
    out = []
    for i in range(d * factor):
        position = min(max((i + 0.5) / factor - 0.5, 0.0), d - 1)
        left = int(math.floor(position))
        right = min(left + 1, d - 1)
        out.append(taps[:, left] * (1 - (position - left)) + taps[:, right] * (position - left))
    return torch.stack(out, -1)
