"""The variants comparison end to end at toy scale (bench/selftrain_compare.py): the tiny Qwen2
of the study's test on the toy counting task, ReST against GRPO on two seeds and plain against
corrected self-training over two rounds. Every run is evaluated under one prompt, round 0 runs
once, the budgets are checked and recorded, the results JSON's numbers are the saved rows'
numbers, and a rerun runs nothing that is done. Also bench/corrections_baseline.py, the base
policy on a correction pool's own questions."""

import dataclasses
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import selftrain_fixtures as F
from test_selftrain_study import guessing_model, toy_prompts, toy_study  # noqa: F401  (fixtures)

from viprog.errors import UsageError
from viprog.grpo import GrpoOptions
from viprog.runs import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
compare = importlib.import_module("selftrain_compare")
compare_summary = importlib.import_module("compare_summary")


def toy_compare(model, root, **overrides):
    """The study test's toy settings, with the library out of the sampling prompts (the toy
    model knows only the few-shot prompt) and a GRPO learning rate that moves the toy model."""
    selftrain = dataclasses.replace(toy_study(model, root).selftrain, library_shots=0,
                                    grpo=GrpoOptions(questions_per_step=2, learning_rate=5e-3))
    base = {"task": "toy-count", "n_questions": 24, "seeds": (0, 1), "rounds": 1, "out_dir": str(root / "compare"),
            "results_dir": str(root / "results"), "draws": 500, "selftrain": selftrain}
    return compare.CompareConfig(**(base | overrides))


def rewards(cfg, variant, k, seeds=None):
    root = Path(cfg.out_dir) / cfg.task
    return np.array([[r["reward"] for r in read_jsonl(compare.rows_path(root, variant, s, k))]
                     for s in (seeds or cfg.seeds)])


