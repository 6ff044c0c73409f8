"""The model card (README.md) train.py writes beside the final model: what the model is, how it was trained, on
what data under which licences, and how to load it, all from the run's own records (its config, the model, the
final validation, the corpus manifest), never a template with blanks."""

import json
from collections import Counter
from pathlib import Path

from ..data.corpus import MANIFEST_NAME, sha256_file
from ..data.sources import is_local, matching_paths
from .config import TrainConfig
from .tasks import TASKS


def model_card(config: TrainConfig, model, metrics: dict, tokens_trained: int, output_dir: Path) -> str:
    """The card's markdown; `model` is the unwrapped model, `metrics` the final validation."""
    task = TASKS[config.task]
    model_config = model.config
    blocks = ", ".join(f"{count} × {kind}" for kind, count in Counter(model_config.block_types).items())
    kernel_options = ", ".join(f"{key}={value}" for key, value in model_config.ssm_kernel_options.items())
    lines = [
        f"# {output_dir.name}",
        "",
        f"An ssmlm {task.description(config)} trained by `train.py`"
        f"{f' from `{config.training.init_from}`' if config.training.init_from else ''}: "
        f"{model_config.num_hidden_layers} blocks ({blocks}), hidden size {model_config.hidden_size}, SSM kernel "
        f"`{model_config.ssm_kernel}`{f' ({kernel_options})' if kernel_options else ''}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, a vocabulary of {model_config.vocab_size:,} "
        f"tokens. It reads a whole sequence convolutionally, or token by token with one state per block.",
        "",
        "## Training",
        "",
        f"- {config.training.max_steps:,} steps, each of {config.training.batch_size} blocks of "
        f"{config.data.seq_len} tokens per process and accumulation step "
        f"({config.training.gradient_accumulation_steps} a step): {tokens_trained:,} tokens; learning rate "
        f"{config.training.learning_rate:g}, seed {config.training.seed}, mixed precision "
        f"{config.training.mixed_precision}.",
        "- The whole config is `train_config.yaml` in this directory; the loss and validation of every logged step "
        "are in `metrics.jsonl`.",
        "",
        *task.card_validation(config, metrics),
        "",
        "## Data",
        "",
        *data_lines(config),
        "## Use",
        "",
        *task.card_usage(output_dir.name),
        "",
    ]
    return "\n".join(lines)


def data_lines(config: TrainConfig) -> list[str]:
    """Each domain's sources; for ssmlm's default corpus its manifest's digest, sizes and the inputs' licences."""
    lines = []
    for domain, source in config.data.sources.items():
        lines.append(f"- **{domain}**: train {source_text(source.train)}; validation {source_text(source.validation)}")
    lines.append("")
    manifest_path = Path(config.data.build_corpus or "") / MANIFEST_NAME
    if config.data.build_corpus and manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        lines += [f"The default corpus, built by `{manifest['builder']['module']}` {manifest['builder']['version']}; "
                  f"its manifest's SHA-256: `{sha256_file(manifest_path)}`.", "",
                  "| domain | split | documents | characters |", "|---|---|---:|---:|"]
        for domain, entry in manifest["domains"].items():
            for split, info in entry["splits"].items():
                lines.append(f"| {domain} | {split} | {info['documents']:,} | {info['characters']:,} |")
        lines += ["", "Licences of the inputs:", ""]
        lines += [f"- `{entry['label']}`: {entry['licence']}" for entry in manifest["inputs"]]
        lines += [f"- {credit}" for entry in manifest["domains"].values() for credit in entry.get("credits", [])]
        lines.append("")
    return lines


def source_text(spec: str | list[str]) -> str:
    """Local files with their sizes, or a Hub dataset's name."""
    specs = [spec] if isinstance(spec, str) else spec
    if not all(is_local(item) for item in specs):
        return ", ".join(f"`{item}` (Hugging Face Hub)" for item in specs)
    files = matching_paths(specs)
    return ", ".join(f"`{path}` ({path.stat().st_size:,} bytes)" for path in files)
