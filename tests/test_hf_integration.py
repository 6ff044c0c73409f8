"""ssmlm as a Hugging Face citizen: save/load through the Auto classes, tied weights, pipeline, streaming and
config validation."""

import copy
import json
import logging
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
from torch import nn
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open

from ssmlm import LORA_TARGET_MODULES, SSMLMConfig, SSMLMForCausalLM, SSMLMModel
from ssmlm.model.blocks import BLOCKS
from ssmlm.model.compat import returned_cache
from ssmlm.model.kernels import KERNELS
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, TextStreamer, pipeline

from invariants import VOCAB_SIZE, decode_by_full_reforward, merge_fields, tiny_config

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)

PROMPT = "To be, or not to be"


def padded_batch(vocab_size: int) -> dict:
    """Two sequences, the second left-padded, as generate() and pipelines feed them."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def saved_tensor_names(directory) -> set[str]:
    with safe_open(directory / "model.safetensors", framework="pt") as weights:
        return set(weights.keys())


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_save_pretrained_writes_safetensors_only(tiny_model_dir):
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not (tiny_model_dir / "pytorch_model.bin").exists()
    assert (tiny_model_dir / "config.json").is_file()


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_auto_classes_round_trip(tmp_path, tie_word_embeddings):
    torch.manual_seed(0)
    original = SSMLMForCausalLM(tiny_config(tie_word_embeddings=tie_word_embeddings)).eval()
    original.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is SSMLMConfig
    assert config.to_diff_dict() == original.config.to_diff_dict()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SSMLMForCausalLM

    batch = padded_batch(config.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, original(**batch).logits)
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_tied_embeddings_stay_tied(tmp_path):
    SSMLMForCausalLM(tiny_config()).save_pretrained(tmp_path)
    assert "lm_head.weight" not in saved_tensor_names(tmp_path)  # stored once, under the embedding's name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_untied_embeddings_stay_separate(tmp_path):
    SSMLMForCausalLM(tiny_config(tie_word_embeddings=False)).save_pretrained(tmp_path)
    assert "lm_head.weight" in saved_tensor_names(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.tie_word_embeddings is False
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)


def test_auto_model_loads_the_backbone(tiny_model_dir, model):
    backbone = AutoModel.from_pretrained(tiny_model_dir).eval()
    assert type(backbone) is SSMLMModel
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(backbone(**batch).last_hidden_state, model.model(**batch).last_hidden_state)


def test_pipeline_greedy_matches_generate(tiny_model_dir, tokenizer, model):
    generator = pipeline("text-generation", model=str(tiny_model_dir))
    assert type(generator.model) is SSMLMForCausalLM
    [result] = generator(PROMPT, max_new_tokens=20, do_sample=False)
    assert result["generated_text"].startswith(PROMPT)

    inputs = tokenizer(PROMPT, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert output.shape[1] > inputs.input_ids.shape[1]
    assert result["generated_text"] == tokenizer.decode(output[0], skip_special_tokens=True)


def test_pipeline_samples_continuations(tiny_model_dir):
    generator = pipeline("text-generation", model=str(tiny_model_dir))
    results = generator(PROMPT, max_new_tokens=10, do_sample=True, num_return_sequences=2)
    assert len(results) == 2
    assert all(result["generated_text"].startswith(PROMPT) for result in results)


class RecordingStreamer(TextStreamer):
    """Keeps each piece of text instead of printing it, and the number of token batches received."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.pieces, self.puts = [], 0

    def put(self, value):
        self.puts += 1
        super().put(value)

    def on_finalized_text(self, text, stream_end=False):
        self.pieces.append(text)


