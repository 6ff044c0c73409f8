"""The normalised feed-forward network that follows Mega's gated attention (Ma et al. 2022, Sec. 3.2, "Mega
blocks"; pre-norm as in the reference code's language models), and the attention and plain SSM blocks:

    x + dropout(W_2 · hidden_dropout(act(W_1 · LayerNorm(x) + b_1)) + b_2)        act: silu (Mega), or gelu (S4)
"""

import torch
from torch import nn
from torch.nn import functional as F


class NormalizedFeedForward(nn.Module):
    def __init__(self, width: int, hidden_width: int, layer_norm_eps: float = 1e-5, dropout: float = 0.0,
                 hidden_dropout: float = 0.0, activation: str = "silu"):
        super().__init__()
        self.activation = getattr(F, activation)
        self.norm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.up = nn.Linear(width, hidden_width)
        self.down = nn.Linear(hidden_width, width)
        self.dropout = nn.Dropout(dropout)
        self.hidden_dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden_dropout(self.activation(self.up(self.norm(x))))
        return x + self.dropout(self.down(hidden))
