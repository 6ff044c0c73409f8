"""Every registered block kind, in whole blocks and models (GSS with every registered kernel): one pass == chunks
with the cache carried == token by token, and generate() with the cache == decoding by re-running the full prefix
(greedy, sampling, beam search, left padding, continuing from a returned cache). The models are the blocks' own
examples (invariants.model_examples); a test takes a model's name and looks it up in the registries when it runs,
so a block or kernel registered later (test_extending.py) gets the same tests by calling them with its name."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmlm import SSMLMCache, SSMLMForCausalLM
from ssmlm.model.blocks import BLOCKS, build_block
from ssmlm.model.kernels import KERNELS

from invariants import PAD, assert_close, assert_model_pieces_agree, decode_by_full_reforward, draw_pieces
from invariants import DEVICE, MODELS, example_config, float32_tolerance, left_padded, model_examples, run_in_pieces
from invariants import tiny_config

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)


def tiny_model(dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    return SSMLMForCausalLM(tiny_config(**overrides)).to(dtype).eval()


def test_every_block_kind_and_kernel_is_in_a_model_here():
    """Every registered block kind is in an example model (its class declares EXAMPLE_CONFIGS, or it runs the
    config's kernel), and so is every kernel with EXAMPLE_MODEL_SETTINGS (Mega's EMA is Mega's)."""
    examples = model_examples().values()
    uncovered_blocks = set(BLOCKS) - {kind for example in examples for kind in example["block_types"]}
    assert not uncovered_blocks, f"block kinds in no example model (give them EXAMPLE_CONFIGS): {uncovered_blocks}"
    kernels = {kind for kind, kernel in KERNELS.items() if kernel.EXAMPLE_MODEL_SETTINGS is not None}
    uncovered_kernels = kernels - {example.get("ssm_kernel") for example in examples}
    assert not uncovered_kernels, f"kernels in no example model: {uncovered_kernels}"


@pytest.mark.device
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=3)
@given(data=st.data())
def test_block_one_pass_equals_chunks_equals_steps(name, dtype, data):
    length, boundaries = draw_pieces(data, st.one_of(st.integers(2, 200), st.integers(1000, 2500)), max_boundaries=5)
    torch.manual_seed(1)
    config = example_config(name)
    block = build_block(config.block_types[0], config).to(DEVICE, dtype)
    x = torch.randn(2, length, 32, dtype=dtype).to(DEVICE)
    one_pass, _ = block(x)
    tolerance = float32_tolerance(config) if dtype == torch.float32 else None
    assert_close(run_in_pieces(block, x, boundaries)[0], one_pass, dtype, tolerance)
    if length <= 200:
        assert_close(run_in_pieces(block, x, list(range(1, length)))[0], one_pass, dtype, tolerance)


@pytest.mark.device
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=3)
@given(data=st.data())
def test_model_one_pass_equals_chunks_equals_tokens(name, dtype, data):
    length, boundaries = draw_pieces(data, st.one_of(st.integers(2, 150), st.integers(1000, 2000)), max_boundaries=5)
    model = tiny_model(dtype, **model_examples()[name]).to(DEVICE)
    ids = torch.randint(3, 61, (2, length)).to(DEVICE)
    tolerance = float32_tolerance(model.config) if dtype == torch.float32 else None
    assert_model_pieces_agree(model, ids, boundaries, dtype, token_by_token=length <= 150, tolerance=tolerance)


def test_training_mode_keeps_no_cache_and_later_tokens_do_not_change_earlier_outputs():
    model = tiny_model()
    model.train()
    ids = torch.randint(3, 61, (1, 300))
    out = model(ids, labels=ids)
    assert out.past_key_values is None and out.loss.ndim == 0
    model.eval()
    changed = ids.clone()
    changed[0, 200:] = torch.randint(3, 61, (100,))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :200], b[:, :200], rtol=0, atol=1e-12)  # causal, exactly in float64
    assert not torch.allclose(a[:, 200:], b[:, 200:])


def test_16k_tokens_in_convolutional_mode_are_finite():
    model = tiny_model(torch.float32)
    ids = torch.randint(3, 61, (1, 16384))
    with torch.no_grad():
        logits = model(ids, use_cache=True).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_model_state_bounded_over_100k_tokens_in_chunks():
    model = tiny_model(torch.float32, num_hidden_layers=1)
    generator = torch.Generator().manual_seed(0)
    cache = None
    with torch.no_grad():
        for _ in range(50):
            out = model(torch.randint(3, 61, (1, 2000), generator=generator), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
    assert cache.get_seq_length() == 100_000
    state = cache.layers[0].state
    assert torch.isfinite(state).all() and torch.isfinite(out.logits).all()
    assert state.abs().max() < 1e4


# ---- generate() with the cache == re-running the full prefix ----

class CountingForward:
    """Records the lengths the model's forward receives, to show generate() never re-reads the prefix."""

    def __init__(self, model):
        self.lengths = []
        self.hook = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(ids.shape[1])


@pytest.mark.device
@pytest.mark.parametrize("name", MODELS)
def test_greedy_generate_equals_full_reforward_and_prefills_once(name):
    model = tiny_model(**model_examples()[name]).to(DEVICE)
    prompt = torch.randint(3, 61, (2, 23)).to(DEVICE)
    counter = CountingForward(model)
    generated = model.generate(prompt, max_new_tokens=15, do_sample=False, eos_token_id=None)
    counter.hook.remove()
    assert counter.lengths == [23] + [1] * 14  # one convolutional prefill, then single recurrent steps
    assert torch.equal(generated, decode_by_full_reforward(model, prompt, 15))


def test_sampling_with_a_seed_equals_sampling_without_cache():
    model = tiny_model()
    prompt = torch.randint(3, 61, (3, 11))
    options = dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=20, top_p=0.9, eos_token_id=None)
    torch.manual_seed(7)
    cached = model.generate(prompt, **options)
    torch.manual_seed(7)
    uncached = model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ["gss-dss", "ssm-s4", "h3-heads", "gss-liquid-s4"])