def test_text_streamer_streams_the_continuation(tokenizer, model):
    inputs = tokenizer(PROMPT, return_tensors="pt")
    streamer = RecordingStreamer(tokenizer)
    output = model.generate(**inputs, max_new_tokens=30, do_sample=False, streamer=streamer)
    new_tokens = output[0, inputs.input_ids.shape[1]:]
    assert streamer.puts == 1 + len(new_tokens)  # the prompt once, then each token as it is generated
    assert "".join(streamer.pieces) == tokenizer.decode(new_tokens, skip_special_tokens=True)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": "x"}, "hidden_size"),
        ({"vocab_size": 1.5}, "vocab_size"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": 1, "block_types": ["nope"]}, "block_types"),
        ({"num_hidden_layers": 3, "block_types": ["gss"]}, "block_types"),
        ({"ssm_kernel": "x"}, "ssm_kernel"),
        ({"ssm_kernel": "s4d", "ssm_kernel_options": {"init": "x"}}, r"ssm_kernel_options\.init must be one of"),
        ({"ssm_kernel": "s4d", "ssm_kernel_options": {"step": 1}}, r"ssm_kernel_options\.step: S4DKernel has no"),
        ({"ssm_kernel": "s4d", "s4d_discretization": "x"}, r"ssm_kernel_options\.discretization"),  # a saved config
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"block_options": {"h3": {"head_dim": 3}}, "block_types": ["h3"] * 16},
         r"block_options\.h3: head_dim \(3\) must divide hidden_size \(1024\)"),
        ({"block_options": {"h3": {"shift_size": 0}}, "block_types": ["h3"] * 16},
         r"block_options\.h3: shift_size must be positive"),
        ({"hidden_size": 37, "block_types": ["attention"] * 16},
         r"block_options\.attention: num_heads \(4\) must be positive and "),
        ({"block_options": {"mega": {"ema_dim": 0}}, "block_types": ["mega"] * 16},
         r"block_options\.mega: ema_dim must be positive"),
        ({"block_options": {"mgea": {}}}, r"block_options\.mgea: no block kind of that name \(did you mean 'mega'\?\)"),
    ],
)
def test_bad_config_fields_are_named(overrides, field):
    with pytest.raises(StrictDataclassError, match=field):
        SSMLMConfig(**overrides)


@pytest.mark.parametrize("settings, field", [
    ({"ssm_state_size": 0}, "ssm_state_size must be positive, got 0"),  # not the default 2H in its place
    ({"intermediate_size": 0}, "intermediate_size must be positive, got 0"),
    ({"ssm_size": 0}, "ssm_size must be positive, got 0"),
    ({"block_types": []}, "block_types has 0 entries but num_hidden_layers is 16"),  # not 16 GSS blocks
    ({"block_options": {"mega": {"z_dim": 0}}, "block_types": ["mega"] * 16}, "mega: z_dim must be positive, got 0"),
    ({"block_options": {"mega": {"v_dim": 0}}, "block_types": ["mega"] * 16}, "mega: v_dim must be positive, got 0"),
])
def test_a_zero_or_empty_setting_is_refused_not_replaced_by_its_default(settings, field):
    with pytest.raises(StrictDataclassError, match=field):
        SSMLMConfig(**settings)
    with pytest.raises(StrictDataclassError, match=field):
        AutoConfig.for_model("ssmlm", **settings)


@pytest.mark.parametrize("build", [SSMLMConfig, partial(AutoConfig.for_model, "ssmlm")])
def test_an_unknown_setting_is_refused_with_the_field_it_resembles(build):
    with pytest.raises(ValueError, match=r"^SSMLMConfig has no setting hiden_size \(did you mean 'hidden_size'\?\)$"):
        build(hiden_size=64)
    with pytest.raises(ValueError, match="^SSMLMConfig has no setting colour$"):
        build(colour="red")
    assert build(num_labels=3, output_attentions=True, attn_implementation="eager").num_labels == 3


def test_a_saved_config_with_attributes_another_tool_added_loads_with_a_warning(tmp_path, caplog):
    config = tiny_config()
    config.added_by_some_tool = 7  # what a tool may set before saving; the saved model must still load
    config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.added_by_some_tool == 7
    assert "settings ssmlm does not know, kept as attributes and unused: added_by_some_tool" in caplog.text


