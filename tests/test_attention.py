"""The attention block (full, sliding, chunked): against a dense reference, and one pass == chunks == tokens,
with the masks exact at chunk and window edges; left padding; a bounded cache for local spans."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmlm.model.blocks import build_block
from ssmlm.model.blocks.attention import rotary

from invariants import assert_close, assert_model_pieces_agree, decode_by_full_reforward, draw_pieces, left_padded
from invariants import DEVICE, VOCAB_SIZE, merge_fields, run_in_pieces, tiny_config

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)

SPANS = {
    "full": (None, lambda i, j: j <= i),
    "sliding": (5, lambda i, j: (j <= i) & (j > i - 5)),
    "chunked": (4, lambda i, j: (j <= i) & (j // 4 == i // 4)),
}


def make_block(span, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = tiny_config(hidden_size=16, intermediate_size=32, block_types=["attention"] * 2,
                         block_options={"attention": dict(num_heads=2, span=span, window=SPANS[span][0])})
    return build_block("attention", config).to(dtype)


def dense_reference(block, x, visible):
    """Naive masked softmax attention over an explicit (L, L) mask from the span rule."""
    batch, length, _ = x.shape
    q, k, v = block.to_qkv(block.norm(x)).view(batch, length, 3, block.num_heads, block.head_dim).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    positions = torch.arange(length).expand(batch, length)
    q, k = rotary(q, positions, block.rope_theta), rotary(k, positions, block.rope_theta)
    scores = q @ k.transpose(-1, -2) / math.sqrt(block.head_dim)
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    scores = scores.masked_fill(~visible(i, j), float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
    return block.feed_forward(x + block.to_out(attended))


@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("length", [1, 3, 4, 5, 9, 23, 40])
def test_one_pass_equals_dense_reference(span, length):
    block = make_block(span)
    x = torch.randn(2, length, 16, dtype=torch.float64)
    one_pass, state = block(x)
    assert state is None
    assert_close(one_pass, dense_reference(block, x, SPANS[span][1]), torch.float64)


@pytest.mark.device
@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=10)
@given(data=st.data())
def test_one_pass_equals_chunks_equals_tokens(span, dtype, data):
    length, boundaries = draw_pieces(data, st.integers(2, 120), max_boundaries=6)
    block = make_block(span, dtype).to(DEVICE)
    x = torch.randn(2, length, 16, dtype=dtype).to(DEVICE)
    one_pass, _ = block(x)
    chunked, _ = run_in_pieces(block, x, boundaries)
    assert_close(chunked, one_pass, dtype)
    stepped, _ = run_in_pieces(block, x, list(range(1, length)))
    assert_close(stepped, one_pass, dtype)


@pytest.mark.parametrize("span", SPANS)
def test_left_padding_equals_each_row_alone(span):
    block = make_block(span)
    lengths = (3, 11, 7)
    width = max(lengths)
    rows = [torch.randn(n, 16, dtype=torch.float64) for n in lengths]
    batch = torch.zeros(3, width, 16, dtype=torch.float64)
    mask = torch.zeros(3, width, dtype=torch.long)
    for r, row in enumerate(rows):
        batch[r, width - len(row):] = row
        mask[r, width - len(row):] = 1
    padded_pass, _ = block(batch, None, mask)
    padded_chunks, _ = run_in_pieces(block, batch, [2, 6, 7], mask)
    for r, row in enumerate(rows):
        alone, _ = block(row.unsqueeze(0))
        assert_close(padded_pass[r, width - len(row):], alone[0], torch.float64)
        assert_close(padded_chunks[r, width - len(row):], alone[0], torch.float64)
    assert torch.isfinite(padded_pass).all()


@pytest.mark.parametrize("span", ["sliding", "chunked"])
@pytest.mark.parametrize("pieces", [[1] * 9 + [2, 1, 2, 7, 1, 1, 20, 1, 3], [2, 1, 1, 1, 1, 1, 1, 1, 30, 1, 1, 2]])
def test_steps_written_in_place_then_chunks_equal_one_pass(span, pieces):
    """Decoding steps (no autograd) overwrite the oldest slot in place, so the buffer leaves position order; the
    multi-token calls after them must still see exactly the latest keys. A step allocates no new cache."""
    block = make_block(span)
    x = torch.randn(2, sum(pieces), 16, dtype=torch.float64)
    boundaries = torch.tensor(pieces).cumsum(0)[:-1].tolist()
    with torch.no_grad():
        one_pass, _ = block(x)
        chunked, _ = run_in_pieces(block, x, boundaries)
        _, state = block(x[:, :3], block.initial_state(2))
        storage = [t.data_ptr() for t in state[:3]]
        _, state = block(x[:, 3:4], state)
    assert_close(chunked, one_pass, torch.float64)
    assert [t.data_ptr() for t in state[:3]] == storage


@pytest.mark.parametrize("span", ["sliding", "chunked"])
def test_local_cache_stays_bounded(span):
    block = make_block(span, torch.float32)
    state = block.initial_state(1)
    with torch.no_grad():
        for _ in range(300):
            _, state = block(torch.randn(1, 1, 16), state)
    assert state[0].shape[2] == SPANS[span][0]  # w slots, the oldest overwritten in place
    assert int(state[3]) == 300


# ---- whole models: hybrids of GSS, Mega and attention blocks, and the Transformer baseline ----

from ssmlm import SSMLMConfig, SSMLMForCausalLM  # noqa: E402

HYBRIDS = {
    "gss+full": dict(block_types=["gss", "attention", "gss"], block_options={"attention": dict(span="full")}),
    "gss+sliding": dict(block_types=["gss", "gss", "attention"],
                        block_options={"attention": dict(span="sliding", window=6)}),
    "mega-chunk+gss+chunked": dict(block_types=["mega", "gss", "attention"],
                                   block_options={"attention": dict(span="chunked", window=5),
                                                  "mega": dict(chunk_size=4)}),
    "transformer": dict(block_types=["attention", "attention"], block_options={"attention": dict(span="full")}),
}


def hybrid_model(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    options = merge_fields({"block_options": {"attention": dict(num_heads=4)}}, HYBRIDS[name])
    config = tiny_config(num_hidden_layers=len(options["block_types"]), **options)
    return SSMLMForCausalLM(config).to(dtype).eval()


@pytest.mark.device
@pytest.mark.parametrize("name", HYBRIDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=4)
@given(data=st.data())
def test_hybrid_one_pass_equals_chunks_equals_tokens(name, dtype, data):
    length, boundaries = draw_pieces(data, st.integers(2, 70), max_boundaries=5)
    model = hybrid_model(name, dtype).to(DEVICE)
    ids = torch.randint(3, VOCAB_SIZE, (2, length)).to(DEVICE)
    assert_model_pieces_agree(model, ids, boundaries, dtype)


@pytest.mark.device
@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_generation_equals_full_reforward(name):
    model = hybrid_model(name).to(DEVICE)
    prompt = torch.randint(3, VOCAB_SIZE, (2, 13)).to(DEVICE)
    greedy = model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(greedy, decode_by_full_reforward(model, prompt, 12))
    beams = dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False, eos_token_id=None)
    assert torch.equal(model.generate(prompt, **beams), model.generate(prompt, use_cache=False, **beams))


@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_left_padded_batch_equals_each_prompt_alone(name):
    model = hybrid_model(name)
    prompts = [torch.randint(3, VOCAB_SIZE, (n,)) for n in (4, 15, 9)]
    batch, mask = left_padded(prompts, 0)
    width = batch.shape[1]
    together = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)
    for row, p in enumerate(prompts):
        alone = model.generate(p.unsqueeze(0), max_new_tokens=10, do_sample=False, eos_token_id=None)
        assert torch.equal(together[row, width - len(p):], alone[0])


def test_hybrid_pipeline_generates_text(tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = SSMLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3,
                         block_types=["gss", "attention", "gss"],
                         block_options={"attention": dict(num_heads=4, span="sliding", window=8)},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    SSMLMForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    text = generator("To be, or not to be", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("To be, or not to be") and len(text) > len("To be, or not to be")
    model = generator.model
    ids = tokenizer("To be, or not to be", return_tensors="pt").input_ids
    expected = tokenizer.decode(model.generate(ids, max_new_tokens=8, do_sample=False)[0], skip_special_tokens=True)
    assert text == expected


def test_local_attention_hybrid_cache_is_flat_over_50k_tokens():
    """50k tokens through the real step path (one-token calls) and chunked calls: the cache never grows."""
    model = hybrid_model("mega-chunk+gss+chunked", torch.float32)
    generator = torch.Generator().manual_seed(0)
    cache, sizes, seen = None, [], 0
    with torch.no_grad():
        while seen < 50_000:
            for length in (1, 1, 1, 97):  # single steps and a prefill-sized call, crossing chunk edges
                out = model(torch.randint(3, VOCAB_SIZE, (1, length), generator=generator), past_key_values=cache,
                            use_cache=True)
                cache, seen = out.past_key_values, seen + length
                sizes.append(cache.num_bytes())
    assert cache.get_seq_length() == seen >= 50_000
    assert max(sizes[4:]) == min(sizes[4:]), "local-attention hybrid cache grew with the generated length"
    assert torch.isfinite(out.logits).all()


def test_attention_config_errors_name_the_field():
    with pytest.raises(Exception, match=r"block_options\.attention\.span must be one of"):
        SSMLMConfig(hidden_size=32, num_hidden_layers=1, block_types=["attention"],
                    block_options={"attention": {"span": "local"}})
    with pytest.raises(Exception, match=r"block_options\.attention: window must be a positive int for span='sliding'"):
        SSMLMConfig(hidden_size=32, num_hidden_layers=1, block_types=["attention"],
                    block_options={"attention": {"span": "sliding"}})
    with pytest.raises(Exception, match=r"block_options\.attention: num_heads \(5\) must be positive and divide"):
        SSMLMConfig(hidden_size=32, num_hidden_layers=1, block_types=["attention"],
                    block_options={"attention": {"num_heads": 5}})
    # No attention block and no attention options: the default num_heads=4, which does not divide 30, is not checked.
    SSMLMConfig(hidden_size=30, num_hidden_layers=1)
    with pytest.raises(Exception, match=r"block_options\.attention: num_heads \(5\)"):  # options given are checked
        SSMLMConfig(hidden_size=32, num_hidden_layers=1, block_options={"attention": {"num_heads": 5}})


def test_the_key_value_window_keeps_the_latest_tokens_at_their_slots():
    """The bounded cache of local attention and Mega-chunk: token p at slot p mod w, the latest w kept, padding
    (position -1) and older tokens dropped, empty slots at -1; a step overwrites the token w back, in place."""
    from ssmlm.model.blocks.key_value_window import keep_latest, write_token

    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [-1, -1, 0, 1, 2, -1, -1]])
    keys = positions.unsqueeze(-1).double() * 10
    (slotted,), slot_positions = keep_latest([keys], positions, window=3, dim=1)
    assert slot_positions.tolist() == [[6, 4, 5], [0, 1, 2]]
    assert slotted[..., 0].tolist() == [[60, 40, 50], [0, 10, 20]]
    (_,), few = keep_latest([keys[:1, :2]], positions[:1, :2], window=3, dim=1)
    assert few.tolist() == [[0, 1, -1]]
    buffer = slotted
    write_token(slotted, torch.full((2, 1, 1), 70.0, dtype=torch.float64), torch.tensor([7 % 3, 3 % 3]), dim=1)
    assert slotted is buffer and slotted[..., 0].tolist() == [[60, 70, 50], [70, 10, 20]]
