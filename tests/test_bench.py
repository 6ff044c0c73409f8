"""The benchmark harness (scripts/bench.py, ssmlm/benchmarking.py): one quick run in-process, checked for the
structure of its JSON and markdown; the regression check against a doctored slower run; OOM reporting of the
peak-memory processes; the interleaving; and the FLOPs formulas against hand counts.

The figures of the quick run mean nothing (tiny lengths, one thread, a busy machine): only their shape is tested.
"""

import contextlib
import copy
import io
import json
import statistics
import sys

import pytest
import torch
from torch import nn

from ssmlm import benchmarking
from ssmlm.benchmarking import (
    attended_pairs,
    compare_results,
    forward_flops,
    main,
    measure_training_peak_memory,
    regression_figures,
    run_interleaved,
    run_measurement_process,
    training_flops_per_token,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

LENGTH = 128


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """GSS against Llama at 128 tokens, 2 repeats, one thread (fast even on a loaded machine); the peak-memory
    processes are real."""
    directory = tmp_path_factory.mktemp("bench")
    json_path, markdown_path = directory / "run.json", directory / "run.md"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["all", "--quick", "--models", "gss", "llama", "--lengths", str(LENGTH), "--prompt-lengths",
                       str(LENGTH), "--new-tokens", "4", "--threads", "1", "--out", str(json_path),
                       "--markdown", str(markdown_path)])
    assert status == 0
    return json.loads(json_path.read_text()), markdown_path.read_text(), printed.getvalue(), json_path


def test_quick_run_json_holds_machine_settings_and_every_figure(quick_run):
    result = quick_run[0]
    machine = result["machine"]
    assert machine["device"] == "cpu" and machine["nproc"] >= 1 and machine["torch"] == torch.__version__
    assert machine["torch_threads"] == 1 and machine["cpu"]
    assert result["settings"]["repeats"] == 2 and result["settings"]["lengths"] == [LENGTH]
    assert result["matmul_peak"]["flops_per_s"] == statistics.median(result["matmul_peak"]["flops_per_s_repeats"])

    models = result["models"]
    assert set(models) == {"gss", "llama"}
    # Matched parameter counts: Llama's MLP width is solved for GSS's count.
    assert abs(models["llama"]["parameters"] / models["gss"]["parameters"] - 1) < 0.02

    for row in result["train"]:
        assert row["status"] == "ok" and row["length"] == LENGTH
        assert len(row["tokens_per_s_repeats"]) == 2
        assert row["tokens_per_s"] == statistics.median(row["tokens_per_s_repeats"])
        assert row["flops_per_token"] > 0 and row["flops_not_counted_for"] == []
        # MFU against the matmuls timed in the same rounds, which are among the run's matmul timings.
        assert row["mfu"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / row["matmul_flops_per_s"])
        assert min(result["matmul_peak"]["flops_per_s_repeats"]) <= row["matmul_flops_per_s"]
        memory = row["peak_memory"]
        # At 128 tokens the step may not raise the peak that importing torch set: >=, not >.
        assert memory["status"] == "ok" and memory["peak_mib"] >= memory["baseline_mib"] > 0
    train = {row["model"]: row for row in result["train"]}
    assert train["llama"]["speedup_vs_baseline"] == 1
    assert train["gss"]["speedup_vs_baseline"] == pytest.approx(
        train["gss"]["tokens_per_s"] / train["llama"]["tokens_per_s"])

    for row in result["generate"]:
        assert row["status"] == "ok" and row["prompt_length"] == LENGTH and row["new_tokens"] == 4
        assert row["prefill_s"] == statistics.median(row["prefill_s_repeats"])
        assert row["decode_ms_per_token"] == statistics.median(row["decode_ms_per_token_repeats"])
        assert row["prefill_mfu"] > 0 and row["decode_mfu"] > 0

    figures = result["figures"]
    assert figures[f"train/gss/{LENGTH}/tokens_per_s"]["better"] == "higher"
    assert figures[f"train/gss/{LENGTH}/peak_mib"]["better"] == "lower"
    assert figures[f"generate/llama/{LENGTH}/decode_ms_per_token"]["better"] == "lower"
    assert f"train/llama/{LENGTH}/speedup_vs_baseline" not in figures  # the baseline's ratio to itself


def test_quick_run_markdown_has_a_row_per_model_and_figure(quick_run):
    result, markdown, printed, _ = quick_run
    assert markdown in printed  # the tables are printed and written alike
    for heading in ("## Models", "## Training", "## Generation"):
        assert heading in markdown
    assert "| model | length | tokens/s | × llama | MFU | peak MiB |" in markdown
    for name in ("gss", "llama"):
        assert f"| {name} | {LENGTH} |" in markdown
        assert f"| {name} | {result['models'][name]['parameters']:,} |" in markdown


