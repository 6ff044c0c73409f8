"""The benchmark harness (ssmlm-bench, ssmlm/benchmark/): one quick run in-process, checked for the
structure of its JSON and markdown; the regression check against a doctored slower run; OOM reporting of the
peak-memory processes; the interleaving; the FLOPs formulas against hand counts; and the public implementations
(gss-port, mega-chunk-hf4): skipped with the reason when absent (as in CI), the worker protocol against a stub
worker and against an environment without transformers 4.x, and the real ones at a tiny length where installed;
the Mega-chunk against Mega command at tiny lengths.

The figures of the quick run mean nothing (tiny lengths, one thread, a busy machine): only their shape is tested.
"""

import contextlib
import copy
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

from ssmlm.benchmark import CONTENDERS_DIR, contenders, public, runs
from ssmlm.benchmark.compare import compare_results, regression_figures
from ssmlm.benchmark.contenders import Contenders
from ssmlm.benchmark.flops import attended_pairs, forward_flops, training_flops_per_token
from ssmlm.benchmark.measure import (
    MatrixProductRecorder,
    make_matmuls_alone_timing,
    make_training_step,
    measure_gpu_peak_memory,
    measure_peak_memory,
    measure_training_peak_memory,
    peak_memory_command,
    run_interleaved,
    run_measurement_process,
    torch_threads,
)
from ssmlm.benchmark.report import format_ratio, format_value, public_comparison_table, to_markdown
from ssmlm.benchmark.settings import Settings
from ssmlm.benchmark.size import HIDDEN_SIZE, MEGA_CHUNK_SIZE, NUM_LAYERS, VOCAB_SIZE, count_parameters
from ssmlm.cli.bench import build_options_parser, main, settings_from_args
from transformers.modeling_outputs import CausalLMOutputWithPast

LENGTH = 128
PUBLIC = [contenders.GSS_PORT, contenders.LEGACY_MEGA]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """GSS against Llama at 128 tokens, 2 repeats, one thread (fast even on a loaded machine); the peak-memory
    processes are real. The public implementations are asked for with an empty contenders directory, as in CI:
    they are skipped."""
    directory = tmp_path_factory.mktemp("bench")
    json_path, markdown_path = directory / "run.json", directory / "run.md"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as patch:
        patch.setattr(public, "gss_port_in_environment", lambda: False)
        status = main(["all", "--quick", "--models", "gss", *PUBLIC, "llama", "--lengths", str(LENGTH),
                       "--prompt-lengths", str(LENGTH), "--new-tokens", "4", "--threads", "1",
                       "--contenders-dir", str(directory / "no-contenders"), "--out", str(json_path),
                       "--markdown", str(markdown_path)])
    assert status == 0
    return json.loads(json_path.read_text()), markdown_path.read_text(), printed.getvalue(), json_path


def test_quick_run_json_holds_machine_settings_and_every_figure(quick_run):
    result = quick_run[0]
    machine = result["machine"]
    assert machine["device"] == "cpu" and machine["nproc"] >= 1 and machine["torch"] == torch.__version__
    assert machine["torch_threads"] == 1 and machine["cpu"]
    # Freed memory kept by default, as the trainer keeps it (glibc); recorded so runs compare like with like.
    assert result["settings"]["host_allocator"] == "keep-freed"
    assert machine["host_allocator"] == ("glibc, freed memory kept" if sys.platform.startswith("linux")
                                         else "system default")
    assert result["settings"]["repeats"] == 2 and result["settings"]["lengths"] == [LENGTH]
    assert result["matmul_peak"]["flops_per_s"] == statistics.median(result["matmul_peak"]["flops_per_s_repeats"])

    models = result["models"]
    assert set(models) == {"gss", "llama", *PUBLIC}
    assert all(models[name]["status"].startswith("skipped: ") for name in PUBLIC)
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
        # The step against its own matrix products alone, timed in the same rounds: a step is more than its products.
        step_seconds = row["batch"] * row["length"] / row["tokens_per_s"]
        assert row["step_over_matmuls_alone"] == pytest.approx(step_seconds / row["matmuls_alone_seconds"])
        assert row["step_over_matmuls_alone"] > 1
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
    # gss's public counterpart was skipped: no ratio to it, and nothing for the skipped models.
    assert train["gss"]["public_counterpart"] == contenders.GSS_PORT and train["gss"]["speedup_vs_public"] is None
    assert not any("speedup_vs_public" in key or "gss-port" in key or "hf4" in key for key in figures)


