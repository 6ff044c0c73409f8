"""The model card (README.md) train.py writes beside the final model: Hugging Face Hub metadata, what the model is,
how it was trained and to what loss, on what data under which licences, and how to load it from where it was
saved, all from the run's own records (its config, the model, metrics.jsonl, the final validation, the corpus
manifest when the run read the default corpus), never a template with blanks."""

import json
import shlex
import sys
from collections import Counter
from pathlib import Path

import yaml

from ..data.corpus import MANIFEST_NAME, sha256_file
from ..data.sources import is_local, matching_paths, reads_default_corpus, spec_list
from .config import TrainConfig
from .tasks import TASKS


def model_card(config: TrainConfig, model, metrics: dict, tokens_trained: int, output_dir: Path) -> str:
    """The card's markdown; `model` is the unwrapped model, `metrics` the final validation."""
    task = TASKS[config.task]
    model_config = model.config
    blocks = ", ".join(f"{count} × {kind}" for kind, count in Counter(model_config.block_types).items())
    kernel_options = ", ".join(f"{key}={value}" for key, value in model_config.ssm_kernel_options.items())
    default_corpus = reads_default_corpus(config.data)
    model_path = str(output_dir.resolve())
    lines = [
        "---",
        yaml.safe_dump(card_metadata(config, model_config, default_corpus), sort_keys=False).strip(),
        "---",
        "",
        f"# {output_dir.name}",
        "",
        f"An ssmlm {task.description(config)} trained by `{program('train')}`"
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
        f"- {final_losses(output_dir, metrics)}",
        "- The whole config is `train_config.yaml` in this directory; the loss and validation of every logged step "
        "are in `metrics.jsonl`.",
        "",
        *task.card_validation(config, metrics),
        "",
        "## Data",
        "",
        *data_lines(config, default_corpus),
        "## Use",
        "",
        *task.card_usage(model_path),
        "",
        *([f"or from the command line: `{generate_command(model_path)}`.", ""]
          if task.pipeline_tag == "text-generation" else []),
    ]
    return "\n".join(lines)


def card_metadata(config: TrainConfig, model_config, default_corpus: bool) -> dict:
    """The Hub's YAML front matter. The model is loaded through transformers with remote code (`custom_code`). Its
    licence follows from its data's: mixed ("other", listed under Data) for the default corpus, and `unknown` for
    the user's own data, whose licences only the user knows."""
    pipeline_tag = TASKS[config.task].pipeline_tag  # None where no Hugging Face pipeline fits (audio-lm)
    return {
        "library_name": "transformers",
        "license": "other" if default_corpus else "unknown",
        **({"pipeline_tag": pipeline_tag} if pipeline_tag else {}),
        "tags": ["ssmlm", "custom_code", "state-space-model", *sorted(set(model_config.block_types)),
                 f"ssm-kernel-{model_config.ssm_kernel}"],
    }


def final_losses(output_dir: Path, metrics: dict) -> str:
    """The last training loss metrics.jsonl records and the final validation loss, in words."""
    last_train = None
    metrics_file = output_dir / "metrics.jsonl"
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("train/loss") is not None:
                last_train = record
    training = (f"final training loss {last_train['train/loss']:.4f} (step {last_train['step']:,}, the mean since the "
                f"previous logged step)" if last_train else "no training loss was recorded")
    validation = f"final validation loss {metrics['val/loss']:.4f}" if "val/loss" in metrics else "no validation"
    return f"{training[0].upper()}{training[1:]}; {validation}."


def data_lines(config: TrainConfig, default_corpus: bool) -> list[str]:
    """Each domain's sources; when the run read ssmlm's default corpus, its manifest's digest, sizes and the
    inputs' licences; otherwise a note that the data's licences are the user's to state."""
    lines = []
    for domain, source in config.data.sources.items():
        test = f"; test {source_text(source.test)}" if source.test is not None else ""
        lines.append(f"- **{domain}**: train {source_text(source.train)}; validation {source_text(source.validation)}"
                     f"{test}")
    lines.append("")
    manifest_path = Path(config.data.build_corpus or "") / MANIFEST_NAME
    if not (default_corpus and manifest_path.is_file()):
        lines += ["The licences of this data, and so this model's, are not recorded here: the metadata above says "
                  "`license: unknown` until you set it.", ""]
        return lines
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if "engine" in manifest:  # the spoken-digits corpus (ssmlm.data.speech)
        return lines + speech_corpus_lines(manifest, manifest_path)
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


def speech_corpus_lines(manifest: dict, manifest_path: Path) -> list[str]:
    """The spoken-digits corpus's builder, engine, digest and clips per split."""
    engine = manifest["engine"]
    lines = [f"The spoken-digits corpus, built by `{manifest['builder']['module']}` {manifest['builder']['version']} "
             f"with {engine['name']} {engine['version']} (`{engine['package']}` {engine['package_version']}, "
             f"GPL-3.0: the clips are its synthetic speech); its manifest's SHA-256: `{sha256_file(manifest_path)}`.",
             "", "| split | speakers | clips |", "|---|---:|---:|"]
    lines += [f"| {split} | {info['speakers']:,} | {info['clips']:,} |" for split, info in manifest["splits"].items()]
    return [*lines, ""]


def source_text(spec: str | list[str]) -> str:
    """Local files with their sizes, or a Hub dataset's name."""
    specs = spec_list(spec)
    if not all(is_local(item) for item in specs):
        return ", ".join(f"`{item}` (Hugging Face Hub)" for item in specs)
    files = matching_paths(specs)
    return ", ".join(f"`{path}` ({sum(item.suffix.lower() == '.wav' for item in path.iterdir()):,} WAV files)"
                     if path.is_dir() else
                     f"`{path}` ({path.stat().st_size:,} bytes)" for path in files)


def program(tool: str) -> str:
    """How to run ssmlm's command `tool` ("train", "generate") the way this process was started: the console script
    (ssmlm-train), the module (python -m ssmlm.cli.train, also under `accelerate launch -m`) or a checkout's
    wrapper script (python train.py)."""
    started = Path(sys.argv[0])
    if started.suffix != ".py":
        return f"ssmlm-{tool}"
    if started.parent.name == "cli" and started.parent.parent.name == "ssmlm":
        return f"python -m ssmlm.cli.{tool}"
    return f"python {shlex.quote(str(started.with_name(f'{tool}.py')))}"


def generate_command(model_path: str) -> str:
    return f"{program('generate')} --model {shlex.quote(model_path)} --prompt \"Once upon a time\""


def saved_model_line(config: TrainConfig) -> str:
    """What the end of a run prints: where the final model is, and how to use it."""
    model_path = str(Path(config.output.dir).resolve())
    if TASKS[config.task].pipeline_tag == "text-generation":
        return f"model saved to {model_path}; generate with: {generate_command(model_path)}"
    return f"model saved to {model_path}; its README.md shows how to load it"
