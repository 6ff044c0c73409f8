"""The recall suite (issue 31): its tasks are what their papers' generators make (checked position by position
against a plain reading of each sequence), every kernel and block of the registries is in the sweep, bad options are
one line naming the option, and `ssmlm-recall --quick` runs end to end, continues, and refuses other settings."""

import json

import pytest
import torch

from ssmlm.cli import recall as recall_cli
from ssmlm.data import recall as tasks
from ssmlm.model.blocks import BLOCKS
from ssmlm.model.kernels import KERNELS
from ssmlm.study.recall import NOT_SWEPT, QUICK, data_seed, model_config, sweep_models


def test_mqar_pairs_then_each_key_asked_once_at_its_gap_with_its_value_as_the_target():
    batch = tasks.mqar(64, length=64, pairs=4, vocab=32, seed=0)
    assert batch.input_ids.shape == batch.targets.shape == (64, 64) and batch.chance == 1 / 16
    for row in range(64):
        inputs, targets = batch.input_ids[row].tolist(), batch.targets[row].tolist()
        keys, values = inputs[0:8:2], inputs[1:8:2]
        assert len(set(keys)) == 4 and all(1 <= key < 16 for key in keys)
        assert len(set(values)) == 4 and all(16 <= value < 32 for value in values)
        asked = {position: token for position, token in enumerate(inputs[8:], start=8) if token != 0}
        assert sorted(asked.values()) == sorted(keys) and all(position % 2 == 0 for position in asked)
        assert {p: t for p, t in enumerate(targets) if t != tasks.IGNORE} == {
            position: values[keys.index(key)] for position, key in asked.items()}
        assert not set(values) & set(inputs[8:])  # the answers are never in the input
        for query, answer, distance in zip(*(batch.queries[row], batch.answers[row], batch.distances[row])):
            assert targets[query] == answer and inputs[query - distance] == inputs[query]


def test_mqar_gaps_are_mostly_short_by_default_and_uniform_with_power_one():
    short = tasks.mqar(2000, length=256, pairs=2, vocab=16, seed=1).distances.float()
    uniform = tasks.mqar(2000, length=256, pairs=2, vocab=16, seed=1, power_a=1.0).distances.float()
    assert short.median() < 40 and 100 < uniform.median() < 160
    assert torch.equal(tasks.mqar(8, 64, 4, 32, seed=3).input_ids, tasks.mqar(8, 64, 4, 32, seed=3).input_ids)
    assert not torch.equal(tasks.mqar(8, 64, 4, 32, seed=3).input_ids, tasks.mqar(8, 64, 4, 32, seed=4).input_ids)


def test_associative_recall_and_induction_head_answers_are_found_where_their_distance_points():
    batch = tasks.associative_recall(200, length=20, vocab=10, seed=0)
    assert batch.input_ids.shape == (200, 22) and (batch.input_ids[:, 20] == 8).all() and batch.chance == 0.25
    for inputs, answer, distance in zip(*(t.tolist() for t in (batch.input_ids, batch.answers[:, 0],
                                                                 batch.distances[:, 0]))):
        query = inputs[21]
        paired = {value for key, value in zip(inputs[:20:2], inputs[1:20:2]) if key == query}
        assert paired == {answer} and inputs[21 - distance] == query and query not in inputs[23 - distance:20:2]
    assert torch.equal(batch.targets[:, :-1], batch.input_ids[:, 1:]) and torch.equal(batch.targets[:, -1:],
                                                                                      batch.answers)
    batch = tasks.induction_head(200, length=30, vocab=20, seed=0)
    assert batch.input_ids.shape == (200, 31) and ((batch.input_ids == 19).sum(1) == 2).all()
    for inputs, answer, distance in zip(*(t.tolist() for t in (batch.input_ids, batch.answers[:, 0],
                                                                 batch.distances[:, 0]))):
        assert inputs[30 - distance] == answer and inputs[30 - distance - 1] == 19


def test_selective_copy_targets_the_data_tokens_in_order_at_the_markers():
    batch = tasks.selective_copy(50, length=40, tokens=5, vocab=8, seed=0)
    assert batch.input_ids.shape == (50, 45) and (batch.input_ids[:, 40:] == 7).all()
    for inputs, targets, distances in zip(batch.input_ids.tolist(), batch.targets.tolist(), batch.distances.tolist()):
        data = [token for token in inputs[:40] if token != 0]
        assert targets[40:] == data and targets[:40] == [tasks.IGNORE] * 40
        assert [inputs[40 + j - distance] for j, distance in enumerate(distances)] == data


