"""The trust_remote_code path end to end, as a user of a tool that never imports ssmlm takes it: load a saved model by
path, train it with that tool, SAVE it (checkpoints and the final folder), and load what was saved again.

Each tool runs in a fresh Python process that imports transformers and the tool, never ssmlm (only the saved
`ssmlm_remote.py` may). That process records the logits of the model it saved; a second fresh process loads every
saved folder by path with `trust_remote_code=True` and must give the same logits, with no missing, unexpected or
mis-shaped tensors. Every saved folder carries `ssmlm_remote.py` (ssmlm's REMOTE_MODULE, and no other module) and a
config.json whose auto_map names it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import free_port
from test_hf_integration import run_fresh

from ssmlm import LORA_TARGET_MODULES
from ssmlm.model.configuration import AUTO_CLASSES, REMOTE_MODULE, REMOTE_MODULE_NAME
from transformers import AutoTokenizer

pytestmark = pytest.mark.hf

TEXT = "To be, or not to be, that is the question. "

# Where the model's class comes from when the model is the first thing a process loads by path: the saved module,
# which transformers imports as transformers_modules.<...>.ssmlm_remote. Saving such a model copies the file that
# defines its class into the saved folder: the path these tests are for.
REMOTE_CLASSES = f".{REMOTE_MODULE_NAME}"

# Prepended to each training process's code: nothing here imports ssmlm. `record` saves the logits of a model on
# fixed token ids under REFS; `RecordAtSave` does so each time a Trainer has written a checkpoint (its weights are
# then the model's). It calls the class's forward, not the instance's: under mixed precision (TRL's default bf16)
# Accelerate wraps the instance's forward in autocast, which is no part of what is saved.
RECORDING = """
import json, os, sys, time
import torch
from transformers import AutoTokenizer, TrainerCallback
assert "ssmlm" not in sys.modules

def record(model, name):
    ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = type(model).forward(model, input_ids=ids.to(model.device)).logits
    model.train(was_training)
    torch.save({"ids": ids, "logits": logits.cpu()}, os.path.join(REFS, name + ".pt"))

class RecordAtSave(TrainerCallback):
    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            record(model, f"checkpoint-{state.global_step}")
"""

# Trainer on a causal LM, loaded by path, checkpoints at every step, then save_model. The model is loaded before the
# tokenizer: the first AutoConfig call of the process is then the model's, which takes the remote module's classes.
TRAINER_CAUSAL_LM = """
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments
model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)
data = Dataset.from_dict({"text": [TEXT * 4] * 8}).map(
    lambda batch: tokenizer(batch["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
args = TrainingArguments(output_dir=OUT, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                         save_strategy="steps", save_steps=1, report_to=[], use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=[RecordAtSave()])
trainer.train()
trainer.save_model(os.path.join(OUT, "final"))
if trainer.is_world_process_zero():
    record(trainer.model, "final")
# One file per rank: under accelerate launch both ranks share one stdout, where their lines can interleave.
with open(os.path.join(REFS, f"trained-{trainer.args.process_index}.txt"), "w") as file:
    file.write(f"{trainer.args.process_index} {trainer.args.world_size} {type(trainer.model).__module__}")
"""

TRAINER_CLASSIFICATION = """
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
model = AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True, num_labels=3)
tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)
texts = [TEXT, TEXT * 2, "that is the question"] * 4
data = Dataset.from_dict({"text": texts, "label": [0, 1, 2] * 4}).map(
    lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
args = TrainingArguments(output_dir=OUT, max_steps=2, per_device_train_batch_size=3, learning_rate=1e-2,
                         save_strategy="steps", save_steps=1, report_to=[], use_cpu=True)
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                  data_collator=DataCollatorWithPadding(tokenizer), callbacks=[RecordAtSave()])
trainer.train()
trainer.save_model(os.path.join(OUT, "final"))
record(trainer.model, "final")
print("TRAINED", type(trainer.model).__module__, flush=True)
"""

# TRL's save settings left at their defaults (a checkpoint every save_steps), with save_steps within max_steps. TRL 1.x
# (1.16 tested) loads the model and its tokenizer by path with the flag; TRL 0.29 (the oldest venv's: the newest that
# accelerate 1.10 allows) builds a model from a path by a transformers class name, which a remote-code model has not,
# and loads the tokenizer without the flag, so there both are loaded with trust_remote_code and handed to it.
TRL_SFT = """
import trl
from datasets import Dataset
from packaging.version import Version
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer
data = Dataset.from_dict({"text": [TEXT * 4] * 8})
args = SFTConfig(output_dir=OUT, max_steps=2, save_steps=1, per_device_train_batch_size=2, max_length=64,
                 learning_rate=1e-2, report_to=[], model_init_kwargs={"trust_remote_code": True}, use_cpu=True)
if Version(trl.__version__) >= Version("1.0"):
    trainer = SFTTrainer(model=DIR, args=args, train_dataset=data, callbacks=[RecordAtSave()])
else:
    args.model_init_kwargs = None
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True), args=args,
                         train_dataset=data, processing_class=AutoTokenizer.from_pretrained(DIR, trust_remote_code=True),
                         callbacks=[RecordAtSave()])