def test_a_cache_of_another_batch_or_model_is_refused():
    model = SSMLMForCausalLM(tiny_config()).eval()
    ids = torch.randint(3, VOCAB_SIZE, (2, 5))
    with torch.no_grad():
        one = returned_cache(model(ids[:1], use_cache=True))
        two = returned_cache(model(ids, use_cache=True))
        with pytest.raises(ValueError, match="^the cache holds the state of a batch of 1 sequences but the input is a "
                                             "batch of 2"):
            model(ids[:, -1:], **one, use_cache=True)
        with pytest.raises(ValueError, match="batch of 2 sequences but the input is a batch of 1"):
            model(ids[:1, -1:], **two, use_cache=True)
        other = SSMLMForCausalLM(tiny_config(num_hidden_layers=1)).eval()
        with pytest.raises(ValueError, match="^the cache holds 2 block states but the model has 1 blocks"):
            other(ids[:1, -1:], **one, use_cache=True)


@pytest.mark.parametrize("block_kind", sorted(set(BLOCKS) - {"attention"}))
def test_a_block_kinds_defaults_are_checked_only_where_the_model_has_that_block(block_kind):
    """transformers' ConfigTester builds configs of hidden size 37: a model without attention takes it, although
    the attention block's default head count (4) does not divide it; a block kind's defaults are checked only where
    the model has that block. Options a config gives are checked whether or not the model has the kind."""
    config = SSMLMConfig(hidden_size=37, num_hidden_layers=1, block_types=[block_kind], ssm_size=8)
    assert config.hidden_size == 37
    refused = [("attention", {"num_heads": 5}), ("h3", {"head_dim": 3}), ("mega", {"ema_dim": 0}),
               ("mega", {"chunk_size": 0})]
    for kind, options in refused:
        with pytest.raises(StrictDataclassError, match=rf"block_options\.{kind}: {next(iter(options))}"):
            SSMLMConfig(hidden_size=37, num_hidden_layers=1, block_types=[block_kind], ssm_size=8,
                        block_options={kind: options})


def test_a_config_saved_with_the_former_flat_s4d_fields_still_loads(tmp_path):
    tiny_config(ssm_kernel="s4d").save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["ssm_kernel_options"]
    config_file.write_text(json.dumps({**saved, "s4d_init": "lin", "s4d_discretization": "bilinear",
                                       "s4d_dt_min": 0.01, "s4d_dt_max": 0.05}))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.ssm_kernel_options == {"init": "lin", "discretization": "bilinear", "dt_min": 0.01, "dt_max": 0.05}
    assert not hasattr(config, "s4d_init")


def test_bad_config_file_is_rejected_on_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "ssm_kernel": "fft"}))
    with pytest.raises(StrictDataclassError, match="ssm_kernel"):
        AutoConfig.from_pretrained(tmp_path)


# Each kernel in a GSS model with its class's example settings (the EMA's are Mega's: none), each block kind.
SAVED_MODELS = {f"gss-{kernel}": dict(ssm_kernel=kernel, **(KERNELS[kernel].EXAMPLE_MODEL_SETTINGS or {}))
                for kernel in KERNELS} | {f"{block}-block": dict(block_types=[block, block], **BLOCKS[block].EXAMPLE_SETTINGS) for block in BLOCKS}
SAVED_MODELS["h3-block"]["block_options"] = {"h3": dict(shift_size=4, state_size=4)}  # a small H3