def test_every_kernel_and_block_of_the_registries_is_in_the_sweep_and_builds():
    models = sweep_models()
    assert {f"gss-{kernel}" for kernel in KERNELS} <= models.keys()
    swept = {kind for config, overrides in models.values()
             for kind in model_config(config, overrides, 64, 2, 4096, 256).block_types}
    assert swept | NOT_SWEPT.keys() == BLOCKS.keys()
    hybrid = model_config(*models["gss-hybrid"], 64, 2, 4096, 256)
    assert hybrid.block_types == ["gss", "attention"] and hybrid.hidden_size == 64
    assert model_config(*models["gss-sgconv"], 64, 2, 4096, 256).ssm_kernel_options["kernel_length"] == 4096
    assert data_seed(0, "mqar", "train", 64, 8, 0) != data_seed(0, "mqar", "test", 64, 8, 0)


@pytest.mark.parametrize("options, message", [
    (["--lengths", "64", "--pairs", "32"], "--task mqar with --lengths 64, --pairs 32, --vocab 16: length 64 is too "
                                           "short for 32 pairs"),
    (["--vocab", "8"], "--vocab 8: vocab 8 is too small for 4 pairs"),
    (["--lengths", "63"], "MQAR (keys are asked at even gaps), got 63"),
    (["--models", "gss-nope"], "--models: unknown gss-nope; the sweep's models are gss-dss,"),
    (["--steps", "3"], "--steps takes one value per length (2), got 1"),
    (["--task", "associative-recall", "--vocab", "3"], "vocab must be at least 4 for associative recall"),
    (["--table1-steps", "0"], "--table1-steps must be at least 1, got 0"),
    (["--width", "6"], "transformer-small at --width 6, --layers 2, --vocab 16: SSMLMConfig.block_options.attention: "
                       "num_heads (4) must be positive and divide hidden_size (6)"),
    (["--models", "h3", "--config", "HEAD_DIM_3"], "head-dim-3.yaml at --width 16, --layers 2, --vocab 16: "
                                                   "SSMLMConfig.block_options.h3"),
])
def test_bad_options_are_one_line_naming_the_option(tmp_path, capsys, options, message):
    config = tmp_path / "head-dim-3.yaml"
    config.write_text("model:\n  block_types: [h3, h3]\n  num_hidden_layers: 2\n  block_options: {h3: {head_dim: 3}}\n")
    argv = ["--out", str(tmp_path), "--quick", *(str(config) if option == "HEAD_DIM_3" else option
                                                 for option in options)]
    if "--vocab" not in options:
        argv += ["--vocab", "16"]
    assert recall_cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ssmlm-recall: error: ") and message in error and "\n" not in error
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_the_quick_sweep_runs_end_to_end_continues_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "recall"
    argv = ["--out", str(out), "--quick", "--models", "attention", "gss-shift", "--workers", "1"]
    assert recall_cli.main(argv) == 0
    results = json.loads((out / "recall.json").read_text())
    assert [record["model"] for record in results["models"]] == ["attention", "gss-shift"]
    for record in results["models"]:
        assert [stage["length"] for stage in record["stages"]] == [stage.length for stage in QUICK.stages]
        for stage in record["stages"]:
            assert 0 <= stage["headline"]["accuracy"] <= 1 and stage["uniform"]["bins"]
            assert sum(entry["queries"] for entry in stage["uniform"]["bins"]) == QUICK.test_size * QUICK.pairs
        assert set(record["stages"][1]["by_pairs"]) == {"2", "4"}
    assert [record["model"] for record in results["table1"]] == ["attention", "h3", "ssm-s4d", "gss-dss", "mega"]
    readme = (out / "README.md").read_text()
    assert "| attention | attention + attention |" in readme and "Table 1" in readme
    assert "the paper's ordering (attention and H3 above S4D above GSS) is" in readme
    assert (out / "recall.png").stat().st_size > 0
    capsys.readouterr()
    assert recall_cli.main(argv) == 0  # done before: nothing trained again
    assert "0 of 7 models to train" in capsys.readouterr().err
    assert recall_cli.main([*argv, "--width", "32"]) == 2
    line = capsys.readouterr().err.strip()
    assert f"{out / 'runs'} holds runs of other settings (settings.width differ)" in line


def test_two_workers_and_a_config_of_ones_own(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  block_types: [h3, h3]\n  num_hidden_layers: 2\n  block_options: {h3: {head_dim: 2}}\n")
    out = tmp_path / "recall"
    assert recall_cli.main(["--out", str(out), "--quick", "--models", "h3", "--config", str(config), "--no-table1",
                            "--workers", "2"]) == 0
    results = json.loads((out / "recall.json").read_text())
    assert [record["model"] for record in results["models"]] == ["h3", "mine"] and results["table1"] == []
