"""Mega and Mega-chunk: the block against the paper's equations written out token by token, and the core invariant
one pass == chunks with the state carried == token by token for the block and whole models (chunk boundaries
inside a call, lengths not divisible by c); generate() with the cache == re-running the prefix; left padding; a
Mega-chunk cache that stays flat however long it runs. The damped EMA is tested with every other kernel
(test_ssm_kernels.py)."""

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from ssmlm import SSMLMForCausalLM
from ssmlm.model.blocks.attention_bias import RotaryRelativeBias, SimpleRelativeBias
from ssmlm.model.blocks import build_block
from ssmlm.model.blocks.mega import QueryKeyScaleOffset, laplace, lower_toeplitz
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from invariants import assert_close, assert_model_pieces_agree, decode_by_full_reforward, draw_pieces, left_padded
from invariants import DEVICE, PAD, logits_in_pieces, merge_fields, run_in_pieces, tiny_config

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)

VARIANTS = [(chunk, function, bias) for chunk in (None, 5) for function in ("softmax", "laplace")
            for bias in ("simple", "rotary")]


def mega_config(chunk_size=5, **overrides):
    """The tests' Mega model; `overrides` are config fields, their block_options merged with these per option."""
    return tiny_config(**merge_fields(
        {"block_types": ["mega", "mega"], "intermediate_size": 64,
         "block_options": {"mega": {"ema_dim": 4, "z_dim": 16, "v_dim": 48, "chunk_size": chunk_size}}}, overrides))


def mega_options(**options):
    """Config fields that set these Mega block options (merged into mega_config's own)."""
    return {"block_options": {"mega": options}}


@torch.no_grad()
def sharpen(module, seed=0):
    """The paper's init (query/key scales and position biases ~ N(0, 0.02)) makes every attention row nearly
    uniform, which would hide mistakes in masks and positions: widen them so the tests see the pattern."""
    generator = torch.Generator().manual_seed(seed)
    for part in module.modules():
        if isinstance(part, (QueryKeyScaleOffset, SimpleRelativeBias, RotaryRelativeBias)):
            for parameter in part.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module


def mega_block(dtype, chunk_size=5, attention="softmax", position_bias="simple", seed=0):
    torch.manual_seed(seed)
    config = mega_config(chunk_size, **mega_options(attention_function=attention, position_bias=position_bias))
    return sharpen(build_block("mega", config), seed).to(dtype)


def mega_model(dtype=torch.float64, chunk_size=5, seed=0, **overrides):
    torch.manual_seed(seed)
    return sharpen(SSMLMForCausalLM(mega_config(chunk_size, **overrides)), seed).to(dtype).eval()


# ---- the attention's pieces ----

def test_lower_toeplitz():
    table = torch.arange(1.0, 6.0)
    expected = torch.tensor([[table[i - j].item() if i >= j else 0.0 for j in range(5)] for i in range(5)])
    assert torch.equal(lower_toeplitz(table), expected)


