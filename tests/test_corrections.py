"""The correction pool: the corrections file and its one-line errors, `viprog corrections
suggest` on a run's records, and `--corrections` in a ReST run (training data + library)."""

import json

import pytest
import selftrain_fixtures as F
from test_selftrain_loop import tiny_config, tiny_model  # noqa: F401  (session fixture)

from viprog.cli import main
from viprog.corrections import check_held_out, load_corrections, persistent_failures
from viprog.errors import DataError, UsageError
from viprog.runs import read_jsonl, write_json_atomic, write_jsonl_atomic
from viprog.selftrain import main as selftrain

STAR = 'def execute_command(image):\n    patch = ImagePatch(image)\n    return len(patch.find("star"))\n'


def write_lines(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_corrections_file_loads_with_its_optional_fields(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", {"query": "How many stars are there?", "program": STAR},
                       "", {"query": "q2", "program": STAR, "task": "toy-count", "question_type": "star",
                            "question_id": "train-3", "note": "counts stars"},
                       {"query": "q3", "program": STAR, "task": "gqa"})
    got = load_corrections(path, "toy-count")
    assert [c.query for c in got] == ["How many stars are there?", "q2"]  # the gqa line is for another task
    assert got[1].question_type == "star" and got[1].question_id == "train-3"
    assert len(load_corrections(path)) == 3


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["query", "program"]', "JSON object"),
    ({"query": "q"}, "'program' must be a non-empty string"),
    ({"query": " ", "program": STAR}, "'query' must be a non-empty string"),
    ({"query": "q", "program": STAR, "questoin_type": "star"}, "unknown field 'questoin_type'"),
    ({"query": "q", "program": STAR, "question_type": 3}, "'question_type' must be a string"),
    ({"query": "q", "program": "def execute_command(image):\n    return (\n"}, "does not parse"),
    ({"query": "q", "program": "def f(image):\n    return 3\n"}, "must define `def execute_command(image):`"),
    ({"query": "q", "program": "def execute_command(image):\n    import os\n    return os.getcwd()\n"},
     "the sandbox refuses the program (policy"),
])
def test_a_bad_line_is_a_one_line_error_naming_it(tmp_path, line, message):
    path = write_lines(tmp_path / "c.jsonl", {"query": "q", "program": STAR}, line)
    with pytest.raises(DataError) as err:
        load_corrections(path)
    text = str(err.value)
    assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text


def test_missing_or_empty_files_and_held_out_questions_are_refused(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_corrections(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no correction for task 'toy-count'"):
        load_corrections(write_lines(tmp_path / "c.jsonl", {"query": "q", "program": STAR, "task": "gqa"}), "toy-count")
    corrections = load_corrections(write_lines(tmp_path / "d.jsonl", {"query": "q", "program": STAR,
                                                                       "question_id": "test-4"}))
    check_held_out(corrections, ["test-5"], "d.jsonl")
    with pytest.raises(DataError, match="'test-4' names a held-out question"):
        check_held_out(corrections, ["test-4"], "d.jsonl")


def sample(qid, qtype, reward, kind=None, program="p", error=None, answer=None):
    return {"question_id": qid, "query": f"How many {qtype}s?", "image": f"{qid}.png", "question_type": qtype,
            "gold": "2", "sample": 0, "program": program, "reward": reward, "error_kind": kind, "error": error,
            "answer": answer}


@pytest.fixture
def failing_run(tmp_path):
    run = tmp_path / "run"
    write_json_atomic(run / "config.json", {"task": "toy-count", "tau": 1.0})
    write_jsonl_atomic(run / "round_1" / "samples.jsonl", [
        sample("a1", "circle", 0.0, "runtime", "bad circle", "NameError"),
        sample("b1", "star", 0.0, "runtime", "p_runtime", "NameError: x"),
        sample("b1", "star", 0.0, "runtime", "p_runtime", "NameError: x"),
        sample("b2", "star", 0.0, None, "p_wrong", answer="5"),
        sample("c1", "square", 0.0, "syntax", "p_syntax", "SyntaxError")])
    write_jsonl_atomic(run / "round_2" / "samples.jsonl", [
        sample("a2", "circle", 1.0, program="good circle"),  # circles were rewarded once: not persistent
        sample("b3", "star", 0.0, "runtime", "p_runtime", "NameError: x")])
    return run


def test_persistent_failures_are_the_types_never_rewarded(failing_run):
    failures = persistent_failures(failing_run)
    assert [f["question_type"] for f in failures] == ["star", "square"]  # most failed samples first
    star = failures[0]
    assert star["samples"] == 4 and star["questions"] == 3
    assert star["error_kinds"] == {"runtime": 3, "wrong-answer": 1}
    assert star["failing_program"] == "p_runtime" and star["question_id"] == "b1"
    assert star["query"] == "How many stars?" and star["error"] == "NameError: x"


def test_suggest_prints_each_failure_with_a_line_to_fix(failing_run, capsys):
    assert main(["corrections", "suggest", str(failing_run)]) == 0
    out = capsys.readouterr().out
    assert "2 question type(s) never rewarded" in out and "## star: 4 samples over 3 questions" in out
    assert "circle" not in out
    fix = [line.split("line to fix: ", 1)[1] for line in out.splitlines() if "line to fix: " in line]
    assert json.loads(fix[0]) == {"query": "How many stars?", "program": "p_runtime", "question_type": "star",
                                  "question_id": "b1"}
    assert main(["corrections", "suggest", str(failing_run), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["question_type"] for r in rows] == ["star", "square"]


def test_suggest_on_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["corrections", "suggest", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a self-training run" in err and "\n" not in err


def test_corrections_enter_the_training_data_and_the_library(tiny_model, tmp_path):  # noqa: F811
    """A ReST round with one correction trains on the kept programs plus the correction, and
    the library holds it."""
    path = write_lines(tmp_path / "c.jsonl", {"query": F.query_for("star"), "program": STAR, "question_type": "star"})
    cfg = tiny_config(tiny_model, tmp_path / "data", tmp_path, rounds=1, eval_size=8, corrections=str(path))
    assert selftrain(cfg) == 0
    run = tmp_path / "tiny"
    kept = read_jsonl(run / "round_1" / "kept.jsonl")
    stats = json.loads((run / "round_1" / "adapter" / "train_stats.json").read_text())
    assert stats["train/examples"] == len(kept) + 1
    library = read_jsonl(run / "library.jsonl")
    assert [r for r in library if r.get("source") == "correction"] == [
        {"question_id": "correction-0", "query": F.query_for("star"), "program": STAR, "reward": 1.0, "round": 0,
         "question_type": "star", "source": "correction"}]
    import viprog

    assert viprog.load(run).program("correction-0").program == STAR
