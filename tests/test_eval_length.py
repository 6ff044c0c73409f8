"""scripts/eval_length.py: the window and streaming regimes agree, bucket perplexities recombine to the overall
one, a model that cannot take a length is reported "not supported" with its reason (never truncated), bits per
byte count the scored text, and the outputs and one-line errors of the command line.

Four tiny untrained models (GSS, Mega-chunk, full-attention Mega limited to 64 positions, a GSS + chunked-attention
hybrid) share the session tokenizer; they are scored on the real fixture text at 32, 64 and 128 tokens, once
in-process; the command line runs once as a subprocess."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmlm import SSMLMConfig, SSMLMForCausalLM
from ssmlm.evaluation.extrapolation import (
    DataSpec,
    Settings,
    TokenizedDocument,
    concatenated_windows,
    evaluate,
    main,
    render_markdown,
    tokenize,
)
from ssmlm.evaluation.perplexity import agreement
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_LENGTH, LENGTHS = 32, [32, 64, 128]
MEGA_MAX_POSITIONS = 64
SHORT_DOCUMENT_TOKENS = 40  # qualifies at 32 tokens, not at 64
MODELS = {
    "gss": {},
    "mega-chunk": dict(block_types=["mega", "mega"], mega_chunk_size=8),
    "mega-full": dict(block_types=["mega", "mega"], mega_max_positions=MEGA_MAX_POSITIONS),
    "hybrid": dict(block_types=["gss", "attention"], attention_span="chunked", attention_window=16),
}
# Buckets of 24 positions do not divide the lengths (a short last bucket), and chunks of 20 tokens cut Mega's
# 8-token attention chunks and the hybrid's 16-token ones mid-way.
SETTINGS = Settings(lengths=LENGTHS, train_length=TRAIN_LENGTH, bucket_size=24, regimes=["window", "streaming"],
                    stream_chunk=20, max_window_length=None, max_documents=None, concatenate_documents=False)


def save_model(path: Path, tokenizer, seed: int = 0, **config) -> Path:
    torch.manual_seed(seed)
    model = SSMLMForCausalLM(SSMLMConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **config))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    root = tmp_path_factory.mktemp("eval_models")
    return {name: save_model(root / name, tokenizer, **config) for name, config in MODELS.items()}


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory, tokenizer_dir, fixture_texts) -> Path:
    """The fixture texts as JSONL documents, and one short document of about SHORT_DOCUMENT_TOKENS tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    short = tokenizer.decode(tokenizer(fixture_texts[0]).input_ids[:SHORT_DOCUMENT_TOKENS])
    assert TRAIN_LENGTH <= len(tokenizer(short).input_ids) < 2 * TRAIN_LENGTH
    path = tmp_path_factory.mktemp("eval_data") / "test.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in [*fixture_texts, short]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def results(model_dirs, eval_file, tmp_path_factory) -> dict:
    return evaluate(list(model_dirs.values()), [DataSpec("mixed", str(eval_file))], SETTINGS,
                    torch.device("cpu"), "text", str(tmp_path_factory.mktemp("cache")))


def results_of(results: dict, name: str) -> dict[int, dict]:
    (model,) = [model for model in results["models"] if model["name"] == name]
    return {result["length"]: result for result in model["results"]}


def test_regimes_agree(results):
    checked = 0
    for model in results["models"]:
        for result in model["results"]:
            if "agreement" not in result:
                continue
            assert result["agreement"]["verdict"] == "agree", (model["name"], result["length"])
            # Far inside the command's float32 rule: for these tiny models the regimes differ by rounding only.
            assert result["agreement"]["max_abs_position_difference"] < 1e-4
            window, streaming = result["regimes"]["window"], result["regimes"]["streaming"]
            assert math.isclose(window["perplexity"], streaming["perplexity"], rel_tol=1e-5)
            checked += 1
    # Every model at every length, except full-attention Mega past its 64 positions.
    assert checked == len(MODELS) * len(LENGTHS) - 1
    assert "The regimes agree at all 11" in render_markdown(results)


def test_bucket_perplexities_recombine_to_the_overall_one(results):
    for model in results["models"]:
        for result in model["results"]:
            for regime in result["regimes"].values():
                if regime["status"] != "ok":
                    continue
                buckets = regime["buckets"]
                assert [bucket["start"] for bucket in buckets] == list(range(0, result["length"], 24))
                assert buckets[-1]["end"] == result["length"]
                assert sum(bucket["tokens"] for bucket in buckets) == regime["tokens"] == \
                    result["length"] * result["evaluated"]
                assert sum(bucket["bytes"] for bucket in buckets) == regime["bytes"]
                # The token-weighted mean of the buckets' mean losses is the overall mean loss...
                mean_loss = sum(bucket["tokens"] * math.log(bucket["perplexity"]) for bucket in buckets) / \
                    regime["tokens"]
                assert math.isclose(mean_loss, math.log(regime["perplexity"]), rel_tol=1e-12)
                # ...and the byte-weighted mean of bits per byte is the overall bits per byte.
                bits = sum(bucket["bytes"] * bucket["bits_per_byte"] for bucket in buckets) / regime["bytes"]
                assert math.isclose(bits, regime["bits_per_byte"], rel_tol=1e-12)


