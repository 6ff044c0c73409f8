"""The study command (ssmlm/study, `ssmlm-study`): the shipped plan end to end at its --quick size on the tiny corpus,
continuing where it stopped, its plan's errors, and the rules that judge the papers' claims."""

import json
import shutil

import pytest

from fixtures.tiny_corpus import DOMAINS
from runs import REPO
from ssmlm.cli.study import main
from ssmlm.study.plan import ClaimsPlan, EvaluationPlan, FamilySweep, ModelEntry, StudyPlan, SweepPlan, load_plan
from ssmlm.study.report import judge_claims
from ssmlm.study import runner
from ssmlm.study.runner import SWEEP_EXTENSIONS, Study
from ssmlm.tooling.saved_models import UsageError
from ssmlm.training import ConfigError, TrainingStopped, load_config

PLAN_MODELS = {"gss-dss", "gss-s4d", "gss-s4", "gss-dss-softmax", "gss-dlr", "gss-s5", "gss-liquid-s4", "gss-sgconv",
               "ssm-s4", "ssm-dss", "mega-chunk", "mega", "h3", "h3-hybrid", "gss-hybrid", "transformer"}


@pytest.fixture(scope="module")
def study_corpus(corpus, tmp_path_factory):
    """The tiny corpus with a test split (its validation documents: the quick study only checks the plumbing)."""
    root = tmp_path_factory.mktemp("study_corpus")
    for domain in DOMAINS:
        shutil.copytree(corpus / domain, root / domain)
        shutil.copy(root / domain / "validation.jsonl", root / domain / "test.jsonl")
    return root


@pytest.fixture(scope="module")
def quick_study(study_corpus, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    code = main(["--quick", "--corpus", str(study_corpus), "--out", str(out), "--set", f"data.cache_dir={cache_dir}",
                 "--threads", "1"])
    assert code == 0
    return out


def test_the_shipped_plan_names_every_model_of_the_papers():
    plan = load_plan("small")
    assert set(plan.models) == PLAN_MODELS
    assert set(plan.sweep.families) == {"gss", "ssm", "mega", "h3", "transformer"}
    assert all(len(sweep.learning_rates) >= 2 for sweep in plan.sweep.families.values())
    assert len(plan.seeds) >= 2 and all(plan.models[name].headline for name in ("gss-dss", "transformer"))


@pytest.mark.slow
def test_the_quick_study_runs_end_to_end(quick_study):
    results = json.loads((quick_study / "results.json").read_text())
    plan = load_plan("small")
    assert set(results["quality"]) == PLAN_MODELS
    for name, entry in plan.models.items():  # every model trained once per seed it is due, at its family's rate
        seeds = results["runs"][name]
        assert len(seeds) == (len(plan.seeds) if entry.headline else 1)
        assert all(run["status"] == "ok" and run["parameters"] > 0 for run in seeds.values())
        assert {run["learning_rate"] for run in seeds.values()} == {results["sweep"][entry.family]["best"]}
        assert set(results["lengths"][name]) == set(DOMAINS)
        assert set(results["within"][name]) == set(DOMAINS)
        timing = results["timing"]["models"][name]
        assert timing["train_tokens_per_second"] > 0
        assert all(decoding["ms_per_token"] > 0 for decoding in timing["decoding"].values())
    assert {family: len(sweep["runs"]) for family, sweep in results["sweep"].items()} == {
        family: len(sweep.learning_rates) for family, sweep in plan.sweep.families.items()}
    assert len(results["claims"]) == 8 and all(row["verdict"] for row in results["claims"])
    assert set(results["durations_seconds"]) == {"sweep", "train", "evaluate", "time"}  # before the report
    report = (quick_study / "results.md").read_text()
    assert "## The papers' claims" in report and "gss-liquid-s4" in report
    assert (quick_study / "evaluation" / "perplexity.png").exists() and (quick_study / "within" / "results.md").exists()


@pytest.mark.slow
def test_a_study_run_again_continues_and_trains_nothing_twice(quick_study, study_corpus, cache_dir, capsys):
    before = {path: path.stat().st_mtime_ns for path in quick_study.glob("runs/*/model.safetensors")}
    assert main(["--quick", "--corpus", str(study_corpus), "--out", str(quick_study),
                 "--set", f"data.cache_dir={cache_dir}", "--phases", "sweep", "train", "report"]) == 0
    assert "done before" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in quick_study.glob("runs/*/model.safetensors")} == before


