"""The Gated State Space block (Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", Fig. 1).

    h = LayerNorm(x)
    v = gelu(W_v h)                 F wide: the gate
    u = gelu(W_u h)                 H narrow: the SSM runs here, which is where GSS's speed comes from
    y = SSM(LayerNorm(u))           DSS (or any registered kernel) with its skip term D ⊙ u
    o = W_o((W_c y) ⊙ v)            back to F, gate, project to E
    x + dropout(o)
"""

import torch
from torch import nn
from torch.nn import functional as F


from ..kernels import build_ssm
from .base import Block


class GSSBlock(Block):
    RUNS_SSM_KERNEL = True  # the tests' examples: GSS over every registered kernel

    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.to_v = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.to_u = nn.Linear(config.hidden_size, config.ssm_size, bias=False)
        self.ssm_norm = nn.LayerNorm(config.ssm_size, eps=config.layer_norm_eps)
        self.ssm = build_ssm(config.ssm_kernel, config.ssm_size, config.ssm_state_size, config.ssm_kernel_options)
        self.to_gate = nn.Linear(config.ssm_size, config.intermediate_size, bias=False)
        self.to_out = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def initial_state(self, batch_size: int):
        return self.ssm.initial_state(batch_size)

    def forward(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        h = self.norm(x)
        v = F.gelu(self.to_v(h))
        u = self.ssm_norm(F.gelu(self.to_u(h)))
        if padding_mask is not None:
            # Padded positions must not enter the state: a zero input leaves a zero state unchanged.
            u = u * padding_mask.unsqueeze(-1).to(u.dtype)
        y, state = self.ssm(u, state)
        out = self.to_out(self.to_gate(y) * v)
        return x + self.dropout(out), state
