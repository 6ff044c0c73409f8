"""The Transformer block of the GSS-Transformer hybrid and of the Transformer baseline (Mehta et al. 2022, Sec. 4;
Vaswani et al. 2017; rotary positions, Su et al. 2021):

    h = LayerNorm(x)
    x = x + W_o · softmax(RoPE(W_q h) · RoPE(W_k h)^T / √d + mask) · W_v h        multi-head, causal
    x = x + W_2 · silu(W_1 · LayerNorm(x))                                          (the shared feed-forward)

The attention span is full (every earlier token), sliding (the last w tokens, itself included) or chunked
(block-local: only tokens in the same chunk of w absolute positions). All three are one rule on positions,

    full:     p_k <= p_q          sliding: p_q - w < p_k <= p_q          chunked: p_k <= p_q, p_k // w == p_q // w

so the same masks serve training, prefill from a cache, and single steps. Positions count real tokens only
(left padding takes none), so a padded prompt attends exactly as it does alone. Local spans run blockwise:
queries in blocks of w attend to keys of their own and the previous block, so time and memory are linear
in the length. The state is a key/value cache: every key for the full span; for local spans the bounded window of
key_value_window.py (w slots, the token at position p in slot p mod w), in which a decoding step (one token, no
autograd) writes its key in place over the one its span can no longer reach.
"""

import torch
from torch import nn
from torch.nn import functional as F

