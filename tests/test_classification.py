"""Sequence classification: SSMLMForSequenceClassification as a transformers citizen (the Auto class, padding on
either side, save → load), and the trainer's domain-classification task, from scratch and fine-tuned from a saved
language model."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from ssmlm import SSMLMForSequenceClassification
from ssmlm.tooling.saved_models import UsageError, load_model
from ssmlm.training import ConfigError

from invariants import PAD, VOCAB_SIZE, assert_close, tiny_config
from runs import records, run_in_process, tiny_config_values

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)


def classifier(name="gss-dss", **overrides):
    torch.manual_seed(0)
    return SSMLMForSequenceClassification(tiny_config(num_labels=3, **overrides)).to(torch.float64).eval()


@pytest.mark.parametrize("overrides", [{}, {"block_types": ["gss", "attention"],
                                            "block_options": {"attention": {"num_heads": 2}}},
                                       {"block_types": ["mega", "mega"], "block_options": {"mega": {"chunk_size": 8}}}],
                         ids=["gss", "hybrid", "mega-chunk"])
def test_padding_on_either_side_gives_each_sequence_its_own_label_scores(overrides):
    model = classifier(**overrides)
    torch.manual_seed(1)
    prompts = [torch.randint(3, VOCAB_SIZE, (length,)) for length in (13, 7, 10)]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=ids[None]).logits for ids in prompts])
        width = max(len(ids) for ids in prompts)
        for side in ("left", "right"):
            ids = torch.full((len(prompts), width), PAD)
            mask = torch.zeros_like(ids)
            for row, prompt in enumerate(prompts):
                where = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
                ids[row, where], mask[row, where] = prompt, 1
            assert_close(model(input_ids=ids, attention_mask=mask).logits, alone, torch.float64)


def test_the_auto_class_builds_it_and_save_load_keeps_its_logits(tmp_path):
    model = classifier()
    ids = torch.randint(3, VOCAB_SIZE, (2, 30))
    labels = torch.tensor([0, 2])
    out = model(input_ids=ids, labels=labels)
    assert out.logits.shape == (2, 3)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, labels).item())
    model.save_pretrained(tmp_path)
    assert "AutoModelForSequenceClassification" in json.loads((tmp_path / "config.json").read_text())["auto_map"]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float64)
    assert type(loaded) is SSMLMForSequenceClassification
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.slow
def test_the_domain_task_trains_from_scratch_and_fine_tunes_a_language_model(corpus, cache_dir, tmp_path,
                                                                              tiny_model_dir):
    values = tiny_config_values(corpus, cache_dir, tmp_path / "scratch")
    values["task"] = "domain-classification"
    values["training"] |= {"max_steps": 12, "eval_every": 6, "learning_rate": 3e-3}
    values["output"] |= {"save_every": 12}
    metrics = run_in_process(values)
    assert set(metrics) == {"val/accuracy", "val/loss", "val/books/accuracy", "val/code/accuracy",
                            "val/math/accuracy"}
    logged = [record for record in records(tmp_path / "scratch") if "val/accuracy" in record]
    assert [record["step"] for record in logged] == [0, 6, 12]
    card = (tmp_path / "scratch" / "README.md").read_text()
    assert "sequence classifier that tells which of books, code, math" in card and "| all |" in card

    classify = pipeline("text-classification", model=str(tmp_path / "scratch"))
    assert classify("def main():\n    return 0\n" * 20)[0]["label"] in ("books", "code", "math")

    # Fine-tuning the saved language model: its architecture, weights and tokenizer, and a new head.
    values["output"]["dir"] = str(tmp_path / "tuned")
    values["tokenizer"] = {}  # the saved model's; its model settings (hidden_size 32, 2 layers) are the config's
    run_in_process(values, f"training.init_from={tiny_model_dir}")
    tuned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tuned")
    language_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    assert tuned.config.id2label == {0: "books", 1: "code", 2: "math"}
    assert tuned.config.hidden_size == language_model.config.hidden_size
    assert len(AutoTokenizer.from_pretrained(tmp_path / "tuned")) == len(AutoTokenizer.from_pretrained(tiny_model_dir))


def test_a_language_model_becomes_a_classifier_with_a_new_head_and_nothing_else_new(tiny_model_dir, tmp_path):
    """What init_from does for the domain task: the strict loader lets the head the language model lacks start new,
    and only that: a tool's load (no task head) refuses the missing head, and a missing backbone tensor is refused
    either way."""
    head = {"num_labels": 2, "id2label": {0: "books", 1: "code"}, "label2id": {"books": 0, "code": 1}}
    tuned = load_model(tiny_model_dir, SSMLMForSequenceClassification, torch.float32, task_head=head)
    language_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tuned.config.id2label == head["id2label"] and tuned.score.weight.shape == (2, 32)
    for name, tensor in language_model.model.state_dict().items():
        assert torch.equal(tuned.model.state_dict()[name], tensor), name
    with pytest.raises(UsageError, match=r"do not match its config.json: tensors 1 missing \(score.weight\)$"):
        load_model(tiny_model_dir, SSMLMForSequenceClassification, torch.float32)

    shutil.copytree(tiny_model_dir, tmp_path / "deeper")
    config = json.loads((tmp_path / "deeper" / "config.json").read_text())
    (tmp_path / "deeper" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3,
                                                                 "block_types": ["gss"] * 3}))
    with pytest.raises(UsageError, match=r"tensors 13 missing \(model.layers.2."):
        load_model(tmp_path / "deeper", SSMLMForSequenceClassification, torch.float32, task_head=head)


def test_task_mistakes_are_one_line_config_errors(corpus, cache_dir, tmp_path, tiny_model_dir):
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["task"] = "domain-classification"
    with pytest.raises(ConfigError, match=r"^model.num_hidden_layers: 3 here, but 2 in the model of "
                                          r"training.init_from=.*; leave it out$"):
        run_in_process(values, f"training.init_from={tiny_model_dir}", "tokenizer.path=null",
                       "model.num_hidden_layers=3")
    with pytest.raises(ConfigError, match=r"^training.init_from: no model directory .*missing; train one first, or "
                                          r"set training.init_from to null"):
        run_in_process(values, f"training.init_from={tmp_path / 'missing'}")
    values["data"]["sources"] = {"books": values["data"]["sources"]["books"]}
    with pytest.raises(ConfigError, match=r"^task: domain-classification needs at least two data.sources"):
        run_in_process(values)
    with pytest.raises(ConfigError, match=r"^task: expected 'causal-lm' or 'domain-classification' or 'audio-lm', "
                                          r"got str"):
        run_in_process(values, "task=summarisation")
