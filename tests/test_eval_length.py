"""ssmlm-eval-length: the window and streaming regimes agree, across several chunk boundaries at every length,
bucket perplexities recombine to the overall one, the truncated-context baseline sees the context it promises
and the context gain is its loss minus the regime's, a model that cannot take a length is reported "not
supported" with its reason (never truncated), bits per byte count the scored text, streaming memory stays flat
over a long stream and a pass's peak does not depend on what ran before it, and the outputs and one-line errors
of the command line.

Four tiny untrained models (GSS, Mega-chunk, full-attention Mega limited to 64 positions, a GSS + chunked-attention
hybrid) share the session tokenizer; they are scored on the real fixture text at 32, 64 and 128 tokens, once
in-process; the command line runs once as a subprocess."""

import errno
import json
import math
import os
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
    Window,
    WindowSet,
    concatenated_windows,
    evaluate,
    evaluate_length,
    render_markdown,
    tokenize,
)
from ssmlm.cli.eval_length import main
from ssmlm.evaluation import extrapolation
from ssmlm.evaluation.perplexity import Agreement, streaming_losses, truncated_context_losses, window_losses
from ssmlm.tooling.memory import PeakMemory
from transformers import AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_LENGTH, LENGTHS = 32, [32, 64, 128]
MEGA_MAX_POSITIONS = 64
SHORT_DOCUMENT_TOKENS = 40  # qualifies at 32 tokens, not at 64
MODELS = {
    "gss": {},
    "mega-chunk": dict(block_types=["mega", "mega"], block_options={"mega": dict(chunk_size=8)}),
    "mega-full": dict(block_types=["mega", "mega"], block_options={"mega": dict(max_positions=MEGA_MAX_POSITIONS)}),
    "hybrid": dict(block_types=["gss", "attention"], block_options={"attention": dict(span="chunked", window=16)}),
}
# Buckets of 24 positions do not divide the lengths (a short last bucket), and streaming chunks (at most 20 tokens,
# and a fifth of the window: 7, 13 and 20 tokens) cut Mega's 8-token attention chunks and the hybrid's 16-token
# ones mid-way.
SETTINGS = Settings(lengths=LENGTHS, train_length=TRAIN_LENGTH, bucket_size=24, regimes=["window", "streaming"],
                    stream_chunk=20, max_window_length=None, max_documents=None, concatenate_documents=False,
                    baseline_context=TRAIN_LENGTH, baseline_stride=8)


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
        assert f"block_options.mega.max_positions={MEGA_MAX_POSITIONS}" in regime["status"]
        assert "perplexity" not in regime  # no numbers from a cut-down window
    markdown = render_markdown(results)
    limit = f"SSMLMConfig.block_options.mega.max_positions={MEGA_MAX_POSITIONS}"
    assert "not supported [1]" in markdown and limit in markdown
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


def agreement(window: torch.Tensor, streaming: torch.Tensor) -> dict:
    compared = Agreement()
    compared.add(window, streaming)
    return compared.summary()


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


