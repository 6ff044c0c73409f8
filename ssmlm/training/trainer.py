"""The training loop: plain PyTorch with Accelerate for devices, processes, mixed precision and checkpoints.

    train(load_config("configs/gss-small.yaml"))

One step is one optimizer update over `gradient_accumulation_steps` micro-batches on every process, so the global
batch is batch_size x processes x accumulation blocks; a run on 2 processes and one on 1 process with twice the
accumulation see the same blocks in the same order and follow the same losses. The same code runs on one CPU,
several CPU ranks over gloo, GPUs with DDP, DeepSpeed ZeRO or FSDP: the launcher's Accelerate config decides.

Nothing is written before the whole run is checked: the config, the data, the tokenizer, the model, the
checkpoint to resume from. A non-finite loss or gradient norm stops the run (TrainingDiverged) before the bad
update is saved; SIGINT or SIGTERM (Ctrl-C) stops it after the current step, with a checkpoint (TrainingStopped).

Output directory:
    ssmlm-run.json              the run's marker, locked while a process writes the run (run_dir.py)
    checkpoints/checkpoint-N/   verified checkpoints (checkpoints.py)
    logs/                       tracker logs (TensorBoard by default)
    metrics.jsonl               one JSON record per logged step and per validation pass
    train_config.yaml           the configuration of the latest segment; an earlier segment's, if it differs, is
                                kept as train_config.until-step-N.yaml
    config.json, model.safetensors, tokenizer files: the final model, for from_pretrained / generate.py
    ssmlm-files.json            the size and SHA-256 of each file of the final model, written last; every loader of
                                ssmlm checks them (tooling/saved_models.py)
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import sys
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.tracking import get_available_trackers
from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, ProjectConfiguration, TorchDynamoPlugin
from accelerate.utils import broadcast_object_list, set_seed
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.sources import is_local, matching_paths, shared_files
from ..model.kernels import SSMKernel
from ..tooling.memory import keep_freed_host_memory
from ..tooling.saved_models import model_files, write_manifest
from . import checkpoints
from .config import ConfigError, TrainConfig, dump_config
from .metrics_log import MetricsLog, TrainingLog, flat_hyperparameters
from .model_card import model_card
from .run_dir import abandon_start, check_not_busy, check_replaceable, check_writable, finish_run, free_path
from ..model.legacy import is_legacy_run
from .run_dir import is_empty, is_run, is_unfinished_replacement, readable_by_all, replaced_path
from .run_dir import start_run
from .stop_requests import StopRequests
from .tasks import TASKS, Task


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite; nothing after the last good checkpoint was saved."""


class TrainingStopped(RuntimeError):
    """SIGINT or SIGTERM stopped the run after `step`, which was saved as a checkpoint."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}, saved as checkpoint-{step}; continue with --resume")
        self.step = step


# ---------------------------------------------------------------------------------------------------------------
# Before anything is written: what the command line asks of the output directory, checked without changing it.


def warn(accelerator: Accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, file=sys.stderr, flush=True)


def start_mode(output_dir: Path, resume: bool, resume_from: str | None, overwrite: bool,
               protected: list[Path]) -> str:
    """"new", "continue" or "overwrite" (see run_dir.start_run), once the directory is known to allow it."""
    check_writable(output_dir)
    if resume or resume_from is not None:
        if not (is_empty(output_dir) or is_run(output_dir) or is_legacy_run(output_dir)):
            raise ConfigError(f"output directory {output_dir} exists and is not an ssmlm run; choose another "
                              f"output.dir to resume into")
        check_not_busy(output_dir)
        return "continue"
    if is_empty(output_dir):
        return "new"
    if not overwrite:
        raise ConfigError(f"output directory {output_dir} already exists; pass --overwrite to replace it, "
                          f"or --resume to continue its latest checkpoint")
    check_replaceable(output_dir, protected)
    check_not_busy(output_dir)
    return "overwrite"


def read_paths(config: TrainConfig, config_file: str | None) -> list[Path]:
    """What this run reads and `--overwrite` must never delete: local data files, the config, the tokenizer, the
    data cache, the corpus folder and the model it starts from."""
    paths = [Path(config.data.cache_dir)]
    for source in config.data.sources.values():
        for specs in (source.train, source.validation, source.test or []):
            paths += matching_paths([spec for spec in ([specs] if isinstance(specs, str) else specs) if is_local(spec)])
    for path in (config_file, config.tokenizer.path, config.data.build_corpus, config.training.init_from):
        if path:
            paths.append(Path(path))
    return paths


def on_main_process(accelerator: Accelerator, action):
    """Run `action` on the main process only; a ConfigError or OSError it raises is raised on every process (the
    others wait for its outcome, and must not wait forever)."""
    outcome = [None]
    if accelerator.is_main_process:
        try:
            action()
        except ConfigError as error:
            outcome = [("config", str(error))]
        except OSError as error:
            outcome = [("os", error.errno, error.strerror or str(error), error.filename or "output.dir")]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[0] is None:
        return
    kind, *details = outcome[0]
    raise ConfigError(*details) if kind == "config" else OSError(*details)


def keep_config(output_dir: Path, config: TrainConfig, start_step: int) -> None:
    """Write train_config.yaml; an earlier segment's different one is kept as train_config.until-step-N.yaml."""
    path = output_dir / checkpoints.CONFIG_FILE
    text = dump_config(config)
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        os.rename(path, free_path(output_dir / f"train_config.until-step-{start_step}.yaml"))
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Pieces of the run.


