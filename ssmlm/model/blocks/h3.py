"""The H3 block (Fu, Dao, Saab, Thomas, Rudra, Ré, ICLR 2023, "Hungry Hungry Hippos", Sec. 3.1 and Alg. 1; the
HazyResearch/H3 reference's `H3`), pre-norm, followed by a feed-forward as in its language models:

    h = LayerNorm(x)
    q, k, v = W_q h, W_k h, W_v h
    k = Shift(k)                                      a learned causal filter of N taps (kernels/shift.py)
    per head, with head dimension d_h:  kv = k vᵀ     (d_h × d_h channels; d_h = 1: kv = k ⊙ v)
    y = Diag(kv)                                      S4D-Lin, bilinear, one kernel per head, shared by its d_h²
    o_j = Σ_i q_i y_{ij}                              per head (d_h = 1: o = q ⊙ y)
    x = x + dropout(W_o o)
    x = x + FFN(LayerNorm(x))                         GELU, F wide (blocks/ffn.py)

Its state holds both SSMs: the shift's window of the last N − 1 keys and the diagonal SSM's state, so a chunk
continues exactly from a cache (the reference's prefill ignores an incoming state). Padded positions have their
keys and values zeroed, so they enter neither state.
"""

from typing import NamedTuple

import torch
from torch import nn

from ..kernels import build_ssm
from .base import Block
from .ffn import NormalizedFeedForward


class H3State(NamedTuple):
    shift: torch.Tensor  # the shift SSM's window (B, E, N − 1)
    diagonal: torch.Tensor  # the diagonal SSM's state (B, d_h², heads, modes), complex


class H3Block(Block):
    """Options (SSMLMConfig.block_options["h3"]): head_dim, d_h: each head's SSM runs over the d_h² products of its
    keys and values (1, the H3 paper's language models: an elementwise k ⊙ v; the width must divide by it);
    shift_size, N, the taps of the shift SSM (its state: the last N − 1 keys); state_size, the complex modes of the
    diagonal SSM (S4D-Lin, bilinear; the paper's 64 real)."""

    OPTIONS = {"head_dim": int, "shift_size": int, "state_size": int}
    EXAMPLE_CONFIGS = {"h3": dict(block_options={"h3": dict(shift_size=6, state_size=4)}),
                       "h3-heads": dict(block_options={"h3": dict(head_dim=4, shift_size=6, state_size=4)}),
                       "h3-hybrid": dict(block_types=["h3", "attention"],
                                         block_options={"h3": dict(shift_size=6, state_size=4)})}

    def __init__(self, config, head_dim: int = 1, shift_size: int = 64, state_size: int = 32):
        super().__init__()
        width = config.hidden_size
        self.head_dim = head_dim
        self.heads = width // self.head_dim
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.to_qkv = nn.Linear(width, 3 * width)
        self.shift = build_ssm("shift", width, shift_size)
        self.diagonal = build_ssm("s4d", self.heads, state_size, {"init": "lin", "discretization": "bilinear"})
        self.to_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.feed_forward = NormalizedFeedForward(width, config.intermediate_size, config.layer_norm_eps,
                                                  config.hidden_dropout, activation="gelu")

    @classmethod
    def check_options(cls, options: dict, config) -> None:
        for name in ("head_dim", "shift_size", "state_size"):
            if options[name] <= 0:
                raise ValueError(f"{name} must be positive, got {options[name]}")
        if config.hidden_size % options["head_dim"]:
            raise ValueError(f"head_dim ({options['head_dim']}) must divide hidden_size ({config.hidden_size})")

    def initial_state(self, batch_size: int) -> H3State:
        diagonal = self.diagonal.initial_state(batch_size * self.head_dim ** 2)
        return H3State(self.shift.initial_state(batch_size), diagonal.unflatten(0, (batch_size, self.head_dim ** 2)))

    def forward(self, x: torch.Tensor, state: H3State | None = None, padding_mask: torch.Tensor | None = None):
        batch, length, width = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        if padding_mask is not None:  # padded positions enter neither state
            k, v = (t * padding_mask.unsqueeze(-1).to(t.dtype) for t in (k, v))
        k, shift_state = self.shift(k, None if state is None else state.shift)
        # Per head the outer product k vᵀ: d_h² sequences of the head's channels, batched for its diagonal SSM.
        k, v, q = (t.view(batch, length, self.heads, self.head_dim) for t in (k, v, q))
        kv = torch.einsum("blhi,blhj->bijlh", k, v).reshape(batch * self.head_dim ** 2, length, self.heads)
        diagonal_state = None if state is None else state.diagonal.flatten(0, 1)
        y, diagonal_state = self.diagonal(kv, diagonal_state)
        y = y.view(batch, self.head_dim, self.head_dim, length, self.heads)
        out = torch.einsum("blhi,bijlh->blhj", q, y).reshape(batch, length, width)
        x = x + self.dropout(self.to_out(out))
        new_state = None if state is None else H3State(
            shift_state, diagonal_state.unflatten(0, (batch, self.head_dim ** 2)))
        return self.feed_forward(x), new_state
