"""The recall suite (issue 31; `ssmlm-recall --out reports/recall`): which sequence mixers can carry a token across
a long distance, measured on synthetic tasks (ssmlm/data/recall.py) for every kernel and block.

The sweep: one small model per entry of `sweep_models()` (GSS with every kernel of the registry, the plain SSM
block, H3, Mega and Mega-chunk, attention, the GSS and H3 hybrids), each the `model` section of a shipped config
at the suite's width and depth, trained on MQAR over a curriculum of lengths (64 -> 256 -> 1,024 -> 4,096 by
default; each stage continues the previous stage's model, as a fixed CPU budget cannot learn 4,096 from scratch)
and scored after each stage on that length's test sequences: Zoology's (gaps mostly short) for the headline
accuracy, and sequences with uniform gaps for accuracy against the distance to the key. At the second length,
MQAR with other numbers of pairs is scored as well (trained with `pairs`). Every model gets the same steps and
batches; its seconds are reported.

Table 1 of the H3 paper in the same run: its associative recall (vocabulary 10, 20 key and value tokens) and
induction head (vocabulary 20, length 30) for attention, H3, S4D (the plain SSM block), GSS and Mega, 2 blocks of
width 32, trained on every next token as the paper's were.

Models run in `workers` processes of one thread each. A model's record (RUNS/NAME.json) is written when it is done
and not redone, so an interrupted sweep continues; the runs folder is stamped with the settings, and runs of other
settings are refused. The report: OUT/recall.json, OUT/README.md, OUT/recall.png.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import get_cosine_schedule_with_warmup

from ..benchmark.runs import machine_info
from ..data import recall as tasks
from ..model.configuration import SSMLMConfig
from ..model.kernels import KERNELS
from ..model.modeling import SSMLMForCausalLM
from ..shipped import shipped_config_names
from ..training import ConfigError
from ..training.config import TrainingConfig, config_path, read_config_values
from ..training.trainer import parameter_groups
from .records import claim_runs_folder, read_json, write_json
from .recall_report import TABLE1_MODELS, report, write_picture

BLOCK_CONFIGS = {  # the blocks besides GSS, each as a shipped config sets it up
    "ssm-s4d": ("s4-lm-small", {"ssm_kernel": "s4d", "ssm_kernel_options": {"init": "lin"}}),  # H3's S4D baseline
    "h3": ("h3-small", {}),
    "mega": ("mega-small", {}),
    "mega-chunk": ("mega-chunk-small", {}),
    "attention": ("transformer-small", {}),
    "gss-hybrid": ("gss-hybrid-small", {}),
    "h3-hybrid": ("h3-hybrid-small", {}),
}
STAMP = "recall.json"  # in the runs folder: the settings its runs were made with
NOT_SWEPT = {"sashimi": "raw audio's multi-scale U-Net, not a sequence mixer of text"}


def sweep_models() -> dict[str, tuple[str, dict]]:
    """Name -> (config, model overrides): GSS with each kernel of the registry (the shipped gss-KERNEL-small config
    where there is one, else gss-small with that kernel), then the other blocks."""
    shipped, models = shipped_config_names(), {}
    for kernel in KERNELS:
        own = "gss-small" if kernel == "dss" else f"gss-{kernel}-small"
        models[f"gss-{kernel}"] = (own, {}) if own in shipped else ("gss-small", {"ssm_kernel": kernel})
    return models | BLOCK_CONFIGS


def model_section(config: str, overrides: dict, width: int, layers: int, longest: int) -> dict:
    """The config's `model` section at `width` and `layers`: widths the config sets scale with it, the block pattern
    is its last `layers` blocks (a hybrid keeps its attention), and the settings tied to a length (a kernel's
    training length, Mega's position bias) are for the longest length the model will see."""
    model = read_config_values(config_path(config)).get("model")  # only the model section is used
    if not isinstance(model, dict):
        raise ConfigError(f"{config}: no model section to take the block and kernel settings from")
    section = {**model, **overrides}
    scale = width / section.get("hidden_size", SSMLMConfig.hidden_size)
    section.update(hidden_size=width, num_hidden_layers=layers)
    for key in ("intermediate_size", "ssm_size"):
        if section.get(key) is not None:
            section[key] = max(1, round(section[key] * scale))
    pattern = section.get("block_types") or ["gss"]
    section["block_types"] = [pattern[(len(pattern) - layers + index) % len(pattern)] for index in range(layers)]
    option = getattr(KERNELS[section.get("ssm_kernel", SSMLMConfig.ssm_kernel)], "TRAINING_LENGTH_OPTION", None)
    if option:
        section["ssm_kernel_options"] = {**(section.get("ssm_kernel_options") or {}), option: longest}
    if "mega" in section["block_types"]:
        mega = (section.get("block_options") or {}).get("mega") or {}
        section["block_options"] = {**section.get("block_options", {}),
                                    "mega": {**mega, "max_positions": max(longest, 2048)}}
    return section


def model_config(config: str, overrides: dict, width: int, layers: int, longest: int, vocab: int) -> SSMLMConfig:
    section = model_section(config, overrides, width, layers, longest)
    try:
        return SSMLMConfig(**section, vocab_size=vocab)
    except Exception as error:  # strict validation: its last line names the field
        problem = str(error).strip().splitlines()[-1].strip().removeprefix("ValueError: ")
        raise ConfigError(f"{config} at --width {width}, --layers {layers}, --vocab {vocab}: {problem}") from None


def build_model(config: str, overrides: dict, width: int, layers: int, longest: int, vocab: int, seed: int):
    torch.manual_seed(seed)
    return SSMLMForCausalLM(model_config(config, overrides, width, layers, longest, vocab))


@dataclass(frozen=True)
class Stage:
    length: int
    steps: int
    batch_size: int


@dataclass(frozen=True)
class RecallSettings:
    task: str = "mqar"  # mqar, associative-recall, induction-head or selective-copy
    stages: tuple[Stage, ...] = (Stage(64, 600, 64), Stage(256, 400, 16), Stage(1024, 300, 4), Stage(4096, 100, 1))
    pairs: int = 8  # MQAR's key-value pairs (selective copying: its data tokens)
    pairs_scored: tuple[int, ...] = (4, 16, 32)  # MQAR scored with these as well, at the second stage's length
    width: int = 64
    layers: int = 2
    vocab: int = 256
    test_size: int = 64  # test sequences per set
    learning_rate: float = 2e-3
    ssm_learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1  # of each stage's steps, then cosine decay to 0
    table1_steps: int = 3000  # steps of batch 32 for each Table 1 task and model
    table1_width: int = 32
    seed: int = 0

    def training(self, learning_rate: float | None = None) -> TrainingConfig:
        return TrainingConfig(learning_rate=learning_rate or self.learning_rate,
                              ssm_learning_rate=self.ssm_learning_rate, weight_decay=self.weight_decay)


QUICK = RecallSettings(stages=(Stage(64, 12, 8), Stage(128, 6, 4)), pairs=4, pairs_scored=(2,), width=16,
                       test_size=16, table1_steps=10, table1_width=16)


def check_settings(settings: RecallSettings, models: dict[str, tuple[str, dict]]) -> None:
    """One-line errors naming the option, before any model is built or trained: the task's lengths, pairs and
    vocabulary, and every model's config at the width, depth and vocabulary asked."""
    tasks.check(settings.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {settings.task!r}")
    tasks.check(settings.width >= 1 and settings.layers >= 1, "--width and --layers must be at least 1")
    tasks.check(settings.table1_steps >= 1, f"--table1-steps must be at least 1, got {settings.table1_steps}")
    for stage in settings.stages:
        tasks.check(stage.steps >= 1 and stage.batch_size >= 1, f"--steps and --batch-sizes must be at least 1, "
                                                                 f"got {stage.steps} and {stage.batch_size}")
        try:
            TASKS[settings.task].check(stage.length, settings.pairs, settings.vocab)
        except ValueError as error:
            raise ValueError(f"--task {settings.task} with --lengths {stage.length}, --pairs {settings.pairs}, "
                             f"--vocab {settings.vocab}: {error}") from None
    longest = max(stage.length for stage in settings.stages)
    for config, overrides in models.values():
        model_config(config, overrides, settings.width, settings.layers, longest, settings.vocab)


def pairs_scored(settings: RecallSettings, stage: int) -> list[int]:
    """The numbers of pairs MQAR is scored with after the second stage (the first, if it is the only one): the
    settings' and `pairs_scored`, those the length and vocabulary can hold."""
    if settings.task != "mqar" or stage != min(1, len(settings.stages) - 1):
        return []
    length = settings.stages[stage].length
    return [pairs for pairs in sorted({settings.pairs, *settings.pairs_scored})
            if length >= 4 * pairs and settings.vocab >= 2 * pairs + 2]


@dataclass(frozen=True)
class Task:
    """A task of ssmlm/data/recall.py as the harness calls it: make(count, length, pairs, vocab, seed, uniform)."""
    make: Callable
    check: Callable


TASKS = {
    "mqar": Task(lambda count, length, pairs, vocab, seed, uniform=False: tasks.mqar(
                     count, length, pairs, vocab, seed, power_a=1.0 if uniform else 0.01),
                 lambda length, pairs, vocab: tasks.check_mqar(length, pairs, vocab, 0.01)),
    "associative-recall": Task(lambda count, length, pairs, vocab, seed, uniform=False: tasks.associative_recall(
                                   count, length, vocab, seed),
                               lambda length, pairs, vocab: tasks.check_associative_recall(length, vocab)),
    "induction-head": Task(lambda count, length, pairs, vocab, seed, uniform=False: tasks.induction_head(
                               count, length, vocab, seed),
                           lambda length, pairs, vocab: tasks.check_induction_head(length, vocab)),
    "selective-copy": Task(lambda count, length, pairs, vocab, seed, uniform=False: tasks.selective_copy(
                               count, length, pairs, vocab, seed),
                           lambda length, pairs, vocab: tasks.check_selective_copy(length, pairs, vocab)),
}


def data_seed(*parts) -> int:
    """A seed for one data set, from what it is for (seed, task, split, length, pairs, step): a stable hash, so
    that train and test never share one and every process draws the same."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def train_steps(model, make_batches: Callable[[int], tasks.RecallBatch], steps: int, batch_size: int,
                training: TrainingConfig, accelerator: Accelerator, warmup_fraction: float) -> dict:
    """`steps` AdamW steps (the trainer's parameter groups) of `batch_size` sequences from make_batches(step), on
    each position's target; warmup then cosine decay. The last loss and the seconds."""
    optimizer = torch.optim.AdamW(parameter_groups(model, training), betas=(training.adam_beta1, training.adam_beta2))
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, round(warmup_fraction * steps)), steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    start, loss = time.perf_counter(), None
    for step in range(steps):
        batch = make_batches(step)
        loss = model(input_ids=batch.input_ids.to(accelerator.device), return_logits=False,
                     shift_labels=batch.targets.to(accelerator.device)).loss
        accelerator.backward(loss)
        if training.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    return {"steps": steps, "batch_size": batch_size, "final_loss": loss.item(),
            "seconds": time.perf_counter() - start}


@torch.no_grad()
def score(model, batch: tasks.RecallBatch, chunk: int = 16) -> dict:
    """Greedy accuracy at every query (argmax over the whole vocabulary), with its distance."""
    device = next(model.parameters()).device
    correct = []
    for rows in range(0, len(batch), chunk):
        part = batch[rows: rows + chunk]
        hidden = model.model(input_ids=part.input_ids.to(device)).last_hidden_state
        picked = hidden.gather(1, part.queries.to(device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        correct.append((model.lm_head(picked).argmax(-1).cpu() == part.answers))
    correct = torch.cat(correct)
    return {"accuracy": correct.float().mean().item(), "chance": batch.chance,
            "bins": distance_bins(correct.flatten(), batch.distances.flatten())}


def distance_bins(correct: torch.Tensor, distances: torch.Tensor) -> list[dict]:
    """Accuracy by distance in powers of two: the bin [2^k, 2^(k+1)) as {"from": 2^k, "queries", "accuracy"}."""
    exponents = distances.clamp(min=1).log2().floor().long()
    return [{"from": 2 ** int(k), "queries": int((exponents == k).sum()),
             "accuracy": correct[exponents == k].float().mean().item()} for k in exponents.unique().tolist()]


def train_on_curriculum(name: str, config: str, overrides: dict, settings: RecallSettings) -> dict:
    """One model through the stages; after each, its test accuracy at that length (and at the second length, with
    the other numbers of pairs)."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    task, longest = TASKS[settings.task], max(stage.length for stage in settings.stages)
    model = build_model(config, overrides, settings.width, settings.layers, longest, settings.vocab, settings.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    record = {"model": name, "config": config, "overrides": overrides, "parameters": model.num_parameters(),
              "block_types": model.config.block_types, "ssm_kernel": model.config.ssm_kernel, "stages": []}
    for index, stage in enumerate(settings.stages):
        def make_batch(step, length=stage.length, size=stage.batch_size):
            return task.make(size, length, settings.pairs, settings.vocab,
                             data_seed(settings.seed, settings.task, "train", length, settings.pairs, step))
        result = {"length": stage.length, "pairs": settings.pairs,
                  **train_steps(model, make_batch, stage.steps, stage.batch_size, settings.training(),
                                accelerator, settings.warmup_fraction)}
        model = accelerator.unwrap_model(model)
        tests = {"headline": False, "uniform": True} if settings.task == "mqar" else {"headline": False}
        for test, uniform in tests.items():
            result[test] = score(model, task.make(settings.test_size, stage.length, settings.pairs, settings.vocab,
                                                  data_seed(settings.seed, settings.task, test, stage.length,
                                                            settings.pairs), uniform))
        if counts := pairs_scored(settings, index):
            result["by_pairs"] = {str(pairs): score(model, task.make(
                settings.test_size, stage.length, pairs, settings.vocab,
                data_seed(settings.seed, settings.task, "headline", stage.length, pairs)))["accuracy"]
                for pairs in counts}
        record["stages"].append(result)
    record["seconds"] = sum(stage["seconds"] for stage in record["stages"])
    record["total_seconds"] = time.perf_counter() - start  # with building the data and scoring
    return record


def train_table1(name: str, config: str, overrides: dict, settings: RecallSettings) -> dict:
    """The H3 paper's Table 1 for one model: associative recall (vocabulary 10, 20 key and value tokens) and the
    induction head (vocabulary 20, length 30), 5,000 training sequences repeated, batch 32, every next token."""
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    record = {"model": name}
    for task_name, length, vocab in (("associative-recall", 20, 10), ("induction-head", 30, 20)):
        task = TASKS[task_name]
        model = build_model(config, overrides, settings.table1_width, 2, length + 2, vocab, settings.seed)
        train = task.make(5000, length, 0, vocab, data_seed(settings.seed, task_name, "train", length))
        order = torch.Generator().manual_seed(settings.seed)

        def make_batch(step, train=train):
            return train[torch.randint(0, len(train), (32,), generator=order)]
        result = train_steps(model, make_batch, settings.table1_steps, 32, settings.training(), accelerator,
                             settings.warmup_fraction)
        test = task.make(500, length, 0, vocab, data_seed(settings.seed, task_name, "test", length))
        record[task_name] = {**result, **score(accelerator.unwrap_model(model), test)}
    record["seconds"] = sum(record[task]["seconds"] for task in ("associative-recall", "induction-head"))
    return record


@dataclass
class RecallSweep:
    out: Path
    runs: Path
    settings: RecallSettings = field(default_factory=RecallSettings)
    models: dict[str, tuple[str, dict]] = field(default_factory=sweep_models)
    workers: int = 2
    table1: bool = True
    log: Callable[[str], None] = print

    def jobs(self) -> list[tuple[Path, Callable]]:
        jobs = [(self.runs / f"{name}.json", partial(train_on_curriculum, name, config, overrides, self.settings))
                for name, (config, overrides) in self.models.items()]
        if self.table1:
            models = sweep_models()
            jobs += [(self.runs / "table1" / f"{name}.json",
                      partial(train_table1, name, *models[name], self.settings)) for name in TABLE1_MODELS.values()]
        return jobs

    def check(self) -> None:
        check_settings(self.settings, self.models)

    def run(self) -> dict:
        self.check()
        claim_runs_folder(self.runs, {"settings": asdict(self.settings)}, STAMP)
        todo = [(path, job) for path, job in self.jobs() if not path.exists()]
        self.log(f"{len(todo)} of {len(self.jobs())} models to train, {self.workers} at a time")
        if self.workers == 1:
            for path, job in todo:
                self.finish(path, job())
        else:
            with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
                futures = [(path, pool.submit(job)) for path, job in todo]
                for path, future in futures:
                    self.finish(path, future.result())
        results = {"settings": asdict(self.settings), "machine": machine_info(torch.device("cpu")),
                   "models": [read_json(path) for path, _ in self.jobs() if path.parent == self.runs],
                   "table1": [read_json(path) for path, _ in self.jobs() if path.parent != self.runs]}
        write_json(self.out / "recall.json", results)
        (self.out / "README.md").write_text(report(results), encoding="utf-8")
        write_picture(results, self.out / "recall.png")
        return results

    def finish(self, path: Path, record: dict) -> None:
        write_json(path, record)
        self.log(f"{record['model']}: done in {record['seconds']:.0f} s")
