"""Never lose a user's files, never finish a broken run as a success.

What `--overwrite` will and will not delete, one writer per run directory, everything checked before anything is
written, divergence stopped with the last good checkpoint kept, safe resume (damaged checkpoints skipped, changed
configs refused), and Ctrl-C that stops after a step with a checkpoint. Each test breaks what it tests the way a
careless user, an unlucky machine or a bad learning rate would.
"""

import errno
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from runs import TRAIN_PY, cli, records, run_in_process, tiny_config_values, train_losses, two_rank_command
from runs import wait_for_logged_steps, write_config

from safetensors.torch import load_file, save_file

from ssmlm.tooling.checksums import record_files
from ssmlm.tooling.saved_models import write_manifest
from ssmlm.training import TrainingDiverged, checkpoints, latest_checkpoint, run_dir, trainer
from ssmlm.training.config import ConfigError
from ssmlm.training.run_dir import MARKER, RunLock, check_replaceable, finish_run, is_run, read_marker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# A short run: 4 steps, a checkpoint every 2, a small validation.
SHORT = ("training.max_steps=4", "training.eval_every=4", "training.eval_blocks=4", "output.save_every=2")
# A learning rate that makes the tiny model's loss NaN within a few steps, with nothing to hold it back.
DIVERGING = ("training.learning_rate=100", "training.max_grad_norm=null", "training.warmup_steps=0",
             "training.max_steps=12", "training.eval_every=100", "training.eval_blocks=4", "output.save_every=2")


