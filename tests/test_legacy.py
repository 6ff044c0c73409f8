"""What ssmlm 0.1.0 and 0.2.0 wrote still loads (ssmlm/model/legacy.py): a saved model whose config.json has the
former flat block fields gives the logits it gave, a training config written with them trains the same model, a
checkpoint's config written with them resumes without a reported change."""

import json
import logging

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ssmlm import SSMLMConfig, SSMLMForCausalLM
from ssmlm.model.legacy import LEGACY_BLOCK_FIELDS
from ssmlm.training.checkpoints import config_changes
from ssmlm.training.config import config_from_dict

from invariants import tiny_config

# Every flat field as ssmlm 0.2.0 saved it in config.json (their defaults), for a model with all three kinds.
FLAT_DEFAULTS = {"mega_ema_dim": 16, "mega_z_dim": None, "mega_v_dim": None, "mega_chunk_size": None,
                 "mega_attention": "softmax", "mega_position_bias": "simple", "mega_max_positions": 2048,
                 "attention_num_heads": 4, "attention_span": "full", "attention_window": None,
                 "rope_theta": 10000.0, "h3_head_dim": 1, "h3_shift_size": 64, "h3_state_size": 32,
                 "attention_dropout": 0.0, "mega_hidden_dropout": 0.0}
HYBRID = dict(block_types=["mega", "attention", "h3"], num_hidden_layers=3)
HYBRID_FLAT = {"mega_ema_dim": 4, "mega_z_dim": 16, "mega_v_dim": 48, "mega_chunk_size": 5,
               "mega_attention": "laplace", "mega_position_bias": "rotary", "attention_num_heads": 2,
               "attention_span": "sliding", "attention_window": 6, "rope_theta": 500.0, "h3_shift_size": 6,
               "h3_state_size": 4, "attention_dropout": 0.1, "mega_hidden_dropout": 0.1}
HYBRID_OPTIONS = {
    "mega": {"ema_dim": 4, "z_dim": 16, "v_dim": 48, "chunk_size": 5, "attention_function": "laplace",
             "position_bias": "rotary", "hidden_dropout": 0.1, "attention_dropout": 0.1},
    "attention": {"num_heads": 2, "span": "sliding", "window": 6, "rope_theta": 500.0, "attention_dropout": 0.1},
    "h3": {"shift_size": 6, "state_size": 4},
}


def test_every_former_block_field_has_a_place():
    assert set(LEGACY_BLOCK_FIELDS) == set(FLAT_DEFAULTS)


def test_a_model_saved_with_the_flat_block_fields_loads_with_its_logits(tmp_path):
    """The config.json of 0.2.0 (every flat field, no block_options) and the same weights: the options land where
    they live now and the logits are the saved model's."""
    torch.manual_seed(0)
    model = SSMLMForCausalLM(tiny_config(**HYBRID, block_options=HYBRID_OPTIONS)).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["block_options"]
    config_file.write_text(json.dumps({**saved, **FLAT_DEFAULTS, **HYBRID_FLAT}))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    for kind, options in HYBRID_OPTIONS.items():
        assert {key: loaded.config.block_options[kind][key] for key in options} == options
    assert not any(hasattr(loaded.config, key) for key in FLAT_DEFAULTS)
    tokens = torch.randint(3, 61, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_flat_fields_of_kinds_the_model_lacks_are_dropped(tmp_path):
    """A GSS model saved by 0.2.0 carries the Mega, attention and H3 defaults too; they configured nothing."""
    tiny_config().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    del saved["block_options"]
    config_file.write_text(json.dumps({**saved, **FLAT_DEFAULTS, "attention_num_heads": 5}))  # 5 divides nothing
    assert AutoConfig.from_pretrained(tmp_path).block_options == {}


def test_the_reference_spelling_of_full_attention_still_loads():
    assert tiny_config(block_types=["mega", "mega"], mega_chunk_size=-1).block_options["mega"]["chunk_size"] is None


def test_a_hand_written_flat_field_is_told_its_new_spelling(caplog):
    with caplog.at_level(logging.WARNING):
        config = SSMLMConfig(hidden_size=32, num_hidden_layers=1, block_types=["attention"], attention_num_heads=8)
    assert config.block_options == {"attention": {"num_heads": 8}}
    assert ("read attention_num_heads as block_options={'attention': {'num_heads': 8}}" in caplog.text), caplog.text


def test_options_given_in_the_new_place_win_over_flat_ones():
    config = tiny_config(block_types=["attention"] * 2, attention_num_heads=2, attention_span="sliding",
                         block_options={"attention": {"span": "chunked", "window": 4}})
    assert config.block_options == {"attention": {"num_heads": 2, "span": "chunked", "window": 4}}


def training_values(model: dict) -> dict:
    return {"model": {"hidden_size": 32, "num_hidden_layers": 3, "block_types": ["mega", "attention", "h3"],
                      **model},
            "data": {"sources": {"books": {"train": "a.txt", "validation": "b.txt"}}, "seq_len": 64}}


def test_a_training_config_with_flat_fields_builds_the_same_model_and_resumes_without_a_change():
    flat = config_from_dict(training_values(HYBRID_FLAT))
    nested = config_from_dict(training_values({"block_options": HYBRID_OPTIONS}))
    assert flat.model == nested.model
    written_by_0_2_0 = {**nested.to_dict(), "model": training_values(HYBRID_FLAT)["model"]}
    assert config_changes(written_by_0_2_0, nested, allowed=()) == []
    changed = config_from_dict(training_values({"block_options": {**HYBRID_OPTIONS, "h3": {"state_size": 8}}}))
    assert config_changes(written_by_0_2_0, changed, allowed=()) == ["model.block_options.h3.shift_size (6 -> None)",
                                                                    "model.block_options.h3.state_size (4 -> 8)"]


@pytest.mark.parametrize("key", ["mega_chunk_size", "attention_window"])
def test_a_wrong_flat_value_is_named_where_it_lives_now(key):
    with pytest.raises(Exception, match={"mega_chunk_size": r"block_options.mega: chunk_size must be positive",
                                         "attention_window": r"block_options.attention: window must be a positive"}
                       [key]):
        tiny_config(**HYBRID, **{key: 0}, attention_span="sliding")
