"""SaShiMi (Goel, Gu, Donahue, Ré 2022, "It's Raw! Audio Generation with State-Space Models", Sec. 3 and Fig. 1;
state-spaces/s4 `models/sashimi/sashimi.py`), the autoregressive backbone: a multi-scale stack whose inner stages
run at 1/p, 1/p² ... of the input rate, as one block (`block_types: [sashimi]`; the model's embedding, final norm
and head are the reference's encoder, final norm and decoder).

    level(x), with pooling factor p and width H at this level:
        z = DownPool(x)                    p consecutive samples side by side in the channels, W_d: pH -> eH
        w = level'(z)                      the next level at width eH (the centre past the last factor)
        s = UpPool(w) + x                  W_u: eH -> pH, the p samples back on the time axis, one pooled step late
        y = s + layers(s)                  `layers` residual pairs at width H
    centre(z) = z + layers(z)

`layers(·)` is the pairs applied in turn, each with its own residual; the skip around them comes on top, as in the
reference (its `x = x + outputs.pop()` after the residual blocks), so y = 2s + F(s): a reader should not "fix" it.

Each residual pair is the plain SSM block's math (ssm.py `SSMLayer`: pre-norm SSM, GELU, GLU; then a GELU
feed-forward `ff_expand`·H wide), running the config's `ssm_kernel` (the paper's S4, whose Re Λ < 0 keeps the
recurrence stable). The down path has no layers, as the reference's autoregressive model.

Causality: the UpPool output for the samples of group g (positions gp … gp + p − 1) is computed from group g − 1
of the pooled sequence, which summarises samples up to gp − 1 (Fig. 1, "shift"); the first p outputs are zero. The
current sample reaches the output through the skip s = … + x and the full-rate layers.

Recurrent mode, exact for any split: a level's state holds the samples of the group in progress (`pending`, p
slots, the first `phase` of them filled), the UpPool outputs of the last completed group (`ready`, read one per
sample), the next level's state and its layers' states. A chunk of T samples starting at phase c completes
⌊(c + T)/p⌋ groups: those alone go down (none: the inner levels do not run), and the outputs are the samples
c … c + T − 1 of [ready, UpPool(new groups)]. One pass is the chunk from the empty state, a step a chunk of one,
so a pooled stage steps every p-th sample, and no length need divide by the pooling product.

Padding: a row's samples are its real positions, and a padded position is no sample (its output is zero): pooling
groups samples by their count, so a padded position that took a place in a group would shift every group after it.
A batch with padding, or whose rows stand at different phases of some level (after a left-padded prefill), runs row
by row, each row as it runs alone: exact, at a Python loop's cost over the batch (prompts of equal length avoid it;
a training batch is unpadded).

Where it differs from the reference: the p samples of a group sit sample-major in the channels (index s·H + h; the
reference's is h·p + s, a permutation of W_d's columns and W_u's rows, so its checkpoints load only permuted); the
pooling layers have no weight normalisation (a reparametrisation of the same function); linear layers start as the
model's others (normal, 0.02); the residual dropout comes after the GLU; the head is the model's (untied from the
embedding with `tie_word_embeddings: false`, as the reference's, but without a bias).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..cache import map_state
from .base import Block
from .ssm import SSMLayer


class LevelState(NamedTuple):
    pending: torch.Tensor  # (B, p, H): the inputs of the group in progress, the first `phase` slots filled
    ready: torch.Tensor  # (B, p, H): the UpPool outputs for the current group's samples
    phase: torch.Tensor  # (B,) long: samples of the group in progress seen
    inner: tuple  # the next level's state
    layers: tuple  # each residual pair's state


class Stage(nn.Module):
    """One level of the U-Net: `layers` residual pairs at `width`, around the pooled levels inside (none: the
    centre)."""

    def __init__(self, width: int, pools: Sequence[int], expand: int, ff_expand: int, layers: int, config):
        super().__init__()
        self.width = width
        self.pool = pools[0] if pools else None
        if self.pool is not None:
            inner_width = expand * width
            self.down = nn.Linear(self.pool * width, inner_width)
            self.inner = Stage(inner_width, pools[1:], expand, ff_expand, layers, config)
            self.up = nn.Linear(inner_width, self.pool * width)
        self.layers = nn.ModuleList(SSMLayer(width, ff_expand * width, config) for _ in range(layers))

    def initial_state(self, batch_size: int, like: torch.Tensor):
        layers = tuple(layer.initial_state(batch_size) for layer in self.layers)
        if self.pool is None:
            return layers
        buffer = like.new_zeros(batch_size, self.pool, self.width)
        phase = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        return LevelState(buffer, buffer.clone(), phase, self.inner.initial_state(batch_size, like), layers)

    def run_layers(self, x: torch.Tensor, states):
        new_states = []
        for index, layer in enumerate(self.layers):
            x, state = layer(x, None if states is None else states[index])
            new_states.append(state)
        return x, tuple(new_states)

    def forward(self, x: torch.Tensor, state=None):
        """(y, state) for the samples x (B, T, width) continuing `state` (None: a whole sequence, no state kept).
        All rows are at the same phase."""
        if self.pool is None:
            y, layers = self.run_layers(x, state)
            return x + y, (layers if state is not None else None)
        if state is None:
            return self.whole_sequence(x)
        batch, length, width = x.shape
        p, phase = self.pool, int(state.phase[0])
        samples = torch.cat([state.pending[:, :phase].to(x.dtype), x], dim=1)  # from the group in progress on
        groups = samples.shape[1] // p
        upsampled, inner_state = state.ready.to(x.dtype), state.inner
        if groups:  # only complete groups go down: the inner levels run every p-th sample
            inner, inner_state = self.inner(self.pool_down(samples[:, :groups * p]), inner_state)
            upsampled = torch.cat([upsampled, self.pool_up(inner)], dim=1)
        s = upsampled[:, phase:phase + length] + x
        y, layers = self.run_layers(s, state.layers)
        left = samples.shape[1] - groups * p
        pending = torch.cat([samples[:, groups * p:], x.new_zeros(batch, p - left, width)], dim=1)
        return s + y, LevelState(pending, upsampled[:, -p:], torch.full_like(state.phase, left), inner_state, layers)

    def whole_sequence(self, x: torch.Tensor):
        """The training mode: the sequence zero-padded to whole groups, so that every length traces as one graph. A
        last, partial group reaches no output: nothing inside mixes over time but causal SSMs (norms are over the
        channels), so the padded samples only touch outputs past the end, which are cut."""
        batch, length, width = x.shape
        p = self.pool
        padded = nn.functional.pad(x, (0, 0, 0, (-length) % p))
        inner, _ = self.inner(self.pool_down(padded), None)
        upsampled = torch.cat([x.new_zeros(batch, p, width), self.pool_up(inner)], dim=1)
        s = upsampled[:, :length] + x
        y, _ = self.run_layers(s, None)
        return s + y, None

    def pool_down(self, samples: torch.Tensor) -> torch.Tensor:
        """DownPool: each group of p samples (B, n·p, H) side by side in the channels, projected to (B, n, eH)."""
        batch, length, width = samples.shape
        return self.down(samples.reshape(batch, length // self.pool, self.pool * width))

    def pool_up(self, inner: torch.Tensor) -> torch.Tensor:
        """UpPool: each pooled step (B, n, eH) projected to p samples, (B, n·p, H), for the group after it."""
        batch, groups, _ = inner.shape
        return self.up(inner).reshape(batch, groups * self.pool, self.width)


class SaShiMiBlock(Block):
    """Options (SSMLMConfig.block_options["sashimi"]): pools, the pooling factor of each level, outermost first
    (the paper's [4, 4]); expand, the factor each level's width grows by (2); ff_expand, each feed-forward's width
    over its level's (2); layers, residual pairs per level and in the centre (8). The model's hidden_size is the
    outer width (the paper's 64), its ssm_* fields configure every level's SSM; intermediate_size is not used."""

    OPTIONS = {"pools": Sequence, "expand": int, "ff_expand": int, "layers": int}
    RUNS_SSM_KERNEL = True
    EXAMPLE_KERNELS = ("s4", "dss")
    # Unequal factors, so that a mix-up of the samples' order inside a group shows; one pair a level.
    EXAMPLE_SETTINGS = dict(block_options={"sashimi": dict(pools=[2, 3], layers=1)})
    # A pooled level steps its inner levels at the end of a group only: the step branches on the phase.
    STEP_COMPILES_WHOLE = False
    EXAMPLE_CONFIGS = {"sashimi-4x4": dict(block_types=["sashimi"], num_hidden_layers=1, ssm_kernel="s4",
                                           tie_word_embeddings=False,
                                           block_options={"sashimi": dict(pools=[4, 4], layers=2)})}

    def __init__(self, config, pools: Sequence[int] = (4, 4), expand: int = 2, ff_expand: int = 2, layers: int = 8):
        super().__init__()
        self.pools = tuple(pools)
        self.stage = Stage(config.hidden_size, self.pools, expand, ff_expand, layers, config)

    @classmethod
    def check_options(cls, options: dict, config) -> None:
        pools = options["pools"]
        if isinstance(pools, str) or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1
                                             for p in pools):
            raise ValueError(f"pools must be a list of positive ints (outermost first), got {pools!r}")
        for name in ("expand", "ff_expand", "layers"):
            if options[name] <= 0:
                raise ValueError(f"{name} must be positive, got {options[name]}")

    def initial_state(self, batch_size: int):
        return self.stage.initial_state(batch_size, next(self.parameters()))

    def forward(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        if x.shape[1] == 0:
            return x, state
        if padding_mask is None and (state is None or not phases_differ(state)):
            return self.stage(x, state)
        # Rows whose samples do not line up: each runs alone, its padded positions no samples (outputs zero).
        outputs, states = torch.zeros_like(x), []
        for row in range(x.shape[0]):
            real = torch.ones_like(x[row, :, 0], dtype=torch.bool) if padding_mask is None else padding_mask[row].bool()
            row_state = None if state is None else map_state(lambda tensor: tensor[row:row + 1], state)
            if bool(real.any()):
                y, row_state = self.stage(x[row:row + 1, real], row_state)
                outputs[row, real] = y[0]
            states.append(row_state)
        return outputs, None if state is None else join_rows(states)


def phases_differ(state) -> bool:
    """Whether the rows of a state stand at different phases of some level."""
    while isinstance(state, LevelState):
        if bool((state.phase != state.phase[0]).any()):
            return True
        state = state.inner
    return False


def join_rows(states: list):
    """One state from the single-row states of a batch, in order."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states, dim=0)
    joined = [join_rows([state[index] for state in states]) for index in range(len(first))]
    return type(first)(*joined) if hasattr(first, "_fields") else type(first)(joined)