@pytest.fixture(scope="module")
def rest_grpo(guessing_model, toy_prompts, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("compare")
    cfg = toy_compare(guessing_model, root, variants=("rest", "grpo"))
    assert compare.run_compare(cfg) == 0
    return cfg, json.loads((root / "results" / "selftrain_compare_rest_grpo.json").read_text())


@pytest.mark.slow  # four selftrain runs of the tiny model (~1-2 min on 2 loaded cores)
def test_every_number_is_the_mean_of_its_saved_rows(rest_grpo):
    cfg, result = rest_grpo
    assert result["n_questions"] == 24 and result["seeds"] == [0, 1] and set(result["variants"]) == {"rest", "grpo"}
    for variant, per_round in result["variants"].items():
        assert set(per_round) == {"round_0", "round_1"}
        for name, entry in per_round.items():
            lo, hi = entry["ci95"]
            assert 0.0 <= lo <= entry["mean"] <= hi <= 1.0
            assert entry["mean"] == pytest.approx(rewards(cfg, variant, int(name[-1])).mean(), abs=1e-6)
    diff = result["differences"]["grpo - rest"]["round_1"]
    assert diff["mean"] == pytest.approx((rewards(cfg, "grpo", 1) - rewards(cfg, "rest", 1)).mean(), abs=1e-6)
    assert diff["seeds"] == 2 and diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    gain = result["gains_vs_round_0"]["rest"]["round_1"]["mean"]
    assert gain == pytest.approx((rewards(cfg, "rest", 1) - rewards(cfg, "rest", 0)).mean(), abs=1e-6)
    assert result["round_over_round"]["grpo"]["round_1"]["mean"] == pytest.approx(
        result["gains_vs_round_0"]["grpo"]["round_1"]["mean"])
    assert set(result["by_type"]) == set(F.SHAPES) and result["by_type"]["circle"]["n"] == 6
    assert result["by_type_per_round"]["round_1"] == result["by_type"]
    for k in (0, 1):  # each round's types, weighted by their questions, give that round's accuracy
        per_type = result["by_type_per_round"][f"round_{k}"].values()
        assert sum(t["rest"] * t["n"] for t in per_type) / 24 == pytest.approx(rewards(cfg, "rest", k).mean(), abs=1e-5)
    assert result["meta"]["failed_runs"] == [] and "load average" in result["meta"]["load_before"]


@pytest.mark.slow
def test_the_budgets_are_equal_and_recorded(rest_grpo):
    """16 questions × 4 programs a round, for both: planned and as the runs sampled them."""
    _, result = rest_grpo
    budget = result["budget"]
    assert budget["per_round"] == {"rest": 64, "grpo": 64} and budget["equal"] and budget["sampled_equal"]
    assert budget["sampled"] == {v: {f"seed{s}": {"round_1": 64} for s in (0, 1)} for v in ("rest", "grpo")}
    assert result["runs"]["grpo"]["seed0"]["round_1"]["train/steps"] == 8  # GRPO: 2 questions per step
    grpo, rest = result["runs"]["grpo"]["seed0"]["round_1"], result["runs"]["rest"]["seed0"]["round_1"]
    assert 0.0 <= grpo["grpo/frac_reward_zero_std"] <= 1.0 and "grpo/frac_reward_zero_std" not in rest
    assert grpo["memory/peak_rss_mb"] > 0 and rest["memory/peak_rss_mb"] > 0  # the cost claims are in the file


@pytest.mark.slow
def test_every_run_is_evaluated_under_one_prompt_and_round_0_runs_once(rest_grpo):
    cfg, _ = rest_grpo
    root = Path(cfg.out_dir) / cfg.task
    first = None
    for variant in ("rest", "grpo"):
        for seed in cfg.seeds:
            run = root / variant / f"seed{seed}"
            saved = json.loads((run / "config.json").read_text())
            assert (saved["algo"], saved["seed"], saved["eval_size"]) == (variant, seed, 24)
            assert not saved["eval_library"] and saved["base_prompt"] == saved["tuned_prompt"] == "few-shot"
            eval_0 = (run / "round_0" / "eval.jsonl").read_text()
            first = first or eval_0
            assert eval_0 == first  # copied from the first run, not evaluated again
            assert len(read_jsonl(compare.rows_path(root, variant, seed, 1))) == 24


@pytest.mark.slow
def test_outputs_a_table_a_plot_and_all_rows(rest_grpo):
    cfg, result = rest_grpo
    root = Path(cfg.out_dir) / cfg.task
    assert (root / "report.html").read_text().count('class="series"') == 2
    svg = cfg.results_path().with_suffix(".svg").read_text()  # beside the results file, for the docs
    assert svg.startswith("<svg") and svg.count('class="series"') == 2 and "24 questions, 2 seeds" in svg
    assert svg.strip() == compare_summary.plot(result)  # made from the results alone
    table = (root / "table.md").read_text()
    assert "| rest |" in table and "| grpo - rest |" in table and "rest 64, grpo 64 (equal: yes" in table
    assert len(read_jsonl(root / "rows.jsonl")) == 24 * 2 * 2 * 2  # questions × variants × seeds × rounds


@pytest.mark.slow
def test_a_rerun_runs_nothing_that_is_done(rest_grpo, monkeypatch):
    cfg, result = rest_grpo
    import viprog.selftrain

    monkeypatch.setattr(viprog.selftrain, "main", lambda run: pytest.fail(f"{run.runs_dir} run again"))
    assert compare.run_compare(cfg) == 0
    again = json.loads((Path(cfg.results_dir) / "selftrain_compare_rest_grpo.json").read_text())
    assert again["variants"] == result["variants"] and again["differences"] == result["differences"]


def trained_arms_of(rest_grpo, tmp_path, **grpo):
    """The fixture's finished comparison, copied into tmp_path (the module's folder stays as the
    other tests expect it), with --eval-train-prompt and the given GRPO options."""
    cfg, _ = rest_grpo
    shutil.copytree(cfg.out_dir, tmp_path / "compare")
    selftrain = dataclasses.replace(cfg.selftrain, grpo=dataclasses.replace(cfg.selftrain.grpo, **grpo))
    return dataclasses.replace(cfg, eval_train_prompt=True, out_dir=str(tmp_path / "compare"),
                               results_dir=str(tmp_path / "results"), selftrain=selftrain)


def record_cells(monkeypatch):
    """No selftrain run may start; every evaluate_cell call is recorded, then made."""
    import viprog.selftrain

    monkeypatch.setattr(viprog.selftrain, "main", lambda run: pytest.fail(f"{run.runs_dir} run again"))
    calls, real = [], compare.evaluate_cell
    monkeypatch.setattr(compare, "evaluate_cell", lambda *a, **kw: calls.append((a, kw)) or real(*a, **kw))
    return calls


@pytest.mark.slow
def test_adapters_are_also_evaluated_under_the_prompt_they_were_trained_on(rest_grpo, tmp_path, monkeypatch):
    """--eval-train-prompt on finished runs: no run again; ReST's round-1 adapter is evaluated
    under the short prompt it was trained on, and GRPO's (loss taken under the sampling prompt)
    cell is its few-shot one; the summary compares the @train arms with each other and with
    the shared round 0."""
    cfg = trained_arms_of(rest_grpo, tmp_path)
    root = Path(cfg.out_dir) / cfg.task
    calls = record_cells(monkeypatch)
    assert compare.run_compare(cfg) == 0
    evaluated = [(Path(a[1]).parent.name, a[2], kw["style"], kw["adapter"] and Path(kw["adapter"]).parent.name,
                  kw["library"]) for a, kw in calls]
    assert evaluated == [("rest", 0, "short", None, None), ("rest", 1, "short", "round_1", None),
                         ("rest", 1, "short", "round_1", None)]  # the base under the short prompt once, for all seeds
    assert len(read_jsonl(compare.rows_path(root, "rest@train", 0, 1))) == 24
    assert rewards(cfg, "rest@train", 0)[0].tolist() == rewards(cfg, "rest@train", 0)[1].tolist()
    for k in (0, 1):
        assert rewards(cfg, "grpo@train", k).tolist() == rewards(cfg, "grpo", k).tolist()
    result = json.loads((tmp_path / "results" / "selftrain_compare_rest_grpo.json").read_text())
    assert set(result["variants"]["rest@train"]) == {"round_0", "round_1"}
    diff = result["differences"]["grpo@train - rest@train"]["round_1"]
    assert diff["mean"] == pytest.approx((rewards(cfg, "grpo@train", 1) - rewards(cfg, "rest@train", 1)).mean(),
                                         abs=1e-6)
    gain = result["gains_vs_round_0"]["rest@train"]["round_1"]["mean"]  # against the few-shot base
    assert gain == pytest.approx((rewards(cfg, "rest@train", 1) - rewards(cfg, "rest", 0)).mean(), abs=1e-6)
    # the two controls differ on the toy (it knows only the few-shot prompt), so a swap of them would show
    assert rewards(cfg, "rest@train", 0).mean() != rewards(cfg, "rest", 0).mean()
    step = result["round_over_round"]["rest@train"]["round_1"]["mean"]  # against the base under its own prompt
    assert step == pytest.approx((rewards(cfg, "rest@train", 1) - rewards(cfg, "rest@train", 0)).mean(), abs=1e-6)
    assert "| rest@train |" in (root / "table.md").read_text()
    calls.clear()
    assert compare.run_compare(cfg) == 0 and calls == []  # the cells are saved: nothing is evaluated twice


@pytest.mark.slow
def test_grpo_trained_under_the_short_prompt_shares_the_base_cell_with_rest(rest_grpo, tmp_path, monkeypatch):
    """With --grpo.loss-prompt train, GRPO's adapters are trained under the short prompt as
    ReST's are: the base model under it is evaluated once for both variants and both seeds,
    each round-1 adapter once. (The fixture's GRPO runs took their loss under the sampling
    prompt; what is checked is which cells are evaluated and shared, not what was learned.)"""
    cfg = trained_arms_of(rest_grpo, tmp_path, loss_prompt="train")
    calls = record_cells(monkeypatch)
    assert compare.run_compare(cfg) == 0
    evaluated = [(Path(a[1]).parent.name, Path(a[1]).name, a[2], kw["style"]) for a, kw in calls]
    assert evaluated == [("rest", "seed0", 0, "short"), ("rest", "seed0", 1, "short"), ("grpo", "seed0", 1, "short"),
                         ("rest", "seed1", 1, "short"), ("grpo", "seed1", 1, "short")]
    grpo_adapters = {Path(kw["adapter"]).parent.parent.name for a, kw in calls if Path(a[1]).parent.name == "grpo"}
    assert grpo_adapters == {"seed0", "seed1"}  # each seed's own GRPO adapter, not ReST's
    for seed in cfg.seeds:
        assert rewards(cfg, "grpo@train", 0, [seed]).tolist() == rewards(cfg, "rest@train", 0, [0]).tolist()
    result = json.loads((tmp_path / "results" / "selftrain_compare_rest_grpo.json").read_text())
    diff = result["differences"]["grpo@train - rest@train"]["round_1"]
    assert diff["mean"] == pytest.approx((rewards(cfg, "grpo@train", 1) - rewards(cfg, "rest@train", 1)).mean(),
                                         abs=1e-6)


@pytest.mark.slow
def test_a_new_machine_restores_the_comparison_from_its_archive(rest_grpo, tmp_path, monkeypatch):
    """The archive beside the results JSON brings a finished comparison back into an empty
    out_dir: nothing runs or is evaluated, the summary and the round metrics are the same, and
    the archive written again is the same bytes. More rounds on a restored seed (its run is not
    on this machine) and an archive of other settings are refused."""
    cfg, result = rest_grpo
    archive = compare.archive_path(cfg.results_path())
    results = tmp_path / "results"
    shutil.copytree(cfg.results_dir, results)
    fresh = dataclasses.replace(cfg, out_dir=str(tmp_path / "fresh"), results_dir=str(results))
    calls = record_cells(monkeypatch)
    assert compare.run_compare(fresh) == 0 and calls == []
    again = json.loads((results / "selftrain_compare_rest_grpo.json").read_text())
    for key in ("variants", "differences", "gains_vs_round_0", "runs", "budget", "by_type"):
        assert again[key] == result[key], key
    assert (results / archive.name).read_bytes() == archive.read_bytes()
    assert not (tmp_path / "fresh" / cfg.task / "rest" / "seed0").exists()  # restored beside the run folders
    with pytest.raises(UsageError, match="came from the archive"):
        compare.run_compare(dataclasses.replace(fresh, rounds=2))
    with pytest.raises(UsageError, match="came from the archive"):
        compare.run_compare(dataclasses.replace(fresh, eval_train_prompt=True))  # @train cells need the adapters
    other = dataclasses.replace(cfg.selftrain, grpo=dataclasses.replace(cfg.selftrain.grpo, learning_rate=1e-3))
    with pytest.raises(UsageError, match="another --selftrain.grpo"):
        compare.run_compare(dataclasses.replace(fresh, out_dir=str(tmp_path / "other"), selftrain=other))


@pytest.mark.slow
def test_a_restored_comparison_grows_by_a_seed(rest_grpo, tmp_path, monkeypatch):
    """On a new machine the archive's seeds stay as they are and a new seed runs: its round 0
    is the shared one (taken from the archive, not evaluated again), its round 1 is its own."""
    cfg, _ = rest_grpo
    results = tmp_path / "results"
    shutil.copytree(cfg.results_dir, results)
    grown = dataclasses.replace(cfg, variants=("rest",), seeds=(0, 1, 2), out_dir=str(tmp_path / "fresh"),
                                results_dir=str(results), name="rest_grpo")
    import viprog.selftrain

    runs, real = [], viprog.selftrain.main
    monkeypatch.setattr(viprog.selftrain, "main", lambda run: runs.append(run.run_name) or real(run))
    assert compare.run_compare(grown) == 0
    assert runs == ["seed2"]
    root = Path(grown.out_dir) / cfg.task
    assert not (root / "rest" / "seed2" / "round_0" / "eval.jsonl").exists()  # shared, not evaluated again
    assert rewards(grown, "rest", 0, [2]).tolist() == rewards(grown, "rest", 0, [0]).tolist()
    assert len(read_jsonl(compare.rows_path(root, "rest", 2, 1))) == 24
    result = json.loads((results / "selftrain_compare_rest_grpo.json").read_text())
    assert result["variants"]["rest"]["round_1"]["seeds"] == 3
    assert set(result["runs"]["rest"]) == {"seed0", "seed1", "seed2"}


@pytest.mark.slow  # two 2-round selftrain runs of the tiny model
def test_corrections_against_plain_self_training(guessing_model, toy_prompts, tmp_path):  # noqa: F811
    """The corrections variant trains each round on the file's program as well (one more
    training pair than it kept) and the other does not; round over round is recorded."""
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(json.dumps({"query": F.query_for("star"), "program": F.right_program("star"),
                                       "question_id": "train-3"}) + "\n")
    cfg = toy_compare(guessing_model, tmp_path, variants=("plain", "corrections"), seeds=(0,), rounds=2,
                      corrections=str(corrections))
    assert compare.run_compare(cfg) == 0
    result = json.loads((tmp_path / "results" / "selftrain_compare_plain_corrections.json").read_text())
    root = Path(cfg.out_dir) / cfg.task
    assert json.loads((root / "corrections" / "seed0" / "config.json").read_text())["corrections"] == str(corrections)
    assert json.loads((root / "plain" / "seed0" / "config.json").read_text())["corrections"] is None
    for k in (1, 2):
        corrected = result["runs"]["corrections"]["seed0"][f"round_{k}"]
        assert corrected["train/examples"] == corrected["filter/kept"] + 1
        plain = result["runs"]["plain"]["seed0"][f"round_{k}"]
        assert plain.get("train/examples", 0) == plain["filter/kept"]
    assert set(result["round_over_round"]["corrections"]) == {"round_1", "round_2"}
    assert set(result["differences"]["corrections - plain"]) == {"round_1", "round_2"}
    assert result["by_type_round"] == 2 and set(result["by_type"]["star"]) == {"n", "plain", "corrections"}
    # (which variant is ahead is not asserted: the toy trains under the short prompt and is
    # evaluated under the few-shot one, and one more pair changes its whole trajectory)


@pytest.mark.parametrize("given, message", [
    ({"variants": ("rest", "magic")}, "unknown variant 'magic'"),
    ({"variants": ("rest", "rest")}, "each variant once"),
    ({"variants": ("plain", "corrections")}, "pass --corrections FILE"),
    ({"corrections": "c.jsonl"}, "no variant uses it"),
    ({"rounds": 0}, "at least one seed, one round"),
])
def test_bad_settings_are_one_line(given, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        compare.Compare(toy_compare("unused", tmp_path, **given))


def test_unequal_budgets_are_refused(tmp_path):
    """GRPO trains on whole steps: 15 questions at 2 per step sample 14 × 4 programs, ReST 15 × 4."""
    cfg = toy_compare("unused", tmp_path)
    cfg.selftrain = dataclasses.replace(cfg.selftrain, questions_per_round=15)
    with pytest.raises(UsageError, match="rest 60, grpo 56"):
        compare.Compare(cfg)
    cfg.selftrain = dataclasses.replace(cfg.selftrain, questions_per_round=14)
    assert compare.Compare(cfg).budgets == {"rest": 56, "grpo": 56}


def test_the_corrections_baseline_shows_where_the_policy_fails(guessing_model, toy_prompts, tmp_path):  # noqa: F811
    """bench/corrections_baseline.py: greedy, the toy base policy is right for circles only;
    the pool's programs are right for both of its questions."""
    baseline = importlib.import_module("corrections_baseline")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"query": F.query_for(shape), "program": F.right_program(shape),
                                        "question_id": qid}) + "\n" for shape, qid in (("circle", "train-0"),
                                                                                       ("star", "train-3"))))
    selftrain = toy_compare(guessing_model, tmp_path).selftrain
    result = baseline.run_baseline(baseline.BaselineConfig(corrections=str(pool), task="toy-count",
                                                           results=str(tmp_path / "baseline.json"),
                                                           selftrain=selftrain))
    assert result["n"] == 2 and result["corrections_accuracy"] == 1.0 and result["base_accuracy"] == 0.5
    assert {t: e["accuracy"] for t, e in result["base_by_type"].items()} == {"circle": 1.0, "star": 0.0}
    assert json.loads((tmp_path / "baseline.json").read_text())["base_rows"] == result["base_rows"]


def test_a_variant_with_retries_is_refused_before_anything_runs(tmp_path):
    """--selftrain.sampling.retry makes a round's programs depend on what its first draw
    solved: the budgets could not be held equal, so the comparison refuses it up front."""
    cfg = toy_compare("unused", tmp_path)
    cfg.selftrain = dataclasses.replace(cfg.selftrain, sampling=dataclasses.replace(cfg.selftrain.sampling, retry=2))
    with pytest.raises(UsageError, match="sampling.retry"):
        compare.Compare(cfg)