@pytest.mark.slow
def test_command_line_end_to_end(model_dirs, eval_file, tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "ssmlm.cli.eval_length",
               "--model", str(model_dirs["gss"]), str(model_dirs["mega-full"]), "--data", f"text={eval_file}",
               "--train-length", "32", "--multipliers", "1", "4", "--bucket-size", "16", "--stream-chunk", "24",
               "--max-documents", "3", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    # Run from elsewhere: the checkout's ssmlm goes first on the path, not whichever one is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
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
    assert error.startswith("ssmlm-eval-length: error: ") and message in error and "\n" not in error
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
    assert error.startswith(f"ssmlm-eval-length: error: the weights in {directory} do not match its config.json: "
                            f"tensors 13 missing (model.layers.2.")


# ---- the agreement check crosses chunk boundaries at every length ----

def test_streaming_reads_every_window_in_several_chunks(results):
    for model in results["models"]:
        for result in model["results"]:
            streaming = result["regimes"]["streaming"]
            if streaming["status"] == "ok":
                assert streaming["stream_chunk"] < result["length"] and streaming["chunks_per_window"] >= 5


class ForgetfulModel(torch.nn.Module):
    """A streaming fault: the state is dropped at every chunk boundary."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, cache=None, use_cache=False, **options):
        return self.model(input_ids, use_cache=use_cache, **options)


def test_a_state_lost_at_chunk_boundaries_disagrees_even_where_the_stream_chunk_exceeds_the_window(
        model_dirs, tokenizer_dir, fixture_texts):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(fixture_texts[0]).input_ids[:64]
    window_set = WindowSet(64, [Window(torch.tensor([tokenizer.eos_token_id, *ids]), torch.ones(64))], 1, [0])
    settings = Settings(lengths=[64], train_length=None, bucket_size=16, regimes=["window", "streaming"],
                        stream_chunk=1000, max_window_length=None, max_documents=None, concatenate_documents=False)
    model = SSMLMForCausalLM.from_pretrained(model_dirs["gss"]).eval()
    with tqdm_stub() as progress:
        assert evaluate_length(model, window_set, settings, torch.device("cpu"), progress, "")["agreement"][
            "verdict"] == "agree"
        faulty = evaluate_length(ForgetfulModel(model), window_set, settings, torch.device("cpu"), progress, "")
    assert faulty["agreement"]["verdict"] == "DISAGREE"
    assert faulty["regimes"]["streaming"]["chunks_per_window"] == 5


def tqdm_stub():
    from tqdm.auto import tqdm

    return tqdm(disable=True)


# ---- the truncated-context baseline and the context gain ----

def test_each_position_sees_the_truncated_context_it_is_promised():
    """Positions before C as in one forward; every later one predicted from between C − S and C − 1 tokens, found
    here by scoring it from each such context in turn (float64: the right one matches to rounding)."""
    torch.manual_seed(0)
    model = SSMLMForCausalLM(SSMLMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2)).double().eval()
    context, stride, length = 12, 5, 47
    ids = torch.randint(0, 50, (length + 1,))
    losses = truncated_context_losses(model, ids, context, stride, batch_tokens=30)
    torch.testing.assert_close(losses[:context], window_losses(model, ids[:context + 1]), rtol=0, atol=1e-12)
    seen = set()
    for position in range(context, length):
        found = [before for before in range(context - stride, context)
                 if abs(window_losses(model, ids[position - before:position + 2])[-1] - losses[position]) < 1e-12]
        assert len(found) == 1, position
        seen.update(found)
    assert seen == set(range(context - stride, context))  # every context length in the range occurs


def test_the_context_gain_is_the_truncated_loss_minus_the_full_one(results):
    checked = 0
    for model in results["models"]:
        for result in model["results"]:
            baseline = result["baseline"]
            assert baseline["status"] == "ok" and (baseline["context"], baseline["stride"]) == (TRAIN_LENGTH, 8)
            for regime in result["regimes"].values():
                if regime["status"] != "ok":
                    assert "context_gain" not in regime
                    continue
                gain = regime["context_gain"]
                for full, cut, bucket in zip(regime["buckets"], baseline["buckets"], gain["buckets"]):
                    assert math.isclose(bucket["nats"], (cut["nll_sum"] - full["nll_sum"]) / full["tokens"],
                                        rel_tol=1e-9, abs_tol=1e-12)
                    if full["end"] <= TRAIN_LENGTH:  # the same context both ways: nothing but rounding
                        assert abs(bucket["nats"]) < 1e-5
                if result["length"] == TRAIN_LENGTH:
                    assert gain["nats"] is None and gain["per_window"] == []
                    continue
                per_window = gain["per_window"]
                assert len(per_window) == result["evaluated"]
                assert math.isclose(gain["nats"], float(np.mean(per_window)), rel_tol=1e-9)
                assert math.isclose(gain["standard_error"], float(np.std(per_window, ddof=1)) /
                                    math.sqrt(len(per_window)), rel_tol=1e-9)
                assert math.isclose(gain["perplexity_ratio"], math.exp(gain["nats"]))
                checked += 1
    assert checked == 2 * (len(MODELS) * (len(LENGTHS) - 1) - 1)  # not full-attention Mega past 64 tokens
    markdown = render_markdown(results)
    assert "**Context gain by evaluation length**" in markdown and "**Context gain by position**" in markdown


def test_a_model_that_sees_only_recent_tokens_gains_nothing_from_context(model_dirs, eval_file, tokenizer_dir,
                                                                         tmp_path, results):
    """GSS with SGConv kernels of 4 taps sees 6 tokens back through two layers: fewer than any truncated context
    here (at least C − S = 24), so its context gain is zero to rounding; plain GSS sees everything, and gains."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    near_sighted = save_model(tmp_path / "gss-4-taps", tokenizer, ssm_kernel="sgconv",
                              ssm_kernel_options={"kernel_length": 4, "kernel_dim": 2})
    settings = Settings(lengths=[128], train_length=TRAIN_LENGTH, bucket_size=32, regimes=["streaming"],
                        stream_chunk=20, max_window_length=None, max_documents=3, concatenate_documents=False,
                        baseline_context=TRAIN_LENGTH, baseline_stride=8)
    (result,) = evaluate([near_sighted], [DataSpec("mixed", str(eval_file))], settings, torch.device("cpu"),
                         "text", str(tmp_path / "cache"))["models"][0]["results"]
    gain = result["regimes"]["streaming"]["context_gain"]
    assert abs(gain["nats"]) < 1e-6 and all(abs(bucket["nats"]) < 1e-6 for bucket in gain["buckets"])
    # Untrained, GSS's distant tokens move its losses little, but far above rounding.
    assert abs(results_of(results, "gss")[128]["regimes"]["streaming"]["context_gain"]["nats"]) > 1e-5