print("SAVE", args.save_strategy, args.save_steps, "bf16", args.bf16, flush=True)
trainer.train()
print("TRAINED", type(trainer.model).__module__, flush=True)
"""

PEFT_LORA_MERGE = """
from peft import LoraConfig, get_peft_model
model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
record(model, "base")
tuned = get_peft_model(model, LoraConfig(r=2, target_modules=TARGETS))
optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
ids = torch.randint(3, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1))
tuned.train()
tuned(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
merged = tuned.merge_and_unload()
merged.save_pretrained(OUT)
record(merged, "merged")
print("TRAINED", type(merged).__module__, flush=True)
"""

# Loads each saved folder by path in a fresh process and compares its logits with those recorded at save.
RELOAD = """
import json, torch, transformers
assert "ssmlm" not in sys.modules
results = []
for folder, auto_class, reference in CHECKS:
    model, info = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True,
                                                                    output_loading_info=True)
    model.eval()
    expected = torch.load(reference)
    with torch.no_grad():
        logits = model(input_ids=expected["ids"]).logits
    same_shape = logits.shape == expected["logits"].shape
    results.append({"folder": folder, "class": type(model).__name__,
                    "problems": {key: [str(item) for item in value] for key, value in info.items() if value},
                    "same_shape": same_shape, "identical": same_shape and torch.equal(logits, expected["logits"]),
                    "max_difference": (logits - expected["logits"]).abs().max().item() if same_shape else None})