def drop_tied_copies(models, weights: list[dict], output_dir: str) -> None:
    """Before a checkpoint: of names that share one tensor (the tied output embedding is the input one), keep the
    first. accelerate's save_state would drop the same names itself, with a warning at every checkpoint; loading
    restores them through the tie."""
    for state in weights:
        storages = set()
        for name in list(state):
            storage = state[name].untyped_storage().data_ptr()
            if storage in storages:
                del state[name]
            storages.add(storage)


def build_accelerator(config: TrainConfig) -> Accelerator:
    if not torch.cuda.is_available():
        # DeepSpeed (imported by accelerate whenever it is installed) guesses its accelerator and warns when it
        # finds no GPU; on a CPU machine, tell it.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    handlers = []
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available():
        # DeepSpeed on CPU: ranks must be told to talk over gloo (else a batch-size assertion fails), and its
        # shared-memory communication op is JIT-compiled on first use (~2 minutes) unless switched off.
        import deepspeed

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    tracker = config.output.tracker
    if tracker not in (None, "all", *(available.value for available in get_available_trackers())):
        raise ConfigError(f"output.tracker: {tracker!r} is not installed (pip install {tracker}), or set "
                          f"output.tracker to null")
    accelerator = Accelerator(
        mixed_precision=config.training.mixed_precision,
        # Steps are counted here, so an epoch's end must not force an early optimizer step.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.training.gradient_accumulation_steps, sync_with_dataloader=False),
        log_with=tracker,
        project_config=ProjectConfiguration(project_dir=config.output.dir,
                                            logging_dir=str(Path(config.output.dir) / "logs")),
        # Shuffle order from (seed, epoch): the same on every process and after a resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.training.seed),
        # The scheduler is stepped once per optimizer step, whatever the number of processes.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
        # Compiled in prepare(); dynamic, so a new length (a shorter last validation batch, a longer eval) is not a
        # new graph.
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", dynamic=True) if config.training.compile else None,
    )
    precision = config.training.mixed_precision
    if precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("training.mixed_precision: fp16 needs a GPU (its loss scaling is CUDA's); on the CPU use "
                          "bf16 or \"no\"")
    if precision == "bf16" and accelerator.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("training.mixed_precision: this GPU has no bf16; use fp16 or \"no\"")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:  # else each process would train alone, all writing the same files
        raise ConfigError(f"{launched} processes were launched but Accelerate joined {accelerator.num_processes}; "
                          f"without a GPU, launch DDP with ACCELERATE_USE_CPU=1 and DeepSpeed without it (FSDP "
                          f"needs GPUs)")
    if accelerator.state.deepspeed_plugin is not None:
        # DeepSpeed clips inside its engine: give it our threshold where its config says "auto".
        accelerator.state.deepspeed_plugin.fill_match(
            "gradient_clipping", must_match=False, gradient_clipping=config.training.max_grad_norm or 0.0)
    return accelerator


def parameter_groups(model: torch.nn.Module, training) -> list[dict]:
    """AdamW groups: SSM kernel parameters with their own learning rate and no weight decay; weight decay on
    the other matrices only (not on norms, biases or the SSM skip term)."""
    ssm = {id(p) for module in model.modules() if isinstance(module, SSMKernel) for p in module.parameters()}
    groups = {"decay": [], "no_decay": [], "ssm": []}
    for parameter in model.parameters():
        if parameter.requires_grad:
            kind = "ssm" if id(parameter) in ssm else "decay" if parameter.ndim >= 2 else "no_decay"
            groups[kind].append(parameter)
    settings = group_settings(training)
    return [{"params": params, "name": kind, **settings[kind]} for kind, params in groups.items() if params]


