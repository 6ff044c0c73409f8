"""What the trainer trains: a task prepares the data, builds the model, turns a batch into a loss and scores the
validation data. The loop around them (trainer.py: devices, processes, checkpoints, resuming) is the same for all.

    causal-lm               the next-token loss on blocks of data.seq_len tokens packed from every domain's
                            documents (the default)
    domain-classification   which data source (domain: books, code, math, ...) a window of data.seq_len tokens
                            comes from, read by SSMLMForSequenceClassification. Windows are cut inside documents,
                            so the training and validation windows come from different documents (the corpus's
                            splits are by document), and the domains are balanced: each has as many windows as
                            the smallest, so chance is 1 / the number of domains.
    audio-lm                raw audio as 256 µ-law codes, the next sample's loss in bits per sample (audio_task.py)

`training.init_from` starts either task from a saved ssmlm model (its architecture, weights and, unless
`tokenizer.path` says otherwise, its tokenizer): fine-tuning a pretrained language model as a classifier. It is
loaded by the tools' strict loader (tooling/saved_models.py): its files must match their record, every tensor
must be there, used, of its shape and finite, except those of a task head the saved model lacks (a language
model's, fine-tuned as a classifier), which start new. A local path is never looked for on the Hub; only a
"namespace/name" that is no path here is. A `model` setting that differs from the saved model's is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError

from ..data.packing import pack_documents, window_documents
from ..data.sources import load_documents
from ..data.tokenizer import get_tokenizer, looks_like_a_path, tokenizer_for_packing
from ..model.modeling import SSMLMForCausalLM, SSMLMForSequenceClassification
from ..tooling.saved_models import UsageError, check_model_dir, load_model, load_tokenizer, one_line
from .config import ConfigError, TrainConfig

# The model card's usage snippets load by path with trust_remote_code, so that they work in any process where ssmlm
# is installed, whether or not it imported ssmlm.
REMOTE_CODE_COMMENT = "# trust_remote_code runs the model's saved ssmlm_remote.py, which imports the installed ssmlm"


@dataclass
class TaskData:
    tokenizer: object
    train: datasets.Dataset  # rows with "input_ids" (and "labels" where the task has them)
    validation: dict[str, datasets.Dataset]  # per domain
    test: dict[str, datasets.Dataset] = field(default_factory=dict)  # per domain, scored once at the end (audio-lm)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 709 else math.inf  # math.exp overflows above ~709.78


class Task:
    """What both tasks share. A task also has prepare_data(config) -> TaskData, build_model(config, tokenizer,
    domains), loss(model, batch), evaluate(model, loaders, accelerator) -> metrics with "val/loss",
    validation_line(metrics, domains), and the model card's description, card_validation and card_usage. A task
    whose TaskData has test data also takes evaluate(..., split="test"), called once after the final validation."""

    name: str
    model_class: type
    pipeline_tag: str  # the Hugging Face pipeline that uses the model, for the model card's metadata

    def load_documents_and_tokenizer(self, config: TrainConfig):
        for domain, source in config.data.sources.items():
            if source.test is not None:  # scored by the audio-lm task alone: refused rather than silently unused
                raise ConfigError(f"data.sources.{domain}.test: only the audio-lm task scores a test split (task: "
                                  f"{self.name})")
        model_dir = init_from_dir(config.training.init_from) if config.training.init_from else None
        if model_dir:  # found out now, before the data is prepared
            init_from_checked(check_model_dir, model_dir, tokenizer=not config.tokenizer.path)
        documents = load_documents(config.data)
        if model_dir and not config.tokenizer.path:
            tokenizer = tokenizer_for_packing(init_from_checked(load_tokenizer, model_dir),
                                              f"training.init_from: the tokenizer in {model_dir}")
        else:
            tokenizer = get_tokenizer(config.tokenizer, {domain: splits["train"] for domain, splits in
                                                         documents.items()}, config.data.cache_dir)
        return documents, tokenizer

    def model_from(self, config: TrainConfig, tokenizer, **head):
        """A new model of the config, or the one of training.init_from; `head` are the task head's settings."""
        start = config.training.init_from
        if not start:
            return self.model_class(config.model_config(tokenizer, **head))
        model = init_from_checked(load_model, init_from_dir(start), self.model_class, torch.float32, task_head=head)
        for key, value in config.model.items():  # the architecture is the saved model's
            if getattr(model.config, key, None) != value:
                raise ConfigError(f"model.{key}: {value!r} here, but {getattr(model.config, key, None)!r} in the "
                                  f"model of training.init_from={start}; leave it out")
        if model.config.vocab_size != len(tokenizer):
            vocabulary = "tokenizer.path's" if config.tokenizer.path else f"the {self.name} task's"
            raise ConfigError(f"training.init_from={start}: its model has {model.config.vocab_size} tokens, "
                              f"{vocabulary} vocabulary {len(tokenizer)}")
        return model