# ---- memory ----

def streaming_peak(model, length: int) -> int:
    ids = torch.randint(0, model.config.vocab_size, (length + 1,), generator=torch.Generator().manual_seed(0))
    with PeakMemory(torch.device("cpu")) as peak:
        streaming_losses(model, ids, chunk_size=256)
    if peak.bytes is None:
        pytest.skip("this system does not let a process reset its resident high-water mark")
    return peak.bytes


@pytest.mark.slow
def test_streaming_memory_stays_flat_over_a_long_stream():
    """A 16× longer stream may add its losses (8 bytes a token) and little else: before, each chunk left memory
    behind (its losses, and freed blocks the allocator kept between the cache's small tensors)."""
    torch.manual_seed(0)
    model = SSMLMForCausalLM(SSMLMConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2)).eval()
    short, long = 8192, 16 * 8192
    streaming_peak(model, short)  # first-use allocations (thread pools, FFT plans) out of the way
    growth = streaming_peak(model, long) - streaming_peak(model, short)
    assert growth < 16 * (long - short) + 2 * 2**20, f"{growth / 2**20:.1f} MiB more for {long - short} tokens"


def test_a_passes_peak_memory_does_not_depend_on_what_ran_before_it():
    """Measured right after a long window pass (which frees far more than streaming needs) or after another
    streaming pass, streaming's peak is the same: freed memory the process holds lends it no pages."""
    torch.manual_seed(0)
    model = SSMLMForCausalLM(SSMLMConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2)).eval()
    streaming_peak(model, 4096)
    after_streaming = streaming_peak(model, 4096)
    window_losses(model, torch.randint(0, 4096, (16385,)))
    after_window = streaming_peak(model, 4096)
    assert abs(after_window - after_streaming) < 0.1 * after_streaming + 2**20, (after_window, after_streaming)


@pytest.mark.parametrize("options, message", [
    (["--lengths", "32", "--baseline-context", "0"], "--baseline-context must be positive, got 0"),
    (["--lengths", "32", "--baseline-context", "-5"], "--baseline-context must be positive, got -5"),
    (["--lengths", "32", "64", "--baseline-context", "48"],
     "--baseline-context 48 is longer than the evaluation length 32"),
    (["--train-length", "64", "--lengths", "32", "64"],
     "--baseline-context (by default --train-length) 64 is longer than the evaluation length 32"),
    (["--train-length", "32", "--baseline-stride", "0"], "--baseline-stride must be positive, got 0"),
    (["--train-length", "32", "--baseline-stride", "33"],
     "--baseline-stride 33 is longer than the truncated context 32"),
    (["--lengths", "32", "--baseline-stride", "8"], "--baseline-stride needs --baseline-context or --train-length"),
    (["--train-length", "32", "--bucket-size", "0"], "--bucket-size must be positive, got 0"),
    (["--train-length", "32", "--multipliers", "0", "1"], "--lengths / --multipliers must be positive, got 0"),
])
def test_bad_numbers_give_one_line_errors_naming_the_option(options, message, model_dirs, eval_file, tmp_path,
                                                            capsys):
    code = main(["--model", str(model_dirs["gss"]), "--data", f"text={eval_file}", *options, "--out",
                 str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith(f"ssmlm-eval-length: error: {message}")
    assert "\n" not in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, message", [
    ("results.txt", "--out {out} is a file; give a directory for results.json, results.md and perplexity.png"),
    ("results.txt/sub", "--out {out}: {tmp_path}/results.txt is a file, not a directory"),
])
def test_an_out_that_cannot_be_a_directory_is_refused_before_the_evaluation(out, message, model_dirs, eval_file,
                                                                            tmp_path, capsys, monkeypatch):
    (tmp_path / "results.txt").write_text("kept")
    monkeypatch.setattr(extrapolation, "evaluate", lambda *args: pytest.fail("the evaluation ran"))
    code = main(["--model", str(model_dirs["gss"]), "--data", f"text={eval_file}", "--lengths", "32", "--out",
                 str(tmp_path / out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error == f"ssmlm-eval-length: error: {message.format(out=tmp_path / out, tmp_path=tmp_path)}"
    assert (tmp_path / "results.txt").read_text() == "kept"


def test_a_full_disk_while_writing_the_results_is_one_line_and_exit_code_74(model_dirs, eval_file, tmp_path, capsys,
                                                                            monkeypatch):
    def full_disk(results, out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "results.json"))

    monkeypatch.setattr(extrapolation, "write_outputs", full_disk)
    code = main(["--model", str(model_dirs["gss"]), "--data", f"text={eval_file}", "--lengths", "32",
                 "--max-documents", "1", "--regimes", "streaming", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert code == 74
    assert error == f"ssmlm-eval-length: error: {tmp_path / 'out' / 'results.json'}: No space left on device"
