"""generate.py end to end on the tiny trained model: output against model.generate, reproducible sampling, the
prompt sources, and a one-line message with exit code 2 for each mistake a user can make.

Most runs call `main(argv)` in-process; one runs the real script in a subprocess."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmlm.cli.generate import build_parser, main
from ssmlm.tooling.saved_models import MANIFEST, write_manifest
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.hf  # run again on the oldest and newest transformers (scripts/test_transformers_range.sh)

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Alice was beginning to get very tired of"
NEW_TOKENS = "24"


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The saved model and tokenizer, loaded directly, to compute what generate.py should print."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return tokenizer, model


def expected_text(reference, prompt=PROMPT, **options) -> str:
    """What generate.py prints: the prompt, the decoded continuation, and the streamer's final newline."""
    tokenizer, model = reference
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=int(NEW_TOKENS), **options)
    return prompt + tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True) + "\n"


def run(capsys, model_dir, *args) -> str:
    """Run main() in-process, expect success, return stdout."""
    assert main(["--model", str(model_dir), "--max-new-tokens", NEW_TOKENS, *args]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out


def test_greedy_output_is_model_generate(capsys, tiny_model_dir, reference):
    out = run(capsys, tiny_model_dir, "--prompt", PROMPT, "--greedy")
    assert out == expected_text(reference, do_sample=False)
    assert len(out) > len(PROMPT) + 1
    assert run(capsys, tiny_model_dir, "--prompt", PROMPT, "--greedy") == out


def test_beam_search_output_is_model_generate(capsys, tiny_model_dir, reference):
    out = run(capsys, tiny_model_dir, "--prompt", PROMPT, "--greedy", "--num-beams", "3")
    assert out == expected_text(reference, do_sample=False, num_beams=3)


def test_sampling_is_reproducible_with_a_seed(capsys, tiny_model_dir):
    options = ["--prompt", PROMPT, "--temperature", "0.8", "--top-k", "40", "--top-p", "0.95",
               "--repetition-penalty", "1.2"]
    first = run(capsys, tiny_model_dir, *options, "--seed", "1")
    assert first.startswith(PROMPT)
    assert run(capsys, tiny_model_dir, *options, "--seed", "1") == first
    assert run(capsys, tiny_model_dir, *options, "--seed", "2") != first


def piped_stdin(data: bytes) -> io.TextIOWrapper:
    """A stand-in for a pipe on stdin: text on top of bytes, as sys.stdin is."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def test_prompt_from_file_and_stdin(capsys, monkeypatch, tmp_path, tiny_model_dir):
    """The line end that closes a file or echo's output is not part of the prompt."""
    greedy = run(capsys, tiny_model_dir, "--prompt", PROMPT, "--greedy")
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT + "\n", encoding="utf-8")
    assert run(capsys, tiny_model_dir, "--prompt-file", str(prompt_file), "--greedy") == greedy

    monkeypatch.setattr(sys, "stdin", piped_stdin(PROMPT.encode() + b"\r\n"))
    assert run(capsys, tiny_model_dir, "--prompt", "-", "--greedy") == greedy
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))  # no --prompt: piped stdin is the prompt
    assert run(capsys, tiny_model_dir, "--greedy") == greedy


def test_only_one_line_end_is_dropped(capsys, tmp_path, tiny_model_dir, reference):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT + "\n\n", encoding="utf-8")
    out = run(capsys, tiny_model_dir, "--prompt-file", str(prompt_file), "--greedy")
    assert out == expected_text(reference, PROMPT + "\n", do_sample=False)


def test_non_ascii_prompt_round_trips(capsys, tiny_model_dir, reference):
    prompt = "Café — naïve “quotes”"
    out = run(capsys, tiny_model_dir, "--prompt", prompt, "--greedy")
    assert out == expected_text(reference, prompt, do_sample=False)