print("RELOADED " + json.dumps(results))
"""


def fresh_output(code: str, directory: Path, **constants) -> str:
    """Run `code` with `constants` defined, through run_fresh (a process that never imports ssmlm); its stdout."""
    header = "".join(f"{name} = {value!r}\n" for name, value in constants.items())
    run = run_fresh("\n" + header + code, directory)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run.stdout


def marked_line(stdout: str, mark: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(mark + " ")]
    assert lines, f"no {mark} line in:\n{stdout[-2000:]}"
    return lines[-1].removeprefix(mark + " ")


def trained_ranks(refs: Path) -> list[list[str]]:
    """What each rank of TRAINER_CAUSAL_LM wrote when it finished: [process index, world size, model's module]."""
    return [path.read_text().split() for path in sorted(refs.glob("trained-*.txt"))]


def check_saved_folder(folder: Path) -> None:
    """The folder carries ssmlm's remote module, and no other (a copied ssmlm module would not import), and a
    config.json whose auto_map names its classes."""
    assert (folder / "model.safetensors").is_file(), sorted(os.listdir(folder))
    assert sorted(path.name for path in folder.glob("*.py")) == [f"{REMOTE_MODULE_NAME}.py"]
    assert (folder / f"{REMOTE_MODULE_NAME}.py").read_text(encoding="utf-8") == REMOTE_MODULE
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {auto_class: f"{REMOTE_MODULE_NAME}.{name}" for auto_class, name in AUTO_CLASSES.items()}


def check_reloads(directory: Path, checks: list[tuple[Path, str]], refs: Path, expected_class: str) -> None:
    """Each (folder, Auto class) loads by path in a fresh process with every tensor, and gives the logits recorded
    (in refs/<folder name>.pt) when it was saved."""
    for folder, _ in checks:
        check_saved_folder(folder)
    stdout = fresh_output(RELOAD, directory, CHECKS=[(str(folder), auto_class, str(refs / f"{folder.name}.pt"))
                                                     for folder, auto_class in checks])
    results = json.loads(marked_line(stdout, "RELOADED"))
    assert [Path(result["folder"]) for result in results] == [folder for folder, _ in checks]
    for result in results:
        assert result["class"] == expected_class, result
        assert result["problems"] == {}, result
        assert result["identical"], result


def recorded(refs: Path, name: str) -> torch.Tensor:
    return torch.load(refs / f"{name}.pt")["logits"]


@pytest.fixture
def refs(tmp_path) -> Path:
    path = tmp_path / "refs"
    path.mkdir()
    return path


@pytest.mark.slow
def test_trainer_checkpoints_and_saves_a_causal_lm_loaded_by_path(tiny_model_dir, tmp_path, refs):
    out = tmp_path / "out"
    fresh_output(RECORDING + TRAINER_CAUSAL_LM, tiny_model_dir, OUT=str(out), REFS=str(refs), TEXT=TEXT)
    [(index, world_size, module)] = trained_ranks(refs)
    assert (index, world_size) == ("0", "1") and module.endswith(REMOTE_CLASSES)
    folders = [out / "checkpoint-1", out / "checkpoint-2", out / "final"]
    assert not torch.equal(recorded(refs, "checkpoint-1"), recorded(refs, "checkpoint-2"))  # the steps trained
    check_reloads(tiny_model_dir, [(folder, "AutoModelForCausalLM") for folder in folders], refs, "SSMLMForCausalLM")


@pytest.mark.slow
def test_trainer_checkpoints_and_saves_a_classifier_loaded_by_path(tiny_model_dir, tmp_path, refs):
    out = tmp_path / "out"
    stdout = fresh_output(RECORDING + TRAINER_CLASSIFICATION, tiny_model_dir, OUT=str(out), REFS=str(refs),
                          TEXT=TEXT)
    assert marked_line(stdout, "TRAINED").endswith(REMOTE_CLASSES)
    folders = [out / "checkpoint-1", out / "checkpoint-2", out / "final"]
    assert recorded(refs, "final").shape == (2, 3)
    for folder in folders:
        assert json.loads((folder / "config.json").read_text())["architectures"] == ["SSMLMForSequenceClassification"]
    check_reloads(tiny_model_dir, [(folder, "AutoModelForSequenceClassification") for folder in folders], refs,
                  "SSMLMForSequenceClassification")


@pytest.mark.slow
def test_trl_sft_checkpoints_a_model_loaded_by_path_with_default_save_settings(tiny_model_dir, tmp_path, refs):
    out = tmp_path / "out"
    stdout = fresh_output(RECORDING + TRL_SFT, tiny_model_dir, OUT=str(out), REFS=str(refs), TEXT=TEXT)
    assert marked_line(stdout, "SAVE").split()[0].lower().endswith("steps")
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert [path.name for path in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    check_reloads(tiny_model_dir, [(folder, "AutoModelForCausalLM") for folder in checkpoints], refs,
                  "SSMLMForCausalLM")


@pytest.mark.slow
def test_peft_lora_merged_and_saved_loads_with_identical_logits(tiny_model_dir, tmp_path, refs):
    out = tmp_path / "merged"
    stdout = fresh_output(RECORDING + PEFT_LORA_MERGE, tiny_model_dir, OUT=str(out), REFS=str(refs),
                          TARGETS=list(LORA_TARGET_MODULES))
    assert marked_line(stdout, "TRAINED").endswith(REMOTE_CLASSES)
    assert not torch.equal(recorded(refs, "base"), recorded(refs, "merged"))  # the LoRA step changed the model
    check_reloads(tiny_model_dir, [(out, "AutoModelForCausalLM")], refs, "SSMLMForCausalLM")


LAUNCH_TIMEOUT = 300


@pytest.mark.slow
def test_trainer_under_accelerate_launch_on_two_cpu_ranks_saves_a_model_loaded_by_path(tiny_model_dir, tmp_path,
                                                                                         refs):
    """Both ranks load the model by path (remote code), train 2 steps over gloo and save; both exit 0, no hang."""
    out = tmp_path / "out"
    constants = dict(DIR=str(tiny_model_dir), OUT=str(out), REFS=str(refs), TEXT=TEXT)
    script = tmp_path / "train_by_path.py"
    script.write_text("from transformers import AutoModelForCausalLM\n"
                      + "".join(f"{name} = {value!r}\n" for name, value in constants.items())
                      + RECORDING + TRAINER_CAUSAL_LM)
    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(free_port()), str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    try:
        stdout, stderr = launch.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)  # the launcher and both ranks: the session it started
        stdout, stderr = launch.communicate()
        pytest.fail(f"accelerate launch still running after {LAUNCH_TIMEOUT} s:\n{stdout[-2000:]}{stderr[-3000:]}")
    assert launch.returncode == 0, stdout[-2000:] + stderr[-4000:]
    ranks = trained_ranks(refs)
    assert [rank[:2] for rank in ranks] == [["0", "2"], ["1", "2"]], stdout[-2000:]
    assert all(rank[2].endswith(REMOTE_CLASSES) for rank in ranks), ranks
    folders = [out / "checkpoint-1", out / "checkpoint-2", out / "final"]
    check_reloads(tiny_model_dir, [(folder, "AutoModelForCausalLM") for folder in folders], refs, "SSMLMForCausalLM")


TOKENIZE = "tokenizer = AutoTokenizer.from_pretrained(DIR{flag}); print('IDS', tokenizer({text!r}).input_ids)"


@pytest.mark.slow
def test_the_tokenizer_loads_by_path_with_trust_remote_code_without_prompt_or_warning(tiny_model_dir):
    run = run_fresh("from transformers import AutoTokenizer; " + TOKENIZE.format(flag=", trust_remote_code=True",
                                                                                 text=TEXT), tiny_model_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    assert marked_line(run.stdout, "IDS") == str(AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT).input_ids)
    assert "custom code" not in run.stdout
    assert run.stderr == ""


@pytest.mark.slow
def test_the_tokenizer_loads_by_path_without_the_flag_when_stdin_is_closed(tiny_model_dir):
    """Without trust_remote_code, AutoTokenizer reads the config through AutoConfig, whose auto_map asks whether to
    run the remote module: with stdin closed the question ends at once (no wait for its timeout), and the tokenizer
    loads from its own files."""
    code = (f"DIR = {str(tiny_model_dir)!r}; from transformers import AutoTokenizer; "
            + TOKENIZE.format(flag="", text=TEXT))
    run = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert marked_line(run.stdout.split("[y/N] ")[-1], "IDS") == \
        str(AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT).input_ids)
