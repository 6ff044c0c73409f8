"""Running a study, phase by phase, into one output folder:

    sweep     each family's representative config, briefly, at each learning rate   OUT/sweep/FAMILY-lrRATE/
    train     every model (headline models at every seed) at its family's rate       OUT/runs/MODEL-seedSEED/
    evaluate  the length evaluation (ssmlm-eval-length's) over every trained model:  OUT/evaluation/
              1x-16x the training length, both regimes, the context gain; and the    OUT/within/
              within-length check
    time      a training step and greedy decoding of every model, interleaved        OUT/timing.json
    report    results.json and results.md from all of the above                      OUT/results.{json,md}

A training run or phase already done is not done again, so an interrupted study continues where it stopped (a
run stopped midway resumes from its newest checkpoint)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import datasets
import torch
from transformers.utils import logging as transformers_logging

from ..model.configuration import SSMLMConfig
from ..model.modeling import SSMLMForCausalLM
from ..benchmark.measure import make_generation, make_training_step, run_interleaved, torch_threads
from ..benchmark.runs import machine_info
from ..cli.entry import CHECK_FAILED, OK
from ..evaluation import DEFAULT_STREAM_CHUNK, DEFAULT_TEXT_COLUMN, REGIMES, default_baseline_stride
from ..evaluation.extrapolation import DataSpec, Settings, evaluate, write_outputs
from ..tooling.saved_models import load, pick_device
from ..training import ConfigError, TrainConfig, TrainingDiverged, load_config, train
from ..training.checkpoints import latest_checkpoint
from . import PHASES
from .plan import StudyPlan
from .records import RUN_RECORD, read_json, run_dir, write_json
from .report import gather, write_report

SWEEP_EXTENSIONS = 2  # rates a family's sweep may add past the edge of its grid


def reset_accelerate_state() -> None:
    """Accelerate keeps process-wide state (the first Accelerator's settings); each run of the study builds its
    own, as a separate `ssmlm-train` process would."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def parameter_count(model_dir: Path) -> int:
    """The saved model's parameter count (a tied weight once), built on the meta device from its config."""
    with torch.device("meta"):
        model = SSMLMForCausalLM(SSMLMConfig.from_pretrained(model_dir))
    return sum(parameter.numel() for parameter in model.parameters())


def evaluation_settings(lengths: list[int], train_length: int, bucket_size: int, regimes: list[str],
                        max_documents: int | None, baseline_context: int) -> Settings:
    """The evaluation's Settings, with ssmlm-eval-length's defaults for what the plan does not choose (a truncated
    piece of a quarter of the truncated context, as its --baseline-stride)."""
    return Settings(lengths=lengths, train_length=train_length, bucket_size=bucket_size, regimes=regimes,
                    stream_chunk=DEFAULT_STREAM_CHUNK, max_window_length=None, max_documents=max_documents,
                    concatenate_documents=False, baseline_context=baseline_context,
                    baseline_stride=default_baseline_stride(baseline_context))


def train_and_record(config_name: str, settings: list[str], output_dir: Path, log: Callable[[str], None]) -> dict:
    """Train `config_name` with `settings` into `output_dir`, in this process, and write its record beside the model:
    the run's settings, its seconds, parameters, median training tokens/s, and its final validation, test and data
    metrics (the audio-lm task's unigram floor is a data metric). A run with a record is not trained again; one
    stopped midway resumes from its newest checkpoint. A run that diverges is a result (status "diverged: ..."), not
    a failure."""
    record_path = output_dir / RUN_RECORD
    if (record := read_json(record_path)) is not None:
        log(f"{output_dir}: done before")
        return record
    config = load_config(config_name, [*settings, f"output.dir={output_dir}"])
    resume = latest_checkpoint(output_dir) is not None
    log(f"{output_dir}: training {config_name}" + (" (resumed)" if resume else ""))
    start = time.perf_counter()
    try:
        final = train(config, resume=resume, overwrite=output_dir.exists() and not resume)
        status = "ok"
    except TrainingDiverged as error:  # a sweep's highest rate may diverge: a result, not a failure
        final, status = {}, f"diverged: {error}"
    finally:
        reset_accelerate_state()
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [record["train/tokens_per_second"] for record in metrics if "train/tokens_per_second" in record]
    record = {
        "config": config_name,
        "status": status,
        "seconds": time.perf_counter() - start,
        "learning_rate": config.training.learning_rate,
        "ssm_learning_rate": config.training.ssm_learning_rate,
        "seed": config.training.seed,
        "steps": config.training.max_steps,
        "tokens": config.training.max_steps * config.training.batch_size * config.data.seq_len,
        "parameters": parameter_count(output_dir) if status == "ok" else None,
        "train_tokens_per_second": statistics.median(speeds) if speeds else None,
        **{part: {key.removeprefix(prefix): value for key, value in final.items() if key.startswith(prefix)}
           for part, prefix in (("validation", "val/"), ("test", "test/"), ("data", "data/"))},
    }
    write_json(record_path, record)
    return record


@dataclass
class Study:
    plan: StudyPlan
    out: Path
    corpus: Path | None = None  # DIR/DOMAIN/{train,validation,test}.jsonl instead of the configs' own data
    extra_settings: list[str] = field(default_factory=list)  # --set KEY=VALUE, for every run, after the plan's
    threads: int | None = None  # torch threads of the evaluation and timing (training sets none)
    log: Callable[[str], None] = print

    # ------------------------------------------------------------------------------------------------------------
    # Settings of one run.

    def data_settings(self, config_name: str) -> list[str]:
        if self.corpus is None:
            return []
        domains = load_config(config_name, self.plan.settings).data.sources
        settings = ["data.build_corpus=null"]
        for domain in domains:
            settings += [f"data.sources.{domain}.train={self.corpus / domain / 'train.jsonl'}",
                         f"data.sources.{domain}.validation={self.corpus / domain / 'validation.jsonl'}"]
        return settings

    def run_settings(self, config_name: str, *more: str) -> list[str]:
        return [*self.plan.settings, *self.data_settings(config_name), *more, *self.extra_settings]

    def learning_rate_settings(self, config_name: str, learning_rate: float) -> list[str]:
        """The rate for the weights, and the SSM parameters' rate scaled with it (the config's ratio kept)."""
        training = load_config(config_name, self.plan.settings).training
        ssm_rate = learning_rate * training.ssm_learning_rate / training.learning_rate
        return [f"training.learning_rate={learning_rate!r}", f"training.ssm_learning_rate={ssm_rate!r}"]

    # ------------------------------------------------------------------------------------------------------------
    # One training run, in this process.

    def train_run(self, config_name: str, settings: list[str], output_dir: Path) -> dict:
        return train_and_record(config_name, settings, output_dir, self.log)

    # ------------------------------------------------------------------------------------------------------------
    # The phases.

    def sweep(self) -> dict:
        results = {}
        for family, sweep in self.plan.sweep.families.items():
            runs, rates = {}, sorted(sweep.learning_rates)
            while True:
                for rate in rates:
                    if rate not in runs:
                        settings = self.run_settings(sweep.config, *self.plan.sweep.settings,
                                                     *self.learning_rate_settings(sweep.config, rate))
                        runs[rate] = self.train_run(sweep.config, settings,
                                                    self.out / "sweep" / f"{family}-lr{rate:g}")
                losses = {rate: runs[rate]["validation"].get("loss", float("inf")) for rate in rates}
                best = min(losses, key=losses.get)
                # A best rate at the edge of the grid, strictly better than its neighbour, may not be the best one:
                # the grid grows by a factor of 2 past that edge, at most SWEEP_EXTENSIONS times.
                if len(rates) >= len(sweep.learning_rates) + SWEEP_EXTENSIONS or len(rates) < 2:
                    break
                if best == rates[-1] and losses[best] < losses[rates[-2]]:
                    rates.append(best * 2)
                elif best == rates[0] and losses[best] < losses[rates[1]]:
                    rates.insert(0, best / 2)
                else:
                    break
            results[family] = {"config": sweep.config, "best": best,
                               "runs": [{"learning_rate": rate, **runs[rate]} for rate in rates]}
            self.log(f"sweep {family}: validation loss {', '.join(f'{r:g}: {v:.4f}' for r, v in losses.items())}; "
                     f"best {best:g}")
        write_json(self.out / "sweep.json", results)
        return results

    def swept_rates(self) -> dict[str, float]:
        sweep = read_json(self.out / "sweep.json") or {}
        return {family: result["best"] for family, result in sweep.items()}

    def train_models(self) -> dict:
        rates = self.swept_rates()
        runs = {}
        for name, seed in self.plan.runs():
            entry = self.plan.models[name]
            rate = rates.get(entry.family)
            settings = self.run_settings(entry.config, f"training.seed={seed}",
                                         *(self.learning_rate_settings(entry.config, rate) if rate else []))
            runs.setdefault(name, {})[str(seed)] = self.train_run(entry.config, settings, run_dir(self.out, name, seed))
        width = max(map(len, runs))
        self.log("parameters:\n" + "\n".join(f"  {name:<{width}} {next(iter(seeds.values()))['parameters']:>12,}"
                                              for name, seeds in runs.items()))
        return runs

    @cached_property
    def shared_config(self) -> TrainConfig:
        """The first model's config with the study's settings: its data, training length and batch are every
        model's (the plan's settings set them for all)."""
        first = next(iter(self.plan.models.values())).config
        return load_config(first, self.run_settings(first))

    def evaluation_data(self) -> list[DataSpec]:
        """The test split beside each domain's validation file."""
        return [DataSpec(domain, str(Path(source.validation).with_name("test.jsonl")))
                for domain, source in self.shared_config.data.sources.items()]

    def domains(self) -> list[str]:
        return list(self.shared_config.data.sources)

    def train_length(self) -> int:
        return self.shared_config.data.seq_len

    def evaluation_runs(self) -> dict[str, Settings]:
        """The evaluation's two runs, by the folder each writes: 1x-16x the training length in both regimes with a
        training-length truncated context, and the training length alone, streaming, with a short one."""
        evaluation, length = self.plan.evaluation, self.train_length()
        if evaluation.within_context > length:
            raise ConfigError(f"evaluation.within_context: {evaluation.within_context} is longer than the training "
                              f"length {length}: the truncated context must fit in every window")
        return {
            "evaluation": evaluation_settings(sorted({length * multiplier for multiplier in evaluation.multipliers}),
                                              length, evaluation.bucket_size, list(REGIMES),
                                              evaluation.max_documents, baseline_context=length),
            "within": evaluation_settings([length], length, evaluation.within_context, ["streaming"],
                                          evaluation.within_max_documents, baseline_context=evaluation.within_context),
        }

    def evaluate_models(self) -> dict:
        """The length evaluation twice over every trained model; by folder, the exit code ssmlm-eval-length would
        give: 1 where the regimes disagree, a result. An error (a model or the data) stops the study, one line."""
        model_dirs = [run_dir(self.out, name, seed) for name, seed in self.plan.runs()]
        specs = self.evaluation_data()
        device = pick_device("auto")
        datasets.disable_progress_bars()  # one progress bar: the evaluation's
        transformers_logging.disable_progress_bar()
        codes = {}
        for folder, settings in self.evaluation_runs().items():
            out = self.out / folder
            if (out / "results.json").exists():
                self.log(f"{out}: done before")
                continue
            self.log(f"evaluating into {out}")
            start = time.perf_counter()
            with torch_threads(self.threads or torch.get_num_threads()):
                results = evaluate(model_dirs, specs, settings, device, DEFAULT_TEXT_COLUMN,
                                   self.shared_config.data.cache_dir)
            summary = write_outputs(results, out)
            self.log(f"{summary}; wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'perplexity.png'}")
            codes[folder] = CHECK_FAILED if summary.startswith("DISAGREE") else OK
            write_json(out / "study-phase.json", {"seconds": time.perf_counter() - start, "exit_code": codes[folder]})
        return codes

    def time_models(self) -> dict:
        """A training step at the training shape and greedy decoding after each prompt length, for the first seed of
        every model, interleaved in rounds (ssmlm.benchmark's closures): the models see the same machine noise."""
        if (timing := read_json(self.out / "timing.json")) is not None:
            self.log(f"{self.out / 'timing.json'}: done before")
            return timing
        plan, length = self.plan.timing, self.train_length()
        device = torch.device("cpu")
        first_seed = self.plan.seeds[0]
        batch_size = self.shared_config.training.batch_size
        start = time.perf_counter()
        with torch_threads(self.threads or torch.get_num_threads()):
            models = {name: load(run_dir(self.out, name, first_seed), device, torch.float32)[1]
                      for name in self.plan.models}
            self.log(f"timing training steps of {batch_size} x {length} tokens")
            steps, failures = run_interleaved(
                {name: make_training_step(model, length, device, batch_size=batch_size,
                                          vocab_size=model.config.vocab_size) for name, model in models.items()},
                plan.repeats)
            timing = {"batch_size": batch_size, "length": length, "repeats": plan.repeats,
                      "new_tokens": plan.new_tokens, "machine": machine_info(device), "models": {}}
            for name in models:
                seconds = [sample["seconds"] for sample in steps.get(name, [])]
                timing["models"][name] = {
                    "train_tokens_per_second": batch_size * length / statistics.median(seconds) if seconds else None,
                    "train_status": failures.get(name, "ok"), "decoding": {}}
            for multiplier in plan.prompt_multipliers:
                prompt = multiplier * length
                self.log(f"timing greedy decoding after {prompt}-token prompts")
                generations, failures = run_interleaved(
                    {name: make_generation(model, prompt, plan.new_tokens, device,
                                           vocab_size=model.config.vocab_size) for name, model in models.items()},
                    plan.repeats)
                for name in models:
                    samples = generations.get(name, [])
                    timing["models"][name]["decoding"][str(prompt)] = {
                        "status": failures.get(name, "ok"),
                        "ms_per_token": statistics.median(s["decode_ms_per_token"] for s in samples) if samples
                        else None,
                        "prefill_s": statistics.median(s["prefill_s"] for s in samples) if samples else None,
                    }
        timing["seconds"] = time.perf_counter() - start
        write_json(self.out / "timing.json", timing)
        return timing

    def check(self) -> None:
        """Every config of the plan loads with the study's settings (ConfigError naming the key otherwise)."""
        configs = [entry.config for entry in self.plan.models.values()]
        configs += [sweep.config for sweep in self.plan.sweep.families.values()]
        for config in dict.fromkeys(configs):
            load_config(config, self.run_settings(config))
        self.evaluation_runs()  # the evaluation's settings too, before anything is trained

    def disagreed(self) -> bool:
        """Whether the evaluation's window and streaming regimes disagreed anywhere."""
        evaluation = read_json(self.out / "evaluation" / "results.json") or {}
        return any(result.get("agreement", {}).get("verdict", "agree") != "agree"
                   for model in evaluation.get("models", []) for result in model["results"])

    def report(self) -> dict:
        """results.json and results.md, from the other phases' outputs."""
        results = gather(self.plan, self.out, self.train_length(), self.domains(), self.corpus, self.extra_settings)
        write_report(results, self.out)
        self.log(f"wrote {self.out / 'results.json'} and {self.out / 'results.md'}")
        return results

    def run(self, phases: list[str]) -> None:
        steps = {"sweep": self.sweep, "train": self.train_models, "evaluate": self.evaluate_models,
                 "time": self.time_models, "report": self.report}
        durations = read_json(self.out / "durations.json") or {}
        for phase in PHASES:
            if phase not in phases:
                continue
            start = time.perf_counter()
            steps[phase]()
            durations[phase] = durations.get(phase, 0.0) + time.perf_counter() - start
            write_json(self.out / "durations.json", durations)