def test_quick_run_markdown_has_a_row_per_model_and_figure(quick_run):
    result, markdown, printed, _ = quick_run
    assert markdown in printed  # the tables are printed and written alike
    for heading in ("## Models", "## Training", "## Generation"):
        assert heading in markdown
    assert "| model | length | batch | tokens/s | × llama | MFU | step / its matmuls | peak MiB |" in markdown
    for name in ("gss", "llama"):
        assert f"| {name} | {LENGTH} |" in markdown
        assert f"| {name} | {result['models'][name]['parameters']:,} |" in markdown


def test_quick_run_reports_missing_public_implementations_as_skipped_with_the_reason(quick_run):
    result, markdown, printed, _ = quick_run
    reasons = {name: result["models"][name]["status"] for name in PUBLIC}
    assert "gated-state-spaces-pytorch is not installed" in reasons["gss-port"]
    assert "no transformers 4.x environment" in reasons["mega-chunk-hf4"]
    for name, reason in reasons.items():
        assert "install_bench_contenders.sh" in reason
        assert f"{name}: {reason}" in printed  # logged as the run starts
        assert f"| {name} | {reason} |" in markdown
        assert not any(row["model"] == name for row in result["train"] + result["generate"])
    assert "### Against the public implementations" in markdown
    gss_tokens_per_s = next(row["tokens_per_s"] for row in result["train"] if row["model"] == "gss")
    gss_figure = format_value(gss_tokens_per_s)
    assert f"| gss | {LENGTH} | {gss_figure} | gss-port | skipped | - | - |" in markdown


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


