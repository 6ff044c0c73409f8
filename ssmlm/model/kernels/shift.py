"""H3's shift SSM (Fu, Dao et al., ICLR 2023, "Hungry Hungry Hippos", Sec. 3.1; HazyResearch/H3
`ss_kernel_shift.py`): a state space whose A shifts the state down one place and whose B = e₁, so that its state is
the last N inputs and its output Σ_j C_j u_{t−j}: a causal filter of N learned taps, y = C * u + D u.

Built as one (window.py): the taps are C itself. The reference also trains B, starting at e₁; its taps are then
a combination of B and C, but still N taps of a causal filter, and C alone already reaches every such filter, so
keeping B = e₁ loses nothing and saves the parameters (training and stepping agree for any B either way). Init as
the reference: C uniform in ±1/√N, D standard normal.
"""

import torch
from torch import nn

from transformers import initialization as init

from .window import WindowConv


class ShiftSSM(WindowConv):
    BOUNDARY_LENGTHS = (5, 6, 7)
    EXAMPLE_MODEL_SETTINGS = dict(ssm_state_size=12)

    def __init__(self, channels: int, state_size: int):
        super().__init__(channels, state_size)
        self.kernel_length = state_size
        self.C = nn.Parameter(torch.empty(channels, state_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = self.kernel_length ** -0.5
        init.uniform_(self.C, -bound, bound)
        init.normal_(self.D, std=1.0)

    def taps(self) -> torch.Tensor:
        return self.C.to(self.compute_dtype())

    def reference(self, u):
        """H3's shift SSM: the state is the last N inputs (A shifts, B = e₁), so y_t = Σ_{j<N} C_j u_{t-j} + D u_t."""
        from .reference import finite_filter

        return finite_filter(self.C, self.D, u)