@pytest.mark.slow
def test_script_runs_as_a_subprocess(capsys, tiny_model_dir):
    """The real entry point, with the prompt piped on stdin, prints what main() prints."""
    result = subprocess.run(
        [sys.executable, "generate.py", "--model", str(tiny_model_dir), "--greedy", "--max-new-tokens", NEW_TOKENS,
         "--device", "cpu"],
        input=PROMPT + "\n", capture_output=True, encoding="utf-8", cwd=REPO_ROOT, timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == run(capsys, tiny_model_dir, "--prompt", PROMPT, "--greedy")


def copy_model_files(source: Path, target: Path, *names) -> Path:
    target.mkdir()
    for name in names:
        shutil.copy(source / name, target / name)
    return target


def expect_error(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("ssmlm-generate: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


def test_missing_model_directory(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    expect_error(capsys, ["--model", str(missing), "--prompt", PROMPT], f"model directory not found: {missing}")


def test_model_path_is_a_file(capsys, tiny_model_dir):
    path = tiny_model_dir / "config.json"
    expect_error(capsys, ["--model", str(path), "--prompt", PROMPT], f"{path} is a file, not a model directory")


def test_directory_without_config(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "no_config", "model.safetensors", "tokenizer.json")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT], "holds no ssmlm model: no config.json")


def test_directory_with_another_model_type(capsys, tmp_path):
    directory = tmp_path / "gpt2"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 "holds no ssmlm model: config.json has model_type 'gpt2', expected 'ssmlm'")


def test_directory_with_a_broken_config(capsys, tmp_path):
    directory = tmp_path / "broken"
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT], "cannot read config.json")


def test_directory_without_weights(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "no_weights", "config.json", "tokenizer.json",
                                 "tokenizer_config.json")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT], "holds no ssmlm model: no weights")


def test_directory_without_tokenizer(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "no_tokenizer", "config.json", "model.safetensors")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT], "has no tokenizer")


def test_directory_with_an_invalid_config_field(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "bad_field", "config.json", "model.safetensors",
                                 "tokenizer.json", "tokenizer_config.json")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_size": "wide"}))
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 f"invalid config.json in {directory}: Validation error for field 'hidden_size'")


def test_directory_with_damaged_weights(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "damaged", "config.json", "tokenizer.json",
                                 "tokenizer_config.json")
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT], f"cannot load the model in {directory}")


