"""The Mega block (Ma et al. 2022, "Mega: Moving Average Equipped Gated Attention", Sec. 3.2) and Mega-chunk
(Sec. 3.5), trained in parallel and generated recurrently.

    X̂ = LayerNorm(X)                                 pre-norm, as the reference language models
    X' = silu(EMA(X̂) + ω ⊙ X̂)                        multi-dimensional damped EMA (kernels/ema.py)
    Z = silu(X' W_z + b_z)                           the shared representation
    Q = κ_q ⊙ Z + μ_q,   K = κ_k ⊙ Z + μ_k           per-dimension scale and offset
    V = silu(X̂ W_v + b_v)
    O = f(Q K^T / τ + b_rel) V                       softmax with τ = √z, or Laplace with τ = the visible keys
    γ = silu(X' W_γ + b_γ)                           reset gate
    φ = sigmoid(X' W_φ + b_φ)                        update gate
    Ĥ = silu(X' W_h + (γ ⊙ O) U_h + b_h)
    Y = φ ⊙ Ĥ + (1 - φ) ⊙ X                          then the normalised feed-forward network (ffn.py)

The attention is causal. Mega-chunk restricts it to chunks of c tokens at absolute positions, while the EMA spans
the whole sequence, so time and memory are linear in the length. Positions count real tokens: a padded position
is no token, so a left-padded prompt sees the chunk boundaries and distances it sees alone.

Recurrent state: (EMA state, keys, values, tokens seen). Keys and values sit in "slots": slot s holds the token at
position chunk_start + s of the chunk the row is in; a row has `seen mod c` valid slots (`seen` for full
attention), the others are masked. Mega-chunk keeps the bounded window of key_value_window.py, shared with local
attention: c slots, the token at position p in slot p mod c, so its cache never grows, and a decoding step (one
token, no autograd) writes its key and value into its slot in place; full-attention Mega keeps every key. A call
may start mid-chunk and cross any number of chunk boundaries: its tokens are written to the slots after the
cached ones, and the slots are cut into chunks of c.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from transformers import initialization as init

from ..kernels import build_ssm
from .attention_bias import RotaryRelativeBias, SimpleRelativeBias
from .base import Block
from .ffn import NormalizedFeedForward
from .key_value_window import keep_latest, write_token

LAPLACE_MEAN, LAPLACE_STD = math.sqrt(0.5), math.sqrt(1 / (4 * math.pi))


def laplace(x: torch.Tensor) -> torch.Tensor:
    """Mega's Laplace attention function (Sec. 3.4): 0.5·(1 + erf((x - μ) / (σ√2))) with μ = √(1/2) and
    σ = √(1/(4π)), a bounded stand-in for squared ReLU."""
    return 0.5 * (1 + torch.erf((x - LAPLACE_MEAN) / (LAPLACE_STD * math.sqrt(2))))


def lower_toeplitz(table: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, n) with M[i, j] = table[i - j] for i >= j and 0 above the diagonal, built from a sliding window
    rather than an n×n index (full attention over 16k tokens would spend 2 GB on that index). as_strided, unlike
    unfold, keeps a symbolic n symbolic under torch.compile(dynamic=True)."""
    n = table.shape[0]
    padded = torch.cat([table.new_zeros(n - 1), table])  # padded[n - 1 + d] = table[d]
    return padded.as_strided((n, n), (1, 1)).flip(-1)  # window i, reversed: element j is padded[n - 1 + i - j]


class QueryKeyScaleOffset(nn.Module):
    """Q = κ_q ⊙ Z + μ_q and K = κ_k ⊙ Z + μ_k (Sec. 3.2): queries and keys from the one shared Z."""

    def __init__(self, dim: int, std: float = 0.02):
        super().__init__()
        self.std = std
        self.query_scale, self.key_scale = nn.Parameter(torch.empty(dim)), nn.Parameter(torch.empty(dim))
        self.query_offset, self.key_offset = nn.Parameter(torch.empty(dim)), nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        init.normal_(self.query_scale, std=self.std)
        init.normal_(self.key_scale, std=self.std)
        init.zeros_(self.query_offset)
        init.zeros_(self.key_offset)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z * self.query_scale + self.query_offset, z * self.key_scale + self.key_offset