def rotate(vector, position, theta):
    """RoPE as the reference code applies it: halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    half = vector.shape[-1] // 2
    x1, x2 = vector[:half], vector[half:]
    cos, sin = torch.cos(position * theta), torch.sin(position * theta)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin])


def rotary_bias(bias, query_position, key_position):
    half = bias.dim // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=bias.a.dtype) / half)
    return rotate(bias.a, query_position, theta) @ rotate(bias.b, key_position, theta)


def test_rotary_table_equals_rotated_vectors_at_absolute_positions():
    torch.manual_seed(0)
    bias = RotaryRelativeBias(8, std=1.0).double()
    table = bias.table(40)
    for query_position, key_position in [(0, 0), (5, 2), (39, 0), (1000, 975)]:
        expected = rotary_bias(bias, query_position, key_position)
        torch.testing.assert_close(table[query_position - key_position], expected, rtol=1e-10, atol=1e-10)


def test_simple_bias_limit_is_a_clear_error_never_a_truncation():
    model = mega_model(chunk_size=None, **mega_options(max_positions=16))
    with torch.no_grad():
        model(torch.randint(3, 61, (1, 16)))  # exactly at the limit
        with pytest.raises(ValueError, match=r"block_options\.mega\.max_positions=16"):
            model(torch.randint(3, 61, (1, 17)))
        cache = model(torch.randint(3, 61, (1, 16)), use_cache=True).past_key_values
        with pytest.raises(ValueError, match=r"block_options\.mega\.max_positions=16"):
            model(torch.randint(3, 61, (1, 1)), past_key_values=cache)
        model_chunked = mega_model(chunk_size=4, **mega_options(max_positions=16))  # chunks need only c distances
        assert torch.isfinite(model_chunked(torch.randint(3, 61, (1, 100))).logits).all()


# ---- the block against the paper's equations, one token at a time ----

def mega_block_by_the_equations(block, x):
    """Mega (Sec. 3.1-3.5) written out for each position: the EMA by its recurrence, then for query i the keys
    j <= i of its own chunk, bias r(i - j), softmax(q·k/√z + r) or laplace(q·k / #keys + r)."""
    ema, chunk = block.ema, block.chunk_size
    normed = block.norm(x)
    alpha, delta = torch.sigmoid(ema.alpha_logit), torch.sigmoid(ema.delta_logit)
    h, ema_out = torch.zeros(x.shape[0], *alpha.shape, dtype=x.dtype), []
    for t in range(x.shape[1]):
        h = alpha * ema.beta * normed[:, t, :, None] + (1 - alpha * delta) * h
        ema_out.append((ema.eta * h).sum(-1) / math.sqrt(ema.modes) + ema.D * normed[:, t])
    shared = F.silu(torch.stack(ema_out, 1))
    width, z_dim, v_dim = block.width, block.z_dim, block.v_dim
    update, z_and_reset, from_shared = block.from_shared(shared).split([width, z_dim + v_dim, width], -1)
    z, reset = F.silu(z_and_reset).split([z_dim, v_dim], -1)
    query = z * block.query_key.query_scale + block.query_key.query_offset
    key = z * block.query_key.key_scale + block.query_key.key_offset
    value = F.silu(block.to_values(normed))
    attended = torch.zeros(*x.shape[:2], v_dim, dtype=x.dtype)
    for i in range(x.shape[1]):
        keys = [j for j in range(i + 1) if chunk is None or j // chunk == i // chunk]
        if isinstance(block.position_bias, SimpleRelativeBias):
            bias = torch.stack([block.position_bias.bias[i - j] for j in keys])
        else:
            bias = torch.stack([rotary_bias(block.position_bias, i, j) for j in keys])
        scores = torch.einsum("bz,bkz->bk", query[:, i], key[:, keys])
        if block.attention_function == "softmax":
            weights = torch.softmax(scores / math.sqrt(z_dim) + bias, dim=-1)
        else:
            weights = laplace(scores / len(keys) + bias)
        attended[:, i] = torch.einsum("bk,bkv->bv", weights, value[:, keys])
    hidden = F.silu(from_shared + block.from_attention(reset * attended))
    y = torch.sigmoid(update) * hidden + (1 - torch.sigmoid(update)) * x
    ffn = block.ffn
    return y + ffn.down(F.silu(ffn.up(ffn.norm(y))))


@pytest.mark.parametrize("chunk_size, attention, position_bias", VARIANTS)
def test_block_matches_the_papers_equations(chunk_size, attention, position_bias):
    block = mega_block(torch.float64, chunk_size, attention, position_bias)
    x = torch.randn(2, 23, 32, dtype=torch.float64)  # 23: the last chunk of 5 is partial
    with torch.no_grad():
        y, no_state = block(x)
        torch.testing.assert_close(y, mega_block_by_the_equations(block, x), rtol=1e-10, atol=1e-10)
    assert no_state is None


# ---- the core invariant ----

@pytest.mark.device
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=40)
@given(data=st.data())
def test_block_one_pass_equals_chunks_equals_steps(dtype, data):
    chunk_size = data.draw(st.sampled_from([None, 1, 3, 8]), label="chunk_size")
    attention = data.draw(st.sampled_from(["softmax", "laplace"]), label="attention")
    position_bias = data.draw(st.sampled_from(["simple", "rotary"]), label="position_bias")
    length, boundaries = draw_pieces(data, st.one_of(st.integers(2, 60), st.integers(300, 700)), max_boundaries=6)
    block = mega_block(dtype, chunk_size, attention, position_bias).to(DEVICE)
    x = torch.randn(2, length, 32, dtype=dtype).to(DEVICE)
    with torch.no_grad():
        one_pass, _ = block(x)
        chunked, state = run_in_pieces(block, x, boundaries)
        assert_close(chunked, one_pass, dtype)
        if length <= 60:
            stepped, stepped_state = run_in_pieces(block, x, list(range(1, length)))
            assert_close(stepped, one_pass, dtype)
            for carried, stepped_part in zip(state, stepped_state):  # EMA state, slot keys, values, count
                assert carried.shape == stepped_part.shape
            valid = length if chunk_size is None else length % chunk_size  # later slots are stale, and masked
            carried_ema, *carried_slots, carried_seen = state
            stepped_ema, *stepped_slots, stepped_seen = stepped_state
            assert_close(stepped_ema, carried_ema, dtype)
            assert torch.equal(stepped_seen, carried_seen)
            for carried, stepped_part in zip(carried_slots, stepped_slots):
                if valid:
                    assert_close(stepped_part[:, :valid], carried[:, :valid], dtype)


@pytest.mark.parametrize("attention", ["softmax", "laplace"])
@pytest.mark.parametrize("position_bias", ["simple", "rotary"])
@pytest.mark.parametrize("boundaries", [[6, 11, 30, 37], [3, 21, 22, 40], [7, 8, 9, 10], [16, 32], [1, 44]])
def test_mega_chunk_calls_that_start_mid_chunk_and_cross_several_boundaries(boundaries, attention, position_bias):
    """c = 8, 45 tokens: calls that start inside a chunk and end inside another, short ones (a few query rows
    against the slots) and long ones (whole chunks batched) across one or several boundaries."""
    block = mega_block(torch.float64, 8, attention, position_bias)
    x = torch.randn(3, 45, 32, dtype=torch.float64)
    with torch.no_grad():
        one_pass, _ = block(x)
        chunked, (_, keys, values, seen) = run_in_pieces(block, x, boundaries)
    assert_close(chunked, one_pass, torch.float64)
    assert keys.shape == (3, 8, 16) and values.shape == (3, 8, 48)  # c slots, never more
    assert seen.tolist() == [45, 45, 45]


def test_a_decoding_step_writes_its_slot_in_place():
    block = mega_block(torch.float64, 8)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    with torch.no_grad():
        _, state = block(x[:, :11], block.initial_state(2))
        keys, values = state[1], state[2]
        _, state = block(x[:, 11:], state)
    assert state[1] is keys and state[2] is values  # no new cache per token


MODEL_KINDS = {
    "mega-chunk": dict(chunk_size=5),
    "mega": dict(chunk_size=None),
    "mega-chunk-laplace-rotary": dict(chunk_size=4, **mega_options(attention_function="laplace",
                                                                   position_bias="rotary")),
    "gss+mega-chunk": dict(chunk_size=6, block_types=["gss", "mega"]),
}


@pytest.mark.device
@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=6)
@given(data=st.data())
def test_model_one_pass_equals_chunks_equals_tokens(kind, dtype, data):
    length, boundaries = draw_pieces(data, st.one_of(st.integers(2, 40), st.integers(200, 500)), max_boundaries=5)
    model = mega_model(dtype, **MODEL_KINDS[kind]).to(DEVICE)
    ids = torch.randint(3, 61, (2, length)).to(DEVICE)
    assert_model_pieces_agree(model, ids, boundaries, dtype, token_by_token=length <= 40)