def test_compare_flags_a_doctored_slower_figure(quick_run, tmp_path, capsys):
    result, _, _, json_path = quick_run
    slower = copy.deepcopy(result)
    gss_row = next(row for row in slower["train"] if row["model"] == "gss")
    gss_row["tokens_per_s"] *= 0.5
    slower["figures"] = regression_figures(slower)
    slower_path = tmp_path / "slower.json"
    slower_path.write_text(json.dumps(slower))

    lines, worse = compare_results(result, slower, tolerance=0.1)
    assert worse == [f"train/gss/{LENGTH}/tokens_per_s"]
    assert any("-50.0%" in line and "WORSE" in line for line in lines)

    assert main(["compare", str(json_path), str(slower_path)]) == 1
    assert f"train/gss/{LENGTH}/tokens_per_s" in capsys.readouterr().out.splitlines()[-1]
    assert main(["compare", str(slower_path), str(json_path)]) == 0  # faster is not a regression
    assert main(["compare", str(json_path), str(json_path)]) == 0


def test_compare_counts_a_new_oom_as_worse(quick_run):
    result = quick_run[0]
    out_of_memory = copy.deepcopy(result)
    for row in out_of_memory["train"]:
        row["peak_memory"] = {"status": "OOM"}
    out_of_memory["figures"] = regression_figures(out_of_memory)
    _, worse = compare_results(result, out_of_memory, tolerance=0.1)
    assert sorted(worse) == [f"train/gss/{LENGTH}/peak_mib", f"train/llama/{LENGTH}/peak_mib"]


def test_killed_measurement_process_is_reported_as_oom():
    killed = run_measurement_process([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed["status"] == "OOM" and "SIGKILL" in killed["reason"]


def test_measurement_process_dying_of_an_allocation_failure_is_oom_and_other_failures_are_errors():
    assert run_measurement_process([sys.executable, "-c", "raise MemoryError"])["status"] == "OOM"
    failed = run_measurement_process([sys.executable, "-c", "raise ValueError('bad config')"])
    assert failed["status"] == "error: ValueError: bad config"
    fine = run_measurement_process([sys.executable, "-c", "print('noise'); print('{\"status\": \"ok\"}')"])
    assert fine == {"status": "ok"}


class OutOfMemoryModel(nn.Module):
    """Stands in for a model too big for the memory: its forward fails as torch's CPU allocator does."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, **inputs) -> CausalLMOutputWithPast:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.")


def test_peak_memory_measurement_reports_an_allocation_failure_as_oom(monkeypatch):
    monkeypatch.setitem(benchmarking.MODEL_BUILDERS, "gss", OutOfMemoryModel)
    result = measure_training_peak_memory("gss", 16, torch.device("cpu"), torch.get_num_threads(), 0)
    assert result["status"] == "OOM" and "can't allocate memory" in result["reason"]


def test_models_still_being_written_are_skipped(monkeypatch):
    monkeypatch.setattr(benchmarking.configuration, "BLOCK_TYPES", ("gss",))
    models, skipped = benchmarking.build_contenders(["mega-chunk", "hybrid"], torch.device("cpu"))
    assert models == {} and skipped == {name: "skipped: not implemented yet" for name in ("mega-chunk", "hybrid")}


def test_interleaving_runs_each_contender_once_per_round_and_drops_one_that_fails():
    calls = []

    def run(name):
        def measure():
            calls.append(name)
            if name == "broken" and len(calls) > 3:  # passes its warmup, then fails
                raise MemoryError
            return {"seconds": len(calls)}
        return measure

    samples, failures = run_interleaved({name: run(name) for name in ("a", "b", "broken")}, repeats=3)
    assert failures == {"broken": "OOM"}
    assert len(samples["a"]) == len(samples["b"]) == 3 and "broken" not in samples
    assert calls[:3] == ["a", "b", "broken"]  # the warmup
    assert calls[3:] == ["a", "b", "broken", "b", "a", "a", "b"]  # the order rotates each round


def test_attended_pairs_full_and_chunked():
    assert attended_pairs(5, 0, None) == 1 + 2 + 3 + 4 + 5
    assert attended_pairs(10, 0, 4) == (1 + 2 + 3 + 4) * 2 + 1 + 2
    assert attended_pairs(3, 100, None) == 101 + 102 + 103
    for chunk in (None, 4):  # a prefix then its continuation count what one pass counts
        assert attended_pairs(7, 0, chunk) + attended_pairs(5, 7, chunk) == attended_pairs(12, 0, chunk)


def test_llama_training_flops_are_six_per_matmul_weight_plus_causal_attention():
    model = benchmarking.build_llama()
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    layers, width, length = benchmarking.NUM_LAYERS, benchmarking.HIDDEN_SIZE, 1024
    flops, uncounted = training_flops_per_token(model, length)
    # PaLM's 12·layers·d·L for attention, halved for the causal mask: 6·layers·d·(L + 1).
    assert flops == pytest.approx(6 * matmul_weights + 6 * layers * width * (length + 1))
    assert uncounted == []
    # Decoding one token against a 1000-token cache: 2 per weight, plus QKᵀ and AV over 1001 keys.
    decode, _ = forward_flops(model, 1, context=1000, cached=True)
    assert decode == pytest.approx(2 * matmul_weights + layers * 4 * width * 1001)


def test_gss_flops_add_the_ssm_kernel_and_ffts_to_the_matmuls():
    model = benchmarking.build_gss()
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    flops, uncounted = training_flops_per_token(model, 1024)
    assert uncounted == []
    ssm_share = 1 - 6 * matmul_weights / flops
    assert 0 < ssm_share < 0.2  # the SSM runs in the narrow H: a small share of the FLOPs