@pytest.mark.parametrize("name", SAVED_MODELS)
def test_save_then_load_gives_identical_logits_for_every_kernel_and_block(name, tmp_path):
    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config(**SAVED_MODELS[name])).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB_SIZE, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_a_checkpoint_missing_one_tensor_keeps_the_saved_buffers_of_that_module(tmp_path):
    """transformers re-initialises a module whose tensor is missing from a checkpoint; SGConv's kernel norm (fixed
    at init from the sub-kernels) must stay the saved one, not be measured afresh from the trained sub-kernels."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config(**SAVED_MODELS["gss-sgconv"]))
    ssm = model.model.layers[0].ssm
    with torch.no_grad():
        for sub_kernel in ssm.sub_kernels:
            sub_kernel.mul_(3)  # "trained": the norm measured now would be three times the saved one
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.0.ssm.D"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).model.layers[0].ssm
    assert torch.equal(loaded.kernel_norm, ssm.kernel_norm)
    assert torch.equal(loaded.decay, ssm.decay)


@pytest.mark.slow
def test_the_model_library_imports_no_tool():
    """configuration, modeling, cache, blocks, kernels and ops stand alone: importing the model classes loads
    none of the tools (data, training, evaluation, the benchmark, the study, the CLIs, their shared tooling)."""
    tools = ("ssmlm.data", "ssmlm.training", "ssmlm.evaluation", "ssmlm.tooling", "ssmlm.benchmark",
             "ssmlm.study", "ssmlm.cli")
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ssmlm; from ssmlm import SSMLMForCausalLM; "
                               "print(' '.join(name for name in sys.modules if name.startswith('ssmlm')))"],
        capture_output=True, text=True, check=True).stdout.split()
    assert "ssmlm.model.modeling" in loaded
    assert not [name for name in loaded if name.startswith(tools)]


def test_next_token_losses_average_to_the_labels_loss():
    """One next-token loss: the per-position losses the trainer's validation and the evaluation score with have
    the `labels` loss of training as their mean, in float32 and under bf16 weights alike."""
    from ssmlm.model.modeling import next_token_losses

    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, VOCAB_SIZE, (2, 30))
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        with torch.no_grad():
            output = model(ids, labels=ids)
        losses = next_token_losses(output.logits[:, :-1], ids[:, 1:])
        assert losses.shape == (2, 29) and losses.dtype == torch.float32
        torch.testing.assert_close(losses.mean(), output.loss.float(), rtol=1e-6, atol=1e-6)


def test_sdpa_is_accepted(tmp_path):
    """The attention blocks run torch's scaled_dot_product_attention, so asking for it is not refused."""
    SSMLMForCausalLM(tiny_config(block_types=["gss", "attention"])).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"


def test_an_empty_input_is_a_one_line_error():
    model = SSMLMForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="^the input is empty: give at least one token"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_a_config_edited_after_construction_is_checked_when_the_model_is_built():
    config = tiny_config()
    config.num_hidden_layers = 3  # block_types still lists two blocks
    with pytest.raises(ValueError) as error:
        SSMLMForCausalLM(config)
    assert str(error.value) == "SSMLMConfig.block_types has 2 entries but num_hidden_layers is 3"


FRESH_PROCESS_LOADS = {
    "AutoConfig": "config = AutoConfig.from_pretrained(DIR, trust_remote_code=True); print(config.model_type)",
    "AutoModelForCausalLM": "model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True); "
                            "print(type(model).__name__)",
    "pipeline": "generator = pipeline('text-generation', model=DIR, trust_remote_code=True); "
                "print(generator('To be', max_new_tokens=3, do_sample=False)[0]['generated_text'])",
    # A language model read as a classifier (a new head): the start of fine-tuning it by path.
    "AutoModelForSequenceClassification": "model = AutoModelForSequenceClassification.from_pretrained(DIR, "
                                          "trust_remote_code=True, num_labels=3); print(type(model).__name__)",
}


