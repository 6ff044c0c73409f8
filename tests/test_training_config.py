"""The training config: YAML + overrides into a typed tree; every bad key or type named by its dotted key."""

from pathlib import Path

import pytest

from ssmlm import SSMLMConfig
from ssmlm.training.config import ConfigError, TrainConfig, config_from_dict, dump_config, load_config, parse_yaml

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {"data": {"sources": {"books": {"train": "a.txt", "validation": "b.txt"}}, "seq_len": 64}}


def build(overrides=(), values=MINIMAL) -> TrainConfig:
    return config_from_dict(values, list(overrides))


def error_of(overrides=(), values=MINIMAL) -> str:
    with pytest.raises(ConfigError) as caught:
        build(overrides, values)
    return str(caught.value)


def test_defaults_and_dotted_overrides():
    config = build(["training.max_steps=7", "training.learning_rate=3e-4", "model.hidden_size=64",
                    "data.sources.code.train=[x.jsonl, y.jsonl]", "data.sources.code.validation=z.jsonl",
                    "output.tracker=null"])
    assert config.training.max_steps == 7
    assert config.training.learning_rate == 3e-4  # "3e-4" is a float, although YAML 1.1 would read a string
    assert config.model == {"hidden_size": 64}
    assert config.data.sources["code"].train == ["x.jsonl", "y.jsonl"]
    assert config.output.tracker is None
    assert config.data.seq_len == 64 and config.tokenizer.kind == "byte_bpe"


def test_ints_are_accepted_where_floats_are_expected():
    assert build(["training.weight_decay=0"]).training.weight_decay == 0.0


@pytest.mark.parametrize("override, message", [
    ("training.max_step=5", "training.max_step: unknown key; expected one of max_steps,"),
    ("trainer.max_steps=5", "trainer: unknown key; expected one of data, task, model, tokenizer, training, output"),
    ("data.sources.books.txt_column=body", "data.sources.books.txt_column: unknown key"),
    ("training.max_steps=ten", "training.max_steps: expected int, got str 'ten'"),
    ("training.max_steps=2.5", "training.max_steps: expected int, got float 2.5"),
    ("training.batch_size=true", "training.batch_size: expected int, got bool True"),
    ("training.learning_rate=fast", "training.learning_rate: expected float, got str 'fast'"),
    ("training.mixed_precision=fp8", "training.mixed_precision: expected 'no' or 'bf16' or 'fp16', got str 'fp8'"),
    ("tokenizer.kind=wordpiece", "tokenizer.kind: expected 'byte_bpe' or 'sentencepiece_bpe' or"),
    ("data.sources.books.train=[1, 2]", "data.sources.books.train: expected str or list[str], got list [1, 2]"),
    ("data.sources=books.txt", "data.sources: expected dict[str, a mapping (SourceConfig)], got str"),
    ("output.dir=null", "output.dir: expected str, got null"),
    ("training.max_steps=0", "training.max_steps: must be positive, got 0"),
    ("training.warmup_steps=-1", "training.warmup_steps: must be 0 or more, got -1"),
    ("data.seq_len=1", "data.seq_len: must be at least 2"),
    ("training.max_steps", "override 'training.max_steps': expected key=value"),
    ("training.max_steps.x=1", "training.max_steps: expected int, got dict {'x': 1}"),
    ("data.seq_len.x=1", "data.seq_len: is a value, not a section; cannot set data.seq_len.x"),
])
def test_bad_keys_and_types_name_the_dotted_key(override, message):
    assert message in error_of([override])


def test_missing_required_section():
    assert "data: missing; expected a mapping (DataConfig)" in error_of(values={})
    assert "data.sources.books.validation: missing" in error_of(
        values={"data": {"sources": {"books": {"train": "a.txt"}}}})