def test_a_model_that_cannot_extrapolate_is_reported_as_it_is(results):
    mega_full = results_of(results, "mega-full")
    for length in (32, 64):
        for regime in mega_full[length]["regimes"].values():
            assert regime["status"] == "ok" and math.isfinite(regime["perplexity"])
    beyond = mega_full[128]
    assert beyond["evaluated"] > 0  # the documents were there: the model, not the data, stopped it
    assert "agreement" not in beyond
    for regime in beyond["regimes"].values():
        assert regime["status"].startswith("not supported: ")
        assert f"mega_max_positions={MEGA_MAX_POSITIONS}" in regime["status"]
        assert "perplexity" not in regime  # no numbers from a cut-down window
    markdown = render_markdown(results)
    assert "not supported [1]" in markdown and f"SSMLMConfig.mega_max_positions={MEGA_MAX_POSITIONS}" in markdown
    # The other models go on to 128 tokens.
    assert results_of(results, "mega-chunk")[128]["regimes"]["streaming"]["status"] == "ok"


def test_only_documents_that_long_are_scored_and_counted(results, fixture_texts):
    gss = results_of(results, "gss")
    total = len(fixture_texts) + 1
    assert gss[32]["documents"] == total and gss[32]["qualifying"] == total and gss[32]["evaluated"] == total
    assert gss[64]["qualifying"] == total - 1  # the short document is left out, and counted
    assert len(gss[64]["document_indices"]) == gss[64]["evaluated"] == total - 1
    assert "CONCATENATED" not in render_markdown(results)


def test_bytes_per_token_cover_the_scored_text(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "Naïve café — 日本語 and an emoji 😀 split by a byte-level tokenizer.\n  Indented line."
    (document,) = tokenize(tokenizer, [text])
    ends = [end for _, end in tokenizer(text, return_offsets_mapping=True).offset_mapping]
    assert document.token_bytes.sum() == len(text.encode("utf-8"))
    for count in (1, 5, len(ends) // 2):
        assert document.token_bytes[:count].sum() == len(text[:max(ends[:count])].encode("utf-8"))


def test_concatenated_windows_cross_documents():
    documents = [TokenizedDocument(np.arange(10, 10 + n), np.ones(n, dtype=np.int64)) for n in (5, 7, 3)]
    window_set = concatenated_windows(documents, length=4, separator=0, max_windows=None)
    stream = [0, 10, 11, 12, 13, 14, 0, 10, 11, 12, 13, 14, 15, 16, 0, 10, 11, 12]
    assert window_set.qualifying == 4 and window_set.document_indices is None
    for index, window in enumerate(window_set.windows):
        assert window.ids.tolist() == stream[4 * index:4 * index + 5]
        assert window.token_bytes.tolist() == [int(token != 0) for token in stream[4 * index + 1:4 * index + 5]]


def test_one_position_off_is_a_disagreement_even_when_the_sums_match():
    window = torch.full((10_000,), 3.0, dtype=torch.float64)
    streaming = window.clone()
    streaming[5000] += 0.5  # moves the sum by under 2e-5 of it
    assert agreement(window, streaming)["verdict"] == "DISAGREE"
    assert agreement(window, window + 1e-5)["verdict"] == "agree"


def test_models_with_different_tokenizers_are_compared_in_bits_per_byte(model_dirs, eval_file, tmp_path,
                                                                        fixture_texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(fixture_texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    other = save_model(tmp_path / "gss-small-vocab",
                       PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>"))
    settings = Settings(lengths=[32], train_length=None, bucket_size=16, regimes=["streaming"], stream_chunk=32,
                        max_window_length=None, max_documents=2, concatenate_documents=False)
    compared = evaluate([model_dirs["gss"], other], [DataSpec("mixed", str(eval_file))], settings,
                        torch.device("cpu"), "text", str(tmp_path / "cache"))
    assert compared["metric"]["headline"] == "bits_per_byte"
    assert compared["models"][0]["tokenizer"] != compared["models"][1]["tokenizer"]
    assert "**bits per byte**" in render_markdown(compared)


def test_command_line_end_to_end(model_dirs, eval_file, tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "eval_length.py"),
               "--model", str(model_dirs["gss"]), str(model_dirs["mega-full"]), "--data", f"text={eval_file}",
               "--train-length", "32", "--multipliers", "1", "4", "--bucket-size", "16", "--stream-chunk", "24",
               "--max-documents", "3", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "the regimes agree at all 3" in run.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["lengths"] == [32, 128]
    assert [result["evaluated"] for result in results["models"][0]["results"]] == [3, 3]
    assert results["models"][1]["results"][1]["regimes"]["window"]["status"].startswith("not supported: ")
    markdown = (out / "results.md").read_text()
    assert "| gss | streaming |" in markdown and "not supported [" in markdown
    assert (out / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("change, message", [
    ({"--model": "missing-model"}, "model directory not found: missing-model"),
    ({"--data": "books=missing/test.jsonl"}, "--data books: data file not found: missing/test.jsonl"),
    ({"--data": "books=missing-without-suffix"}, "--data books: data file not found: missing-without-suffix"),
    ({"--data": "books=hub:deepmind/pg19"}, "--data books: 'deepmind/pg19:test' is not a local"),
    ({"--data": "no-domain.jsonl"}, "--data 'no-domain.jsonl': expected DOMAIN=PATH"),
])
def test_bad_inputs_give_one_line_errors(change, message, model_dirs, eval_file, tmp_path, capsys):
    options = {"--model": str(model_dirs["gss"]), "--data": f"text={eval_file}", **change}
    argv = [part for option, value in options.items() for part in (option, value)]
    code = main([*argv, "--lengths", "32", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("eval_length.py: error: ") and message in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_a_model_whose_weights_do_not_match_its_config_is_refused(model_dirs, eval_file, tmp_path, capsys):
    directory = tmp_path / "three-layers"
    shutil.copytree(model_dirs["gss"], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3, "block_types": ["gss"] * 3}))
    code = main(["--model", str(directory), "--data", f"text={eval_file}", "--lengths", "32", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error.startswith(f"eval_length.py: error: the weights in {directory} do not match its config.json: "
                            f"tensors 13 missing (model.layers.2.")