def run_fresh(code: str, directory):
    """`code` in a Python process that imports transformers, never ssmlm (only the saved module may)."""
    preamble = ("import sys; from transformers import AutoConfig, AutoModelForCausalLM, "
                "AutoModelForSequenceClassification, pipeline; "
                f"DIR = {str(directory)!r}; ")
    return subprocess.run([sys.executable, "-c", preamble + code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("how", FRESH_PROCESS_LOADS)
def test_a_saved_model_loads_by_path_in_a_process_that_never_imported_ssmlm(how, tiny_model_dir):
    run = run_fresh(FRESH_PROCESS_LOADS[how], tiny_model_dir)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] in {"ssmlm", "SSMLMForCausalLM", "SSMLMForSequenceClassification"} \
        or run.stdout.startswith("To be")


@pytest.mark.slow
def test_without_ssmlm_installed_the_error_says_what_to_install(tiny_model_dir):
    run = run_fresh("sys.modules['ssmlm'] = None; AutoConfig.from_pretrained(DIR, trust_remote_code=True)",
                    tiny_model_dir)
    assert run.returncode != 0
    last_line = run.stderr.strip().splitlines()[-1]
    # ssmlm is installed from its source or a wheel built there: "pip install ssmlm" would look for it on the index.
    assert last_line.startswith("ImportError: this model needs the ssmlm package, which is not on the package index")
    assert "pip install PATH/TO/ssmlm (a checkout)" in last_line and "pip install ssmlm-VERSION-py3-none-any.whl" \
        in last_line


LM_EVAL_TASK = """task: ssmlm_fixture_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
"""


@pytest.mark.slow
def test_the_lm_eval_command_evaluates_a_saved_model_by_path(tiny_model_dir, fixture_texts, tmp_path):
    """`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`, on a local task (rolling
    log-likelihood of real text: no Hub at test time)."""
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text[:1500]}) + "\n" for text in fixture_texts[:3]))
    (tmp_path / "task.yaml").write_text(LM_EVAL_TASK.format(data=data))
    run = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={tiny_model_dir},trust_remote_code=True", "--tasks", "ssmlm_fixture_text",
                          "--include_path", str(tmp_path), "--device", "cpu", "--batch_size", "1",
                          "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    bits = json.loads(results.read_text())["results"]["ssmlm_fixture_text"]["bits_per_byte,none"]
    assert 0 < bits < 8  # the trained tiny model: better than a byte drawn at random


def test_a_saved_model_names_its_remote_module_and_carries_it(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "ssmlm_remote.SSMLMForCausalLM"
    module = (tiny_model_dir / "ssmlm_remote.py").read_text()
    # Each class is defined in the module itself, which imports nothing relative: transformers' save of a model
    # loaded through it copies this one file (tests/test_remote_code.py saves through Trainer, TRL and peft).
    for name in config["auto_map"].values():
        class_name = name.removeprefix("ssmlm_remote.")
        assert f"class {class_name}(ssmlm.{class_name}):" in module
    assert "from ." not in module


@pytest.mark.parametrize("span", ["full", "sliding", "chunked"])
def test_output_attentions_gives_the_attention_blocks_weights(span):
    """Weights of each attention block (None for the others): rows sum to 1, weights times the values equal the
    block's attention output, and a prefix read from the cache gives the rows of a whole pass."""
    torch.manual_seed(0)
    attention = dict(num_heads=2, span=span, window=None if span == "full" else 4)
    model = SSMLMForCausalLM(tiny_config(block_types=["gss", "attention"],
                                         block_options={"attention": attention})).double().eval()
    ids = torch.randint(3, VOCAB_SIZE, (2, 10))
    whole = model(ids, output_attentions=True)
    assert len(whole.attentions) == 2 and whole.attentions[0] is None
    weights = whole.attentions[1]
    assert weights.shape == (2, 2, 10, 10)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 10, dtype=torch.float64))
    block = model.model.layers[1]
    hidden = model.model.layers[0](model.model.embed_tokens(ids))[0]
    q, k, v, *_ = block.queries_keys_values(hidden)
    torch.testing.assert_close(weights @ v, block._attend_fresh(q, k, v))
    assert (weights.triu(1) == 0).all()  # causal
    if span == "full":
        prefix = model(ids[:, :6], use_cache=True)
        rest = model(ids[:, 6:], past_key_values=prefix.past_key_values, output_attentions=True)
        torch.testing.assert_close(rest.attentions[1], weights[:, :, 6:])


