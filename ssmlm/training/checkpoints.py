"""Checkpoints: written whole or not at all, verified before use, and never trusted beyond what they can prove.

    checkpoints/checkpoint-N/   Accelerate `save_state` (model, optimizer, scheduler, RNG of every process),
                                train_config.yaml (the config that trained it) and trainer_state.json

A checkpoint is written to `checkpoint-N.tmp` and renamed when complete; `trainer_state.json` is written last and
holds the format (FORMAT), the step, the launch (processes, threads) and the size and SHA-256 of every other file.
A checkpoint is intact only if that file parses, its step is the N of its name, and every file is there with its
size and hash: a truncated, missing or bit-flipped file, or a state that disagrees with its name, makes it damaged.
A state of this format without its file list is damaged too: only a checkpoint of ssmlm 0.1.0, whose state is
{"step": N} and nothing else, lists no files, and it is resumed with a note that its files cannot be verified.
`--resume` reports a damaged newest checkpoint in one line and takes the newest intact one (the trainer also
treats one whose weights are not finite as damaged); once the run is checked, the checkpoints of later steps than
the one it goes on from are renamed checkpoint-N.set-aside, never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator

from ..model.legacy import is_legacy_trainer_state, upgrade_legacy_fields
from ..tooling.checksums import first_difference, is_record, record_files
from .config import ConfigError, TrainConfig, dump_config, flat_values
from .run_dir import free_path, readable_by_all

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"  # written last: a checkpoint without it is incomplete
# The format of the trainer state this version writes. States without a "format" were written before it: by ssmlm
# 0.1.0 ({"step": N} alone) or by development versions that already listed the files ({"step", "launch", "files"}).
FORMAT = 2
CONFIG_FILE = "train_config.yaml"
# Settings a resumed run may change without saying so: they do not change what is trained, only how long, how
# often it is checked and saved, where the data cache is, and how the same math is run (compiled, recomputed).
# (Not data.num_proc: each packing process drops the tail of its own batches, so it changes the blocks.)
FREE_TO_CHANGE = ("training.max_steps", "training.eval_every", "training.eval_blocks",
                  "training.keep_freed_host_memory", "training.compile", "training.gradient_checkpointing",
                  "data.cache_dir", "data.build_corpus", "output")


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be trusted; the message says why, in a few words."""


def launch_facts(accelerator: Accelerator) -> dict:
    """What, besides the config, decides a run's numbers: a resumed run with other values is not bit-identical."""
    return {"processes": accelerator.num_processes, "threads": torch.get_num_threads(),
            "device": accelerator.device.type, "torch": torch.__version__}


