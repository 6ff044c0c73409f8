"""torch.compile: with dynamic=True the training forward and backward is one graph for every length (no graph break
from the length arithmetic, no recompile for a new length), the decode step compiles without a graph break, and a
compiled model generates what the eager one does; `training.compile` and `training.gradient_checkpointing` train.

Most tests trace with a counting backend that runs the traced graph without inductor, so they check what Dynamo
sees in seconds; the training run compiles with inductor for real."""

import pytest
from safetensors import safe_open
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter

from ssmlm import SSMLMForCausalLM
from ssmlm.model.blocks import BLOCKS
from ssmlm.tooling.saved_models import load
from transformers import AutoConfig

from invariants import MODELS, VOCAB_SIZE, assert_close, tiny_config
from runs import records, run_in_process, tiny_config_values

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)

# Each kernel compiles in GSS (gss-<kernel>), every other example model over its default kernel: S4 inside another
# block traces as it does in GSS, and its loops make it the slowest to trace.
COMPILED = {
    **{name: fields for name, fields in MODELS.items()
       if name.startswith("gss-") or fields.get("ssm_kernel", "dss") == "dss"},
    "mega-chunk": dict(block_types=["mega", "mega"], intermediate_size=64, block_options={"mega": {"chunk_size": 16}}),
    "mega-full": dict(block_types=["mega", "mega"], intermediate_size=64,
                      block_options={"mega": {"chunk_size": None}}),
    "attention": dict(block_types=["attention", "attention"], block_options={"attention": dict(num_heads=2)}),
    "gss-hybrid": dict(block_types=["gss", "attention"],
                       block_options={"attention": dict(span="chunked", window=16, num_heads=2)}),
}
LENGTHS = (40, 57, 100)
# Graphs for LENGTHS where one is not enough. S4's squarings and its pairwise sums over blocks are loops whose
# counts grow with log2 of the length (and with its parity at each level): a new graph when they change, not for
# every length. SGConv's kernel of K = 48 taps is cut to lengths below K: one graph below K, one above.
GRAPHS = {**{name: len(LENGTHS) for name, fields in COMPILED.items() if fields.get("ssm_kernel") == "s4"},
          "gss-sgconv": 2}


def tiny_model(name):
    torch.manual_seed(0)
    return SSMLMForCausalLM(tiny_config(**COMPILED[name])).eval()


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


@pytest.mark.parametrize("name", COMPILED)
def test_training_is_one_graph_for_every_length(name):
    model = tiny_model(name)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    for length in LENGTHS:
        ids = torch.randint(3, VOCAB_SIZE, (2, length))
        loss = compiled(input_ids=ids, labels=ids, use_cache=False).loss
        gradients = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        expected = model(input_ids=ids, labels=ids, use_cache=False).loss
        assert_close(loss.detach(), expected.detach(), torch.float32)
        assert all(g is None or torch.isfinite(g).all() for g in gradients)
    assert counter.frame_count <= GRAPHS.get(name, 1), f"{counter.frame_count} graphs for lengths {LENGTHS}"
    if name in GRAPHS:  # more graphs, but none broken
        explanation = dynamo.explain(model)(input_ids=torch.randint(3, VOCAB_SIZE, (2, 77)), use_cache=False)
        assert explanation.graph_break_count == 0, explanation.break_reasons