@pytest.mark.parametrize("block_kind", sorted(BLOCKS))
def test_lora_targets_name_every_linear_layer_but_the_output_head(block_kind):
    """peft has no default LoRA targets for model_type "ssmlm": LORA_TARGET_MODULES are the documented ones, and
    peft's "all-linear" picks the same layers."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config(**merge_fields(dict(block_types=[block_kind, block_kind],
                                                             block_options={"attention": {"num_heads": 2}}),
                                                        BLOCKS[block_kind].EXAMPLE_SETTINGS)))
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)} - {"lm_head"}
    assert {name.rsplit(".", 1)[-1] for name in linear} <= set(LORA_TARGET_MODULES)

    def lora_wrapped(targets) -> set[str]:
        wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=targets))
        return {name.removeprefix("base_model.model.").removesuffix(".lora_A")
                for name, _ in wrapped.named_modules() if name.endswith(".lora_A")}

    assert lora_wrapped(LORA_TARGET_MODULES) == linear == lora_wrapped("all-linear")
    tuned = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=LORA_TARGET_MODULES))
    ids = torch.randint(3, VOCAB_SIZE, (2, 12))
    tuned(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for name, p in tuned.named_parameters() if p.requires_grad)
    tuned.eval()
    # Through peft's generate, the cache carries the state: the same tokens as re-running the prefix each step.
    assert torch.equal(tuned.generate(input_ids=ids, max_new_tokens=3, do_sample=False),
                       decode_by_full_reforward(tuned, ids, 3))


def test_every_lora_target_is_a_layer_of_some_block_kind():
    names = set()
    for block_kind in BLOCKS:
        model = SSMLMForCausalLM(tiny_config(block_types=[block_kind], num_hidden_layers=1,
                                             block_options={"attention": {"num_heads": 2}}))
        names |= {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert set(LORA_TARGET_MODULES) == names - {"lm_head"}


def test_push_to_hub_uploads_the_remote_module_with_the_weights(tmp_path, monkeypatch):
    """model.save_pretrained(push_to_hub=True) uploads the files it wrote: the module its auto_map names too. The
    Hub is replaced by a record of what would be uploaded."""
    import transformers.modeling_utils

    class Hub:
        def create_repo(self, repo_id, exist_ok=False, **kwargs):
            return type("Repo", (), {"repo_id": f"user/{repo_id}"})

    uploaded = {}

    def record_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        uploaded[repo_id] = {name for name in os.listdir(working_dir)
                             if os.path.getmtime(os.path.join(working_dir, name)) > files_timestamps.get(name, -1)}

    monkeypatch.setattr(transformers.modeling_utils, "hf_api", Hub)
    monkeypatch.setattr(SSMLMForCausalLM, "_upload_modified_files", record_upload)
    SSMLMForCausalLM(tiny_config()).save_pretrained(tmp_path / "tiny-gss", push_to_hub=True)
    assert {"config.json", "model.safetensors", "ssmlm_remote.py"} <= uploaded["user/tiny-gss"]


def test_stop_strings_end_generation_where_the_text_first_shows_the_string(tokenizer, model):
    inputs = tokenizer(PROMPT, return_tensors="pt")
    free = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    text = tokenizer.decode(free[0, inputs.input_ids.shape[1]:])
    stop = text[len(text) // 3:len(text) // 3 + 3]  # a piece of what greedy decoding writes anyway
    stopped = model.generate(**inputs, max_new_tokens=30, do_sample=False, stop_strings=[stop], tokenizer=tokenizer)
    assert stopped.shape[1] < free.shape[1]
    torch.testing.assert_close(stopped[0], free[0, :stopped.shape[1]])  # the same tokens, cut short
    continuation = tokenizer.decode(stopped[0, inputs.input_ids.shape[1]:])
    assert stop in continuation and stop not in tokenizer.decode(stopped[0, inputs.input_ids.shape[1]:-1])


def test_assisted_generation_is_refused_in_one_line(tokenizer, model):
    """Assisted decoding rolls the cache back after rejected draft tokens; a recurrent state keeps no history to roll
    back to. Each release says so in its own words, a ValueError naming cropping (5.25 after the prefill, 5.17 at the
    first roll-back), and generate() returns nothing."""
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with pytest.raises(ValueError, match="crop"):
        model.generate(**inputs, max_new_tokens=5, do_sample=False, assistant_model=model)
