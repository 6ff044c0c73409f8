"""What ssmlm 0.1.0 and 0.2.0 wrote, read by today's code: every shim for them is here, so that dropping them is
dropping this file. Plain functions of dicts and paths (the model library's config and the trainer's runs both call
them)."""

from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

# 0.1.0's flat S4D fields, now S4D's kernel options (ssm_kernel_options).
LEGACY_KERNEL_FIELDS = {"s4d_init": "init", "s4d_discretization": "discretization", "s4d_dt_min": "dt_min",
                        "s4d_dt_max": "dt_max"}
# 0.1.0's and 0.2.0's flat block fields, now the blocks' options (block_options[kind][option]); attention_dropout
# was shared by Mega and the attention block.
LEGACY_BLOCK_FIELDS = {
    "mega_ema_dim": [("mega", "ema_dim")], "mega_z_dim": [("mega", "z_dim")], "mega_v_dim": [("mega", "v_dim")],
    "mega_chunk_size": [("mega", "chunk_size")], "mega_attention": [("mega", "attention_function")],
    "mega_position_bias": [("mega", "position_bias")], "mega_max_positions": [("mega", "max_positions")],
    "mega_hidden_dropout": [("mega", "hidden_dropout")],
    "attention_dropout": [("mega", "attention_dropout"), ("attention", "attention_dropout")],
    "attention_num_heads": [("attention", "num_heads")], "attention_span": [("attention", "span")],
    "attention_window": [("attention", "window")], "rope_theta": [("attention", "rope_theta")],
    "h3_head_dim": [("h3", "head_dim")], "h3_shift_size": [("h3", "shift_size")],
    "h3_state_size": [("h3", "state_size")],
}
LEGACY_FIELDS = {*LEGACY_KERNEL_FIELDS, *LEGACY_BLOCK_FIELDS}


def upgrade_legacy_fields(values: dict, saved: bool = True) -> dict:
    """`values` (config keyword arguments) with the former flat fields moved where they live now: the `s4d_*`
    fields into `ssm_kernel_options` where the kernel is S4D, the block fields into `block_options` for the block
    kinds the model has (`block_types`; None is all GSS); dropped elsewhere, where they configured nothing. Options
    given in the new place win. A config written by hand (`saved` False) is told the new spelling once."""
    legacy = {LEGACY_KERNEL_FIELDS[key]: values.pop(key) for key in list(values) if key in LEGACY_KERNEL_FIELDS}
    if legacy and values.get("ssm_kernel") == "s4d":
        values["ssm_kernel_options"] = {**legacy, **(values.get("ssm_kernel_options") or {})}
    flat = {key: values.pop(key) for key in list(values) if key in LEGACY_BLOCK_FIELDS}
    if not flat:
        return values
    kinds = set(values.get("block_types") or ["gss"])
    moved = {}
    for key, value in flat.items():
        if key == "mega_chunk_size" and value == -1:
            value = None  # the reference code's spelling of full attention
        for kind, option in LEGACY_BLOCK_FIELDS[key]:
            if kind in kinds:
                moved.setdefault(kind, {})[option] = value
    given = values.get("block_options") or {}
    if isinstance(given, dict):  # anything else is refused by the config's validation
        merged = dict(moved)
        for kind, options in given.items():
            merged[kind] = {**moved.get(kind, {}), **options} if isinstance(options, dict) else options
        values["block_options"] = merged
    if not saved:
        logger.warning_once(
            f"SSMLMConfig: a block's settings are given in block_options now: read {', '.join(sorted(flat))} as "
            f"block_options={moved!r} (those of block kinds the model does not have are dropped); write them so")
    return values


def is_legacy_run(path: Path) -> bool:
    """A run written by ssmlm 0.1.0, before runs had markers: its config and a checkpoint with a trainer state."""
    checkpoints = (path / "checkpoints").glob("checkpoint-*/trainer_state.json")
    return (path / "train_config.yaml").is_file() and any(checkpoints)


def is_legacy_trainer_state(state: dict) -> bool:
    """A checkpoint's trainer state as ssmlm 0.1.0 wrote it, the one kind that lists no files: {"step": N} alone."""
    return state.keys() == {"step"}