def checkpoint_dirs(checkpoint_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every directory named checkpoint-N, newest first, whether complete or not."""
    found = []
    for path in checkpoint_root.glob(f"{PREFIX}*"):
        step = path.name[len(PREFIX):]
        if step.isdigit() and path.is_dir():
            found.append((int(step), path))
    return sorted(found, reverse=True)


def read_state(checkpoint: Path) -> dict:
    """The verified trainer state of `checkpoint`, or DamagedCheckpoint saying what is wrong."""
    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        raise DamagedCheckpoint(f"incomplete: no {STATE_FILE}")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DamagedCheckpoint(f"{STATE_FILE} is not readable") from None
    version = state.get("format") if isinstance(state, dict) else None
    if type(version) is int and version > FORMAT:
        raise DamagedCheckpoint(f"{STATE_FILE} is of format {version}, newer than this version of ssmlm reads "
                                f"({FORMAT})")
    if not (isinstance(state, dict) and ("format" not in state or type(version) is int and version == FORMAT)
            and type(state.get("step")) is int and isinstance(state.get("launch", {}), dict)
            and is_record(state.get("files", {}))):
        raise DamagedCheckpoint(f"{STATE_FILE} is not readable")
    if "files" not in state and not is_legacy_trainer_state(state):
        raise DamagedCheckpoint(f"{STATE_FILE} lists no files to verify")
    if checkpoint.name != f"{PREFIX}{state['step']}":
        raise DamagedCheckpoint(f"{STATE_FILE} says step {state['step']}, not the step of its name")
    if difference := first_difference(checkpoint, state.get("files", {})):
        raise DamagedCheckpoint(difference)
    return state


def read_config(checkpoint: Path) -> dict | None:
    """The config values a checkpoint was trained with (the run's train_config.yaml for checkpoints of 0.1.0)."""
    for path in (checkpoint / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if path.is_file():
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    return None


def candidates(output_dir: Path, resume_from: str | None) -> list[Path]:
    """Checkpoints to resume from, in order of preference: the one named, or those of the run, newest first."""
    if resume_from is not None:
        path = Path(resume_from).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--resume-from: no checkpoint directory {path}")
        return [path]
    found = [path for _, path in checkpoint_dirs(output_dir / "checkpoints")]
    if not found:
        raise ConfigError(f"--resume: no checkpoint in {output_dir / 'checkpoints'}")
    return found


def first_intact(paths: list[Path], report: Callable[[str], None],
                 load_verified: Callable[[Path, dict], None]) -> tuple[Path, dict]:
    """The first checkpoint of `paths` that passes verification and then `load_verified(path, state)`, which loads
    it and raises DamagedCheckpoint for what only the loaded checkpoint shows; and its state. Every damaged one on
    the way is reported in one line; none intact is a ConfigError naming each problem."""
    problems, reported = [], 0
    for path in paths:
        try:
            state = read_state(path)
            # Said before this one loads: its refusal (other settings) must not hide why the newer ones were skipped.
            for problem in problems[reported:]:
                report(f"warning: skipped damaged checkpoint {problem}")
            reported = len(problems)
            load_verified(path, state)
        except DamagedCheckpoint as error:
            problems.append(f"{path.name}: {error}")
            continue
        return path, state
    raise ConfigError("no intact checkpoint to resume from: " + "; ".join(problems))


def load(accelerator: Accelerator, checkpoint: Path) -> None:
    """Load a verified checkpoint into the prepared model, optimizer, scheduler and RNGs."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # noqa: BLE001 - whatever the loaders raise, it is this checkpoint that does not fit
        raise ConfigError(f"cannot resume from {checkpoint}: {' '.join(str(error).split())[:400]} (was it written "
                          f"by another launcher or model shape?)") from None


def config_changes(saved: dict, config: TrainConfig, allowed: Iterable[str]) -> list[str]:
    """The settings in which `config` differs from a checkpoint's, as "key (old -> new)", except those free to
    change and those in `allowed` (a key, or a section such as "model")."""
    saved = {**saved, "model": upgrade_legacy_fields(saved.get("model") or {})}  # as written by ssmlm 0.1.0
    before, after = flat_values(saved), flat_values(config.to_dict())
    permitted = (*FREE_TO_CHANGE, *allowed)
    changes = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key) and not any(key == p or key.startswith(p + ".") for p in permitted):
            changes.append(f"{key} ({before.get(key)!r} -> {after.get(key)!r})")
    return changes


def launch_changes(state: dict, facts: dict, allowed: Iterable[str]) -> list[str]:
    """The number of processes is part of the global batch: a change is refused unless allowed as "processes"."""
    saved = state.get("launch", {}).get("processes")
    if saved is None or saved == facts["processes"] or "processes" in allowed:
        return []
    return [f"processes ({saved} -> {facts['processes']})"]


def save(accelerator: Accelerator, output_dir: Path, step: int, config: TrainConfig, keep: int) -> Path:
    """Write checkpoint-`step` whole (every process its part), then delete all but the newest `keep` of the
    checkpoints of earlier steps (a later one is never deleted here: a resumed run sets those aside)."""
    root = output_dir / "checkpoints"
    final = root / f"{PREFIX}{step}"
    partial = root / f"{final.name}.tmp"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run that died while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        readable_by_all(partial)
        (partial / CONFIG_FILE).write_text(dump_config(config), encoding="utf-8")
        files = record_files(partial, [str(path.relative_to(partial)) for path in partial.rglob("*") if path.is_file()])
        state = {"format": FORMAT, "step": step, "launch": launch_facts(accelerator), "files": files}
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for _, old in [(s, p) for s, p in checkpoint_dirs(root) if s < step][max(keep - 1, 0):]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def set_aside_after(output_dir: Path, step: int) -> list[Path]:
    """Rename the run's checkpoints of steps after `step` (damaged ones, or another history when resuming from an
    older checkpoint) to checkpoint-N.set-aside, so that the run goes on from `step` with one history: never a
    later --resume into the other one, never one of them rotated out. Returns their new paths."""
    set_aside = []
    for later_step, path in checkpoint_dirs(output_dir / "checkpoints"):
        if later_step > step:
            target = free_path(path.with_name(f"{path.name}.set-aside"))
            os.rename(path, target)
            set_aside.append(target)
    return set_aside


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run that passes verification, or None."""
    for _, path in checkpoint_dirs(Path(output_dir) / "checkpoints"):
        try:
            read_state(path)
        except DamagedCheckpoint:
            continue
        return path
    return None