@pytest.fixture
def config_file(corpus, cache_dir, tmp_path) -> Path:
    """A config whose output.dir is tmp_path/run."""
    return write_config(tiny_config_values(corpus, cache_dir, tmp_path / "run"), tmp_path / "config.yaml")


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory`, by relative path: equal snapshots mean nothing was lost or changed."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def one_line_error(err: str, start: str = "train.py: error: ") -> str:
    assert "Traceback" not in err, err
    (line,) = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(start)]
    return line


@pytest.fixture
def finished_run(config_file, tmp_path, capsys) -> Path:
    """tmp_path/run, a complete 4-step run."""
    assert cli(capsys, "--config", config_file, *SHORT)[0] == 0
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------------------------
# 1. --overwrite removes only an earlier ssmlm run, and only after the whole new run has been checked and built.


def protected_case(case: str, tmp_path: Path, corpus: Path, cache_dir: Path, monkeypatch) -> tuple[Path, str, str]:
    """(the folder output.dir points at, the output.dir value, the refusal) for each folder --overwrite must keep.
    Each folder gets a run marker, as if a run had once been written there: the marker alone is not enough."""
    values = tiny_config_values(corpus, cache_dir, tmp_path / "unused")
    if case == "working directory":
        folder, output, refusal = tmp_path / "work", ".", "it is the working directory or one of its parents"
        folder.mkdir()
        monkeypatch.chdir(folder)
    elif case == "parent of the working directory":
        folder, output, refusal = tmp_path / "up", "..", "it is the working directory or one of its parents"
        (tmp_path / "up" / "down").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / "up" / "down")
    elif case == "home":
        folder, output, refusal = tmp_path / "home", "~", "it is your home"
        folder.mkdir()
        monkeypatch.setenv("HOME", str(folder))
    elif case == "data folder":
        folder = tmp_path / "data"
        shutil.copytree(corpus, folder)
        output, refusal = str(folder), "which this run reads"
        for source in values["data"]["sources"].values():
            source["train"] = source["train"].replace(str(corpus), str(folder))
    elif case == "config folder":
        folder, output, refusal = tmp_path / "configs", str(tmp_path / "configs"), "config.yaml, which this run reads"
        folder.mkdir()
    elif case == "init_from folder":
        folder, output, refusal = tmp_path / "models", str(tmp_path / "models"), "base, which this run reads"
        (folder / "base").mkdir(parents=True)
        values["training"]["init_from"] = str(folder / "base")
    elif case == "symbolic link":
        folder, output, refusal = tmp_path / "target", str(tmp_path / "link"), "it is a symbolic link"
        folder.mkdir()
        (tmp_path / "link").symlink_to(folder)
    (folder / MARKER).write_text("{}\n")
    (folder / "precious.txt").write_text("the user's work")
    values["output"]["dir"] = output
    config = tmp_path / "configs" / "config.yaml" if case == "config folder" else tmp_path / "config.yaml"
    write_config(values, config)
    return folder, str(config), refusal


@pytest.mark.parametrize("case", ["working directory", "parent of the working directory", "home", "data folder",
                                  "config folder", "init_from folder", "symbolic link"])
def test_overwrite_never_deletes_what_is_not_a_run_of_its_own(case, tmp_path, corpus, cache_dir, monkeypatch,
                                                               capsys):
    folder, config, refusal = protected_case(case, tmp_path, corpus, cache_dir, monkeypatch)
    before = snapshot(folder)
    code, err = cli(capsys, "--config", config, "--overwrite", *SHORT)
    assert code == 2
    assert "--overwrite: will not delete" in one_line_error(err) and refusal in err
    assert snapshot(folder) == before


def test_the_filesystem_root_is_never_replaceable():
    with pytest.raises(ConfigError, match="will not delete /: it is the filesystem root"):
        check_replaceable(Path("/"), [])


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=-1", "training.learning_rate: must be a finite number, 0 or more, got -1.0"),
    ("training.batch_size=100000", "training blocks of 64 tokens are fewer than one step needs"),
    ("training.mixed_precision=fp16", "training.mixed_precision: fp16 needs a GPU"),
    ("output.tracker=wandb", "output.tracker: 'wandb' is not installed"),
    ("model.block_types=[gss, mamba]", "unknown block kind(s) ['mamba']"),
])
def test_overwrite_touches_nothing_until_the_new_run_is_checked(override, message, finished_run, config_file,
                                                                capsys):
    if override.endswith("fp16") and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    if override.endswith("wandb") and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed")
    before = snapshot(finished_run)
    code, err = cli(capsys, "--config", config_file, "--overwrite", *SHORT, override)
    assert code == 2 and message in one_line_error(err)
    assert snapshot(finished_run) == before
    assert not finished_run.with_name("run.replaced").exists()


def test_a_failed_replacement_keeps_the_old_run_and_a_finished_one_removes_it(finished_run, config_file, capsys):
    before = snapshot(finished_run)
    code, err = cli(capsys, "--config", config_file, "--overwrite", *DIVERGING)
    assert code == 1 and "training diverged at step" in one_line_error(err)
    kept = finished_run.with_name("run.replaced")
    assert snapshot(kept) == before  # the old run, whole, beside the failed new one

    # Again: the unfinished replacement is deleted, the original is still kept until the new run has finished.
    code, err = cli(capsys, "--config", config_file, "--overwrite", *SHORT, "training.learning_rate=1e-3")
    assert code == 0, err
    assert not kept.exists()
    assert yaml.safe_load((finished_run / "train_config.yaml").read_text())["training"]["learning_rate"] == 1e-3
    # Files a run writes are readable by all, as the umask says (safetensors writes 0600 by itself).
    umask = os.umask(0)
    os.umask(umask)
    for path in [*finished_run.iterdir(), *(finished_run / "checkpoints" / "checkpoint-4").iterdir()]:
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def marked_run(path: Path, **fields) -> Path:
    path.mkdir(parents=True)
    RunLock.create(path, **fields).release()
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_a_finished_replacement_deletes_only_the_run_it_replaced(tmp_path):
    old = marked_run(tmp_path / "run.replaced")
    new = marked_run(tmp_path / "run", replaces={"path": old.name, "id": read_marker(old)["id"]})
    holder = RunLock(old).acquire()  # someone resumed the old run where it was kept, and is writing it
    assert "is being written by another process: not deleted" in finish_run(new)
    assert is_run(old)
    holder.release()
    shutil.rmtree(old)
    other = marked_run(tmp_path / "run.replaced")  # another run, placed there later under that name
    assert finish_run(new) is None and is_run(other)
    shutil.rmtree(other)
    old = marked_run(tmp_path / "run.replaced", ssmlm_version="0.1.0")
    new_marker = json.loads((new / MARKER).read_text())
    (new / MARKER).write_text(json.dumps({**new_marker, "replaces": {"path": old.name, "id": read_marker(old)["id"]}}))
    assert finish_run(new) is None and not old.exists()


@pytest.mark.parametrize("output, message", [
    ("a-file/run", "is a file, not a directory"),
    ("dangling/run", "is a symbolic link to nothing"),
])
def test_an_output_directory_that_cannot_be_made_is_a_one_line_error(output, message, config_file, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, err = cli(capsys, "--config", config_file, f"output.dir={tmp_path / output}", *SHORT)
    assert code == 2 and message in one_line_error(err)


def test_allow_change_without_resume_is_refused(config_file, capsys):
    code, err = cli(capsys, "--config", config_file, "--allow-change", "training.learning_rate")
    assert code == 2 and one_line_error(err) == "train.py: error: --allow-change applies only with --resume or " \
                                                "--resume-from"


# ---------------------------------------------------------------------------------------------------------------
# 2. One writer per run directory; a crashed writer leaves no stale lock.


@pytest.mark.slow
def test_a_run_directory_has_one_writer_and_a_killed_one_frees_it(finished_run, config_file, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ssmlm.training.run_dir import RunLock;"
         "lock = RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(600)",
         str(finished_run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(finished_run)
        for flags in (["--overwrite"], ["--resume", "training.max_steps=6"]):
            code, err = cli(capsys, "--config", config_file, *flags, *SHORT[1:])
            assert code == 2 and "another process is writing the run in" in one_line_error(err)
        assert snapshot(finished_run) == before
    finally:
        holder.kill()
        holder.wait()
    code, err = cli(capsys, "--config", config_file, "--resume", *SHORT[1:], "training.max_steps=6")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------------------------
# 3. Everything validated before anything is written.


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=.nan", "training.learning_rate: must be a finite number, 0 or more, got nan"),
    ("training.ssm_learning_rate=-1e-3", "training.ssm_learning_rate: must be a finite number, 0 or more"),
    ("training.adam_beta1=1", "training.adam_beta1: must be in [0, 1), got 1.0"),
    ("training.max_grad_norm=-1", "training.max_grad_norm: must be a positive finite number, or null"),
    ("training.max_grad_norm=0", "training.max_grad_norm: must be a positive finite number, or null"),
    ("tokenizer.vocab_size=1", "tokenizer.vocab_size: a byte_bpe tokenizer needs at least 260 entries"),
    ("output.tracker=tensorbored", "output.tracker: unknown tracker 'tensorbored'"),
    ("training.seed=-1", "training.seed: must be in [0, 2**32), got -1"),
])
def test_bad_settings_stop_before_the_output_directory_exists(override, message, config_file, tmp_path, capsys):
    code, err = cli(capsys, "--config", config_file, override)
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, content, message", [
    ("numbers.jsonl", b'{"text": "fine"}\n{"text": 42}\n', "numbers.jsonl line 2: field 'text' is a number"),
    ("lists.jsonl", b'{"text": ["a", "b"]}\n', "lists.jsonl line 1: field 'text' is a list, expected a string"),
    ("broken.jsonl", b'{"text": "a"}\n\n{"text": "b"\n', "broken.jsonl line 3: not valid JSON"),
    ("nul.txt", b"\0" * 64, "nul.txt holds NUL bytes (near byte 0): a binary file, not text"),
])
def test_bad_data_files_stop_before_the_output_directory_exists(name, content, message, config_file, tmp_path,
                                                                capsys):
    (tmp_path / name).write_bytes(content)
    code, err = cli(capsys, "--config", config_file, f"data.sources.code.train={tmp_path / name}")
    assert code == 2 and f"data.sources.code.train: {tmp_path}/{message}" in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_overrides_may_come_before_and_after_the_options(config_file, tmp_path, capsys):
    code, err = cli(capsys, "training.max_steps=2", "--config", config_file, "training.eval_every=2",
                    "--overwrite", "output.save_every=2", "training.mixed_precision=no", "training.eval_blocks=2")
    assert code == 0, err
    assert [r["step"] for r in records(tmp_path / "run") if "train/loss" in r] == [1, 2]


# ---------------------------------------------------------------------------------------------------------------
# 4. Divergence stops the run; the last good checkpoint stays the newest and no final model is written.


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(config_file, tmp_path, capsys):
    code, err = cli(capsys, "--config", config_file, *DIVERGING)
    run = tmp_path / "run"
    line = one_line_error(err)
    assert code == 1 and line.startswith("train.py: error: training diverged at step ")
    step = int(line.split("at step ")[1].split(":")[0])
    saved = sorted(int(path.name.split("-")[1]) for path in (run / "checkpoints").iterdir())
    assert saved and max(saved) < step
    assert f"the newest checkpoint is still {run / 'checkpoints' / f'checkpoint-{max(saved)}'}" in line
    assert not (run / "model.safetensors").exists()  # no final model
    diverged = records(run)[-1]  # strict JSON: no bare NaN anywhere
    assert diverged["step"] == step and diverged["diverged"] is True and diverged["train/loss"] is None


# ---------------------------------------------------------------------------------------------------------------
# 5. Resume: damaged checkpoints skipped, changed configs refused, earlier configs kept.


def steps_run(steps: int, corpus: Path, cache_dir: Path, output_dir: Path) -> Path:
    """A run of `steps` steps with a checkpoint every 2, the last 3 kept, and no validation on the way."""
    run_in_process(tiny_config_values(corpus, cache_dir, output_dir), f"training.max_steps={steps}",
                   "training.eval_every=100", "training.eval_blocks=4", "output.save_every=2",
                   "output.keep_checkpoints=3")
    return output_dir


@pytest.fixture(scope="module")
def eight_steps(corpus, cache_dir, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run: the reference a resumed run must follow."""
    return steps_run(8, corpus, cache_dir, tmp_path_factory.mktemp("eight") / "run")


@pytest.fixture(scope="module")
def six_steps(corpus, cache_dir, tmp_path_factory) -> Path:
    """A run stopped at step 6 with checkpoints 2, 4 and 6; tests work on copies of it."""
    return steps_run(6, corpus, cache_dir, tmp_path_factory.mktemp("six") / "run")


@pytest.fixture
def stopped_run(six_steps, corpus, cache_dir, tmp_path) -> tuple[Path, Path]:
    """(a copy of the 6-step run in tmp_path/run, its config with eight steps to go to)."""
    shutil.copytree(six_steps, tmp_path / "run")
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["training"].update(max_steps=8, eval_every=100, eval_blocks=4)
    values["output"].update(save_every=2, keep_checkpoints=3)
    return tmp_path / "run", write_config(values, tmp_path / "config.yaml")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def edit_state(checkpoint: Path, **fields) -> None:
    """Set the fields of the checkpoint's trainer state; a field set to None is removed."""
    state = {**json.loads((checkpoint / "trainer_state.json").read_text()), **fields}
    (checkpoint / "trainer_state.json").write_text(json.dumps({k: v for k, v in state.items() if v is not None}))


DAMAGES = {
    "truncated weights": (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:99]),
                          "model.safetensors has 99 bytes, not "),
    "bit-flipped weights": (lambda c: flip_a_byte(c / "model.safetensors"),
                            "model.safetensors does not match its checksum"),
    "missing optimizer": (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "missing scheduler": (lambda c: (c / "scheduler.bin").unlink(), "scheduler.bin is missing"),
    "broken state file": (lambda c: (c / "trainer_state.json").write_text('{"step": 6, "fil'),
                          "trainer_state.json is not readable"),
    "no state file": (lambda c: (c / "trainer_state.json").unlink(), "incomplete: no trainer_state.json"),
    "state of another step": (lambda c: (c / "trainer_state.json").write_text(
        (c / "trainer_state.json").read_text().replace('"step": 6', '"step": 2')),
        "trainer_state.json says step 2, not the step of its name"),
    "step as a string": (lambda c: edit_state(c, step="6"), "trainer_state.json is not readable"),
    "files as a list": (lambda c: edit_state(c, files=[]), "trainer_state.json is not readable"),
    "a file entry of the wrong shape": (lambda c: edit_state(c, files={"model.safetensors": 1}),
                                        "trainer_state.json is not readable"),
    "a file outside the checkpoint": (lambda c: edit_state(c, files={"../x": {"size": 1, "sha256": "0"}}),
                                      "trainer_state.json is not readable"),
    "launch as a list": (lambda c: edit_state(c, launch=[]), "trainer_state.json is not readable"),
    "no file list": (lambda c: edit_state(c, files=None), "trainer_state.json lists no files to verify"),
    "no file list, no format": (lambda c: edit_state(c, files=None, format=None),
                                "trainer_state.json lists no files to verify"),
    "format as a string": (lambda c: edit_state(c, format="2"), "trainer_state.json is not readable"),
    "a newer format": (lambda c: edit_state(c, format=3),
                       "trainer_state.json is of format 3, newer than this version of ssmlm reads (2)"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_every_kind_of_damage_is_detected(damage, six_steps, tmp_path):
    checkpoint = tmp_path / "checkpoint-6"
    shutil.copytree(six_steps / "checkpoints" / "checkpoint-6", checkpoint)
    assert checkpoints.read_state(checkpoint)["step"] == 6
    make, message = DAMAGES[damage]
    make(checkpoint)
    with pytest.raises(checkpoints.DamagedCheckpoint, match=re.escape(message)):
        checkpoints.read_state(checkpoint)


def test_only_a_checkpoint_of_ssmlm_0_1_0_goes_without_a_file_list(stopped_run, capsys):
    """Its state is {"step": N}: resumed, saying that its files cannot be verified (a state of this version without
    its file list is damaged: DAMAGES)."""
    run, config = stopped_run
    checkpoint = run / "checkpoints" / "checkpoint-6"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["format"] == checkpoints.FORMAT == 2
    (checkpoint / "trainer_state.json").write_text('{"step": 6}')  # what ssmlm 0.1.0 wrote
    code, err = cli(capsys, "--config", config, "--resume")
    assert code == 0, err
    assert ("note: checkpoint-6 was written by ssmlm 0.1.0, which recorded no checksums: its files cannot be "
            "verified") in err
    assert sorted(train_losses(run)) == list(range(1, 9))


def test_a_refused_resume_still_says_which_newer_checkpoints_were_damaged(stopped_run, capsys):
    run, config = stopped_run
    flip_a_byte(run / "checkpoints" / "checkpoint-6" / "model.safetensors")
    code, err = cli(capsys, "--config", config, "--resume", "training.batch_size=4")
    assert code == 2
    assert "checkpoint-4 was trained with other settings: training.batch_size (8 -> 4)" in one_line_error(err)
    assert "warning: skipped damaged checkpoint checkpoint-6: model.safetensors does not match its checksum" in err


def put_nan_in_the_weights(checkpoint: Path) -> None:
    """A NaN in one weight of the checkpoint, recorded in its state as if it had been saved so: a checkpoint that
    passes every file check."""
    weights = load_file(checkpoint / "model.safetensors")
    weights[sorted(weights)[0]].view(-1)[0] = float("nan")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"]["model.safetensors"] = record_files(checkpoint, ["model.safetensors"])["model.safetensors"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def test_a_checkpoint_holding_non_finite_weights_is_damaged(stopped_run, eight_steps, capsys):
    """Never resumed and then reported as a divergence: skipped like any damaged checkpoint, with --resume for the
    previous one; refused in one line where it is the one named."""
    run, config = stopped_run
    put_nan_in_the_weights(run / "checkpoints" / "checkpoint-6")
    before = snapshot(run)
    code, err = cli(capsys, "--config", config, "--resume-from", run / "checkpoints" / "checkpoint-6")
    assert code == 2 and one_line_error(err).endswith(
        "no intact checkpoint to resume from: checkpoint-6: it holds non-finite weights (NaN or infinity): the run "
        "diverged before it was saved")
    assert snapshot(run) == before
    code, err = cli(capsys, "--config", config, "--resume")
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [
        "warning: skipped damaged checkpoint checkpoint-6: it holds non-finite weights (NaN or infinity): the run "
        "diverged before it was saved"]
    losses, reference = train_losses(run), train_losses(eight_steps)
    assert [losses[step] for step in range(5, 9)] == pytest.approx([reference[step] for step in range(5, 9)],
                                                                   rel=1e-6)


def test_resume_skips_a_damaged_newest_checkpoint_and_continues_exactly(stopped_run, eight_steps, capsys):
    run, config = stopped_run
    flip_a_byte(run / "checkpoints" / "checkpoint-6" / "model.safetensors")
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 7, "train/lo')  # a line cut short by a crash
    code, err = cli(capsys, "--config", config, "--resume")
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [
        "warning: skipped damaged checkpoint checkpoint-6: model.safetensors does not match its checksum"]
    losses, reference = train_losses(run), train_losses(eight_steps)
    assert sorted(losses) == list(range(1, 9))
    assert [losses[step] for step in range(5, 9)] == pytest.approx([reference[step] for step in range(5, 9)],
                                                                   rel=1e-6)
    assert latest_checkpoint(run).name == "checkpoint-8"


def test_a_checkpoint_whose_state_disagrees_with_its_name_is_never_used(stopped_run, capsys):
    run, config = stopped_run
    os.rename(run / "checkpoints" / "checkpoint-2", run / "checkpoints" / "checkpoint-9")  # says step 2
    code, err = cli(capsys, "--config", config, "--resume")
    assert code == 0, err
    assert "warning: skipped damaged checkpoint checkpoint-9: trainer_state.json says step 2, not the step" in err
    assert [r["step"] for r in records(run) if "train/loss" in r] == list(range(1, 9))  # nothing cut at step 2
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == [
        "checkpoint-4", "checkpoint-6", "checkpoint-8", "checkpoint-9.set-aside"]  # kept, out of the way


def test_resume_from_an_older_checkpoint_sets_the_later_ones_aside(stopped_run, eight_steps, capsys):
    run, config = stopped_run
    code, err = cli(capsys, "--config", config, "--resume-from", run / "checkpoints" / "checkpoint-2")
    assert code == 0, err
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == [
        "checkpoint-4", "checkpoint-4.set-aside", "checkpoint-6", "checkpoint-6.set-aside", "checkpoint-8"]
    losses, reference = train_losses(run), train_losses(eight_steps)
    assert [losses[step] for step in range(3, 9)] == pytest.approx([reference[step] for step in range(3, 9)],
                                                                   rel=1e-6)


def test_resume_never_takes_over_a_folder_that_is_not_a_run(stopped_run, tmp_path, capsys):
    run, config = stopped_run
    project = tmp_path / "project"
    (project / "checkpoints" / "checkpoint-3").mkdir(parents=True)  # another tool's checkpoints
    (project / "config.json").write_text("{}")
    before = snapshot(project)
    code, err = cli(capsys, "--config", config, "--resume-from", run / "checkpoints" / "checkpoint-6",
                    f"output.dir={project}")
    assert code == 2 and f"output directory {project} exists and is not an ssmlm run" in one_line_error(err)
    assert snapshot(project) == before and not (project / MARKER).exists()


def test_resume_refuses_a_changed_config_unless_the_change_is_allowed(stopped_run, capsys):
    run, config = stopped_run
    before = snapshot(run)
    code, err = cli(capsys, "--config", config, "--resume", "training.batch_size=4", "data.seq_len=32",
                    "data.num_proc=1")
    line = one_line_error(err)
    assert code == 2
    assert ("checkpoint-6 was trained with other settings: data.num_proc (2 -> 1); data.seq_len (64 -> 32); "
            "training.batch_size (8 -> 4); to resume with them anyway, pass --allow-change "
            "data.num_proc,data.seq_len,training.batch_size") in line
    code, err = cli(capsys, "--config", config, "--resume", "training.learning_rate=1e-3", "model.hidden_size=48",
                    "--allow-change", "training.learning_rate")
    assert code == 2 and "model.hidden_size (32 -> 48)" in one_line_error(err)
    assert snapshot(run) == before

    code, err = cli(capsys, "--config", config, "--resume", "training.learning_rate=1e-3",
                    "--allow-change", "training.learning_rate")
    assert code == 0, err
    assert yaml.safe_load((run / "train_config.yaml").read_text())["training"]["learning_rate"] == 1e-3
    # Applied, not only recorded: at the resumed step 7 (of 8) the matrices' rate is 1e-3 on the schedule the SSM
    # group's unchanged rate follows (3e-3 on it before: what a checkpoint's restored optimizer state would keep).
    (step_7,) = [r for r in records(run) if r.get("step") == 7 and "lr/decay" in r]
    ssm_rate = yaml.safe_load((run / "train_config.yaml").read_text())["training"]["ssm_learning_rate"]
    assert step_7["lr/decay"] / step_7["lr/ssm"] == pytest.approx(1e-3 / ssm_rate)
    earlier = yaml.safe_load((run / "train_config.until-step-6.yaml").read_text())
    assert earlier["training"]["learning_rate"] == 3e-3  # the earlier segment's config is kept


@pytest.mark.parametrize("max_steps", [6, 4])
def test_resume_with_nothing_left_to_train_says_so(max_steps, stopped_run, capsys):
    run, config = stopped_run
    before = snapshot(run)
    code, err = cli(capsys, "--config", config, "--resume", f"training.max_steps={max_steps}")
    assert code == 2
    assert (f"training.max_steps={max_steps}, and checkpoint-6 is at step 6: nothing left to train"
            in one_line_error(err))
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C: stop after the step, with a checkpoint, and resume as if never stopped.


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_with_a_checkpoint(corpus, cache_dir, tmp_path):
    values = tiny_config_values(corpus, cache_dir, tmp_path / "stopped")
    values["model"] = {"hidden_size": 96, "num_hidden_layers": 2}  # steps slow enough to interrupt mid-run
    values["training"].update(max_steps=12, eval_every=100, eval_blocks=4)
    values["output"].update(save_every=100)  # no checkpoint but the one the stop writes, and the final one
    config = write_config(values, tmp_path / "config.yaml")
    uninterrupted = tmp_path / "uninterrupted"
    run_in_process(values, f"output.dir={uninterrupted}")  # also prepares the data for the subprocess

    process = subprocess.Popen([sys.executable, str(TRAIN_PY), "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_logged_steps(tmp_path / "stopped", 2, process)
    with pytest.raises(ConfigError, match="another process is writing the run"):  # the live run holds the lock
        RunLock(tmp_path / "stopped").acquire()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    err = process.stderr.read()
    assert "Traceback" not in err
    line = one_line_error(err, "train.py: stopped at step ")
    step = int(line.split("at step ")[1].split(",")[0])
    assert 2 <= step < 12
    assert line.endswith(f"saved as checkpoint-{step}; continue with --resume")
    assert latest_checkpoint(tmp_path / "stopped").name == f"checkpoint-{step}"

    run_in_process(values, resume=True)
    resumed, reference = train_losses(tmp_path / "stopped"), train_losses(uninterrupted)
    assert sorted(resumed) == list(range(1, 13))
    assert [resumed[s] for s in range(step + 1, 13)] == pytest.approx([reference[s] for s in range(step + 1, 13)],
                                                                      rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_under_a_two_rank_launch_stops_every_rank_with_one_checkpoint(corpus, cache_dir, tmp_path):
    """A terminal's Ctrl-C reaches the launcher and both ranks, and the launcher forwards it to them again at once:
    the ranks agree on the step to stop after and write its checkpoint together."""
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["model"] = {"hidden_size": 96, "num_hidden_layers": 2}
    values["training"].update(max_steps=40, batch_size=4, eval_every=100, eval_blocks=4)
    values["output"].update(save_every=100)
    config = write_config(values, tmp_path / "config.yaml")
    process = subprocess.Popen(two_rank_command(["--multi_gpu"], config), env={**os.environ, "ACCELERATE_USE_CPU": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_logged_steps(tmp_path / "run", 2, process, timeout=180)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    err = process.communicate(timeout=120)[1]
    # Both ranks say so, with the same step (their lines may interleave with the other's progress bar).
    stops = re.findall(r"train\.py: stopped at step (\d+), saved as checkpoint-\1;", err)
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]
    step = int(stops[0])
    assert latest_checkpoint(tmp_path / "run").name == f"checkpoint-{step}"  # intact: verified by its checksums


def test_in_process_divergence_raises_training_diverged(corpus, cache_dir, tmp_path):
    with pytest.raises(TrainingDiverged, match="training diverged at step"):
        run_in_process(tiny_config_values(corpus, cache_dir, tmp_path / "run"), *DIVERGING)
    assert json.loads((tmp_path / "run" / MARKER).read_text())["ssmlm_version"]


# ---------------------------------------------------------------------------------------------------------------
# 6. training.init_from: loaded by generate.py's strict loader, each problem one line before anything is written.


def copy_of(source: Path, target: Path, *names: str) -> Path:
    target.mkdir()
    for name in names:
        shutil.copy(source / name, target / name)
    return target


def init_from_case(case: str, model: Path, tokenizer: Path, tmp_path: Path) -> tuple[str, str]:
    """(training.init_from, its refusal after "training.init_from: ") for each folder a run must not start from."""
    if case == "missing tensors":
        folder = copy_of(model, tmp_path / "deeper", *(path.name for path in model.iterdir()))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3, "block_types": ["gss"] * 3}))
        return str(folder), f"the weights in {folder} do not match its config.json: tensors 13 missing (model.layers.2."
    if case == "non-finite weights":
        folder = copy_of(model, tmp_path / "diverged", *(path.name for path in model.iterdir()))
        weights = load_file(folder / "model.safetensors")
        weights["model.layers.1.to_out.weight"][3, 5] = float("nan")
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        return str(folder), f"the weights in {folder} are not finite (1 tensors hold NaN or infinity, e.g. model.layers"
    if case == "bit-flipped weights":
        folder = copy_of(model, tmp_path / "flipped", *(path.name for path in model.iterdir()))
        write_manifest(folder, [path.name for path in folder.iterdir()])
        flip_a_byte(folder / "model.safetensors")
        return str(folder), f"the model in {folder} is damaged: model.safetensors does not match its checksum"
    if case == "no config.json":
        folder = copy_of(model, tmp_path / "no-config", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
        return str(folder), f"{folder} holds no ssmlm model: no config.json"
    if case == "a tokenizer only":
        return str(tokenizer), f"{tokenizer} holds no ssmlm model: no config.json"
    if case == "a missing path":
        return str(tmp_path / "nowhere"), f"no model directory {tmp_path / 'nowhere'}; train one first"
    if case == "a missing relative path":  # its first part exists here: a path, never a Hub repository
        (tmp_path / "runs").mkdir()
        return "runs/gss-smal", "no model directory runs/gss-smal; train one first"
    if case == "a Hub repository, offline":
        return "someone/ssmlm-model", "someone/ssmlm-model is no directory here, and not a model on the Hugging Face Hub"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing tensors", "non-finite weights", "bit-flipped weights", "no config.json",
                                  "a tokenizer only", "a missing path", "a missing relative path",
                                  "a Hub repository, offline"])
def test_init_from_is_loaded_as_strictly_as_generate_does(case, corpus, cache_dir, tmp_path, tiny_model_dir,
                                                          tokenizer_dir, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["tokenizer"] = {}  # the saved model's
    start, refusal = init_from_case(case, tiny_model_dir, tokenizer_dir, tmp_path)
    code, err = cli(capsys, "--config", write_config(values, tmp_path / "config.yaml"), f"training.init_from={start}")
    assert code == 2 and f"train.py: error: training.init_from: {refusal}" in one_line_error(err)
    assert not (tmp_path / "run").exists()


def test_init_from_a_trained_model_trains_on_from_its_weights(corpus, cache_dir, tmp_path, tiny_model_dir, capsys):
    """A folder with the record of its files, as the trainer writes it, passes; the run starts from its weights."""
    folder = copy_of(tiny_model_dir, tmp_path / "base", *(path.name for path in tiny_model_dir.iterdir()))
    write_manifest(folder, [path.name for path in folder.iterdir()])
    values = tiny_config_values(corpus, cache_dir, tmp_path / "run")
    values["tokenizer"] = {}
    code, err = cli(capsys, "--config", write_config(values, tmp_path / "config.yaml"), *SHORT,
                    f"training.init_from={folder}")
    assert code == 0, err
    first = records(tmp_path / "run")[0]
    assert first["step"] == 0 and first["val/loss"] < 0.8 * math.log(512)  # not a new model's uniform guess


# ---------------------------------------------------------------------------------------------------------------
# 7. A full disk: one line naming the path and exit code 74; a start that failed leaves nothing in the way of the same
# command, and a failed checkpoint leaves the newest intact one as it was.


def full_disk(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def marker_write_fails(cls, run_dir, **fields):
    (run_dir / MARKER).touch()  # created, then the write fails: what a full disk does to the marker
    raise full_disk(run_dir / MARKER)


def config_write_fails(output_dir, config, start_step):
    (output_dir / "train_config.yaml").write_text("training:\n")
    raise full_disk(output_dir / "train_config.yaml")


@pytest.mark.parametrize("replacing", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("failing, written", [
    ((run_dir.RunLock, "create", classmethod(marker_write_fails)), MARKER),
    ((trainer, "keep_config", config_write_fails), "train_config.yaml"),
], ids=["marker", "config"])
def test_a_start_that_hits_a_full_disk_leaves_nothing_in_the_way(failing, written, replacing, config_file, tmp_path,
                                                                  capsys, monkeypatch):
    run = tmp_path / "run"
    if replacing:
        assert cli(capsys, "--config", config_file, *SHORT)[0] == 0
        before = snapshot(run)
    options = ("--overwrite",) if replacing else ()
    with monkeypatch.context() as patch:
        patch.setattr(*failing)
        code, err = cli(capsys, "--config", config_file, *SHORT, *options)
    assert code == 74 and one_line_error(err) == f"train.py: error: {run / written}: No space left on device"
    assert snapshot(run) == (before if replacing else {}) and not (tmp_path / "run.replaced").exists()
    assert cli(capsys, "--config", config_file, *SHORT, *options)[0] == 0  # the same command, once there is space


@pytest.mark.parametrize("failure", [
    full_disk("checkpoint-4.tmp/optimizer.bin"),
    RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file "
                 "write failed"),  # what torch.save raises for a full disk
], ids=["OSError", "torch.save"])
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_newest_intact_one(failure, config_file, tmp_path, capsys,
                                                                           monkeypatch):
    run = tmp_path / "run"
    save_state = Accelerator.save_state

    def save_state_until_the_disk_is_full(self, output_dir, **kwargs):
        if "checkpoint-4" in output_dir:
            (Path(output_dir) / "model.safetensors").write_bytes(b"half")
            raise failure
        return save_state(self, output_dir, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "save_state", save_state_until_the_disk_is_full)
        code, err = cli(capsys, "--config", config_file, *SHORT)
    newest = run / "checkpoints" / "checkpoint-2"
    line = one_line_error(err)
    assert code == 74 and line.startswith("train.py: error: ") and "checkpoint-4" in line
    assert f"the newest checkpoint is still {newest}, from before the problem" in line
    assert latest_checkpoint(run) == newest  # intact: verified by its checksums
    assert cli(capsys, "--config", config_file, *SHORT, "--resume")[0] == 0
    assert latest_checkpoint(run).name == "checkpoint-4"