# ---- padding ----

@pytest.mark.parametrize("chunk_size", [None, 4])
def test_left_padded_batch_equals_each_prompt_alone(chunk_size):
    """Padding is no token: chunk boundaries and distances count real tokens, so padding shifts nothing."""
    model = mega_model(chunk_size=chunk_size)
    prompts = [torch.randint(3, 61, (n,)) for n in (5, 17, 11)]
    batch, mask = left_padded(prompts, PAD)
    width = batch.shape[1]
    options = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    together = model.generate(batch, attention_mask=mask, **options)
    with torch.no_grad():
        padded_logits = model(batch, attention_mask=mask).logits
        # the same padded batch prefilled in three calls: row 0 is all padding in the first
        pieces, _ = logits_in_pieces(model, batch, [6, 9], attention_mask=mask)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt.unsqueeze(0), **options)
        assert torch.equal(together[row, width - len(prompt):], alone[0])
        with torch.no_grad():
            alone_logits = model(prompt.unsqueeze(0)).logits[0]
        assert_close(padded_logits[row, width - len(prompt):], alone_logits, torch.float64)
        assert_close(pieces[row, width - len(prompt):], alone_logits, torch.float64)


# ---- attention weights (output_attentions) ----

def record_attention(model, monkeypatch):
    """Each block's attend() calls, as (this call's values, the cached values, the attention output): the values
    cloned first, since a decoding step writes into the cached ones in place."""
    calls = {block: [] for block in model.model.layers}
    for block, recorded in calls.items():
        def attend(query, key, value, cache, padding_mask, attend=block.attend, recorded=recorded):
            cached_values = cache[1].clone()
            out, cache = attend(query, key, value, cache, padding_mask)
            recorded.append((value, cached_values, out))
            return out, cache
        monkeypatch.setattr(block, "attend", attend)
    return calls


