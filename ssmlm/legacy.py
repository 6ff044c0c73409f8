"""What ssmlm 0.1.0 wrote, read by today's code: every shim for 0.1.0 is here, so that dropping 0.1.0 is dropping
this file. Plain functions of dicts and paths (the model library's config and the trainer's runs both call them)."""

from pathlib import Path

# 0.1.0's flat S4D fields, now S4D's kernel options (ssm_kernel_options).
LEGACY_KERNEL_FIELDS = {"s4d_init": "init", "s4d_discretization": "discretization", "s4d_dt_min": "dt_min",
                        "s4d_dt_max": "dt_max"}


def upgrade_legacy_fields(values: dict) -> dict:
    """`values` (config keyword arguments) with the former flat `s4d_*` fields moved into `ssm_kernel_options`
    where the kernel is S4D, and dropped elsewhere (they configured nothing else)."""
    legacy = {LEGACY_KERNEL_FIELDS[key]: values.pop(key) for key in list(values) if key in LEGACY_KERNEL_FIELDS}
    if legacy and values.get("ssm_kernel") == "s4d":
        values["ssm_kernel_options"] = {**legacy, **(values.get("ssm_kernel_options") or {})}
    return values


def is_legacy_run(path: Path) -> bool:
    """A run written by ssmlm 0.1.0, before runs had markers: its config and a checkpoint with a trainer state."""
    checkpoints = (path / "checkpoints").glob("checkpoint-*/trainer_state.json")
    return (path / "train_config.yaml").is_file() and any(checkpoints)


def is_legacy_trainer_state(state: dict) -> bool:
    """A checkpoint's trainer state as ssmlm 0.1.0 wrote it, the one kind that lists no files: {"step": N} alone."""
    return state.keys() == {"step"}
