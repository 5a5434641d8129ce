"""The self-training study end to end at toy scale (bench/selftrain_study.py): a tiny Qwen2
on the toy counting task, two seeds, one round, every arm and the "large" frozen model;
the results JSON has the issue's schema, its numbers are the saved rows' numbers, a rerun
runs nothing that is done, and lucky guesses are counted out of the training data."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import selftrain_fixtures as F

from viprog.config import SamplingSettings
from viprog.errors import UsageError
from viprog.runs import read_jsonl

# slow: four selftrain runs and the extra arms (~20 min at load 15-24 on 2 cores, a few minutes on a quiet machine)
pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
study = importlib.import_module("selftrain_study")
summary = importlib.import_module("study_summary")

LUCKY = "def execute_command(image):\n    return 2\n"  # right for one shape in four, calls nothing


def toy_prompter(task_name, task, policy, style="completion"):
    """The toy task's prompter with no API section: few-shot prompts a 2-layer model can learn."""
    from viprog.policy import Prompter

    return Prompter("", task.seed_programs(), tokenizer=getattr(policy, "tokenizer", None))


@pytest.fixture(scope="module")
def guessing_model(tmp_path_factory):
    """Under the toy few-shot prompt: right for circles; for the other shapes wrong (40 %) more
    often than right or a constant guess (30 % each), so greedy round 0 gets only circles. (Other prompts — the short one, library examples — it was
    not trained on: the arms that use them run, but their accuracy is not asserted.)"""
    out = tmp_path_factory.mktemp("guessing-policy")
    prompter = toy_prompter("toy-count", F.ToyCountTask(), None)
    rows = []
    for shape in F.SHAPES:
        mix = ([(F.right_program(shape), 1.0)] if shape == "circle" else
               [(F.right_program(shape), 0.3), (F.wrong_program(shape), 0.4), (LUCKY, 0.3)])
        rows += [(prompter.few_shot(F.query_for(shape)), program, weight) for program, weight in mix]
    return F.train_tiny_qwen2(out, rows, steps=200)


def toy_study(model, root, **overrides):
    from viprog.finetune import LoraSettings, TrainSettings
    from viprog.selftrain_config import SelfTrainConfig

    selftrain = SelfTrainConfig(data_dir=str(root / "data"), policy="hf", model=str(model), questions_per_round=16,
                                sampling=SamplingSettings(n=4), max_new_tokens=40, train_prompt="short", library_shots=1,
                                train=TrainSettings(epochs=8.0, batch_size=4, learning_rate=1e-2), workers=1,
                                cap_per_question=2,
                                lora=LoraSettings(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "up_proj", "down_proj")))
    base = {"task": "toy-count", "n_questions": 24, "seeds": (0, 1), "rounds": 1, "large_policy": "hf",
            "large_model": str(model), "out_dir": str(root / "study"), "results": str(root / "results.json"),
            "draws": 500, "selftrain": selftrain}
    return study.StudyConfig(**(base | overrides))


def cli(cfg):
    s = cfg.selftrain
    return ["--task", cfg.task, "--n-questions", str(cfg.n_questions), "--seeds", *map(str, cfg.seeds), "--rounds",
            str(cfg.rounds), "--large-policy", cfg.large_policy, "--large-model", cfg.large_model, "--out-dir",
            cfg.out_dir, "--results", cfg.results, "--draws", str(cfg.draws), "--selftrain.data-dir", s.data_dir,
            "--selftrain.policy", "hf", "--selftrain.model", s.model, "--selftrain.questions-per-round", "16",
            "--selftrain.sampling.n", "4", "--selftrain.max-new-tokens", "40", "--selftrain.library-shots",
            "1", "--selftrain.train.epochs", "8", "--selftrain.train.batch-size", "4",
            "--selftrain.train.learning-rate", "1e-2", "--selftrain.workers", "1", "--selftrain.lora.target-modules",
            *s.lora.target_modules]


@pytest.fixture(scope="module")
def toy_prompts():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("viprog.rollout.build_prompter", toy_prompter)
        yield