def test_the_loss_without_logits_compiles_without_a_graph_break_and_equals_eager(monkeypatch):
    """The trainer's loss (the fused linear cross-entropy): its loop over chunks of positions is unrolled in the
    graph, so a new graph comes with a new number of chunks (a training run's blocks all have one length)."""
    from ssmlm.model.ops import linear_cross_entropy

    monkeypatch.setattr(linear_cross_entropy, "CHUNK_ELEMENTS", 64 * VOCAB_SIZE)  # 2 chunks at 2 x 40 and 2 x 57
    monkeypatch.setattr(linear_cross_entropy, "MIN_CHUNK_POSITIONS", 1)
    model = tiny_model("gss-dss").train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    for length in LENGTHS[:2]:
        ids = torch.randint(3, VOCAB_SIZE, (2, length))
        loss = compiled(input_ids=ids, labels=ids, use_cache=False, return_logits=False).loss
        gradients = torch.autograd.grad(loss, list(model.parameters()))
        expected = model(input_ids=ids, labels=ids, use_cache=False, return_logits=False).loss
        expected_gradients = torch.autograd.grad(expected, list(model.parameters()))
        assert_close(loss.detach(), expected.detach(), torch.float32)
        for got, want in zip(gradients, expected_gradients):
            assert_close(got, want, torch.float32)
    assert counter.frame_count == 1
    explanation = dynamo.explain(model)(input_ids=ids, labels=ids, use_cache=False, return_logits=False)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("name", COMPILED)
def test_the_decode_step_compiles_without_a_graph_break(name):
    model = tiny_model(name)
    branching = [kind for kind in model.config.block_types if not BLOCKS[kind].STEP_COMPILES_WHOLE]
    if branching:
        pytest.skip(f"{branching[0]}'s step branches on its state (Block.STEP_COMPILES_WHOLE is False)")
    with torch.no_grad():
        cache = model(torch.randint(3, VOCAB_SIZE, (2, 20)), use_cache=True).past_key_values
        explanation = dynamo.explain(model)(input_ids=torch.randint(3, VOCAB_SIZE, (2, 1)), past_key_values=cache,
                                            use_cache=True)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("name", ["gss-dss", "gss-hybrid", "mega-chunk", "h3"])
def test_a_compiled_model_generates_what_the_eager_one_does(name):
    model = tiny_model(name)
    prompt = torch.randint(3, VOCAB_SIZE, (2, 12))
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    counter = CompileCounter()
    model.forward = torch.compile(model.forward, backend=counter, dynamic=True)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False), expected)
    assert counter.frame_count <= 3  # the prefill, and the step (recompiled once, when its cache becomes dynamic)


@pytest.mark.slow
def test_training_compiled_with_inductor_and_with_gradient_checkpointing(corpus, cache_dir, tmp_path):
    """Both options train from a config and save a model whose weights carry a plain model's names (no compiler
    prefix), which the strict loader takes whole, and so does compile switched on at a resume; the losses agree
    with an eager run's."""
    values = tiny_config_values(corpus, cache_dir, tmp_path / "eager")
    values["training"] |= {"max_steps": 3, "eval_every": 3}
    values["output"] |= {"save_every": 3}
    run_in_process(values)
    plain = SSMLMForCausalLM(AutoConfig.from_pretrained(tmp_path / "eager"))
    plain_names = set(plain.state_dict()) - set(plain._tied_weights_keys)  # a tied copy is saved once
    losses = {}
    for name, option in (("eager", None), ("compiled", "compile"), ("checkpointed", "gradient_checkpointing")):
        if option:
            values["output"]["dir"] = str(tmp_path / name)
            run_in_process(values, f"training.{option}=true")
        losses[name] = [r["train/loss"] for r in records(tmp_path / name) if "train/loss" in r]
    assert len(losses["eager"]) == 3
    for name in ("compiled", "checkpointed"):
        assert losses[name] == pytest.approx(losses["eager"], rel=1e-4), name
    # Compile switched on at a resume saves the same names.
    values["output"]["dir"] = str(tmp_path / "eager")
    run_in_process(values, "training.compile=true", "training.max_steps=4", resume=True)
    for name in ("eager", "compiled", "checkpointed"):
        with safe_open(tmp_path / name / "model.safetensors", framework="pt") as saved:
            assert set(saved.keys()) == plain_names, name
        load(tmp_path / name, torch.device("cpu"), torch.float32)  # every tensor there, used and finite