@pytest.mark.parametrize("override, message", [
    ("model.hiden_size=3", "model.hiden_size: unknown key; SSMLMConfig has no field 'hiden_size'"),
    ("model.hidden_size=wide", "model: TypeError: Field 'hidden_size' expected int, got str (value: 'wide')"),
    ("model.ssm_kernel=s9", "model: ValueError: SSMLMConfig.ssm_kernel must be one of dss, s4d, "),
    ("model.ssm_kernel_options={init: lin}", "model: ValueError: SSMLMConfig.ssm_kernel_options.init: DSSKernel has "
                                             "no such option; it takes min_decay, max_decay"),
    ("model.vocab_size=100", "model.vocab_size: set by the tokenizer; use tokenizer.vocab_size"),
])
def test_model_section_is_checked_by_ssmlm_config(override, message):
    assert message in error_of([override])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_bytes(b"data: \xff\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid UTF-8"):
        load_config(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(bad)


@pytest.mark.parametrize("text, value", [
    ("010", 10), ("0o17", 15), ("0x1F", 31), ("-5", -5), ("+7", 7),  # YAML 1.2 ints: a leading zero is decimal
    ("1e-3", 1e-3), ("2.5E+2", 250.0), (".5", 0.5), ("3.", 3.0),  # floats, with or without a dot
    ("6_000_000", 6_000_000), ("1_000.5", 1000.5),  # digits grouped as in Python
    ("1:30", "1:30"), ("1:30.5", "1:30.5"), ("1__0", "1__0"), ("_1", "_1"),  # YAML 1.1's base 60; odd underscores
    ("no", "no"), ("off", "off"), ("true", True), ("null", None),
])
def test_yaml_reads_numbers_and_booleans_as_yaml_1_2(text, value):
    assert parse_yaml(f"key: {text}", "test") == {"key": value}


def test_a_number_yaml_1_1_would_read_otherwise_is_read_as_yaml_1_2_or_refused_by_name():
    assert build(["training.max_steps=010"]).training.max_steps == 10  # not 8 (octal)
    assert "training.max_steps: expected int, got str '1:30'" in error_of(["training.max_steps=1:30"])  # not 90


def test_a_key_given_twice_is_an_error_naming_it_and_its_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("training:\n  max_steps: 5\noutput:\n  dir: out\ntraining:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML \('training' is given twice in one mapping "
                                          r"\(the second would silently replace the first\).* line 5"):
        load_config(twice)
    assert "'max_steps' is given twice" in error_of(["training={max_steps: 1, max_steps: 2}"])


def test_dump_round_trips():
    config = build(["model.hidden_size=64", "training.learning_rate=3e-4"])
    assert config_from_dict(parse_yaml(dump_config(config), "dump")) == config


@pytest.mark.parametrize("name", ["gss-small.yaml", "gss-paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "configs" / name)
    model = SSMLMConfig(**config.model, vocab_size=config.tokenizer.vocab_size)
    assert model.num_hidden_layers >= 1


def test_paper_config_is_the_gss_paper_model():
    config = load_config(REPO / "configs" / "gss-paper.yaml")
    model = SSMLMConfig(**config.model, vocab_size=config.tokenizer.vocab_size)
    assert (model.num_hidden_layers, model.hidden_size, model.intermediate_size, model.ssm_size,
            model.ssm_state_size) == (16, 1024, 4096, 256, 512)
    assert config.data.seq_len == 4096


# ---- `extends`, and every shipped config ----

SHIPPED_CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds_its_model(path):
    import torch

    from ssmlm import SSMLMForCausalLM

    config = load_config(path)
    with torch.device("meta"):
        model = SSMLMForCausalLM(SSMLMConfig(**config.model_arguments(), vocab_size=config.tokenizer.vocab_size))
    assert len(model.model.layers) == model.config.num_hidden_layers


def test_extends_merges_sections_and_the_child_wins(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: {hidden_size: 64, num_hidden_layers: 2}\n"
        "data: {sources: {books: {train: a.txt, validation: b.txt}}, seq_len: 128}\n"
        "training: {max_steps: 10, batch_size: 4}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nmodel: {num_hidden_layers: 3}\ntraining: {max_steps: 20}\n")
    config = load_config(tmp_path / "child.yaml", ["training.batch_size=2"])
    assert config.model == {"hidden_size": 64, "num_hidden_layers": 3}
    assert (config.training.max_steps, config.training.batch_size, config.data.seq_len) == (20, 2, 128)


def test_extends_errors_are_clear(tmp_path):
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        load_config(tmp_path / "missing.yaml")


# ---- settings that would do nothing or do harm, and YAML's surprises ----

@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=-1e-3", "training.learning_rate: must be a finite number, 0 or more, got -0.001"),
    ("training.learning_rate=.inf", "training.learning_rate: must be a finite number, 0 or more, got inf"),
    ("training.weight_decay=-0.1", "training.weight_decay: must be a finite number, 0 or more"),
    ("training.adam_beta1=1.0", "training.adam_beta1: must be in [0, 1), got 1.0"),
    ("training.adam_beta2=.nan", "training.adam_beta2: must be in [0, 1), got nan"),
    ("training.max_grad_norm=-1", "training.max_grad_norm: must be a positive finite number, or null to switch"),
    ("training.max_grad_norm=0", "training.max_grad_norm: must be a positive finite number, or null to switch"),
    ("training.seed=4294967296", "training.seed: must be in [0, 2**32)"),
    ("data.seed=-3", "data.seed: must be in [0, 2**32), got -3"),
    ("tokenizer.vocab_size=259", "tokenizer.vocab_size: a byte_bpe tokenizer needs at least 260 entries (4 special "
                                 "tokens and 256 bytes), got 259"),
    ("output.tracker=tensorbored", "output.tracker: unknown tracker 'tensorbored'; expected one of all, aim, "),
    ("output.dir=''", "output.dir: empty; give the directory the run is written to"),
])
def test_out_of_range_settings_are_named(override, message):
    assert message in error_of([override])


def test_settings_at_the_edges_of_their_ranges_are_accepted():
    config = build(["training.max_grad_norm=null", "training.learning_rate=0", "training.adam_beta2=0",
                    "tokenizer.vocab_size=260", "tokenizer.kind=sentencepiece_bpe", "tokenizer.vocab_size=5",
                    "output.tracker=all"])
    assert config.training.max_grad_norm is None and config.tokenizer.vocab_size == 5


def test_yes_no_on_off_are_strings_as_in_yaml_1_2():
    assert build(["training.mixed_precision=no"]).training.mixed_precision == "no"
    assert parse_yaml("a: no\nb: off\nc: yes\nd: true\ne: False", "test") == {
        "a": "no", "b": "off", "c": "yes", "d": True, "e": False}
    assert "training.keep_freed_host_memory: expected bool, got str 'yes'" in error_of(
        ["training.keep_freed_host_memory=yes"])


def test_a_tilde_means_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = build(["output.dir=~/runs/x", "data.cache_dir=~/cache", "tokenizer.path=~/tok"])
    assert (config.output.dir, config.data.cache_dir, config.tokenizer.path) == (
        f"{tmp_path}/runs/x", f"{tmp_path}/cache", f"{tmp_path}/tok")


def test_a_training_config_with_the_former_flat_s4d_fields_still_loads():
    config = build(["model.ssm_kernel=s4d", "model.s4d_init=lin", "model.s4d_dt_max=0.05"])
    assert config.model == {"ssm_kernel": "s4d", "ssm_kernel_options": {"init": "lin", "dt_max": 0.05}}


def test_dss_softmax_normalises_over_the_training_length_unless_told_otherwise():
    values = {**MINIMAL, "model": {"ssm_kernel": "dss-softmax"}}
    assert build(values=values).model_arguments()["ssm_kernel_options"] == {"normalization_length": 64}
    assert build(values=values).to_dict()["model"]["ssm_kernel_options"] == {"normalization_length": 64}  # saved
    told = build(["model.ssm_kernel_options={normalization_length: 2048}"], values=values)
    assert told.model_arguments()["ssm_kernel_options"] == {"normalization_length": 2048}
    assert "normalization_length must be at least 1, got 0" in error_of(
        ["model.ssm_kernel_options={normalization_length: 0}"], values=values)
