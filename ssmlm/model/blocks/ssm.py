"""The plain SSM block: the layer the S4 paper trained its language model with (Gu, Goel, Ré 2022, "Efficiently
Modeling Long Sequences with Structured State Spaces", Sec. 5.3, WikiText-103; state-spaces/s4 `S4Block` with
`final_act: glu`, in a pre-norm residual), over the full width with any registered kernel, then a feed-forward:

    h = LayerNorm(x)
    y = gelu(SSM(h))                     the SSM over all E channels, with its skip term D ⊙ h
    x = x + dropout(GLU(W y))            W: E -> 2E, GLU(a, b) = a ⊙ sigmoid(b)
    x = x + FFN(LayerNorm(x))            F wide, GELU (blocks/ffn.py)

The S4 model interleaves two SSM layers with one feed-forward layer; here each SSM layer has its own, as a
Transformer block pairs attention with one, so an "S4 LM" or "DSS LM" is `block_types: [ssm, ...]` with
`ssm_kernel: s4` or `dss`.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import build_ssm
from .base import Block
from .ffn import NormalizedFeedForward


class SSMLayer(nn.Module):
    """The block's math at any width: SaShiMi (sashimi.py) runs it at each of its scales."""

    def __init__(self, width: int, hidden_width: int, config):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.ssm = build_ssm(config.ssm_kernel, width, config.ssm_state_size, config.ssm_kernel_options)
        self.to_out = nn.Linear(width, 2 * width)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.feed_forward = NormalizedFeedForward(width, hidden_width, config.layer_norm_eps, config.hidden_dropout,
                                                  activation="gelu")

    def initial_state(self, batch_size: int):
        return self.ssm.initial_state(batch_size)

    def forward(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        h = self.norm(x)
        if padding_mask is not None:  # padded positions must not enter the state
            h = h * padding_mask.unsqueeze(-1).to(h.dtype)
        y, state = self.ssm(h, state)
        x = x + self.dropout(F.glu(self.to_out(F.gelu(y)), dim=-1))
        return self.feed_forward(x), state


class SSMBlock(SSMLayer, Block):
    RUNS_SSM_KERNEL = True
    EXAMPLE_KERNELS = ("s4", "dss", "s5")  # the S4 and DSS papers' language models, and S5's MIMO state

    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, config)