def init_from_dir(name: str) -> Path:
    """The folder of training.init_from: the local directory, or the snapshot of a Hub repository for a
    "namespace/name" that is no path here (a missing local path is reported at once, never looked for on the Hub)."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if looks_like_a_path(name) or name.count("/") != 1:
        raise ConfigError(f"training.init_from: no model directory {name}; train one first, or set "
                          f"training.init_from to null to start from scratch")
    try:
        return Path(snapshot_download(name))
    except (OSError, ValueError, HfHubHTTPError) as error:
        raise ConfigError(f"training.init_from: {name} is no directory here, and not a model on the Hugging Face "
                          f"Hub ({one_line(error)[:300]})") from None


def init_from_checked(action, *args, **kwargs):
    """`action` of the strict loader, its UsageError a ConfigError naming training.init_from."""
    try:
        return action(*args, **kwargs)
    except UsageError as error:
        raise ConfigError(f"training.init_from: {error}") from None


class CausalLanguageModeling(Task):
    name = "causal-lm"
    model_class = SSMLMForCausalLM
    pipeline_tag = "text-generation"

    def prepare_data(self, config: TrainConfig) -> TaskData:
        documents, tokenizer = self.load_documents_and_tokenizer(config)

        def pack(split_documents):
            return pack_documents(split_documents, tokenizer, config.data.seq_len, config.data.num_proc)

        train = {domain: pack(splits["train"]) for domain, splits in documents.items()}
        validation = {}
        for domain, splits in documents.items():
            blocks = pack(splits["validation"])
            if len(blocks) == 0:
                raise ConfigError(f"data.sources.{domain}.validation: shorter than one block of data.seq_len="
                                  f"{config.data.seq_len} tokens")
            if len(blocks) > config.training.eval_blocks:
                blocks = blocks.shuffle(seed=config.data.seed).select(range(config.training.eval_blocks))
            validation[domain] = blocks
        return TaskData(tokenizer, datasets.concatenate_datasets(list(train.values())), validation)

    def build_model(self, config: TrainConfig, tokenizer, domains=()):
        return self.model_from(config, tokenizer)

    def loss(self, model, batch) -> torch.Tensor:
        ids = batch["input_ids"]
        return model(input_ids=ids, labels=ids, use_cache=False, return_logits=False).loss

    @torch.no_grad()
    def evaluate(self, model, loaders: dict, accelerator: Accelerator) -> dict[str, float]:
        """Mean next-token loss and perplexity on each domain's validation blocks, and over all of them."""
        block_losses = {}
        for domain, loader in loaders.items():
            losses = []
            for batch in loader:
                ids = batch["input_ids"]
                losses_per_position = model(input_ids=ids, labels=ids, use_cache=False, return_logits=False,
                                            loss_per_position=True).loss
                per_block = losses_per_position[:, :-1].mean(1)  # the last position has no next token
                losses.append(accelerator.gather_for_metrics(per_block))
            block_losses[domain] = torch.cat(losses)
        metrics = {}
        # Blocks have equal length, so the mean over blocks is the mean over tokens.
        for name, losses in [*block_losses.items(), ("all", torch.cat(list(block_losses.values())))]:
            prefix = "val" if name == "all" else f"val/{name}"
            metrics[f"{prefix}/loss"] = losses.mean().item()
            metrics[f"{prefix}/ppl"] = perplexity(metrics[f"{prefix}/loss"])
        return metrics

    def validation_line(self, metrics: dict, domains) -> str:
        return ", ".join(f"{domain} {metrics[f'val/{domain}/loss']:.3f} (ppl {metrics[f'val/{domain}/ppl']:.1f})"
                         for domain in domains)

    # The model card's parts (model_card.py).

    def description(self, config: TrainConfig) -> str:
        return "causal language model"

    def card_validation(self, config: TrainConfig, metrics: dict) -> list[str]:
        return [
            f"Final validation ({config.training.eval_blocks} blocks of {config.data.seq_len} tokens per domain):",
            "",
            "| domain | loss (nats/token) | perplexity |",
            "|---|---:|---:|",
            *(f"| {domain} | {metrics[f'val/{domain}/loss']:.3f} | {metrics[f'val/{domain}/ppl']:.1f} |"
              for domain in config.data.sources),
            f"| all | {metrics['val/loss']:.3f} | {metrics['val/ppl']:.1f} |",
        ]

    def card_usage(self, model_path: str) -> list[str]:
        return [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            REMOTE_CODE_COMMENT,
            f"model = AutoModelForCausalLM.from_pretrained({model_path!r}, trust_remote_code=True)",
            f"tokenizer = AutoTokenizer.from_pretrained({model_path!r}, trust_remote_code=True)",
            'prompt = tokenizer("Once upon a time", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**prompt, max_new_tokens=50)[0]))",
            "```",
        ]