class MegaBlock(Block):
    """Options (SSMLMConfig.block_options["mega"]): ema_dim, n, the EMA's expansion dimension per channel (the paper
    uses 16); z_dim, the width of the shared representation Z, queries and keys (None: E/4); v_dim, the width of the
    values and the reset gate (None: 2E); chunk_size, c, attention only inside chunks of c tokens (None: full causal
    attention, whose cache grows with the sequence); attention_function, "softmax" or "laplace"; position_bias,
    "simple" (one learned scalar per distance) or "rotary" (a rotary-embedding bias, any distance); max_positions,
    the longest sequence full attention with the "simple" bias accepts (Mega-chunk needs only c distances);
    hidden_dropout, the reference's dropout on the values and on the hidden layer of the feed-forward network;
    attention_dropout, dropout on the attention weights. The block's output dropout is the config's
    hidden_dropout."""

    OPTIONS = {"ema_dim": int, "z_dim": int, "v_dim": int, "chunk_size": int,
               "attention_function": ("softmax", "laplace"), "position_bias": ("simple", "rotary"),
               "max_positions": int, "hidden_dropout": float, "attention_dropout": float}
    EXAMPLE_CONFIGS = {"mega-chunk": dict(intermediate_size=64, block_options={
        "mega": dict(ema_dim=4, z_dim=16, v_dim=48, chunk_size=5)})}

    def __init__(self, config, ema_dim: int = 16, z_dim: int | None = None, v_dim: int | None = None,
                 chunk_size: int | None = None, attention_function: str = "softmax", position_bias: str = "simple",
                 max_positions: int = 2048, hidden_dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        width = config.hidden_size
        self.width = width
        self.z_dim, self.v_dim = self.widths(z_dim, v_dim, config)
        self.chunk_size = chunk_size  # None: full causal attention
        self.attention_function = attention_function
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.ema = build_ssm("ema", width, ema_dim)
        self.to_values = nn.Linear(width, self.v_dim)
        # From X', in one product: the update gate φ, Z, the reset gate γ, and X' W_h + b_h.
        self.from_shared = nn.Linear(width, width + self.z_dim + self.v_dim + width)
        self.query_key = QueryKeyScaleOffset(self.z_dim, config.initializer_range)
        self.from_attention = nn.Linear(self.v_dim, width, bias=False)  # U_h; b_h is in from_shared
        if position_bias == "rotary":
            self.position_bias = RotaryRelativeBias(self.z_dim, config.initializer_range)
        elif self.chunk_size is None:
            self.position_bias = SimpleRelativeBias(max_positions, config.initializer_range,
                                                    "SSMLMConfig.block_options.mega.max_positions")
        else:
            self.position_bias = SimpleRelativeBias(self.chunk_size, config.initializer_range,
                                                    "SSMLMConfig.block_options.mega.chunk_size")
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.ffn = NormalizedFeedForward(width, config.intermediate_size, config.layer_norm_eps,
                                         config.hidden_dropout, hidden_dropout)

    @staticmethod
    def widths(z_dim: int | None, v_dim: int | None, config) -> tuple[int, int]:
        """(z_dim, v_dim), the unset ones at their defaults E/4 and 2E."""
        return (max(1, config.hidden_size // 4) if z_dim is None else z_dim,
                2 * config.hidden_size if v_dim is None else v_dim)

    @classmethod
    def check_options(cls, options: dict, config) -> None:
        z_dim, v_dim = cls.widths(options["z_dim"], options["v_dim"], config)
        for name, value in (("ema_dim", options["ema_dim"]), ("z_dim", z_dim), ("v_dim", v_dim),
                            ("max_positions", options["max_positions"])):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if options["chunk_size"] is not None and options["chunk_size"] <= 0:
            raise ValueError(f"chunk_size must be positive, or None for full attention, got {options['chunk_size']}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0 <= options[name] < 1:
                raise ValueError(f"{name} must be in [0, 1), got {options[name]}")
        if options["position_bias"] == "rotary" and z_dim % 2:
            raise ValueError(f"z_dim must be even for the rotary bias, got {z_dim}")

    def initial_state(self, batch_size: int):
        return (self.ema.initial_state(batch_size), *self._no_keys(batch_size))

    def attention_shape(self):
        """(query/key width, value width, chunk or None) for the benchmark's FLOPs."""
        return self.z_dim, self.v_dim, self.chunk_size

    def _no_keys(self, batch_size: int):
        """An empty attention cache: no slots yet, no tokens seen (Mega-chunk's first call widens it to c)."""
        weight = self.to_values.weight
        return (
            weight.new_zeros(batch_size, 0, self.z_dim),
            weight.new_zeros(batch_size, 0, self.v_dim),
            torch.zeros(batch_size, dtype=torch.long, device=weight.device),
        )

    def queries_keys_values(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        """Q, K, V of this call's tokens, and what the rest of the block takes from X': the reset gate γ, the update
        gate before its sigmoid, X' W_h + b_h, and the EMA state that continues `state`."""
        normed = self.norm(x)
        ema_input = normed if padding_mask is None else normed * padding_mask.unsqueeze(-1).to(normed.dtype)
        ema_state = None if state is None else state[0]
        ema, ema_state = self.ema(ema_input, ema_state)  # EMA(X̂) + ω ⊙ X̂; padded positions never enter it
        shared = self.dropout(F.silu(ema))  # X'
        update, z_and_reset, from_shared = self.from_shared(shared).split(
            [self.width, self.z_dim + self.v_dim, self.width], dim=-1)
        z, reset = F.silu(z_and_reset).split([self.z_dim, self.v_dim], dim=-1)
        query, key = self.query_key(z)
        value = self.hidden_dropout(F.silu(self.to_values(normed)))
        return query, key, value, reset, update, from_shared, ema_state

    def attention_weights(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        """f(Q K^T / τ + b_rel) of this call's queries over every key they may see, for `output_attentions`:
        (batch, 1, length, keys), the keys being the cached slots in the cache's order, then this call's tokens;
        zero where a key is not visible (another chunk, the future, padding, a stale slot). Computed beside the
        forward, which batches whole chunks in slots of its own; a padded query's row means nothing."""
        query, key, *_ = self.queries_keys_values(x, state, padding_mask)
        cached_keys, _, seen = self._no_keys(x.shape[0]) if state is None else state[1:]
        real, valid_before, slot = self._new_slots(query, seen, padding_mask)
        cached_slot = torch.arange(cached_keys.shape[1], device=slot.device).expand(slot.shape[0], -1)
        key_slot = torch.cat([cached_slot, slot], dim=1)
        key_valid = torch.cat([cached_slot < valid_before.unsqueeze(1), real], dim=1)
        keys = torch.cat([cached_keys.to(key.dtype), key], dim=1)
        return self.attention(query, keys, *self._row_bias_and_mask(slot, key_slot, key_valid)).unsqueeze(1)

    def forward(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        query, key, value, reset, update, from_shared, ema_state = self.queries_keys_values(x, state, padding_mask)
        cache = self._no_keys(x.shape[0]) if state is None else state[1:]
        attended, cache = self.attend(query, key, value, cache, padding_mask)
        hidden = self.dropout(F.silu(from_shared + self.from_attention(attended * reset)))  # Ĥ
        out = x + torch.sigmoid(update) * (hidden - x)  # φ ⊙ Ĥ + (1 - φ) ⊙ X
        return self.ffn(out), None if state is None else (ema_state, *cache)

    def _new_slots(self, query, seen, padding_mask):
        """Which of this call's tokens are real, the valid slots before it, and the slot of each new token (a
        padded one shares its real neighbour's)."""
        real = query.new_ones(query.shape[:2], dtype=torch.bool) if padding_mask is None else padding_mask.bool()
        valid_before = seen if self.chunk_size is None else seen % self.chunk_size
        return real, valid_before, valid_before.unsqueeze(1) + real.cumsum(1) - 1

    def attend(self, query, key, value, cache, padding_mask):
        """Causal attention inside chunks (or over the whole sequence), continuing from `cache` = (slot keys, slot
        values, tokens seen). Returns the output for each new token and the cache that continues it."""
        cached_keys, cached_values, seen = cache
        chunk = self.chunk_size
        length = query.shape[1]
        if self._steps_in_place(cached_keys, length, padding_mask):
            slot = seen % chunk
            write_token(cached_keys, key, slot, dim=1)
            write_token(cached_values, value, slot, dim=1)
            slot = slot.unsqueeze(1)
            key_valid = torch.arange(chunk, device=slot.device) <= slot
            out = self._attend_rows(query, slot, cached_keys, cached_values, key_valid)
            return out, (cached_keys, cached_values, seen + 1)
        real, valid_before, slot = self._new_slots(query, seen, padding_mask)
        valid_after = valid_before + real.sum(1)

        span = cached_keys.shape[1] + length  # slots this call can touch
        block = chunk or span
        blocked = length >= block  # whole chunks: batch them; otherwise a few query rows against the slots
        if blocked:
            span = -(-span // block) * block
        # Beyond `span`: room for the next cache window, then one slot that takes every padded position.
        dummy = span + (chunk or 0)
        # With no cached slot and no padding (training, an unpadded prompt) each token's slot is its position.
        in_position = padding_mask is None and cached_keys.shape[1] == 0
        write = None if in_position else torch.where(real, slot, dummy).unsqueeze(-1)
        keys = self._to_slots(key, cached_keys, write, dummy + 1)
        values = self._to_slots(value, cached_values, write, dummy + 1)
        key_valid = torch.arange(span, device=slot.device) < valid_after.unsqueeze(1)

        if blocked:
            slot_queries = self._to_slots(query, query[:, :0], write, dummy + 1)[:, :span]
            out = self._attend_blocks(slot_queries, keys[:, :span], values[:, :span], key_valid, block)
            if in_position:
                out = out[:, :length]
            else:
                out = out.gather(1, slot.clamp(min=0).unsqueeze(-1).expand(-1, -1, self.v_dim))
        else:
            out = self._attend_rows(query, slot, keys[:, :span], values[:, :span], key_valid)

        if chunk is None:
            keys, values = keys[:, :span], values[:, :span]
        else:  # the window of the c latest tokens: the unfinished chunk's at its slots, the rest masked later
            slots = torch.arange(span, device=seen.device)
            positions = torch.where(slots < valid_after.unsqueeze(1), (seen - valid_before).unsqueeze(1) + slots, -1)
            (keys, values), _ = keep_latest([keys[:, :span], values[:, :span]], positions, chunk, dim=1)
        return out, (keys, values, seen + real.sum(1))

    def _steps_in_place(self, cached_keys, length, padding_mask) -> bool:
        """A Mega-chunk decoding step: one real token into a full buffer, with no graph that an in-place write
        could invalidate (generate() runs without autograd)."""
        return (self.chunk_size is not None and length == 1 and padding_mask is None
                and not torch.is_grad_enabled() and cached_keys.shape[1] == self.chunk_size)

    @staticmethod
    def _to_slots(new, cached, write, size):
        """Cached slots followed by zeros, `size` wide, with the new tokens written at their slots (`write`; None:
        no cached slots, and each new token's slot is its position)."""
        if write is None:
            return F.pad(new, (0, 0, 0, size - new.shape[1]))
        batch, _, width = new.shape
        buffer = torch.cat([cached.to(new.dtype), new.new_zeros(batch, size - cached.shape[1], width)], dim=1)
        return buffer.scatter(1, write.expand(-1, -1, width), new)

    def _attend_blocks(self, query, keys, values, key_valid, block):
        """Slots cut into chunks of `block`, all chunks in one batched product (Sec. 3.5)."""
        batch, span = query.shape[:2]
        chunks = span // block
        query, keys = query.view(batch, chunks, block, -1), keys.view(batch, chunks, block, -1)
        values = values.view(batch, chunks, block, -1)
        causal = torch.ones(block, block, dtype=torch.bool, device=query.device).tril()
        allowed = causal & key_valid.view(batch, chunks, 1, block)
        bias = lower_toeplitz(self.position_bias.table(block))
        visible = torch.arange(1, block + 1, device=query.device).unsqueeze(-1)
        weights = self.attention(query, keys, bias, allowed, visible)
        return (self.attention_dropout(weights) @ values).reshape(batch, span, -1)

    def _attend_rows(self, query, slot, keys, values, key_valid):
        """A few new tokens against all slots: for single steps, where a whole chunk of queries would be waste."""
        key_slot = torch.arange(keys.shape[1], device=slot.device)
        weights = self.attention(query, keys, *self._row_bias_and_mask(slot, key_slot, key_valid))
        return self.attention_dropout(weights) @ values

    def _row_bias_and_mask(self, slot, key_slot, key_valid):
        """For queries at slots `slot` (batch, length) and keys at `key_slot` ((keys,) or (batch, keys)), of which
        `key_valid` (batch, keys) hold tokens: the relative position bias, the keys each query may see (causal, in
        its own chunk), and how many it sees."""
        chunk = self.chunk_size
        distance = slot.unsqueeze(-1) - key_slot.unsqueeze(-2)
        allowed = (distance >= 0) & key_valid.unsqueeze(1)
        if chunk is not None:
            allowed &= (slot // chunk).unsqueeze(-1) == (key_slot // chunk).unsqueeze(-2)
        table_length = chunk or key_slot.shape[-1]
        bias = self.position_bias.table(table_length)[distance.clamp(0, table_length - 1)]
        position_in_chunk = slot if chunk is None else slot % chunk
        visible = (position_in_chunk + 1).clamp(min=1).unsqueeze(-1)
        return bias, allowed, visible

    def attention(self, query, keys, bias, allowed, visible):
        """f(Q K^T / τ + b_rel) (Sec. 3.2) over the allowed keys, the weights that multiply the values. Softmax:
        τ = √z. Laplace (Sec. 3.4): τ is the number of keys the query sees, as the reference code normalises a
        causal row."""
        scores = query @ keys.transpose(-1, -2)
        if self.attention_function == "softmax":
            scores = scores * self.z_dim ** -0.5 + bias
            # A finite fill: a padded query that sees no key gets harmless uniform weights instead of NaN.
            return torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1)
        return laplace(scores / visible + bias) * allowed