class Planted:
    """Unpickled, it would create the file `path`: what a malicious pytorch_model.bin could do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_pickled_weights_that_hold_more_than_tensors_are_refused_unrun(capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "pickled", "config.json", "tokenizer.json",
                                 "tokenizer_config.json")
    torch.save({"model.embed_tokens.weight": Planted(tmp_path / "ran")}, directory / "pytorch_model.bin")
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 f"cannot load the model in {directory}: its pickled weights (pytorch_model.bin) hold objects besides "
                 f"tensors, which are not loaded, as they could run code; save the weights as model.safetensors")
    assert not (tmp_path / "ran").exists()


MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 3, "block_types": ["gss"] * 3}, "tensors 13 missing (model.layers.2."),
    ({"num_hidden_layers": 1, "block_types": ["gss"]}, "tensors 13 unexpected (model.layers.1."),
    ({"ssm_state_size": 8}, "tensors 8 of the wrong shape (model.layers.0.ssm."),
])
def test_weights_that_do_not_match_the_config_are_refused(change, message, capsys, tmp_path, tiny_model_dir):
    directory = copy_model_files(tiny_model_dir, tmp_path / "mismatch", *MODEL_FILES)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 f"the weights in {directory} do not match its config.json: {message}")


def test_weights_that_are_not_finite_are_refused(capsys, tmp_path, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[1].to_out.weight[3, 5] = float("nan")
    model.save_pretrained(tmp_path / "diverged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "diverged")
    capsys.readouterr()
    expect_error(capsys, ["--model", str(tmp_path / "diverged"), "--prompt", PROMPT],
                 "are not finite (1 tensors hold NaN or infinity, e.g. model.layers.1.to_out.weight): the run that "
                 "saved them diverged")


def recorded_copy(tiny_model_dir: Path, target: Path) -> Path:
    """A copy of the tiny model with the record of its files the trainer writes beside a final model."""
    shutil.copytree(tiny_model_dir, target)
    write_manifest(target, [path.name for path in target.iterdir()])
    return target


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda d: flip_a_bit(d / "model.safetensors"), "model.safetensors does not match its checksum (the sizes "
                                                    "and SHA-256 of its files are in ssmlm-files.json"),
    (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json has 2 bytes, not "),
    (lambda d: (d / "generation_config.json").unlink(), "generation_config.json is missing"),
], ids=["bit-flipped weights", "replaced tokenizer", "missing file"])
def test_files_that_differ_from_their_record_are_refused(damage, message, capsys, tmp_path, tiny_model_dir,
                                                         reference):
    directory = recorded_copy(tiny_model_dir, tmp_path / "model")
    assert run(capsys, directory, "--prompt", PROMPT, "--greedy") == expected_text(reference, do_sample=False)
    damage(directory)
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 f"the model in {directory} is damaged: {message}")


def test_an_unreadable_record_of_the_files_is_refused(capsys, tmp_path, tiny_model_dir):
    directory = recorded_copy(tiny_model_dir, tmp_path / "model")
    (directory / MANIFEST).write_text('{"files": {"model.safetensors": 1}}')
    expect_error(capsys, ["--model", str(directory), "--prompt", PROMPT],
                 f"{directory / MANIFEST} is not readable: the record of the model's files is damaged")


@pytest.mark.parametrize("prompt", ["", "   \n\t "])
def test_empty_prompt(capsys, tiny_model_dir, prompt):
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt", prompt], "the prompt is empty")


def test_empty_prompt_file_and_stdin(capsys, monkeypatch, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt-file", str(empty)], "the prompt is empty")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt", "-"], "the prompt is empty")


def test_no_prompt_from_a_terminal(capsys, monkeypatch, tiny_model_dir):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    expect_error(capsys, ["--model", str(tiny_model_dir)], "no prompt: pass --prompt TEXT")


def test_unreadable_prompt_file(capsys, tmp_path, tiny_model_dir):
    missing = tmp_path / "missing.txt"
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt-file", str(missing)],
                 f"cannot read prompt file {missing}: No such file or directory")
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt-file", str(tmp_path)],
                 f"cannot read prompt file {tmp_path}")


def test_non_utf8_prompt_file_and_stdin(capsys, monkeypatch, tmp_path, tiny_model_dir):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait".encode("latin-1"))
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt-file", str(latin1)],
                 f"prompt file {latin1} is not UTF-8 text")
    monkeypatch.setattr(sys, "stdin", piped_stdin("Café au lait".encode("latin-1")))
    expect_error(capsys, ["--model", str(tiny_model_dir)], "the prompt on stdin is not UTF-8 text")


def test_unknown_device(capsys, tiny_model_dir):
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt", PROMPT, "--device", "tpu9"], "unknown device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(capsys, tiny_model_dir):
    expect_error(capsys, ["--model", str(tiny_model_dir), "--prompt", PROMPT, "--device", "cuda"],
                 "--device cuda: CUDA is not available on this machine")


@pytest.mark.parametrize(
    "argv",
    [
        [],  # --model is required
        ["--prompt", PROMPT, "--prompt-file", "x"],  # one prompt source only
        ["--max-new-tokens", "0"],
        ["--temperature", "0"],
        ["--top-p", "1.5"],
        ["--num-beams", "0"],
        ["--num-beams", "100000"],  # refused at once, not after allocating 100000 beams
        ["--dtype", "float8"],
        ["--temperature", "nan"],
        ["--repetition-penalty", "nan"],
        ["--top-p", "nan"],
        ["--seed", "-1"],
        ["--seed", str(2**40)],  # numpy's seeds, which set_seed sets too, are 32-bit
    ],
)
def test_bad_arguments_exit_with_one_line(capsys, tiny_model_dir, argv):
    full_argv = argv if not argv else ["--model", str(tiny_model_dir), *argv]
    assert main(full_argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("ssmlm-generate: error: ") and err.count("\n") == 1, err


def test_parser_defaults():
    args = build_parser().parse_args(["--model", "m"])
    assert (args.device, args.dtype, args.greedy, args.num_beams) == ("auto", "float32", False, 1)


@pytest.mark.slow
def test_the_module_runs_with_python_dash_m(tiny_model_dir):
    """`python -m ssmlm.cli.generate` is generate.py, not a silent no-op."""
    result = subprocess.run([sys.executable, "-m", "ssmlm.cli.generate", "--model", str(tiny_model_dir), "--greedy",
                             "--max-new-tokens", "3", "--prompt", "To be"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("To be") and len(result.stdout) > len("To be")