class DomainClassification(Task):
    name = "domain-classification"
    model_class = SSMLMForSequenceClassification
    pipeline_tag = "text-classification"

    def prepare_data(self, config: TrainConfig) -> TaskData:
        documents, tokenizer = self.load_documents_and_tokenizer(config)
        if len(documents) < 2:
            raise ConfigError(f"task: {self.name} needs at least two data.sources to tell apart, got "
                              f"{', '.join(documents) or 'none'}")

        def windows(split: str) -> dict[str, datasets.Dataset]:
            found = {}
            for label, (domain, splits) in enumerate(documents.items()):
                found[domain] = window_documents(splits[split], tokenizer, config.data.seq_len, label,
                                                 config.data.num_proc)
                if len(found[domain]) == 0:
                    raise ConfigError(f"data.sources.{domain}.{split}: no document is as long as data.seq_len="
                                      f"{config.data.seq_len} tokens")
            return found

        def balanced(found: dict[str, datasets.Dataset], cap: int | None = None) -> dict[str, datasets.Dataset]:
            count = min(len(rows) for rows in found.values())
            count = min(count, cap) if cap else count
            return {domain: rows.shuffle(seed=config.data.seed).select(range(count)) for domain, rows in found.items()}

        train = balanced(windows("train"))
        validation = balanced(windows("validation"), config.training.eval_blocks)
        return TaskData(tokenizer, datasets.concatenate_datasets(list(train.values())), validation)

    def build_model(self, config: TrainConfig, tokenizer, domains=()):
        labels = dict(enumerate(domains))
        return self.model_from(config, tokenizer, num_labels=len(labels), id2label=labels,
                               label2id={domain: label for label, domain in labels.items()})

    def loss(self, model, batch) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss

    @torch.no_grad()
    def evaluate(self, model, loaders: dict, accelerator: Accelerator) -> dict[str, float]:
        """Accuracy on each domain's validation windows and over all (balanced, so the mean of the domains'), and
        the mean cross-entropy over all."""
        metrics, correct, losses = {}, [], []
        for domain, loader in loaders.items():
            hits = []
            for batch in loader:
                logits = model(input_ids=batch["input_ids"], use_cache=False).logits.float()
                labels = batch["labels"]
                hits.append(accelerator.gather_for_metrics((logits.argmax(-1) == labels).float()))
                losses.append(accelerator.gather_for_metrics(
                    torch.nn.functional.cross_entropy(logits, labels, reduction="none")))
            hits = torch.cat(hits)
            metrics[f"val/{domain}/accuracy"] = hits.mean().item()
            correct.append(hits)
        metrics["val/accuracy"] = torch.cat(correct).mean().item()
        metrics["val/loss"] = torch.cat(losses).mean().item()
        return metrics

    def validation_line(self, metrics: dict, domains) -> str:
        by_domain = ", ".join(f"{domain} {metrics[f'val/{domain}/accuracy']:.1%}" for domain in domains)
        return f"accuracy {metrics['val/accuracy']:.1%} ({by_domain}), loss {metrics['val/loss']:.3f}"

    def description(self, config: TrainConfig) -> str:
        return (f"sequence classifier that tells which of {', '.join(config.data.sources)} a window of "
                f"{config.data.seq_len} tokens comes from")

    def card_validation(self, config: TrainConfig, metrics: dict) -> list[str]:
        domains = list(config.data.sources)
        return [
            f"Final validation (windows of {config.data.seq_len} tokens from the validation documents, the same "
            f"number per domain, at most {config.training.eval_blocks}; chance is {1 / len(domains):.1%}):",
            "",
            "| domain | accuracy |",
            "|---|---:|",
            *(f"| {domain} | {metrics[f'val/{domain}/accuracy']:.1%} |" for domain in domains),
            f"| all | {metrics['val/accuracy']:.1%} |",
        ]

    def card_usage(self, model_path: str) -> list[str]:
        return [
            "```python",
            "from transformers import pipeline",
            "",
            REMOTE_CODE_COMMENT,
            f'classify = pipeline("text-classification", model={model_path!r}, trust_remote_code=True)',
            'print(classify("def main():\\n    return 0"))',
            "```",
        ]


from .audio_task import AudioLanguageModeling  # noqa: E402  (it builds on Task, above)

TASKS = {task.name: task for task in (CausalLanguageModeling(), DomainClassification(), AudioLanguageModeling())}
