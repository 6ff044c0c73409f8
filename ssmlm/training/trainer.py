"""The training loop: plain PyTorch with Accelerate for devices, processes, mixed precision and checkpoints.

    train(load_config("configs/gss-small.yaml"))

One step is one optimizer update over `gradient_accumulation_steps` micro-batches on every process, so the global
batch is batch_size x processes x accumulation blocks; a run on 2 processes and one on 1 process with twice the
accumulation see the same blocks in the same order and follow the same losses. The same code runs on one CPU,
several CPU ranks over gloo, GPUs with DDP, DeepSpeed ZeRO or FSDP: the launcher's Accelerate config decides.

Output directory:
    checkpoints/checkpoint-N/   Accelerate `save_state` (model, optimizer, scheduler, RNG) + trainer_state.json
    logs/                       tracker logs (TensorBoard by default)
    metrics.jsonl               one JSON record per logged step and per validation pass
    train_config.yaml           the resolved configuration
    config.json, model.safetensors, tokenizer files: the final model, for from_pretrained / generate.py
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, ProjectConfiguration
from accelerate.utils import is_tensorboard_available, set_seed
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.packing import pack_documents
from ..data.sources import load_documents
from ..data.tokenizer import get_tokenizer
from ..host_memory import keep_freed_host_memory
from ..kernels import DiagonalSSM
from ..modeling import SSMLMForCausalLM
from .config import ConfigError, TrainConfig, dump_config

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "trainer_state.json"  # written last: a checkpoint without it is incomplete


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints: written to checkpoint-N.tmp and renamed when complete, so a crash never leaves a "latest" that is
# half-written.


def complete_checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    found = []
    for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and (path / CHECKPOINT_MARKER).is_file():
            found.append((int(step), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = complete_checkpoints(Path(output_dir) / "checkpoints")
    return checkpoints[-1][1] if checkpoints else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> Path:
    checkpoint_dir = output_dir / "checkpoints"
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{step}"
    partial = checkpoint_dir / f"{final.name}.tmp"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run that died while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))  # every process writes its part (RNG states, ZeRO shards)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / CHECKPOINT_MARKER).write_text(json.dumps({"step": step}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for _, old in complete_checkpoints(checkpoint_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def checkpoint_step(checkpoint: Path) -> int:
    marker = checkpoint / CHECKPOINT_MARKER
    if not marker.is_file():
        raise ConfigError(f"{checkpoint} is not a complete checkpoint (no {CHECKPOINT_MARKER})")
    return json.loads(marker.read_text())["step"]


def check_output_dir(output_dir: Path, resume: bool, resume_from: str | None, overwrite: bool) -> Path | None:
    """Refuse to write into an existing run unless told to overwrite or resume it; return the checkpoint to resume
    from, if any. Every process checks before any of them changes anything, so all take the same decision."""
    if resume_from is not None:
        checkpoint_step(Path(resume_from))  # raises unless complete
        return Path(resume_from)
    if resume:
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint in {output_dir / 'checkpoints'}")
        return checkpoint
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output directory {output_dir} already exists; pass --overwrite to replace it, "
                          f"or --resume to continue its latest checkpoint")
    return None


# ---------------------------------------------------------------------------------------------------------------
# Pieces of the run.


def build_accelerator(config: TrainConfig) -> Accelerator:
    handlers = []
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available():
        # DeepSpeed on CPU: ranks must be told to talk over gloo (else a batch-size assertion fails), and its
        # shared-memory communication op is JIT-compiled on first use (~2 minutes) unless switched off.
        import deepspeed

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    tracker = config.output.tracker
    tensorboard_missing = tracker == "tensorboard" and not is_tensorboard_available()
    accelerator = Accelerator(
        mixed_precision=config.training.mixed_precision,
        # Steps are counted here, so an epoch's end must not force an early optimizer step.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.training.gradient_accumulation_steps, sync_with_dataloader=False),
        log_with=None if tensorboard_missing else tracker,
        project_config=ProjectConfiguration(project_dir=config.output.dir,
                                            logging_dir=str(Path(config.output.dir) / "logs")),
        # Shuffle order from (seed, epoch): the same on every process and after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.training.seed),
        # The scheduler is stepped once per optimizer step, whatever the number of processes.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )
    if tensorboard_missing:
        accelerator.print("warning: output.tracker is 'tensorboard' but the tensorboard package is not installed; "
                          "logging to metrics.jsonl only (pip install tensorboard)")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # else each process would train alone, all writing the same files
        raise ConfigError(f"{launched} processes were launched but Accelerate joined {accelerator.num_processes}; "
                          f"without a GPU, launch DDP with ACCELERATE_USE_CPU=1 and DeepSpeed without it (FSDP "
                          f"needs GPUs)")
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed clips inside its engine: give it our threshold where its config says "auto".
        accelerator.state.deepspeed_plugin.fill_match(
            "gradient_clipping", must_match=False, gradient_clipping=config.training.max_grad_norm)
    return accelerator


def prepare_data(config: TrainConfig):
    """(tokenizer, training blocks of all domains, {domain: validation blocks})."""
    documents = load_documents(config.data)
    tokenizer = get_tokenizer(config.tokenizer, {domain: splits["train"] for domain, splits in documents.items()},
                              config.data.cache_dir)

    def pack(split_documents):
        return pack_documents(split_documents, tokenizer, config.data.seq_len, config.data.num_proc)

    train_blocks = {domain: pack(splits["train"]) for domain, splits in documents.items()}
    validation_blocks = {}
    for domain, splits in documents.items():
        blocks = pack(splits["validation"])
        if len(blocks) == 0:
            raise ConfigError(f"data.sources.{domain}.validation: shorter than one block of data.seq_len="
                              f"{config.data.seq_len} tokens")
        if len(blocks) > config.training.eval_blocks:
            blocks = blocks.shuffle(seed=config.data.seed).select(range(config.training.eval_blocks))
        validation_blocks[domain] = blocks
    return tokenizer, datasets.concatenate_datasets(list(train_blocks.values())), validation_blocks


def parameter_groups(model: torch.nn.Module, training) -> list[dict]:
    """AdamW groups: SSM kernel parameters with their own learning rate and no weight decay; weight decay on
    the other matrices only (not on norms, biases or the SSM skip term)."""
    ssm = {id(p) for module in model.modules() if isinstance(module, DiagonalSSM) for p in module.parameters()}
    groups = {"decay": [], "no_decay": [], "ssm": []}
    for parameter in model.parameters():
        if parameter.requires_grad:
            kind = "ssm" if id(parameter) in ssm else "decay" if parameter.ndim >= 2 else "no_decay"
            groups[kind].append(parameter)
    settings = {
        "decay": {"weight_decay": training.weight_decay},
        "no_decay": {"weight_decay": 0.0},
        "ssm": {"weight_decay": 0.0, "lr": training.ssm_learning_rate},
    }
    return [{"params": params, "name": kind, **settings[kind]} for kind, params in groups.items() if params]


def micro_batches(loader, start_batch: int):
    """Endless micro-batches from the seeded loader, starting `start_batch` batches in (mid-epoch after a resume)."""
    epoch, skip = divmod(start_batch, len(loader))
    for epoch in itertools.count(epoch):
        loader.set_epoch(epoch)
        yield from skip_first_batches(loader, skip) if skip else loader
        skip = 0


@torch.no_grad()
def evaluate(model, loaders: dict, accelerator: Accelerator) -> dict[str, float]:
    """Mean next-token loss and perplexity on each domain's validation blocks, and over all of them."""
    model.eval()
    block_losses = {}
    for domain, loader in loaders.items():
        losses = []
        for batch in loader:
            ids = batch["input_ids"]
            logits = model(input_ids=ids, use_cache=False).logits
            per_block = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none").mean(1)
            losses.append(accelerator.gather_for_metrics(per_block))
        block_losses[domain] = torch.cat(losses)
    model.train()
    metrics = {}
    # Blocks have equal length, so the mean over blocks is the mean over tokens.
    for name, losses in [*block_losses.items(), ("all", torch.cat(list(block_losses.values())))]:
        prefix = "val" if name == "all" else f"val/{name}"
        metrics[f"{prefix}/loss"] = losses.mean().item()
        metrics[f"{prefix}/ppl"] = math.exp(metrics[f"{prefix}/loss"])
    return metrics