@pytest.fixture(scope="module")
def finished(guessing_model, toy_prompts, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = toy_study(guessing_model, root)
    assert study.main(cli(cfg)) == 0
    return cfg, root, json.loads((root / "results.json").read_text())


def test_the_results_have_the_issues_schema(finished):
    _, _, result = finished
    assert result["n_questions"] == 24 and result["seeds"] == [0, 1]
    # every arm but the restarting run's other evaluation (e_restart_fewshot: under --no-run-eval-library)
    assert set(result["arms"]) == set(study.ARMS) - {"e_restart_fewshot"}
    assert set(result["arms"]["a_base_fewshot"]) == {"round_0"}
    for arm, rounds in result["arms"].items():
        for entry in rounds.values():
            lo, hi = entry["ci95"]
            assert 0.0 <= lo <= entry["mean"] <= hi <= 1.0, arm
    for key in ("gain_lora_only", "fewshot_1_5b", "best_selftrained"):
        assert set(result[key]) >= {"mean", "ci95"}
    assert result["best_selftrained"]["arm"] in study.ARMS
    assert result["meta"]["failed_cells"] == [] and "load average" in result["meta"]["load_before"]


def test_every_number_is_the_mean_of_its_saved_rows(finished):
    cfg, _, result = finished
    root = Path(cfg.out_dir) / cfg.task
    for arm in result["arms"]:  # the schema test checks which arms these are
        for seed_round in result["arms"][arm]:
            k = int(seed_round.removeprefix("round_"))
            rewards = [r["reward"] for s in cfg.seeds for r in read_jsonl(study.rows_path(root, arm, s, k))]
            assert len(rewards) == 24 * 2
            assert result["arms"][arm][seed_round]["mean"] == pytest.approx(np.mean(rewards), abs=1e-6)
    large = [r["reward"] for r in read_jsonl(study.rows_path(root, study.LARGE, None, 0))]
    assert result["fewshot_1_5b"]["mean"] == pytest.approx(np.mean(large), abs=1e-6)
    base = [r["reward"] for r in read_jsonl(study.rows_path(root, "a_base_fewshot", 0, 0))]
    assert large == base  # the same frozen model and prompt: the "large" arm here is the tiny base again
    gain = result["gain_lora_only"]  # the best arm-c cell (both prompts; this study has round 1 only)
    c = {arm: [r["reward"] for s in cfg.seeds for r in read_jsonl(study.rows_path(root, arm, s, 1))]
         for arm in ("c_lora_train_prompt", "c_lora_fewshot")}
    assert set(gain["selected_from"]) == {f"{arm} round_1" for arm in c} and gain["round"] == 1
    assert gain["mean"] == pytest.approx(np.mean(c[gain["arm"]]) - np.mean(base), abs=1e-6)
    assert gain["mean"] == pytest.approx(max(np.mean(v) for v in c.values()) - np.mean(base), abs=1e-6)


def test_the_arms_differ_where_they_should(finished):
    """The base arms never see an adapter; the tuned arms learned (toy: the rewarded programs)."""
    cfg, _, result = finished
    root = Path(cfg.out_dir) / cfg.task
    a = result["arms"]["a_base_fewshot"]["round_0"]["mean"]
    assert result["arms"]["c_lora_fewshot"]["round_1"]["mean"] > a
    per_type = result["by_type"]["a_base_fewshot"]["round_0"]
    assert set(per_type) == set(F.SHAPES) and all(v["n"] == 6 for v in per_type.values())
    # round 0 ran once and was copied: each seed's (and the restart run's) round 0 is the same file
    first = (root / "runs" / "seed0-continue" / "round_0" / "eval.jsonl").read_text()
    assert (root / "runs" / "seed1-restart" / "round_0" / "eval.jsonl").read_text() == first


def test_lucky_guesses_are_counted_out_of_the_training_data(finished):
    cfg, _, result = finished
    root = Path(cfg.out_dir) / cfg.task
    removed = [r["filter/removed/lucky_no_primitive"] for run in result["runs"].values() for r in run.values()
               if "filter/removed/lucky_no_primitive" in r]
    assert removed and sum(removed) > 0
    kept = [row["program"] for row in read_jsonl(root / "runs" / "seed0-continue" / "round_1" / "kept.jsonl")]
    samples = [row for row in read_jsonl(root / "runs" / "seed0-continue" / "round_1" / "samples.jsonl")
               if row["program"].strip() == LUCKY.strip()]
    assert any(s["reward"] == 1.0 for s in samples)  # rewarded ...
    assert LUCKY.strip() not in [p.strip() for p in kept]  # ... and still not kept


def test_the_analysis_counts_the_training_data_and_every_outcome(finished):
    """Kept programs per question type add up to each round's kept count; each cell's outcomes
    (right, wrong answer, error kinds) add up to its questions and its right ones to its mean."""
    cfg, _, result = finished
    kept, outcomes = result["analysis"]["kept_by_type"], result["analysis"]["outcomes"]
    for run, rounds in result["runs"].items():
        for name, metrics in rounds.items():
            if "filter/kept" in metrics:
                assert sum(kept[run][name].values()) == metrics["filter/kept"]
    for arm, per_round in result["arms"].items():
        for name, estimate in per_round.items():
            k = name.split("_")[1]
            cells = [c for cell, c in outcomes[arm].items() if cell.endswith(f"round{k}")]
            assert all(sum(c.values()) == cfg.n_questions for c in cells)
            if arm == "a_base_fewshot":  # one greedy run of fixed weights, copied to every seed: counted once
                assert estimate["seeds"] == 1 and len({c.get("right", 0) for c in cells}) == 1
                cells = cells[:1]
            assert len(cells) == estimate["seeds"]
            right = sum(c.get("right", 0) for c in cells)
            assert right == pytest.approx(estimate["mean"] * cfg.n_questions * len(cells))
    assert "kept programs (the training data) per question type" in (Path(cfg.out_dir) / cfg.task / "table.md").read_text()


def test_outputs_a_table_a_plot_and_all_rows(finished):
    cfg, _, result = finished
    root = Path(cfg.out_dir) / cfg.task
    page = (root / "report.html").read_text()
    assert page.count('class="series"') == len(result["arms"]) + 1  # and the large model's
    table = (root / "table.md").read_text()
    assert "| c_lora_fewshot |" in table and "[" in table
    assert len(read_jsonl(root / "rows.jsonl")) == 24 * (2 * len(result["arms"]) + 1)  # one round a seed, + large


def test_a_rerun_runs_only_what_is_missing(finished, monkeypatch):
    cfg, root, result = finished
    cell = study.rows_path(Path(cfg.out_dir) / cfg.task, "c_lora_train_prompt", 1, 1)
    saved = cell.read_text()
    cell.unlink()
    import viprog.selftrain

    monkeypatch.setattr(viprog.selftrain, "main", lambda cfg: pytest.fail(f"run {cfg.run_name} again"))
    assert study.main(cli(cfg)) == 0
    assert cell.read_text() == saved  # greedy, same adapter and prompt: the same rows
    assert json.loads((root / "results.json").read_text())["arms"] == result["arms"]


def test_a_held_out_set_missing_a_question_type_is_refused(guessing_model, tmp_path):
    with pytest.raises(UsageError, match="miss the question type"):
        study.Study(toy_study(guessing_model, tmp_path, n_questions=2)).run()
    with pytest.raises(UsageError, match="unknown arm"):
        study.Study(toy_study(guessing_model, tmp_path, arms=("z_magic",)))


def test_runs_evaluating_without_the_library_give_the_same_cells(finished, tmp_path, monkeypatch):
    """--no-run-eval-library: the continuing run's own evaluation is arm c and the study
    evaluates d itself; greedy, same adapters and prompts, so both cells equal the default's."""
    import shutil

    import viprog.rollout
    import viprog.selftrain

    libraries, prompt_fn = [], viprog.rollout.prompt_fn

    def recording(prompter, style, library=None, shots=0):  # the library each prompt is built with
        libraries.append(library)
        return prompt_fn(prompter, style, library, shots)

    monkeypatch.setattr(viprog.selftrain, "prompt_fn", recording)  # the run's evaluation
    monkeypatch.setattr(viprog.rollout, "prompt_fn", recording)  # the study's cells

    cfg, _, _ = finished
    task_root = Path(cfg.out_dir) / cfg.task
    copy = tmp_path / "study"
    shutil.copytree(task_root, copy / cfg.task)
    run = copy / cfg.task / "runs" / "seed1-continue" / "round_1"
    for name in ("metrics.json", "eval.metrics.json", "eval.jsonl"):
        (run / name).unlink()
    config = run.parent / "config.json"  # as if the run had been made with --no-eval-library
    config.write_text(json.dumps({**json.loads(config.read_text()), "eval_library": False}))
    for arm in ("c_lora_fewshot", "d_lora_fewshot_library"):
        study.rows_path(copy / cfg.task, arm, 1, 1).unlink()
    args = cli(cfg)
    args[args.index("--out-dir") + 1] = str(copy)
    args[args.index("--results") + 1] = str(tmp_path / "results.json")
    assert study.main([*args, "--no-run-eval-library", "--arms", "c_lora_fewshot", "d_lora_fewshot_library"]) == 0
    for arm in ("c_lora_fewshot", "d_lora_fewshot_library"):
        assert read_jsonl(study.rows_path(copy / cfg.task, arm, 1, 1)) == read_jsonl(
            study.rows_path(task_root, arm, 1, 1))
    assert json.loads((copy / cfg.task / "runs" / "seed1-continue" / "config.json").read_text())["eval_library"] is False
    # (the toy model writes the same programs under both prompts: what differs is the prompt)
    assert libraries[0] is None and libraries[1] is not None and len(libraries) == 2  # the run's c, the study's d
    assert json.loads((run / "eval.metrics.json").read_text())["eval/library"] is False
    study.rows_path(copy / cfg.task, "d_lora_fewshot_library", 1, 1).unlink()  # a default study would redo d ...
    with pytest.raises(UsageError, match="without library programs; pass --no-run-eval-library"):
        study.main(args)  # ... from a run that evaluates without the library: refused, nothing saved as d
    assert not study.rows_path(copy / cfg.task, "d_lora_fewshot_library", 1, 1).exists()


def test_extra_rounds_limit_the_cells_the_study_evaluates_itself(guessing_model, tmp_path):
    """--extra-rounds 2 of 3: arms b, c under the training prompt and d get a cell at round 2
    alone; the runs' own arm (c few-shot here) and the base keep every round."""
    cfg = toy_study(guessing_model, tmp_path, rounds=3, extra_rounds=(2,), run_eval_library=False)
    s = study.Study(cfg)
    try:
        assert list(s._rounds("b_base_fewshot_library")) == [2] == list(s._rounds("d_lora_fewshot_library"))
        assert list(s._rounds("c_lora_fewshot")) == [1, 2, 3] and list(s._rounds("a_base_fewshot")) == [0]
        assert s.bars["b_base_fewshot_library"].total == 2 and s.bars["c_lora_fewshot"].total == 6
    finally:
        for bar in s.bars.values():
            bar.close()
    with pytest.raises(UsageError, match="--extra-rounds 4 is not a round of this study"):
        study.Study(toy_study(guessing_model, tmp_path, rounds=3, extra_rounds=(2, 4)))


def test_the_library_effects_are_the_paired_differences_of_the_saved_rows(finished):
    """d − c (library programs added to the adapter's prompt) and b − a (to the base's), each
    the mean over the saved rows of the seeds both arms have."""
    cfg, _, result = finished
    task_root = Path(cfg.out_dir) / cfg.task

    def mean(arm, seeds, k):
        rows = [r for s in seeds for r in read_jsonl(study.rows_path(task_root, arm, s, k))]
        return sum(r["reward"] for r in rows) / len(rows)

    effects = result["library_effects"]
    adapter, base = effects["adapter"]["round_1"], effects["base"]["round_1"]
    assert adapter["seeds"] == [0, 1] == base["seeds"]
    assert adapter["mean"] == pytest.approx(mean("d_lora_fewshot_library", (0, 1), 1) - mean("c_lora_fewshot", (0, 1), 1))
    assert base["mean"] == pytest.approx(mean("b_base_fewshot_library", (0, 1), 1) - mean("a_base_fewshot", (0,), 0))
    assert adapter["ci95"][0] <= adapter["mean"] <= adapter["ci95"][1]
    assert "library programs in the prompt, adapter" in (task_root / "table.md").read_text()


def test_restarting_runs_evaluated_without_the_library_are_their_own_arm(finished, tmp_path):
    """--no-run-eval-library with e_restart_fewshot: the restarting run evaluates few-shot
    without library programs, its cells are arm e_restart_fewshot, compared with c_lora_fewshot
    in restart_effects; on a new machine (round 0 only archived) it does not redo round 0."""
    import shutil

    cfg, _, _ = finished
    task_root = Path(cfg.out_dir) / cfg.task
    copy = tmp_path / "study" / cfg.task
    shutil.copytree(task_root, copy)
    shutil.rmtree(copy / "runs" / "seed1-restart")
    (copy / "runs" / "seed1-continue" / "round_0" / "eval.jsonl").unlink()  # only the archive's round 0 is left
    archived = copy / "archived-runs" / "seed0-continue" / "round_0"
    archived.mkdir(parents=True)
    shutil.copy(copy / "runs" / "seed0-continue" / "round_0" / "metrics.json", archived)
    args = cli(cfg)
    args[args.index("--out-dir") + 1] = str(copy.parent)
    args[args.index("--results") + 1] = str(tmp_path / "results.json")
    seed = args.index("--seeds")
    args[seed + 1:seed + 3] = ["1"]
    with pytest.raises(UsageError, match="e_restart_fewshot_library is the restarting run evaluated with library"):
        study.main([*args, "--no-run-eval-library", "--arms", "e_restart_fewshot_library"])
    assert study.main([*args, "--no-run-eval-library", "--arms", "e_restart_fewshot"]) == 0
    restart = copy / "runs" / "seed1-restart"
    assert (restart / "round_0" / "metrics.json").exists() and not (restart / "round_0" / "eval.jsonl").exists()
    assert json.loads((restart / "round_1" / "eval.metrics.json").read_text())["eval/library"] is False
    e = read_jsonl(study.rows_path(copy, "e_restart_fewshot", 1, 1))
    c = read_jsonl(study.rows_path(copy, "c_lora_fewshot", 1, 1))
    assert [r["question_id"] for r in e] == [r["question_id"] for r in c]
    result = json.loads((tmp_path / "results.json").read_text())
    effect = result["restart_effects"]["fewshot"]["round_1"]
    assert effect["seeds"] == [1] and (effect["with"], effect["without"]) == ("e_restart_fewshot", "c_lora_fewshot")
    assert effect["mean"] == pytest.approx(np.mean([r["reward"] for r in e]) - np.mean([r["reward"] for r in c]))
    assert "restart from base, fewshot" in (copy / "table.md").read_text()
    # at round 1 both runs train from the base on the same kept programs: the same adapter, the same rows
    assert [r["program"] for r in e] == [r["program"] for r in c]


def test_the_restart_effects_of_the_default_study_pair_e_with_d(finished):
    cfg, _, result = finished
    task_root = Path(cfg.out_dir) / cfg.task
    effect = result["restart_effects"]["fewshot_library"]["round_1"]
    assert effect["seeds"] == [0, 1]

    def mean(arm):
        return np.mean([r["reward"] for s in (0, 1) for r in read_jsonl(study.rows_path(task_root, arm, s, 1))])

    assert effect["mean"] == pytest.approx(mean("e_restart_fewshot_library") - mean("d_lora_fewshot_library"))


def test_a_replay_retrains_the_archived_round_to_the_same_programs_and_goes_on(finished, tmp_path):
    """--replay on a 'new machine' that has only the archive: round 1 of seed 0 is retrained
    from its archived kept programs (not sampled again), its adapter writes the archived
    programs for every held-out question, and round 2 is sampled, trained and evaluated on it."""
    import shutil

    from viprog.runs import read_json

    cfg, root, _ = finished
    shutil.copyfile(study.archive_path(root / "results.json"), study.archive_path(tmp_path / "results.json"))
    args = cli(cfg)
    for flag, value in (("--out-dir", tmp_path / "new-machine"), ("--results", tmp_path / "results.json"),
                        ("--rounds", 2)):
        args[args.index(flag) + 1] = str(value)
    args[args.index("--seeds") + 1:args.index("--rounds")] = ["0"]
    assert study.main([*args, "--arms", "a_base_fewshot", "d_lora_fewshot_library", "--replay",
                       "--replay-check", "100"]) == 0
    run = tmp_path / "new-machine" / cfg.task / "runs" / "seed0-continue"
    assert read_json(run / "replay.json") == {"rounds": [1], "questions": 24, "same_programs": 24, "differ": []}
    assert not (run / "round_1/samples.jsonl").exists() and (run / "round_1/adapter").is_dir()
    assert read_json(run / "round_1/train.metrics.json")["train/steps"] > 0  # retrained, not copied
    assert read_jsonl(run / "round_1/kept.jsonl") == read_jsonl(
        Path(cfg.out_dir) / cfg.task / "runs/seed0-continue/round_1/kept.jsonl")
    assert (run / "round_2/samples.jsonl").exists()  # round 2 is new work on the rebuilt adapter
    assert len(read_jsonl(study.rows_path(run.parent.parent, "d_lora_fewshot_library", 0, 2))) == 24
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["arms"]["d_lora_fewshot_library"]) == {"round_1", "round_2"} and not result["meta"]["failed_cells"]