def visible_keys(length, chunk_size):
    """(query, key) pairs a query sees: causal, inside its chunk."""
    position = torch.arange(length)
    visible = position.unsqueeze(1) >= position
    if chunk_size is not None:
        visible &= (position // chunk_size).unsqueeze(1) == position // chunk_size
    return visible


@pytest.mark.parametrize("prefix", [3, 7, 9])
@pytest.mark.parametrize("attention", ["softmax", "laplace"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_attention_weights_times_the_values_give_the_attention_output(chunk_size, attention, prefix, monkeypatch):
    """Weights (batch, 1, queries, keys) of a whole pass and of the rest after a cached prefix (a long call across
    a chunk boundary, a few rows, a decoding step): times the values they give attend()'s output, they vanish
    where a key is not visible, softmax rows sum to 1, and the rest's rows are the whole pass's, its keys being
    the cache's slots then its own tokens."""
    model = mega_model(chunk_size=chunk_size, **mega_options(attention_function=attention))
    ids = torch.randint(3, 61, (2, 10))
    calls = record_attention(model, monkeypatch)
    with torch.no_grad():
        whole = model(ids, output_attentions=True).attentions
        cache = model(ids[:, :prefix], use_cache=True).past_key_values
        rest = model(ids[:, prefix:], past_key_values=cache, output_attentions=True).attentions
    window = prefix if chunk_size is None else chunk_size  # cached slots
    chunk_start = 0 if chunk_size is None else prefix - prefix % chunk_size  # the position of slot 0
    for block, whole_weights, rest_weights in zip(model.model.layers, whole, rest):
        assert whole_weights.shape == (2, 1, 10, 10) and rest_weights.shape == (2, 1, 10 - prefix, window + 10 - prefix)
        (value, _, out), _, (rest_value, cached_values, rest_out) = calls[block]
        torch.testing.assert_close(whole_weights[:, 0] @ value, out)
        torch.testing.assert_close(rest_weights[:, 0] @ torch.cat([cached_values, rest_value], dim=1), rest_out)
        assert (whole_weights[:, :, ~visible_keys(10, chunk_size)] == 0).all()
        if attention == "softmax":
            torch.testing.assert_close(whole_weights.sum(-1), torch.ones(2, 1, 10, dtype=torch.float64))
        expected = whole_weights.new_zeros(rest_weights.shape)
        expected[..., :prefix - chunk_start] = whole_weights[:, :, prefix:, chunk_start:prefix]  # later slots: stale
        expected[..., window:] = whole_weights[:, :, prefix:, prefix:]
        torch.testing.assert_close(rest_weights, expected)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_attention_weights_of_a_left_padded_prompt_equal_its_own_and_skip_the_padding(chunk_size):
    model = mega_model(chunk_size=chunk_size)
    prompts = [torch.randint(3, 61, (n,)) for n in (5, 10)]
    batch, mask = left_padded(prompts, PAD)
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, output_attentions=True).attentions
        alone = model(prompts[0].unsqueeze(0), output_attentions=True).attentions
    for padded_weights, alone_weights in zip(padded, alone):
        assert (padded_weights[0, :, 5:, :5] == 0).all()
        torch.testing.assert_close(padded_weights[0, :, 5:, 5:], alone_weights[0])


# ---- generation ----

@pytest.mark.device
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_greedy_generate_equals_full_reforward_and_prefills_once(chunk_size):
    model = mega_model(chunk_size=chunk_size).to(DEVICE)
    prompt = torch.randint(3, 61, (2, 14)).to(DEVICE)
    lengths = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    generated = model.generate(prompt, max_new_tokens=15, do_sample=False, eos_token_id=None)
    hook.remove()
    assert lengths == [14] + [1] * 14  # one parallel prefill, then recurrent steps
    assert torch.equal(generated, decode_by_full_reforward(model, prompt, 15))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_beam_search_and_sampling_equal_their_uncached_runs(chunk_size):
    model = mega_model(chunk_size=chunk_size)
    prompt = torch.randint(3, 61, (2, 7))
    beams = dict(max_new_tokens=10, num_beams=4, num_return_sequences=2, do_sample=False, eos_token_id=None)
    assert torch.equal(model.generate(prompt, **beams), model.generate(prompt, use_cache=False, **beams))
    sampling = dict(max_new_tokens=10, do_sample=True, top_k=20, eos_token_id=None)
    torch.manual_seed(3)
    cached = model.generate(prompt, **sampling)
    torch.manual_seed(3)
    assert torch.equal(cached, model.generate(prompt, use_cache=False, **sampling))


def test_mega_chunk_cache_stays_flat_over_50k_tokens_while_full_attention_grows():
    """50k tokens through the real model in its two recurrent paths: 3 single-token steps, then a prefill of 97
    tokens (crossing chunk boundaries at varying phases), repeated; the cache's bytes never change."""
    model = mega_model(torch.float32, chunk_size=16, num_hidden_layers=1, block_types=["mega"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cache = model(torch.randint(3, 61, (1, 1), generator=generator), use_cache=True).past_key_values
        size = cache.num_bytes()
        while cache.get_seq_length() < 50_000:
            for length in (1, 1, 1, 97):
                out = model(torch.randint(3, 61, (1, length), generator=generator), past_key_values=cache)
                assert out.past_key_values.num_bytes() == size
    assert cache.get_seq_length() >= 50_000 and torch.isfinite(out.logits).all()

    full = mega_model(torch.float32, chunk_size=None, num_hidden_layers=1, block_types=["mega"],
                      **mega_options(position_bias="rotary"))
    with torch.no_grad():
        cache = full(torch.randint(3, 61, (1, 10)), use_cache=True).past_key_values
        before = cache.num_bytes()
        full(torch.randint(3, 61, (1, 10)), past_key_values=cache)
    assert cache.num_bytes() > before  # full attention keeps every key: the cache grows, as it must


def test_pipeline_generates_with_a_mega_chunk_model(tmp_path, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = mega_config(chunk_size=4, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    SSMLMForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    [result] = pipeline("text-generation", model=str(tmp_path))("To be, or not", max_new_tokens=12, do_sample=False)
    inputs = tokenizer("To be, or not", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert result["generated_text"] == tokenizer.decode(output[0], skip_special_tokens=True)


# ---- training, initialisation, configuration ----

def test_training_is_causal_reaches_every_parameter_and_allows_checkpointing():
    model = mega_model(chunk_size=5)
    ids = torch.randint(3, 61, (2, 33))
    model.train()
    model(ids, labels=ids).loss.backward()
    gradients = {name: parameter.grad for name, parameter in model.named_parameters()}
    for name, gradient in gradients.items():
        assert gradient is not None and gradient.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable()  # also in 5.17, before its activation_ rename
    model(ids, labels=ids).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, gradients[name], rtol=1e-12, atol=1e-12)
    model.eval()
    changed = ids.clone()
    changed[:, 20:] = torch.randint(3, 61, (2, 13))
    with torch.no_grad():
        before, after = model(ids).logits, model(changed).logits
    assert torch.allclose(before[:, :20], after[:, :20], rtol=0, atol=1e-12)
    assert not torch.allclose(before[:, 20:], after[:, 20:])


def test_dropouts_act_in_training_only():
    model = mega_model(chunk_size=5, hidden_dropout=0.1, **mega_options(attention_dropout=0.1, hidden_dropout=0.1))
    ids = torch.randint(3, 61, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


def test_post_init_gives_the_mega_parameters_their_init_and_loading_keeps_them(tmp_path):
    torch.manual_seed(0)
    model = SSMLMForCausalLM(mega_config(**mega_options(position_bias="rotary"))).eval()
    block = model.model.layers[0]
    assert torch.allclose(block.ema.beta, torch.tensor([1.0, -1.0, 1.0, -1.0]).expand(32, 4), atol=0.2)
    assert block.query_key.query_offset.abs().max() == 0 and 0 < block.query_key.key_scale.std() < 0.05
    assert 0 < block.position_bias.a.std() < 0.05
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 61, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"chunk_size": 0}, r"block_options\.mega: chunk_size must be positive"),
        ({"attention_function": "relu2"}, r"block_options\.mega\.attention_function must be one of"),
        ({"position_bias": "alibi"}, r"block_options\.mega\.position_bias must be one of 'simple', 'rotary'"),
        ({"position_bias": "rotary", "z_dim": 15}, r"block_options\.mega: z_dim must be even"),
        ({"ema_dim": 0}, r"block_options\.mega: ema_dim must be positive"),
        ({"max_positions": 0}, r"block_options\.mega: max_positions must be positive"),
        ({"attention_dropout": 1.0}, r"block_options\.mega: attention_dropout must be in \[0, 1\)"),
        ({"chunk": 4}, r"block_options\.mega\.chunk: MegaBlock has no such option \(did you mean 'chunk_size'\?\)"),
    ],
)
def test_bad_mega_config_fields_are_named(options, field):
    with pytest.raises(StrictDataclassError, match=field):
        mega_config(**mega_options(**options))