@pytest.mark.parametrize("argv, message", [
    (["compare", "{missing}", "{missing}"], "cannot read {missing}: No such file or directory"),
    (["compare", "{not_json}", "{not_json}"], "{not_json} is not JSON: give a file written by ssmlm-bench --out"),
    (["compare", "{foreign}", "{foreign}"], "{foreign} is not a run saved by ssmlm-bench train/generate/all --out"),
    (["train", "--compare", "{foreign}", "--models", "gss"], "{foreign} is not a run saved by ssmlm-bench"),
    (["train", "--lengths", "64", "0"], "--lengths must be at least 1, got 0"),
    (["train", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["generate", "--new-tokens", "-1"], "--new-tokens must be at least 1, got -1"),
    (["all", "--tokens-per-step", "-5"], "--tokens-per-step must be at least 1, got -5"),
    (["train", "--memory-limit-mib", "-1"], "--memory-limit-mib must be at least 0, got -1"),
    (["compare", "a.json", "b.json", "--tolerance", "nan"], "--tolerance must be a fraction of 0 or more, got nan"),
    (["mega-chunk", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    (["decode-batch", "--batch-sizes", "4", "0"], "--batch-sizes must be at least 1, got 0"),
    (["train", "--out", "{missing}/result.json"], "--out {missing}/result.json: the folder {missing} does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2_before_anything_runs(argv, message, tmp_path, capsys, monkeypatch):
    paths = {"missing": tmp_path / "missing", "not_json": tmp_path / "table.md", "foreign": tmp_path / "other.json"}
    paths["not_json"].write_text("| a | b |\n")
    paths["foreign"].write_text(json.dumps({"loss": 1.0}))
    monkeypatch.setattr(runs, "run_benchmarks", lambda *args, **kwargs: pytest.fail("the benchmark ran"))
    monkeypatch.setattr("ssmlm.cli.bench.run_harness", lambda *args: pytest.fail("a harness ran"))
    code = main([part.format(**paths) for part in argv])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith(f"ssmlm-bench: error: {message.format(**paths)}") and error.count("\n") == 1


def test_compare_counts_a_new_oom_as_worse(quick_run):
    result = quick_run[0]
    out_of_memory = copy.deepcopy(result)
    for row in out_of_memory["train"]:
        row["peak_memory"] = {"status": "OOM"}
    out_of_memory["figures"] = regression_figures(out_of_memory)
    _, worse = compare_results(result, out_of_memory, tolerance=0.1)
    assert sorted(worse) == [f"train/gss/{LENGTH}/peak_mib", f"train/llama/{LENGTH}/peak_mib"]


@pytest.mark.slow
def test_killed_measurement_process_is_reported_as_oom():
    killed = run_measurement_process([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed["status"] == "OOM" and "SIGKILL" in killed["reason"]


@pytest.mark.slow
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
    monkeypatch.setitem(contenders.MODEL_BUILDERS, "gss", lambda at_shape: OutOfMemoryModel())
    result = measure_training_peak_memory("gss", 16, Settings(device="cpu", memory_limit_mib=0))
    assert result["status"] == "OOM" and "can't allocate memory" in result["reason"]


def test_gpu_peak_memory_is_the_steps_peak_over_what_was_allocated_plus_the_models_own(monkeypatch):
    """On a GPU the harness's process measures peak memory with the allocator's counters; stood in for here (no
    GPU in CI): 1 MiB allocated before, a 5 MiB peak during the steps."""
    counters = {"allocated": 2**20, "peak": 5 * 2**20, "resets": 0}
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: counters["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: counters["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: counters.update(resets=1))
    model = nn.Linear(4, 4)
    model.forward = lambda input_ids, labels, use_cache: CausalLMOutputWithPast(loss=model.weight.sum())
    result = measure_gpu_peak_memory(model, 8, 2, CPU)
    assert counters["resets"] == 1 and result["status"] == "ok"
    assert result["peak_mib"] == 4 + (16 + 4) * 4 / 2**20  # the steps' 4 MiB, and the weight and bias
    assert model.weight.grad is None  # the gradients the steps left are dropped
    oom = measure_gpu_peak_memory(OutOfMemoryModel(), 8, 2, CPU)
    assert oom["status"] == "OOM" and "can't allocate memory" in oom["reason"]


def test_the_recorder_sees_every_matrix_product_of_a_step_with_its_shapes():
    """A linear layer's forward (addmm), and its backward's two products (the input's and the weight's gradient)."""
    layer, x = nn.Linear(4, 3), torch.randn(5, 4, requires_grad=True)
    with MatrixProductRecorder() as recorder:
        layer(x).sum().backward()
    assert sorted(recorder.products) == sorted([((5, 4), (4, 3), torch.float32), ((5, 3), (3, 4), torch.float32),
                                                ((3, 5), (5, 4), torch.float32)])


def test_matmuls_alone_run_the_products_of_a_models_step():
    model = Contenders().build("gss", torch.device("cpu"))
    recorder = MatrixProductRecorder()
    with recorder:
        make_training_step(model, 64, torch.device("cpu"))()
    timed = make_matmuls_alone_timing(model, 64, torch.device("cpu"))
    timed()  # the first call records a step's products
    with MatrixProductRecorder() as replayed:
        assert timed()["seconds"] > 0
    # The same products in the same order (bmm and mm alike run as torch.matmul of the recorded shapes).
    assert [(first, second) for first, second, _ in replayed.products] == \
        [(first, second) for first, second, _ in recorder.products]


class FailingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, **inputs):
        raise RuntimeError("this model is broken")


def test_a_model_that_fails_while_its_products_are_recorded_is_reported_and_the_others_go_on():
    runs = {"broken": make_matmuls_alone_timing(FailingModel(), 16, torch.device("cpu")),
            "working": lambda: {"seconds": 1.0}}
    samples, failures = run_interleaved(runs, repeats=1)
    assert failures == {"broken": "error: RuntimeError: this model is broken"} and len(samples["working"]) == 1


def test_the_training_batch_is_the_tokens_per_step_over_the_length():
    assert Settings().training_batch(4096) == 1  # the CPU default: batch 1
    on_gpu = Settings(tokens_per_step=65536)
    assert [on_gpu.training_batch(length) for length in (2048, 65536, 131072)] == [32, 1, 1]


def test_mamba_without_its_fused_kernels_is_not_run_past_its_reference_paths_limit(monkeypatch, tmp_path):
    limits = {use: contenders.MAMBA_REFERENCE_PATH_MAX_LENGTH[use]["cpu"] for use in ("training", "prompt")}
    tiny = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1))
    monkeypatch.setattr(contenders, "mamba_fused_kernels_installed", lambda: False)
    for training, limit in ((True, limits["training"]), (False, limits["prompt"])):
        assert contenders.skipped_at_length(tiny, limit, training) is None
        assert contenders.skipped_at_length(tiny, limit + 1, training).startswith(
            "skipped: transformers' reference Mamba path")
    assert contenders.skipped_at_length(nn.Linear(1, 1), 10**6, True) is None  # only Mamba's path has limits
    # The harness reports the skipped lengths, runs the others, and leaves them out of the regression figures.
    monkeypatch.setitem(contenders.MAMBA_REFERENCE_PATH_MAX_LENGTH, "prompt", {"cpu": 16})
    out = tmp_path / "mamba.json"
    assert main(["all", "--models", "mamba", "--lengths", "16", str(limits["training"] + 1), "--prompt-lengths",
                 "16", "17", "--new-tokens", "2", "--repeats", "1", "--threads", "1", "--matmul-size", "128",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    for phase, length in (("train", "length"), ("generate", "prompt_length")):
        status = [row["status"] for row in sorted(result[phase], key=lambda row: row[length])]
        assert status[0] == "ok" and status[1].startswith("skipped: transformers' reference Mamba path")
    assert regression_figures(result) == regression_figures(result | {"train": result["train"][:1],
                                                                      "generate": result["generate"][:1]})
    monkeypatch.setattr(contenders, "mamba_fused_kernels_installed", lambda: True)
    assert contenders.skipped_at_length(tiny, limits["training"] + 1, True) is None


def test_models_still_being_written_are_skipped(monkeypatch):
    monkeypatch.setattr(contenders, "BLOCKS", {"gss": contenders.BLOCKS["gss"]})
    models, skipped = Contenders().build_all(["mega-chunk", "hybrid"], CPU)
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
    model = Contenders().build("llama", CPU)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    layers, width, length = NUM_LAYERS, HIDDEN_SIZE, 1024
    flops, uncounted = training_flops_per_token(model, length)
    # PaLM's 12·layers·d·L for attention, halved for the causal mask: 6·layers·d·(L + 1).
    assert flops == pytest.approx(6 * matmul_weights + 6 * layers * width * (length + 1))
    assert uncounted == []
    # Decoding one token against a 1000-token cache: 2 per weight, plus QKᵀ and AV over 1001 keys.
    decode, _ = forward_flops(model, 1, context=1000, cached=True)
    assert decode == pytest.approx(2 * matmul_weights + layers * 4 * width * 1001)


def test_gss_flops_add_the_ssm_kernel_and_ffts_to_the_matmuls():
    model = Contenders().build("gss", CPU)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    flops, uncounted = training_flops_per_token(model, 1024)
    assert uncounted == []
    ssm_share = 1 - 6 * matmul_weights / flops
    assert 0 < ssm_share < 0.2  # the SSM runs in the narrow H: a small share of the FLOPs


@pytest.mark.parametrize("name", [*contenders.KERNEL_CONTENDERS, "s4-lm", "h3", "h3-hybrid"])
def test_every_kernel_contender_is_counted_and_runs(name):
    """GSS with each new kernel, and the S4 LM: FLOPs from each kernel's own formula, nothing left uncounted, a
    parameter count close to GSS's, and a training step and a decoding step that run."""
    at_gss_shape = Contenders()
    model = at_gss_shape.build(name, CPU)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    flops, uncounted = training_flops_per_token(model, 256)
    assert uncounted == [] and flops > 6 * matmul_weights
    # DLR at its N = 1024 has 0.5M more kernel weights (W per channel and state) than DSS at N = 128.
    assert count_parameters(model) == pytest.approx(at_gss_shape.gss_parameter_count, rel=0.15)
    ids = torch.randint(0, VOCAB_SIZE, (1, 64))
    model(ids, labels=ids).loss.backward()
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        assert torch.isfinite(model(ids[:, :1], past_key_values=cache, use_cache=True).logits).all()


def test_the_saved_baseline_still_loads_compares_and_renders():
    baseline_path = Path(__file__).resolve().parent.parent / "reports" / "benchmarks" / "bench-session1.json"
    baseline = json.loads(baseline_path.read_text())
    lines, worse = compare_results(baseline, baseline, tolerance=0.1)
    assert worse == [] and lines[-1] == "no figure worse by more than 10%"
    markdown = to_markdown(baseline)
    assert "| gss | 16384 |" in markdown and "Against the public implementations" not in markdown  # none measured


# ----------------------------------------------------------------------------------------------------------------
# The public implementations.


def test_public_implementations_absent_are_skipped_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(public, "gss_port_in_environment", lambda: False)
    models, skipped = Contenders(contenders_dir=tmp_path).build_all(PUBLIC, CPU)
    assert models == {}
    assert skipped == {
        "gss-port": f"skipped: gated-state-spaces-pytorch is not installed (nor in {tmp_path / 'gss-port'}); run "
                    "scripts/install_bench_contenders.sh, or pip install gated-state-spaces-pytorch",
        "mega-chunk-hf4": f"skipped: no transformers 4.x environment in {tmp_path / 'transformers4'}; run "
                          "scripts/install_bench_contenders.sh",
    }


def test_the_worker_without_transformers_4_says_so_and_the_contender_is_skipped(tmp_path):
    """The real worker, with a transformers4 directory that holds no transformers 4.x: it imports the venv's
    transformers 5, which has no Mega, and answers with the reason."""
    (tmp_path / "transformers4" / "transformers").mkdir(parents=True)  # not a package: the venv's wins
    with pytest.raises(public.ContenderUnavailable) as caught:
        Contenders(contenders_dir=tmp_path).build(contenders.LEGACY_MEGA, CPU, threads=1)
    message = str(caught.value)
    assert "did not build MegaForCausalLM" in message and "has no MegaForCausalLM, removed in transformers 5" in message


STUB_WORKER = """
import json, os, signal, sys

for line in sys.stdin:
    request = json.loads(line)
    behaviour = os.environ.get("STUB_STEP", "ok")
    if request["cmd"] == "quit":
        break
    if request["cmd"] == "build":
        answer = {"class": "StubMega", "parameters": request["target_parameters"], "non_embedding_parameters": 1,
                  "blocks": ["StubBlock"], "config": {}, "implementation": "stub 0.1", "request": request}
    elif request["cmd"] == "prepare":
        length = request["length"]
        answer = {}
    elif request["cmd"] == "step":
        if behaviour == "oom":
            answer = {"ok": False, "error": "RuntimeError: can't allocate memory", "out_of_memory": True}
        elif behaviour == "error":
            answer = {"ok": False, "error": "RuntimeError: shapes do not match", "out_of_memory": False}
        elif behaviour == "exit":
            print("the stub gave up", file=sys.stderr)
            sys.exit(3)
        elif behaviour == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            answer = {"seconds": length / 1e6}  # a million tokens/s, whatever the length prepared
    elif request["cmd"] == "memory":
        answer = {"peak_mib": 123.0, "baseline_mib": 100.0}
    print(json.dumps({"ok": True} | answer), flush=True)
"""


@pytest.fixture
def stub_worker(tmp_path, monkeypatch):
    """mega-chunk-hf4 run by a stub that speaks the worker protocol (no torch: it starts in a blink)."""
    script = tmp_path / "stub_worker.py"
    script.write_text(STUB_WORKER)
    (tmp_path / "transformers4" / "transformers").mkdir(parents=True)
    monkeypatch.setattr(public, "LEGACY_MEGA_WORKER", script)
    return tmp_path


def test_worker_protocol_build_step_and_memory(stub_worker):
    at_gss_shape = Contenders(contenders_dir=stub_worker)
    worker = at_gss_shape.build("mega-chunk-hf4", CPU, threads=1)
    try:
        request = worker.describe()["request"]  # what the harness asked the worker to build
        assert request["threads"] == 1 and request["chunk_size"] == MEGA_CHUNK_SIZE == 128
        assert (request["vocab_size"], request["hidden_size"], request["num_layers"]) == (8192, 256, 4)
        assert request["target_parameters"] == at_gss_shape.gss_parameter_count == 4_591_872
        assert contenders.describe_model(worker)["parameters"] == 4_591_872
        step = make_training_step(worker, 2048, CPU)
        assert step() == step() == {"seconds": 2048 / 1e6}
        assert worker.request("memory") == {"peak_mib": 123.0, "baseline_mib": 100.0}
    finally:
        worker.close()
    assert worker.process.returncode == 0


def test_worker_peak_memory_runs_in_a_fresh_worker(stub_worker):
    settings = Settings(contenders_dir=stub_worker, device="cpu", threads=1, memory_limit_mib=0)
    assert measure_peak_memory("mega-chunk-hf4", 256, settings) == {
        "status": "ok", "peak_mib": 123.0, "baseline_mib": 100.0}


@pytest.mark.parametrize("behaviour, status", [
    ("oom", "OOM"),
    ("kill", "OOM"),  # SIGKILL: the out-of-memory killer
    ("error", "error: WorkerError: RuntimeError: shapes do not match"),
    ("exit", "error: WorkerError: the worker exited with status 3: the stub gave up"),
])
def test_worker_failures_are_reported_and_the_others_go_on(stub_worker, monkeypatch, behaviour, status):
    monkeypatch.setenv("STUB_STEP", behaviour)
    worker = Contenders(contenders_dir=stub_worker).build(contenders.LEGACY_MEGA, CPU, threads=1)
    try:
        steps = {"fine": lambda: {"seconds": 1.0}, "mega-chunk-hf4": worker.training_step(256)}
        samples, failures = run_interleaved(steps, repeats=2)
    finally:
        worker.close()
    assert failures == {"mega-chunk-hf4": status} and len(samples["fine"]) == 2
    settings = Settings(contenders_dir=stub_worker, device="cpu", threads=1, memory_limit_mib=0)
    assert measure_peak_memory("mega-chunk-hf4", 256, settings)["status"] == status


class TinyLM(nn.Module):
    """Stands in for our Mega-chunk in the ratio test: an embedding and a head, the loss as the harness asks."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, 8)
        self.head = nn.Linear(8, VOCAB_SIZE)

    def forward(self, input_ids, labels, **unused) -> CausalLMOutputWithPast:
        logits = self.head(self.embedding(input_ids))
        return CausalLMOutputWithPast(loss=nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))


def test_ratio_to_the_public_implementation_in_rows_figures_and_markdown(stub_worker, monkeypatch):
    monkeypatch.setattr(runs, "measure_peak_memory", lambda name, length, settings, model=None: {
        "status": "ok", "peak_mib": 1.0, "baseline_mib": 0.0})
    worker = Contenders(contenders_dir=stub_worker).build(contenders.LEGACY_MEGA, CPU, threads=1)
    settings = Settings(repeats=2, matmul_size=64, quick=True, lengths=[256])
    try:
        rows = runs.benchmark_training({"mega-chunk": TinyLM(), "mega-chunk-hf4": worker}, settings, CPU, [],
                                       log=lambda message: None)
    finally:
        worker.close()
    ours, theirs = rows
    assert theirs["model"] == "mega-chunk-hf4" and theirs["tokens_per_s"] == pytest.approx(1e6)
    assert theirs["mfu"] is None and theirs["flops_per_token"] is None  # no FLOPs formula for it
    assert ours["public_counterpart"] == "mega-chunk-hf4"
    assert ours["speedup_vs_public"] == pytest.approx(ours["tokens_per_s"] / 1e6)
    assert "speedup_vs_public" not in theirs

    result = {"train": rows, "models": {"mega-chunk": {"status": "ok"}, "mega-chunk-hf4": {"status": "ok"}}}
    figures = regression_figures(result)
    assert figures["train/mega-chunk/256/speedup_vs_public"] == {
        "value": ours["speedup_vs_public"], "better": "higher", "status": "ok"}
    table = "\n".join(public_comparison_table(result))
    assert "| model | length | tokens/s | public | its tokens/s | × public | ≥ 1.5× |" in table
    assert f"| mega-chunk | 256 | {format_value(ours['tokens_per_s'])} | mega-chunk-hf4 | 1,000,000 | " \
           f"{format_ratio(ours['speedup_vs_public'])} | no |" in table


CONTENDERS_INSTALLED = (
    (public.legacy_transformers_dir(CONTENDERS_DIR) / "transformers").is_dir()
    and (public.gss_port_in_environment() or (CONTENDERS_DIR / "gss-port").is_dir())
)


@pytest.mark.skipif(not CONTENDERS_INSTALLED, reason="public implementations not installed "
                                                      "(scripts/install_bench_contenders.sh)")
def test_installed_public_implementations_match_gss_and_train():
    """The real ones, where installed: built at GSS's shape and parameter count, one training step at 128 tokens
    (transformers 4.x Mega-chunk needs a multiple of the chunk), and the reasons they do not generate."""
    at_gss_shape = Contenders()
    models, skipped = at_gss_shape.build_all(PUBLIC, CPU, threads=1)
    try:
        assert skipped == {}
        port, mega = models["gss-port"], models["mega-chunk-hf4"]
        target = at_gss_shape.gss_parameter_count
        for model in (port, mega):
            assert abs(contenders.describe_model(model)["parameters"] / target - 1) < 1e-3
        # The port at our GSS's shape: F = 4d = 1024, H = d/4 = 64, N = 2H = 128.
        layer = port.lm.layers[0]
        assert layer.to_u[0].weight.shape == (1024, 256) and layer.to_v[0].weight.shape == (64, 256)
        assert layer.dss.C_real.shape == (64, 128)
        assert port.lm.to_logits.weight is port.lm.token_emb.weight
        assert mega.describe()["config"]["chunk_size"] == 128 and mega.describe()["config"]["use_chunking"]
        with torch_threads(1):
            for model in (port, mega):
                assert make_training_step(model, 128, CPU)()["seconds"] > 0
        for model in (port, mega):
            assert model.generation_unsupported.startswith("not supported: ")
    finally:
        mega = models.get("mega-chunk-hf4")
        if mega is not None:
            mega.close()


@pytest.mark.parametrize("phase", ["train", "decode"])
def test_profile_script_prints_the_operators_of_a_step(phase, capsys):
    """scripts/profile_step.py: torch.profiler over a training step or decoding steps, with input shapes."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"
    main = runpy.run_path(str(script))["main"]
    main(["--model", "gss", "--phase", phase, "--length", "32", "--steps", "2", "--threads", "1", "--rows", "5"])
    printed = capsys.readouterr().out
    assert f"gss, {phase}, length 32" in printed and "aten::" in printed and "Input Shapes" in printed


def test_gss_shape_option_reaches_gss_the_port_the_matching_and_the_memory_processes():
    """--gss-shape H N (e.g. the GSS port's default 256 512): GSS is built with it, the others are matched to the
    count that results, and the peak-memory processes get it too; the default shape stays for everyone else."""
    args = build_options_parser().parse_args(["train", "--gss-shape", "32", "64"])
    settings = settings_from_args(args)
    gss = settings.contenders().build("gss", CPU)
    assert (gss.config.ssm_size, gss.config.ssm_state_size) == (32, 64)
    llama = settings.contenders().build("llama", CPU)
    assert count_parameters(llama) == pytest.approx(count_parameters(gss), rel=1e-3)
    command = peak_memory_command("gss", 64, settings)
    assert command[-3:] == ["--gss-shape", "32", "64"]
    assert build_options_parser().parse_args(command[3:]).gss_shape == [32, 64]
    assert Contenders().build("gss", CPU).config.ssm_size == 64


def test_mega_chunk_command_times_both_models_at_every_length(tmp_path, capsys):
    """`mega-chunk` at tiny sizes: a row per (model, length) with every repetition and the medians per token,
    relative to the first length, in the JSON and the printed table."""
    out = tmp_path / "mega_chunk.json"
    assert main(["mega-chunk", "--lengths", "32", "64", "--repeats", "2", "--chunk-size", "16", "--hidden-size", "32",
                 "--vocab-size", "64", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["lengths"] == [32, 64] and result["settings"]["chunk_size"] == 16
    assert result["machine"]["torch_threads"] == 1
    assert [(row["model"], row["length"]) for row in result["results"]] == [
        ("mega-chunk", 32), ("mega-chunk", 64), ("mega", 32), ("mega", 64)]
    for row in result["results"]:
        assert len(row["wall_seconds_per_step"]) == len(row["cpu_seconds_per_step"]) == 2
        wall_median = statistics.median(row["wall_seconds_per_step"]) / row["tokens_per_step"]
        assert row["wall_us_per_token"] == pytest.approx(wall_median * 1e6)
        assert row["cpu_us_per_token"] > 0
    assert [row["wall_ratio_to_first_length"] for row in result["results"]][::2] == [1.0, 1.0]
    printed = capsys.readouterr().out
    assert "| model | length | wall µs/token | vs first | CPU µs/token | vs first |" in printed
    assert "| mega | 64 |" in printed


@pytest.mark.slow
def test_the_data_memory_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "memory.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_data_memory.py"
    run = subprocess.run([sys.executable, str(script), "--sizes-mb", "0.3", "0.6", "--steps", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["text_mb"] >= size for r, size in zip(results["runs"], [0.3, 0.6])] == [True, True]
    assert all(r["peak_memory_mb"] > 100 for r in results["runs"]) and results["runs"][0]["peak_memory_vs_first"] == 1
    assert run.stdout.count(" MB |") == 4  # two rows of a size and a peak


def test_the_compile_benchmark_times_compiled_against_eager(monkeypatch, tmp_path):
    """The harness of `ssmlm-bench compile`, with Dynamo's eager backend standing in for inductor (whose compile takes
    minutes): every model eager and compiled, training and decoding, each compiled figure against its eager one."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **options: real_compile(model, backend="eager", **options))
    out = tmp_path / "compile.json"
    assert main(["compile", "--models", "gss", "--lengths", "64", "--prompt-length", "16", "--new-tokens", "2",
                 "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert {(row["mode"], row["phase"]) for row in rows} == {(mode, phase) for mode in ("eager", "compiled")
                                                            for phase in ("train", "decode")}
    for row in rows:
        assert "status" not in row and row["first_call_seconds"] > 0
        assert row["tokens_per_s" if row["phase"] == "train" else "ms_per_token"] > 0
        assert ("speedup_over_eager" in row) == (row["mode"] == "compiled")


def test_batched_decoding_measures_every_batch_and_the_cache_per_sequence(tmp_path):
    out = tmp_path / "batched.json"
    assert main(["decode-batch", "--models", "gss", "mega-chunk", "llama", "mamba", "--prompt-lengths", "16", "48",
                 "--batch-sizes", "1", "3", "--new-tokens", "2", "--repeats", "1", "--threads", "1",
                 "--matmul-size", "128", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(row["model"], row["prompt_length"], row["batch"]): row for row in result["results"]}
    assert len(rows) == 4 * 2 * 2 and all(row["status"] == "ok" for row in rows.values())
    assert all(row["tokens_per_s"] > 0 and 0 < row["mfu"] for row in rows.values())
    # The linear layers alone: timed per (model, batch), the same for every prompt.
    assert all(row["linear_layers_ms_per_step"] > 0 and row["linear_layers_mfu"] > 0 for row in rows.values())
    assert rows["gss", 16, 3]["linear_layers_mfu"] == rows["gss", 48, 3]["linear_layers_mfu"]
    assert rows["llama", 48, 3]["speedup_vs_baseline"] == 1.0
    cache = {(name, length): rows[name, length, 1]["cache_bytes_per_sequence"] for name, length, _ in rows}
    for name in ("gss", "mamba"):  # a constant state
        assert cache[name, 16] == cache[name, 48] > 0
    assert cache["llama", 48] == 3 * cache["llama", 16]  # keys and values grow with the prompt
    assert 0 < result["decoding_matmul"]["fraction_of_peak"]


def test_a_long_stream_records_flat_figures_for_a_recurrent_model(tmp_path):
    out = tmp_path / "stream.json"
    assert main(["long-stream", "--models", "gss", "llama", "--prompt-length", "8", "--tokens", "24", "--every", "8",
                 "--threads", "1", "--out", str(out)]) == 0
    streams = json.loads(out.read_text())["streams"]
    assert [record["tokens"] for record in streams["gss"]["records"]] == [8, 16, 24]
    assert streams["gss"]["cache_bytes_constant"] and not streams["llama"]["cache_bytes_constant"]
    assert all(record["ms_per_token"] > 0 and record["resident_mib"] > 0 for record in streams["gss"]["records"])