class MetricsLog:
    """metrics.jsonl on the main process; after a resume, records past the resumed step are dropped first."""

    def __init__(self, path: Path, enabled: bool, start_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def flat_hyperparameters(config: TrainConfig) -> dict:
    """The config as flat scalars, as trackers (TensorBoard hparams) want."""
    def flatten(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                yield from flatten(f"{prefix}.{key}" if prefix else key, item)
        else:
            yield prefix, value if isinstance(value, (int, float, str, bool)) else str(value)
    return dict(flatten("", config.to_dict()))


# ---------------------------------------------------------------------------------------------------------------
# The run.


def train(config: TrainConfig, resume: bool = False, resume_from: str | None = None,
          overwrite: bool = False) -> dict:
    """Train as `config` says; returns the final validation metrics. With `resume`, continue from `resume_from`
    or else the latest complete checkpoint in the output directory."""
    output_dir = Path(config.output.dir)
    checkpoint = check_output_dir(output_dir, resume, resume_from, overwrite)
    accelerator = build_accelerator(config)
    if accelerator.device.type == "cpu" and config.training.keep_freed_host_memory:
        keep_freed_host_memory()
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()
    # The main process tokenizes and packs first; the others then read its cache.
    with accelerator.main_process_first():
        tokenizer, train_blocks, validation_blocks = prepare_data(config)
    # The output directory is touched only once the data is known to be good.
    if accelerator.is_main_process:
        if overwrite and output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(dump_config(config))
    accelerator.wait_for_everyone()

    training = config.training
    set_seed(training.seed)  # the same initial weights on every process
    model = SSMLMForCausalLM(config.model_config(tokenizer))
    num_parameters = model.num_parameters()  # before ZeRO-3 or FSDP shard them
    optimizer = torch.optim.AdamW(parameter_groups(model, training), lr=training.learning_rate,
                                  betas=(training.adam_beta1, training.adam_beta2))
    scheduler = get_cosine_schedule_with_warmup(optimizer, training.warmup_steps, training.max_steps)
    train_loader = DataLoader(train_blocks, batch_size=training.batch_size, shuffle=True, drop_last=True)
    validation_loaders = {domain: DataLoader(blocks, batch_size=training.batch_size)
                          for domain, blocks in validation_blocks.items()}
    model, optimizer, train_loader, scheduler, *prepared = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *validation_loaders.values())
    validation_loaders = dict(zip(validation_loaders, prepared))
    if len(train_loader) < training.gradient_accumulation_steps:
        raise ConfigError(f"data: {len(train_blocks)} training blocks of {config.data.seq_len} tokens are fewer "
                          f"than one step needs ({training.batch_size} x {accelerator.num_processes} processes x "
                          f"{training.gradient_accumulation_steps} accumulation)")

    start_step = 0
    if checkpoint is not None:
        start_step = checkpoint_step(checkpoint)
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"Resumed from {checkpoint} at step {start_step}")

    accelerator.init_trackers("ssmlm", config=flat_hyperparameters(config))
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process, start_step)
    tokens_per_step = (training.batch_size * accelerator.num_processes * training.gradient_accumulation_steps
                       * config.data.seq_len)
    accelerator.print(f"{num_parameters:,} parameters; {len(train_blocks):,} training "
                      f"blocks of {config.data.seq_len} tokens; {tokens_per_step:,} tokens per step on "
                      f"{accelerator.num_processes} process(es) ({accelerator.distributed_type})")

    progress = tqdm(total=training.max_steps, initial=start_step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process)

    def record(step, metrics):
        accelerator.log(metrics, step=step)
        log.write({"step": step, **metrics})

    def validate(step):
        metrics = evaluate(model, validation_loaders, accelerator)
        record(step, metrics)
        if accelerator.is_local_main_process:
            progress.write(f"step {step}: validation " + ", ".join(
                f"{domain} {metrics[f'val/{domain}/loss']:.3f} (ppl {metrics[f'val/{domain}/ppl']:.1f})"
                for domain in validation_loaders))
        return metrics

    metrics = validate(start_step) if start_step == 0 else {}
    batches = micro_batches(train_loader, start_step * training.gradient_accumulation_steps)
    model.train()
    window_loss = torch.zeros((), device=accelerator.device)  # summed step losses since the last record
    window_steps, window_seconds, grad_norm = 0, 0.0, None
    for step in range(start_step + 1, training.max_steps + 1):
        step_start = time.perf_counter()
        for _ in range(training.gradient_accumulation_steps):
            ids = next(batches)["input_ids"]
            with accelerator.accumulate(model):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            window_loss += loss.detach() / training.gradient_accumulation_steps
        window_steps += 1
        window_seconds += time.perf_counter() - step_start  # training time only: not validation or saving
        progress.update(1)

        if step % config.output.log_every == 0 or step == training.max_steps:
            mean_loss = accelerator.reduce(window_loss, "mean").item() / window_steps
            tokens_per_second = window_steps * tokens_per_step / window_seconds
            step_metrics = {"train/loss": mean_loss, "train/tokens_per_second": tokens_per_second,
                            **{f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}}
            if grad_norm is not None:
                step_metrics["train/grad_norm"] = float(grad_norm)
            record(step, step_metrics)
            progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}")
            window_loss.zero_()
            window_steps, window_seconds = 0, 0.0
        if step % training.eval_every == 0 or step == training.max_steps:
            metrics = validate(step)
        if step % config.output.save_every == 0 or step == training.max_steps:
            save_checkpoint(accelerator, output_dir, step, config.output.keep_checkpoints)
    progress.close()

    # The final model and its tokenizer, loadable with from_pretrained, generate.py and pipeline().
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
        state_dict=accelerator.get_state_dict(model))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(output_dir)
    accelerator.end_training()
    return metrics
