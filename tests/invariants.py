"""Helpers shared by the invariant tests: the tests' small model config, the lengths and split points they draw,
feeding a mixer or a model in pieces with the state carried, decoding by re-running the full prefix, left-padding
a batch, and comparing within the stated tolerance."""

import os

import torch
from hypothesis import strategies as st

from ssmlm import SSMLMConfig
from ssmlm.model.blocks import BLOCKS
from ssmlm.model.kernels import KERNELS

# The device the core invariant tests (marked `device`) run on: the CPU unless SSMLM_TEST_DEVICE names another;
# scripts/device_check.sh runs them with SSMLM_TEST_DEVICE=cuda.
DEVICE = torch.device(os.environ.get("SSMLM_TEST_DEVICE", "cpu"))

PAD, EOS, BOS = 0, 1, 2
VOCAB_SIZE = 61

# Relative to the largest output: float64 shows the math is exact; float32 allows rounding in long FFTs.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def merge_fields(*fields: dict) -> dict:
    """Config fields from several dicts, the later ones winning; their block_options merge per block kind and per
    option (a later {"mega": {"chunk_size": 4}} keeps the earlier mega options it does not name)."""
    merged, block_options = {}, {}
    for each in fields:
        merged.update(each)
        for kind, options in (each.get("block_options") or {}).items():
            block_options[kind] = {**block_options.get(kind, {}), **options}
    if block_options:
        merged["block_options"] = block_options
    return merged


def model_examples() -> dict[str, dict]:
    """The invariant tests' models, by name, from the registries as they are now: each block's EXAMPLE_CONFIGS (two
    blocks of its kind unless it says otherwise), and for a block that runs the config's kernel, a model of it with
    each of its EXAMPLE_KERNELS (every registered kernel with EXAMPLE_MODEL_SETTINGS, when it names none: Mega's EMA
    has its models in test_mega.py)."""
    examples = {}
    for kind, block in BLOCKS.items():
        for name, fields in block.EXAMPLE_CONFIGS.items():
            examples[name] = merge_fields({"block_types": [kind, kind]}, block.EXAMPLE_SETTINGS, fields)
        if block.RUNS_SSM_KERNEL:
            kernels = block.EXAMPLE_KERNELS or [name for name, kernel in KERNELS.items()
                                                 if kernel.EXAMPLE_MODEL_SETTINGS is not None]
            for kernel in kernels:
                examples[f"{kind}-{kernel}"] = merge_fields(dict(block_types=[kind, kind], ssm_kernel=kernel),
                                                            block.EXAMPLE_SETTINGS,
                                                            KERNELS[kernel].EXAMPLE_MODEL_SETTINGS or {})
    return examples


MODELS = model_examples()  # the registered ones, for parametrizing; a test looks its name up at call time


def example_config(name: str):
    """The example model `name` (model_examples(), looked up now) as a tiny_config."""
    return tiny_config(**model_examples()[name])


def float32_tolerance(config) -> float | None:
    """A model's float32 tolerance: its kernel's, where that needs a looser one than TOLERANCE (DLR)."""
    return KERNELS[config.ssm_kernel].FLOAT32_TOLERANCE


def tiny_config(**overrides) -> SSMLMConfig:
    """The tests' small model: 2 layers of width 32 over a 61-token vocabulary (special tokens 0, 1, 2), built by
    SSMLMConfig with its validation; `overrides` set any other field."""
    return SSMLMConfig(**{"vocab_size": VOCAB_SIZE, "hidden_size": 32, "num_hidden_layers": 2, "pad_token_id": PAD,
                          "eos_token_id": EOS, "bos_token_id": BOS, **overrides})


def draw_pieces(data, lengths, max_boundaries: int) -> tuple[int, list[int]]:
    """A length drawn from the strategy `lengths`, and up to `max_boundaries` sorted points that split it into
    pieces: what every invariant test feeds a mixer or a model in."""
    length = data.draw(lengths, label="length")
    boundaries = data.draw(st.sets(st.integers(1, length - 1), max_size=max_boundaries), label="boundaries")
    return length, sorted(boundaries)


def assert_close(actual, expected, dtype, tolerance=None):
    """Outputs, or states (a tensor or a tuple of them), equal within the tolerance, relative to the largest value."""
    if isinstance(expected, tuple):
        for actual_part, expected_part in zip(actual, expected, strict=True):
            assert_close(actual_part, expected_part, dtype, tolerance)
        return
    tolerance = tolerance or TOLERANCE[dtype]
    if expected.numel() == 0:
        return
    error = (actual - expected).abs().max() / expected.abs().max().clamp_min(1.0)
    assert error <= tolerance, f"relative error {error:.3e} > {tolerance:.0e}"


def run_in_pieces(mixer, x, boundaries, padding_mask=None):
    """Feed x (batch, length, width) to a kernel or block split at the sorted `boundaries`, carrying the state."""
    state, pieces = mixer.initial_state(x.shape[0]), []
    edges = [0, *boundaries, x.shape[1]]
    for start, end in zip(edges[:-1], edges[1:]):
        if padding_mask is None:
            y, state = mixer(x[:, start:end], state)
        else:
            y, state = mixer(x[:, start:end], state, padding_mask[:, start:end])
        pieces.append(y)
    return torch.cat(pieces, dim=1), state


def logits_in_pieces(model, ids, boundaries, attention_mask=None):
    """A model's logits with `ids` fed in pieces split at `boundaries`, the cache carried."""
    cache, pieces = None, []
    edges = [0, *boundaries, ids.shape[1]]
    for start, end in zip(edges[:-1], edges[1:]):
        mask = None if attention_mask is None else attention_mask[:, :end]
        out = model(ids[:, start:end], attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        pieces.append(out.logits)
    return torch.cat(pieces, dim=1), cache


def assert_model_pieces_agree(model, ids, boundaries, dtype, token_by_token=True, tolerance=None):
    """The core invariant for a whole model: one pass == pieces split at `boundaries` with the cache carried
    (which must count every token) == token by token (skipped for long inputs with `token_by_token=False`)."""
    with torch.no_grad():
        one_pass = model(ids).logits
        chunked, cache = logits_in_pieces(model, ids, boundaries)
        assert_close(chunked, one_pass, dtype, tolerance)
        assert cache.get_seq_length() == ids.shape[1]
        if token_by_token:
            stepped, _ = logits_in_pieces(model, ids, list(range(1, ids.shape[1])))
            assert_close(stepped, one_pass, dtype, tolerance)


def decode_by_full_reforward(model, ids, steps):
    """Greedy decoding that re-runs the whole prefix for every token: the reference for cached generation."""
    with torch.no_grad():
        for _ in range(steps):
            next_token = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
    return ids


def left_padded(prompts, pad_token_id):
    """Prompts of different lengths as one left-padded batch and its attention mask."""
    width = max(len(p) for p in prompts)
    batch = torch.full((len(prompts), width), pad_token_id)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return batch, mask