def group_settings(training) -> dict[str, dict]:
    """Each AdamW group's learning rate, weight decay and betas, as the config says."""
    betas = (training.adam_beta1, training.adam_beta2)
    return {
        "decay": {"lr": training.learning_rate, "weight_decay": training.weight_decay, "betas": betas},
        "no_decay": {"lr": training.learning_rate, "weight_decay": 0.0, "betas": betas},
        "ssm": {"lr": training.ssm_learning_rate, "weight_decay": 0.0, "betas": betas},
    }


def apply_optimizer_settings(optimizer, scheduler, training) -> None:
    """The config's optimizer settings over those a resumed checkpoint's optimizer and scheduler state brought back
    (a resume may change them with --allow-change): each group's weight decay and betas, and the schedule's base
    rates, with the current rate where the schedule stands. Unchanged settings give back the same numbers."""
    settings = group_settings(training)
    scheduler = getattr(scheduler, "scheduler", scheduler)  # Accelerate's wrapper holds the LambdaLR
    for index, group in enumerate(optimizer.param_groups):
        wanted = settings[group["name"]]
        group.update(weight_decay=wanted["weight_decay"], betas=wanted["betas"], initial_lr=wanted["lr"])
        scheduler.base_lrs[index] = wanted["lr"]
        group["lr"] = wanted["lr"] * scheduler.lr_lambdas[index](scheduler.last_epoch)


def micro_batches(loader, start_batch: int):
    """Endless micro-batches from the seeded loader, starting `start_batch` batches in (mid-epoch after a resume)."""
    epoch, skip = divmod(start_batch, len(loader))
    for epoch in itertools.count(epoch):
        loader.set_epoch(epoch)
        yield from skip_first_batches(loader, skip) if skip else loader
        skip = 0


def weights_finite(model, accelerator: Accelerator) -> bool:
    """Whether every parameter on every process is finite."""
    finite = all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())
    not_finite_anywhere = accelerator.reduce(torch.tensor(float(not finite), device=accelerator.device), "sum")
    return not_finite_anywhere.item() == 0


