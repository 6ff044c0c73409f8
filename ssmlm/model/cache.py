"""The generation cache: one layer per block holding that block's state, in a transformers `Cache`.

A block's state is a tensor or a tuple of tensors with the batch first (an SSM state, later also a window of
keys and values). generate() asks the cache how many tokens it has seen before the first forward, reorders it
for beam search and expands or selects its batch; all of that is the same for every kind of state.
"""

import torch

from transformers.cache_utils import Cache, CacheLayerMixin


def map_state(fn, state):
    """Apply `fn` to every tensor of a (possibly nested) tuple state, keeping the tuple's type (a NamedTuple
    stays one)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    mapped = [map_state(fn, s) for s in state]
    return type(state)(*mapped) if hasattr(state, "_fields") else type(state)(mapped)


class BlockStateLayer(CacheLayerMixin):
    """One block's recurrent state and the number of tokens it summarises."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self):
        super().__init__()
        self.state = None
        self.seen_tokens = 0

    def __repr__(self):
        return f"{type(self).__name__}(seen_tokens={self.seen_tokens})"

    def lazy_initialization(self, key_states, value_states):
        raise NotImplementedError("a block creates its own initial state")

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("block states are written by their block, not through Cache.update")

    def advance(self, state, num_tokens: int):
        """Store the state a block returned after reading `num_tokens` more tokens."""
        self.state = state
        self.seen_tokens += num_tokens
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def reset(self):
        self.state, self.seen_tokens, self.is_initialized = None, 0, False

    def crop(self, tokens_to_remove: int):
        raise ValueError("a recurrent state cannot be cropped: it holds no per-token history to roll back")

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self.state = map_state(lambda t: t.index_select(0, beam_idx.to(t.device)), self.state)

    def batch_repeat_interleave(self, repeats: int):
        self.state = map_state(lambda t: t.repeat_interleave(repeats, dim=0), self.state)

    def batch_select_indices(self, indices: torch.Tensor):
        self.state = map_state(lambda t: t[indices], self.state)

    def offload(self):
        self.state = map_state(lambda t: t.to("cpu", non_blocking=True), self.state)

    def prefetch(self):
        pass  # states are small and stay where they are

    @property
    def batch_size(self) -> int:
        first = []
        map_state(first.append, self.state)
        return first[0].shape[0] if first else -1

    def num_bytes(self) -> int:
        sizes = []
        map_state(lambda t: sizes.append(t.numel() * t.element_size()), self.state)
        return sum(sizes)


class SSMLMCache(Cache):
    """All blocks' states, one `BlockStateLayer` per block."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[BlockStateLayer() for _ in range(num_layers)])

    def num_bytes(self) -> int:
        """Memory held by the cached states: flat in the generated length for recurrent blocks."""
        return sum(layer.num_bytes() for layer in self.layers)

    def check_fits(self, num_layers: int, batch_size: int) -> None:
        """Refuse a cache of another model or another batch: a state of batch 1 would broadcast over a batch of
        2 (and one of 2 over 1), continuing every sequence from the wrong prefix without an error."""
        if len(self.layers) != num_layers:
            raise ValueError(f"the cache holds {len(self.layers)} block states but the model has {num_layers} "
                             f"blocks: it is another model's")
        cached = {layer.batch_size for layer in self.layers if layer.state is not None}
        if cached and cached != {batch_size}:
            raise ValueError(f"the cache holds the state of a batch of {min(cached)} sequences but the input is a "
                             f"batch of {batch_size}; continue each batch with its own cache")