from .base import Block
from .ffn import NormalizedFeedForward
from .key_value_window import keep_latest, write_token


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by the angle p·base^(-2i/d) (RoPE, Su et al. 2021, eq. 34).

    x: (batch, heads, length, d); positions: (batch, length).
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float64) / half)
    angles = (positions.unsqueeze(-1).to(torch.float64) * inv_freq).unsqueeze(1)  # (batch, 1, length, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class AttentionBlock(Block):
    """Options (SSMLMConfig.block_options["attention"]): num_heads (the width must divide by it into even head
    sizes, for rotary positions); span, "full", "sliding" or "chunked"; window, w for the sliding and chunked spans
    (their cache keeps w keys); rope_theta, the base of the rotary position embedding; attention_dropout, dropout on
    the attention weights."""

    OPTIONS = {"num_heads": int, "span": ("full", "sliding", "chunked"), "window": int, "rope_theta": float,
               "attention_dropout": float}
    EXAMPLE_CONFIGS = {"attention": dict(block_options={"attention": dict(num_heads=2)})}

    def __init__(self, config, num_heads: int = 4, span: str = "full", window: int | None = None,
                 rope_theta: float = 10000.0, attention_dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.span = span
        self.window = window
        self.rope_theta = rope_theta
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.to_qkv = nn.Linear(config.hidden_size, 3 * self.num_heads * self.head_dim, bias=False)
        self.to_out = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.attention_dropout = attention_dropout
        self.feed_forward = NormalizedFeedForward(config.hidden_size, config.intermediate_size,
                                                  config.layer_norm_eps, config.hidden_dropout)

    @classmethod
    def check_options(cls, options: dict, config) -> None:
        if options["span"] != "full" and (options["window"] is None or options["window"] <= 0):
            raise ValueError(f"window must be a positive int for span={options['span']!r}, got {options['window']}")
        heads = options["num_heads"]
        if heads <= 0 or config.hidden_size % heads:
            raise ValueError(f"num_heads ({heads}) must be positive and divide hidden_size ({config.hidden_size})")
        if (config.hidden_size // heads) % 2:
            raise ValueError(f"num_heads: the head size hidden_size / num_heads must be even for rotary positions, "
                             f"got {config.hidden_size // heads}")
        if not 0 <= options["attention_dropout"] < 1:
            raise ValueError(f"attention_dropout must be in [0, 1), got {options['attention_dropout']}")

    def attention_shape(self):
        """(query/key width, value width, chunk or None) for the benchmark's FLOPs; a sliding span is counted as
        full, an upper bound."""
        width = self.num_heads * self.head_dim
        return width, width, self.window if self.span == "chunked" else None

    def initial_state(self, batch_size: int):
        """(keys, values, key positions (-1 = padding), next position per row): nothing seen yet."""
        weight = self.to_qkv.weight
        empty = weight.new_zeros(batch_size, self.num_heads, 0, self.head_dim)
        positions = torch.zeros(batch_size, 0, dtype=torch.long, device=weight.device)
        return empty, empty, positions, torch.zeros(batch_size, dtype=torch.long, device=weight.device)

    def queries_keys_values(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        """q, k, v (batch, heads, length, d) with rotary positions, the positions (batch, length), which tokens are
        real, and the position the call starts at."""
        batch, length, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        real = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        if padding_mask is not None:
            real = padding_mask.bool()
        start = state[3] if state is not None else torch.zeros(batch, dtype=torch.long, device=x.device)
        positions = start.unsqueeze(1) + real.long().cumsum(1) - 1  # padding shares its neighbour's position
        q = rotary(q, positions.clamp_min(0), self.rope_theta)
        k = rotary(k, positions.clamp_min(0), self.rope_theta)
        return q, k, v, positions, real, start

    def attention_weights(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        """softmax(q·kᵀ/√d + span mask) of this call's queries over every key they may see, for
        `output_attentions`: (batch, heads, length, keys), the keys being the cached ones in the cache's order
        (for local spans: the window's slots), then this call's. Computed apart from the forward, which runs
        fused SDPA kernels that return no weights."""
        q, k, _, positions, real, _ = self.queries_keys_values(x, state, padding_mask)
        key_positions = torch.where(real, positions, -1)
        if state is not None:
            k = torch.cat([state[0], k], dim=2)
            key_positions = torch.cat([state[2], key_positions], dim=1)
        length, cached = q.shape[2], k.shape[2] - q.shape[2]
        visible = self._span_mask(positions.unsqueeze(-1), key_positions.unsqueeze(-2))
        own = torch.arange(length, device=q.device)
        visible[:, own, cached + own] = True  # as in _attend: a padded query sees itself
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        return scores.masked_fill(~visible.unsqueeze(1), float("-inf")).softmax(-1)

    def forward(self, x: torch.Tensor, state=None, padding_mask: torch.Tensor | None = None):
        batch, length, _ = x.shape
        q, k, v, positions, real, start = self.queries_keys_values(x, state, padding_mask)
        key_positions = torch.where(real, positions, -1)

        if state is None and padding_mask is None:
            attended = self._attend_fresh(q, k, v)
        elif self._steps_in_place(state, length, padding_mask):
            keys, values, cached_positions, _ = state
            slot = positions[:, 0] % self.window  # holds the token w back, beyond every span's reach
            write_token(keys, k, slot, dim=2)
            write_token(values, v, slot, dim=2)
            write_token(cached_positions, positions, slot, dim=1)
            attended = self._attend_dense(q, keys, values, self._span_mask(positions.unsqueeze(-1),
                                                                           cached_positions.unsqueeze(-2)))
            state = (keys, values, cached_positions, start + 1)
        else:
            if state is not None:
                k = torch.cat([state[0], k], dim=2)
                v = torch.cat([state[1], v], dim=2)
                key_positions = torch.cat([state[2], key_positions], dim=1)
            attended = self._attend(q, positions, k, v, key_positions)
            if state is not None:
                state = self._next_cache(k, v, key_positions, start + real.sum(1))
        out = self.to_out(attended.transpose(1, 2).reshape(batch, length, -1))
        return self.feed_forward(x + self.dropout(out)), state

    def _steps_in_place(self, state, length, padding_mask) -> bool:
        """A decoding step of a local span: one real token into a full buffer, with no graph that an in-place
        write could invalidate (generate() runs without autograd)."""
        return (self.span != "full" and length == 1 and padding_mask is None and not torch.is_grad_enabled()
                and state[0].shape[2] == self.window)

    def _next_cache(self, k, v, key_positions, next_position):
        """The keys a later call can need: all of them for the full span; for local spans the w latest, in the
        window's slots (empty ones at position -1 while fewer have been seen), so the buffer never changes size."""
        if self.span == "full":
            return k, v, key_positions, next_position
        (k, v), key_positions = keep_latest([k, v], key_positions, self.window, dim=2)
        return k, v, key_positions, next_position

    def _dropout_p(self):
        return self.attention_dropout if self.training else 0.0

    def _attend_fresh(self, q, k, v):
        """Training fast path: positions 0..L-1 in every row, no cache."""
        if self.span == "full":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._dropout_p())
        if self.span == "chunked":
            # Chunks align with blocks of w: each block is an independent causal attention, so the blocks join the
            # heads in SDPA's batch (4-D and contiguous, which torch.compile's CPU code needs: it crashed on the
            # 5-D windows of unfold).
            batch, heads, length, _ = q.shape
            blocks = -(-length // self.window)
            padding = (0, 0, 0, blocks * self.window - length)
            q, k, v = (F.pad(t, padding).reshape(batch, heads * blocks, self.window, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._dropout_p())
            return out.reshape(batch, heads, blocks * self.window, -1)[:, :, :length]
        positions = torch.arange(q.shape[2], device=q.device).expand(q.shape[0], -1)
        return self._attend(q, positions, k, v, positions)

    def _attend(self, q, query_positions, k, v, key_positions):
        """Queries (the last L entries of the keys are their own) attend by the span rule on positions."""
        length, cached = q.shape[2], k.shape[2] - q.shape[2]
        # Fewer queries than a block (decoding steps, short prompts): one dense mask over at most 2w - 1 keys is
        # smaller than a block of w queries against 2w keys.
        if self.span == "full" or length < self.window:
            mask = self._span_mask(query_positions.unsqueeze(-1), key_positions.unsqueeze(-2))
            own = torch.arange(length, device=q.device)
            mask[:, own, cached + own] = True  # a padded query sees itself only: no all-masked row, no NaN
            return self._attend_dense(q, k, v, mask)
        # Blocks of w queries; block j sees keys [j·w - (w - cached), (j + 2)·w - (w - cached)) of the padded
        # key sequence: its own block and the previous one, which covers any key a local span can reach.
        w = self.window
        front = w - cached
        q_blocks = _blocks_of(q, w, pad_front=0, block=w)
        k_blocks = _blocks_of(k, 2 * w, pad_front=front, block=w)
        v_blocks = _blocks_of(v, 2 * w, pad_front=front, block=w)
        qpos = _blocks_of(query_positions.unsqueeze(1), w, pad_front=0, block=w, fill=0)[:, 0]
        kpos = _blocks_of(key_positions.unsqueeze(1), 2 * w, pad_front=front, block=w, fill=-1)[:, 0]
        mask = self._span_mask(qpos.unsqueeze(-1), kpos.unsqueeze(-2))  # (batch, blocks, w, 2w)
        own = torch.arange(w, device=q.device)
        mask[:, :, own, w + own] = True
        # The blocks join the batch, 4-D as SDPA's fused CPU kernel takes them (5-D inputs take its slower math path).
        batch, heads, blocks = q_blocks.shape[:3]
        q_blocks, k_blocks, v_blocks = (t.transpose(1, 2).reshape(batch * blocks, heads, *t.shape[3:])
                                        for t in (q_blocks, k_blocks, v_blocks))
        out = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, attn_mask=mask.flatten(0, 1).unsqueeze(1),
                                             dropout_p=self._dropout_p())
        return out.reshape(batch, blocks, heads, w, -1).transpose(1, 2).flatten(2, 3)[:, :, :length]

    def _attend_dense(self, q, k, v, mask):
        """Queries against all keys under a (batch, queries, keys) mask."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), dropout_p=self._dropout_p())

    def _span_mask(self, query_positions, key_positions):
        visible = (key_positions >= 0) & (key_positions <= query_positions)
        if self.span == "sliding":
            visible &= key_positions > query_positions - self.window
        elif self.span == "chunked":
            visible &= key_positions // self.window == query_positions // self.window
        return visible


def _blocks_of(x: torch.Tensor, size: int, pad_front: int, block: int, fill: float = 0.0) -> torch.Tensor:
    """Windows of `size` along dim 2 every `block` entries, after padding `pad_front` in front and enough at the
    end for whole blocks: (batch, heads, L, ...) -> (batch, heads, num_blocks, size, ...)."""
    length = x.shape[2]
    num_blocks = -(-(length + pad_front - (size - block)) // block) if size > block else -(-length // block)
    total = (num_blocks - 1) * block + size
    pad = [0, 0] * (x.dim() - 3) + [pad_front, total - length - pad_front]
    padded = F.pad(x, pad, value=fill)
    windows = padded.unfold(2, size, block)  # (..., num_blocks, [rest], size)
    return windows.movedim(-1, 3) if x.dim() > 3 else windows