class OptimizerStep:
    """One optimizer update over `gradient_accumulation_steps` micro-batches: forward, backward, the gradient norm
    (clipped to training.max_grad_norm), the divergence check, then the update. It keeps the latest gradient norm
    for the log, and whether a stop was requested on any process for the loop."""

    def __init__(self, accelerator: Accelerator, model, optimizer, scheduler, task: Task, batches, training,
                 log: TrainingLog, output_dir: Path):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.task, self.batches, self.log, self.output_dir = task, batches, log, output_dir
        self.accumulation_steps = training.gradient_accumulation_steps
        # Gradient clipping with an infinite threshold measures the norm (for the divergence check) without clipping.
        self.max_grad_norm = training.max_grad_norm or math.inf
        # With fp16 loss scaling, an infinite gradient is routine: the scaler skips that step and lowers the scale.
        self.scaled = accelerator.mixed_precision == "fp16"
        self.grad_norm, self.stop_requested = None, False

    def __call__(self, step: int, stop: StopRequests) -> torch.Tensor:
        """Update `step`; returns its loss on this process, the mean over its micro-batches."""
        step_loss = torch.zeros((), device=self.accelerator.device)
        for _ in range(self.accumulation_steps):
            batch = next(self.batches)
            with self.accelerator.accumulate(self.model):
                loss = self.task.loss(self.model, batch)
                self.accelerator.backward(loss)
                step_loss += loss.detach() / self.accumulation_steps
                if self.accelerator.sync_gradients:
                    self.update(step, step_loss, stop)
        return step_loss

    def update(self, step: int, step_loss: torch.Tensor, stop: StopRequests) -> None:
        grad_norm = self.grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        # One reduction per step: whether any process saw a bad loss or norm, or a stop request.
        flags = torch.tensor([float(not torch.isfinite(step_loss)),
                              float(grad_norm is not None and not self.scaled and not math.isfinite(float(grad_norm))),
                              float(stop.requested)], device=self.accelerator.device)
        bad_loss, bad_norm, self.stop_requested = (self.accelerator.reduce(flags, "sum") > 0).tolist()
        if bad_loss or bad_norm:  # under DeepSpeed the update is made already, but never saved
            self.log.diverged(step, step_loss, grad_norm)
            raise TrainingDiverged(
                f"training diverged at step {step}: the loss is {float(step_loss):.4g} and the "
                f"gradient norm {float(grad_norm) if grad_norm is not None else 'unknown'} "
                f"(on one of the processes, at least); lower training.learning_rate or set "
                f"training.max_grad_norm; {last_good(self.output_dir)}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()


# ---------------------------------------------------------------------------------------------------------------
# The run.


def resume_checkpoint(accelerator: Accelerator, config: TrainConfig, candidates: list[Path],
                      allow_changes: tuple[str, ...], model, optimizer, scheduler) -> int:
    """Load the first intact checkpoint of `candidates` into the prepared objects, once it is known to fit the
    config, with the config's optimizer settings applied over the checkpoint's; return its step. A checkpoint whose
    weights are not finite is damaged, like one whose files are: the next one is tried."""

    def load_verified(checkpoint: Path, state: dict) -> None:
        saved_config = checkpoints.read_config(checkpoint)
        changes = checkpoints.launch_changes(state, checkpoints.launch_facts(accelerator), allow_changes)
        changes += checkpoints.config_changes(saved_config, config, allow_changes) if saved_config else []
        if changes:
            keys = ",".join(change.split(" ")[0] for change in changes)
            raise ConfigError(f"{checkpoint.name} was trained with other settings: {'; '.join(changes)}; to resume "
                              f"with them anyway, pass --allow-change {keys}")
        if state["step"] >= config.training.max_steps:
            raise ConfigError(f"training.max_steps={config.training.max_steps}, and {checkpoint.name} is at step "
                              f"{state['step']}: nothing left to train; raise training.max_steps to train further")
        checkpoints.load(accelerator, checkpoint)
        if not weights_finite(model, accelerator):
            raise checkpoints.DamagedCheckpoint("it holds non-finite weights (NaN or infinity): the run diverged "
                                                "before it was saved")

    checkpoint, state = checkpoints.first_intact(candidates, lambda text: warn(accelerator, text), load_verified)
    start_step = state["step"]
    if "files" not in state:
        warn(accelerator, f"note: {checkpoint.name} was written by ssmlm 0.1.0, which recorded no checksums: its "
                          f"files cannot be verified")
    apply_optimizer_settings(optimizer, scheduler, config.training)
    saved_steps = (checkpoints.read_config(checkpoint) or {}).get("training", {}).get("max_steps")
    if saved_steps not in (None, config.training.max_steps):
        warn(accelerator, f"note: training.max_steps was {saved_steps} and is {config.training.max_steps}: the "
                          f"learning rate follows the cosine schedule to the new end from here, not the old one")
    saved_threads = state.get("launch", {}).get("threads")
    if saved_threads not in (None, torch.get_num_threads()):
        warn(accelerator, f"note: {checkpoint.name} was trained with {saved_threads} threads per process and this "
                          f"run has {torch.get_num_threads()}: its losses will match an uninterrupted run closely, "
                          f"not bit for bit")
    accelerator.print(f"Resumed from {checkpoint} at step {start_step}")
    return start_step


def train(config: TrainConfig, resume: bool = False, resume_from: str | None = None, overwrite: bool = False,
          allow_changes: tuple[str, ...] = (), config_file: str | None = None) -> dict:
    """Train as `config` says; returns the final validation metrics. With `resume`, continue from `resume_from`
    or else the newest intact checkpoint in the output directory; a resumed run whose config differs from the
    checkpoint's in more than FREE_TO_CHANGE is refused unless each differing key (or its section) is in
    `allow_changes`. `config_file` is protected from `overwrite`."""
    output_dir = Path(config.output.dir)
    mode = start_mode(output_dir, resume, resume_from, overwrite, read_paths(config, config_file))
    resume_candidates = checkpoints.candidates(output_dir, resume_from) if mode == "continue" else []
    accelerator = build_accelerator(config)
    if accelerator.device.type == "cpu" and config.training.keep_freed_host_memory:
        keep_freed_host_memory()
    if not accelerator.is_local_main_process:
        datasets.disable_progress_bars()
    # The main process tokenizes and packs first; the others then read its cache.
    task = TASKS[config.task]
    for warning in shared_files(config.data):
        warn(accelerator, warning)
    with accelerator.main_process_first():
        data = task.prepare_data(config)
    tokenizer, train_blocks, validation_blocks, test_blocks = data.tokenizer, data.train, data.validation, data.test

    training = config.training
    blocks_per_step = training.batch_size * accelerator.num_processes * training.gradient_accumulation_steps
    if len(train_blocks) < blocks_per_step:
        raise ConfigError(f"data: {len(train_blocks)} training blocks of {config.data.seq_len} tokens are fewer "
                          f"than one step needs ({training.batch_size} x {accelerator.num_processes} processes x "
                          f"{training.gradient_accumulation_steps} accumulation)")
    set_seed(training.seed)  # the same initial weights on every process
    model = task.build_model(config, tokenizer, list(validation_blocks))
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    num_parameters = model.num_parameters()  # before ZeRO-3 or FSDP shard them
    optimizer = torch.optim.AdamW(parameter_groups(model, training))
    scheduler = get_cosine_schedule_with_warmup(optimizer, training.warmup_steps, training.max_steps)
    train_loader = DataLoader(train_blocks, batch_size=training.batch_size, shuffle=True, drop_last=True)
    validation_loaders = {domain: DataLoader(blocks, batch_size=training.batch_size)
                          for domain, blocks in validation_blocks.items()}
    test_loaders = {domain: DataLoader(blocks, batch_size=training.batch_size)
                    for domain, blocks in test_blocks.items()}
    accelerator.register_save_state_pre_hook(drop_tied_copies)
    model, optimizer, train_loader, scheduler, *prepared = accelerator.prepare(
        model, optimizer, train_loader, scheduler, *validation_loaders.values(), *test_loaders.values())
    validation_loaders = dict(zip(validation_loaders, prepared))
    test_loaders = dict(zip(test_loaders, prepared[len(validation_loaders):]))

    start_step = 0
    if mode == "continue":
        start_step = resume_checkpoint(accelerator, config, resume_candidates, allow_changes, model, optimizer,
                                       scheduler)

    # Everything is checked: only now is the output directory touched.
    lock = None

    def take_output_dir():
        nonlocal lock
        lock = start_run(output_dir, mode, read_paths(config, config_file))
        try:
            keep_config(output_dir, config, start_step)
        except OSError:
            abandon_start(output_dir, mode, replaced=is_unfinished_replacement(output_dir))
            lock.release()
            lock = None
            raise
        for path in checkpoints.set_aside_after(output_dir, start_step):
            warn(accelerator, f"note: {path.name}, of a later step than the one resumed from, is set aside (renamed), "
                              f"not deleted")

    on_main_process(accelerator, take_output_dir)
    try:
        metrics = run_steps(config, accelerator, model, optimizer, scheduler, train_loader, validation_loaders,
                            tokenizer, output_dir, start_step, num_parameters, len(train_blocks), task, test_loaders)
        if accelerator.is_main_process and (warning := finish_run(output_dir)):
            warn(accelerator, warning)
    finally:
        accelerator.end_training()
        if lock is not None:
            lock.release()
    return metrics


def run_steps(config: TrainConfig, accelerator: Accelerator, model, optimizer, scheduler, train_loader,
              validation_loaders: dict, tokenizer, output_dir: Path, start_step: int, num_parameters: int,
              num_blocks: int, task: Task, test_loaders: dict) -> dict:
    """The loop from `start_step` to `training.max_steps`, then the final model and the final checkpoint; the test
    data (`test_loaders`, where the task has any) is scored with the final validation."""
    training = config.training
    accelerator.init_trackers("ssmlm", config=flat_hyperparameters(config))
    metrics_file = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process, start_step)
    tokens_per_step = (training.batch_size * accelerator.num_processes * training.gradient_accumulation_steps
                       * config.data.seq_len)
    accelerator.print(f"{num_parameters:,} parameters; {num_blocks:,} training "
                      f"blocks of {config.data.seq_len} tokens; {tokens_per_step:,} tokens per step on "
                      f"{accelerator.num_processes} process(es) ({accelerator.distributed_type})")

    progress = tqdm(total=training.max_steps, initial=start_step, desc="training", unit="step",
                    disable=not accelerator.is_local_main_process)
    log = TrainingLog(accelerator, metrics_file, progress, tokens_per_step)

    def validate(step):
        model.eval()
        metrics = task.evaluate(model, validation_loaders, accelerator)
        if step == training.max_steps and test_loaders:
            metrics |= task.evaluate(model, test_loaders, accelerator, split="test")
        model.train()
        log.record(step, metrics)
        log.say(f"step {step}: validation " + task.validation_line(metrics, validation_loaders))
        return metrics

    def save_checkpoint(step):
        if not weights_finite(model, accelerator):
            raise TrainingDiverged(f"training diverged by step {step}: the weights are no longer finite; "
                                   f"{last_good(output_dir)}")
        with writing(output_dir / "checkpoints" / f"checkpoint-{step}", output_dir):
            return checkpoints.save(accelerator, output_dir, step, config, config.output.keep_checkpoints)

    metrics = validate(start_step) if start_step == 0 else {}
    batches = micro_batches(train_loader, start_step * training.gradient_accumulation_steps)
    optimizer_step = OptimizerStep(accelerator, model, optimizer, scheduler, task, batches, training, log, output_dir)
    model.train()
    # The bar is closed however the loop ends, so that a message after it starts on a line of its own.
    with StopRequests(log.say, second_stops_at_once=accelerator.num_processes == 1) as stop, progress:
        for step in range(start_step + 1, training.max_steps + 1):
            step_start = time.perf_counter()
            step_loss = optimizer_step(step, stop)
            log.count_step(step_loss, time.perf_counter() - step_start)
            if step % config.output.log_every == 0 or step == training.max_steps:
                log.record_steps(step, optimizer, optimizer_step.grad_norm)
            if step % training.eval_every == 0 or step == training.max_steps:
                metrics = validate(step)
                if not math.isfinite(metrics["val/loss"]):
                    raise TrainingDiverged(f"training diverged by step {step}: the validation loss is "
                                           f"{metrics['val/loss']}; {last_good(output_dir)}")
            if step == training.max_steps:
                break  # the final checkpoint is written after the final model
            if step % config.output.save_every == 0:
                save_checkpoint(step)
            if optimizer_step.stop_requested:
                if step % config.output.save_every:
                    save_checkpoint(step)
                raise TrainingStopped(step)

    # The final model and its tokenizer, loadable with from_pretrained, generate.py and pipeline(); then the last
    # checkpoint, so that a checkpoint at max_steps always comes with its final model.
    if not weights_finite(model, accelerator):
        raise TrainingDiverged(f"the final weights are not finite; no final model was saved; {last_good(output_dir)}")
    accelerator.wait_for_everyone()
    with writing(output_dir, output_dir):
        accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(
            output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
            state_dict=plain_names(accelerator.get_state_dict(model)))
        if accelerator.is_main_process:
            tokenizer_files = [Path(path).name for path in tokenizer.save_pretrained(output_dir)]
            card = model_card(config, accelerator.unwrap_model(model, keep_torch_compile=False), metrics,
                              training.max_steps * tokens_per_step, output_dir)
            (output_dir / "README.md").write_text(card, encoding="utf-8")
            readable_by_all(output_dir)
            write_manifest(output_dir, [*model_files(output_dir), *tokenizer_files])
    save_checkpoint(training.max_steps)
    return metrics