def test_plan_errors_name_the_key(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("models:\n  a: {config: gss-small, family: gss, headlin: true}\n")
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    assert "models.a.headlin: unknown key" in capsys.readouterr().err
    plan.write_text("models:\n  a: {config: gss-small, family: gss}\nsweep:\n  families:\n"
                    "    ssm: {config: s4-lm-small, learning_rates: [1e-3]}\n")
    with pytest.raises(ConfigError, match="models.a.family: 'gss' is not swept"):
        load_plan(str(plan))
    plan.write_text("models:\n  a: {config: gss-small, family: gss}\nsettings: [training.max_step=3]\n")
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    assert "training.max_step: unknown key" in capsys.readouterr().err
    assert main(["--plan", "no-such-plan", "--out", str(tmp_path / "out")]) == 2
    assert "the shipped plans are small" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


PLAN = ("models:\n  a: {config: gss-small, family: gss}\n"
        "sweep:\n  families:\n    gss: {config: gss-small, learning_rates: [1e-3]}\n")


@pytest.mark.parametrize("change, message", [
    (("[1e-3]", "[]"), "sweep.families.gss.learning_rates: give at least one learning rate"),
    (("[1e-3]", "[1e-3, 0]"), "sweep.families.gss.learning_rates: each must be a positive number, got 0.0"),
    (("[1e-3]", "[-1e-3]"), "sweep.families.gss.learning_rates: each must be a positive number, got -0.001"),
    (("", "seeds: [0, -1]\n"), "seeds: each must be in [0, 2**32), as training.seed, got -1"),
    (("", f"seeds: [{2**32}]\n"), f"seeds: each must be in [0, 2**32), as training.seed, got {2**32}"),
    (("", "evaluation: {multipliers: [0]}\n"), "evaluation.multipliers: must be at least 1, got 0"),
    (("", "evaluation: {multipliers: []}\n"), "evaluation.multipliers: give at least one"),
    (("", "timing: {repeats: 0}\n"), "timing.repeats: must be at least 1, got 0"),
    (("", "quick: {evaluation: {bucket_size: -1}}\n"), "quick.evaluation.bucket_size: must be at least 1, got -1"),
    (("", "claims: {gss: b}\n"), "claims.gss: 'b' is not a model of the plan; its models are a"),
    (("", "claims: {kernels: [a, b]}\n"), "claims.kernels[1]: 'b' is not a model of the plan; its models are a"),
    (("", "claims: {close_nats: -1}\n"), "claims.close_nats: must be a number at least 0, got -1.0"),
])
def test_a_plan_value_the_phases_cannot_use_is_refused_before_anything_trains(change, message, tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    old, new = change
    plan.write_text(PLAN.replace(old, new) if old else PLAN + new)
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"ssmlm-study: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_a_plan_that_is_not_utf8_is_one_line(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_bytes(PLAN.encode() + "# caf\xe9\n".encode("latin-1"))
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"ssmlm-study: error: {plan}: not valid UTF-8 (invalid")


@pytest.mark.parametrize("stop, message", [
    (TrainingStopped(3), "ssmlm-study: a run stopped at step 3, with a checkpoint; run the same command to continue "
                         "the study\n"),
    (KeyboardInterrupt(), "ssmlm-study: interrupted; run the same command to continue the study\n"),
])
def test_a_stopped_study_says_how_to_continue_it(stop, message, tmp_path, capsys, monkeypatch):
    """The command to continue a study is the same one: ssmlm-study has no --resume, and says none."""
    def run(self, phases):
        raise stop

    monkeypatch.setattr(Study, "run", run)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out"), "--phases", "sweep"]) == 130
    assert capsys.readouterr().err == message


def test_an_evaluation_that_fails_stops_the_study_with_its_exit_code(tmp_path, monkeypatch, capsys):
    """Its error is one line with the exit code of its kind; 1 (the regimes disagree) is a result, and the study goes
    on."""
    def fail(*args):
        raise UsageError("not a saved model")

    monkeypatch.setattr(runner, "evaluate", fail)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    assert main(["--plan", str(plan), "--out", str(tmp_path / "out"), "--phases", "evaluate"]) == 2
    assert capsys.readouterr().err.endswith("ssmlm-study: error: not a saved model\n")
    monkeypatch.setattr(runner, "evaluate", lambda *args: {})
    monkeypatch.setattr(runner, "write_outputs", lambda results, out: "DISAGREE: the regimes differ")
    models = {"a": ModelEntry("gss-small", "gss")}
    assert Study(StudyPlan(models), tmp_path, log=lambda text: None).evaluate_models() == {"evaluation": 1, "within": 1}
    too_long = StudyPlan(models, evaluation=EvaluationPlan(within_context=10**6))
    for phase in ("check", "evaluate_models"):  # refused before anything trains, and by the phase itself
        with pytest.raises(ConfigError, match="evaluation.within_context: 1000000 is longer than the training length"):
            getattr(Study(too_long, tmp_path / "other", log=lambda text: None), phase)()


def claim_inputs(losses: dict[str, list[float]], gss_lengths: dict | None = None, speeds: dict | None = None) -> dict:
    """The gathered figures judge_claims reads, made up."""
    return {
        "quality": {name: {"mean": sum(values) / len(values), "seeds": values, "spread": max(values) - min(values)}
                    for name, values in losses.items()},
        "noise": {"nats": max((max(v) - min(v) for v in losses.values() if len(v) > 1), default=0.0)},
        "lengths": {"gss-dss": gss_lengths} if gss_lengths else {},
        "timing": {"models": {name: {"train_tokens_per_second": speed} for name, speed in (speeds or {}).items()}},
        "plan": {"evaluation": {"multipliers": [1, 16]}},
        "train_length": 256,
    }


def verdicts(results: dict, plan: ClaimsPlan | None = None) -> dict[str, str]:
    return {row["claim"]: row["verdict"] for row in judge_claims(results, plan or ClaimsPlan())}


def test_claims_are_judged_against_the_seed_noise():
    close_nats = ClaimsPlan().close_nats
    losses = {"gss-dss": [5.00, 5.02], "gss-hybrid": [4.90, 4.92], "transformer": [5.10, 5.11],
              "h3": [5.10 + close_nats + 0.01], "h3-hybrid": [5.10, 5.10], "mega": [5.0], "mega-chunk": [5.03],
              "ssm-dss": [5.00], "gss-s4": [5.3]}
    judged = verdicts(claim_inputs(losses, speeds={"gss-dss": 3000.0, "ssm-dss": 1000.0}))
    assert judged["The GSS-Transformer hybrid is better than GSS alone"] == "holds"  # -0.10, noise 0.02
    assert judged["The H3 hybrid (H3 + 2 attention layers) beats the Transformer"] == "within noise"
    assert judged["H3 alone comes close to a Transformer"] == "does not hold"
    assert judged["Mega-chunk's quality is close to full-attention Mega's, at linear cost"] == "holds"
    assert judged["GSS trains 2-3x faster than a plain DSS layer at similar quality"] == "holds"
    kernels = [claim for claim in judged if claim.startswith("S4, S4D")][0]
    assert judged[kernels] == "does not hold"  # S4 0.3 nats from the median
    losses["gss-hybrid"] = [5.2, 5.2]
    assert verdicts(claim_inputs(losses))["The GSS-Transformer hybrid is better than GSS alone"] == "does not hold"


def test_the_claims_compare_the_models_the_plan_casts_in_them():
    """A model renamed in the plan keeps its claims where the plan's claims section names it; a plan whose claim
    names no model of the plan is refused."""
    losses = {"h3": [5.10], "attention": [5.10, 5.11]}
    claim = "H3 alone comes close to a Transformer"
    assert verdicts(claim_inputs(losses))[claim] == "absent"  # no model is named transformer
    assert verdicts(claim_inputs(losses), ClaimsPlan(transformer="attention"))[claim] == "holds"
    models = {name: ModelEntry("gss-small", "gss") for name in losses}
    with pytest.raises(ConfigError, match="claims.transformer: 'transformer' is not a model of the plan"):
        StudyPlan(models, claims=ClaimsPlan(transformer="transformer"))


def test_context_use_needs_a_gain_beyond_two_standard_errors_in_every_domain():
    def lengths(gain, error, long_perplexity=90.0):
        seed = {"context_gain": gain, "context_gain_standard_error": error, "windows": 3}
        return {domain: {"256": {"perplexity": 100.0, "seeds": {}},
                         "4096": {"perplexity": long_perplexity, "seeds": {"0": seed}}} for domain in DOMAINS}

    use = "GSS keeps improving as the context grows: it uses context beyond its training length"
    worse = "GSS trained at 256 tokens does not get worse on longer contexts"
    assert verdicts(claim_inputs({}, lengths(0.05, 0.01)))[use] == "holds"
    assert verdicts(claim_inputs({}, lengths(0.01, 0.01)))[use] == "does not hold"
    assert verdicts(claim_inputs({}, lengths(0.05, 0.01)))[worse] == "holds"
    assert verdicts(claim_inputs({}, lengths(0.05, 0.01, long_perplexity=110.0)))[worse] == "does not hold"
    absent = verdicts(claim_inputs({"gss-dss": [5.0]}))
    assert absent["The GSS-Transformer hybrid is better than GSS alone"] == "absent"


@pytest.mark.parametrize("losses, best, tried", [
    ({1e-3: 3.0, 2e-3: 2.0, 4e-3: 1.5, 8e-3: 1.8}, 4e-3, [1e-3, 2e-3, 4e-3, 8e-3]),  # grows up to a minimum
    ({2.5e-4: 1.5, 5e-4: 1.0, 1e-3: 2.0, 2e-3: 3.0}, 5e-4, [2.5e-4, 5e-4, 1e-3, 2e-3]),  # and down
    ({1e-3: 3.0, 2e-3: 2.0, 4e-3: 1.0, 8e-3: 0.5}, 8e-3, [1e-3, 2e-3, 4e-3, 8e-3]),  # at most SWEEP_EXTENSIONS
    ({1e-3: 2.0, 2e-3: 2.0}, 1e-3, [1e-3, 2e-3]),  # a tie is no reason to grow
])
def test_the_sweep_grows_past_an_edge_of_its_grid_that_wins(losses, best, tried, tmp_path):
    plan = StudyPlan(models={"a": ModelEntry("gss-small", "gss")},
                     sweep=SweepPlan([], {"gss": FamilySweep("gss-small", [1e-3, 2e-3])}))
    study = Study(plan, tmp_path, log=lambda text: None)
    trained = []

    def train_run(config, settings, output_dir):
        rate = float(next(s for s in settings if s.startswith("training.learning_rate=")).partition("=")[2])
        trained.append(rate)
        return {"validation": {"loss": losses[rate]}}

    study.train_run = train_run
    result = study.sweep()["gss"]
    assert SWEEP_EXTENSIONS == 2 and result["best"] == best
    assert sorted(trained) == tried and [run["learning_rate"] for run in result["runs"]] == tried


def test_the_shipped_configs_train_at_the_rates_the_committed_study_chose():
    """The learning-rate check's choices (reports/study-small) are the configs' rates, for every model of the plan,
    with the SSM parameters at half the rate as in the sweep."""
    chosen = json.loads((REPO / "reports" / "study-small" / "sweep.json").read_text())
    for name, entry in load_plan("small").models.items():
        training = load_config(entry.config).training
        assert training.learning_rate == chosen[entry.family]["best"], name
        assert training.ssm_learning_rate == training.learning_rate / 2, name