def test_beam_search_equals_beam_search_without_cache(name):
    model = tiny_model(**MODELS[name])
    prompt = torch.randint(3, 61, (2, 9))
    options = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, do_sample=False, eos_token_id=None)
    cached = model.generate(prompt, **options)
    uncached = model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", ["gss-dss", "ssm-s4", "h3-heads", "gss-sgconv", "gss-liquid-s4", "gss-s5"])
def test_left_padded_batch_equals_each_prompt_alone(name):
    model = tiny_model(**MODELS[name])
    prompts = [torch.randint(3, 61, (n,)) for n in (5, 17, 11)]
    batch, mask = left_padded(prompts, PAD)
    width = batch.shape[1]
    together = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    for row, p in enumerate(prompts):
        alone = model.generate(p.unsqueeze(0), max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert torch.equal(together[row, width - len(p):], alone[0])
    # and the logits of the prompt's own positions agree as well
    with torch.no_grad():
        padded_logits = model(batch, attention_mask=mask).logits
        alone_logits = model(prompts[0].unsqueeze(0)).logits
    assert_close(padded_logits[0, width - 5:], alone_logits[0], torch.float64)


def test_generation_continues_from_a_returned_cache():
    model = tiny_model()
    prompt = torch.randint(3, 61, (1, 14))
    first = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None,
                           return_dict_in_generate=True)
    assert isinstance(first.past_key_values, SSMLMCache)
    continued = model.generate(first.sequences, past_key_values=first.past_key_values, max_new_tokens=6,
                               do_sample=False, eos_token_id=None)
    straight = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(continued, straight)


def test_cache_cannot_be_cropped_and_rejects_foreign_caches():
    from transformers import DynamicCache

    model = tiny_model()
    out = model(torch.randint(3, 61, (1, 5)), use_cache=True)
    with pytest.raises(ValueError, match="cropped"):
        out.past_key_values.crop(2)
    with pytest.raises(TypeError, match="SSMLMCache"):
        model(torch.randint(3, 61, (1, 5)), past_key_values=DynamicCache())


def test_beam_reordering_keeps_a_named_tuple_state_one():
    """A block whose state is a NamedTuple gets it back as that NamedTuple after the cache reorders, expands or
    selects its batch (beam search)."""
    from typing import NamedTuple

    class WindowAndState(NamedTuple):
        window: torch.Tensor
        state: torch.Tensor

    cache = SSMLMCache(1)
    cache.layers[0].advance(WindowAndState(torch.arange(3.0)[:, None], torch.arange(3.0)[:, None] * 10), 1)
    cache.layers[0].reorder_cache(torch.tensor([2, 0, 1]))
    cache.layers[0].batch_repeat_interleave(2)
    state = cache.layers[0].state
    assert isinstance(state, WindowAndState)
    assert state.window[:, 0].tolist() == [2, 2, 0, 0, 1, 1] and state.state[:, 0].tolist() == [20, 20, 0, 0, 10, 10]
    cache.layers[0].batch_select_indices(torch.tensor([1, 4]))
    assert isinstance(cache.layers[0].state, WindowAndState) and cache.layers[0].state.window[:, 0].tolist() == [2, 1]


# Under bf16 autocast every matmul rounds to bf16's 8-bit mantissa, so the three modes agree to the rounding of the
# logits, not bit for bit: within 3e-2 of the largest logit (the SSM kernels and FFTs stay float32 under autocast).
BF16_TOLERANCE = 3e-2


@pytest.mark.device
@pytest.mark.parametrize("name", ["gss-dss", "gss-s4d", "gss-s4", "ssm-s5", "h3-hybrid"])
def test_bf16_autocast_pieces_and_generation_agree_with_one_pass(name):
    model = tiny_model(torch.float32, **MODELS[name]).to(DEVICE)
    ids = torch.randint(3, 61, (2, 300)).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        assert_model_pieces_agree(model, ids, [1, 77, 150, 151, 299], torch.float32, token_by_token=False,
                                  tolerance=BF16_TOLERANCE)
        out = model.generate(ids[:, :20], max_new_tokens=10, do_sample=False, eos_token_id=None,
                             return_dict_in_generate=True, output_logits=True)
        with torch.no_grad():  # the generated tokens' logits, by re-running the whole sequence without a cache
            reforward = model(out.sequences, use_cache=False).logits[:, 19:-1]
    assert_close(torch.stack(out.logits, 1).float(), reforward.float(), torch.float32, BF16_TOLERANCE)


# The tests above that run over the example models: the suite a block kind (or a kernel, in GSS) gets, each called
# with a model's name, and a dtype where it takes one; test_extending.py runs it on a block registered inside the test.
MODEL_INVARIANTS = (test_block_one_pass_equals_chunks_equals_steps, test_model_one_pass_equals_chunks_equals_tokens,
                    test_greedy_generate_equals_full_reforward_and_prefills_once)