@contextlib.contextmanager
def writing(path: Path, output_dir: Path):
    """A write that failed (a full disk, a quota, a read-only filesystem) as an OSError naming the file, and where the
    run can go on from: torch.save reports it as a RuntimeError and safetensors as a SafetensorError."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, f"{error.strerror or error}; {last_good(output_dir)}",
                      error.filename or str(path)) from error
    except (RuntimeError, SafetensorError) as error:
        raise OSError(errno.EIO, f"writing failed ({error}); {last_good(output_dir)}", str(path)) from error


def last_good(output_dir: Path) -> str:
    """Where a stopped run can go on from, in words."""
    latest = checkpoints.latest_checkpoint(output_dir)
    if latest is not None:
        return f"the newest checkpoint is still {latest}, from before the problem"
    if is_unfinished_replacement(output_dir):
        return f"no checkpoint was written; the run this one replaces is still in {replaced_path(output_dir)}"
    return "no checkpoint was written"


def plain_names(state_dict: dict | None) -> dict | None:
    """The weights under the names of the plain model: Accelerate's state dict of a compiled model (training.compile)
    keeps torch.compile's wrapper, whose `_orig_mod.` prefix on every name would leave from_pretrained, pipeline()
    and init_from with nothing they recognise, and so with random weights. (DeepSpeed ZeRO-3 gathers the weights on
    the main process only: the others have None, and save nothing.)"""
    if state_dict is None:
        return None
    return {name.removeprefix("_orig_mod."): tensor for name, tensor in state_dict.items()}
