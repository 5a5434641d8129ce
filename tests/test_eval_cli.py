"""`viprog eval`: programs scored on a split, a JSON report on stdout, one-line errors."""

import json

import pytest
import selftrain_fixtures as F

from viprog.cli import main
from viprog.tasks import TASKS


@pytest.fixture
def data_dir(tmp_path):
    TASKS.get("toy-count")(data_dir=tmp_path).examples("test")  # writes the images
    return tmp_path


def write_programs(path, program_for):
    examples = TASKS.get("toy-count")().examples("test")
    path.write_text("".join(json.dumps({"question_id": ex.id, "program": program_for(ex)}) + "\n" for ex in examples))
    return path


def run_eval(capsys, *args):
    code = main(["eval", "--task", "toy-count", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_right_programs_score_one_and_the_baseline_is_reported_beside(data_dir, tmp_path, capsys):
    programs = write_programs(tmp_path / "p.jsonl", lambda ex: F.right_program(ex.question_type))
    code, out, _ = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs))
    report = json.loads(out)
    assert code == 0 and report["accuracy"] == 1.0 and report["n"] == 24
    assert set(report["accuracy_by_type"]) == set(F.SHAPES)
    assert 0 <= report["baseline"]["accuracy"] < 0.5


def test_accuracy_per_type_and_error_kinds_are_counted(data_dir, tmp_path, capsys):
    def program(ex):
        if ex.question_type == "circle":
            return F.right_program("circle")
        return F.wrong_program(ex.question_type) if ex.question_type != "star" else "def execute_command(image):\n  return ("

    _, out, _ = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(write_programs(tmp_path / "p.jsonl", program)))
    report = json.loads(out)
    assert report["accuracy"] == 0.25
    assert report["accuracy_by_type"]["circle"] == 1.0 and report["accuracy_by_type"]["square"] == 0.0
    assert report["errors"] == {"syntax": 6}


def test_questions_without_a_program_count_as_wrong_unless_only_covered(data_dir, tmp_path, capsys):
    programs = tmp_path / "p.jsonl"
    programs.write_text(json.dumps({"question_id": "test-0", "program": F.right_program("circle")}) + "\n")
    _, out, err = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs))
    assert json.loads(out)["accuracy"] == pytest.approx(1 / 24) and "no program" in err
    _, out, _ = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs), "--only-covered")
    assert json.loads(out)["accuracy"] == 1.0 and json.loads(out)["n"] == 1


def test_a_line_that_is_not_json_is_named_with_its_line_number(data_dir, tmp_path, capsys):
    programs = write_programs(tmp_path / "p.jsonl", lambda ex: F.right_program("star"))
    programs.write_text(programs.read_text() + "{not json\n")
    code, out, err = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs))
    assert code == 2 and out == ""
    assert f"{programs}:25: not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_a_missing_programs_file_is_a_usage_error(data_dir, tmp_path, capsys):
    code, _, err = run_eval(capsys, "--programs", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: no such file" in err


def test_programs_and_policy_are_exclusive(capsys):
    code, _, err = run_eval(capsys)
    assert code == 2 and "exactly one of --programs" in err


def test_ids_from_another_dataset_are_refused(data_dir, tmp_path, capsys):
    programs = tmp_path / "p.jsonl"
    programs.write_text(json.dumps({"question_id": "20240601", "program": F.right_program("star")}) + "\n")
    code, _, err = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs))
    assert code == 2 and "none of its 1 question ids" in err


def test_a_corrupt_image_is_skipped_and_counted(data_dir, tmp_path, capsys):
    (data_dir / "images" / "test-3.png").write_bytes(b"not a png")
    programs = write_programs(tmp_path / "p.jsonl", lambda ex: F.right_program(ex.question_type))
    code, out, _ = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs))
    report = json.loads(out)
    assert code == 0 and report["n"] == 23 and report["skipped"] == {"corrupt_image": 1}
    assert report["accuracy"] == 1.0


def test_strict_makes_a_corrupt_image_fatal(data_dir, tmp_path, capsys):
    (data_dir / "images" / "test-3.png").write_bytes(b"not a png")
    programs = write_programs(tmp_path / "p.jsonl", lambda ex: F.right_program(ex.question_type))
    code, _, err = run_eval(capsys, "--data-dir", str(data_dir), "--programs", str(programs), "--strict")
    assert code == 2 and "test-3.png" in err


def test_a_folder_without_the_train_split_is_evaluated_and_the_baseline_reported_missing(tmp_path, capsys):
    from test_tasks_gqa import write_gqa

    data = write_gqa(tmp_path / "gqa", split="val")  # val only, as many users download it
    programs = tmp_path / "p.jsonl"
    programs.write_text(json.dumps({"question_id": "201", "program": "def execute_command(image):\n    return 'yes'\n"})
                        + "\n")
    code = main(["eval", "--task", "gqa", "--data-dir", str(data), "--programs", str(programs), "--profile",
                 "scene-graph"])
    out, _ = capsys.readouterr()
    report = json.loads(out)
    assert code == 0 and report["split"] == "val" and report["accuracy"] == pytest.approx(1 / 3)
    assert report["baseline"]["split"] == "train" and "train_balanced_questions.json" in report["baseline"]["missing"]
    # named explicitly, a missing baseline split stays an error (and nothing runs)
    code = main(["eval", "--task", "gqa", "--data-dir", str(data), "--programs", str(programs), "--profile",
                 "scene-graph", "--baseline-split", "train"])
    assert code == 2 and "train_balanced_questions.json" in capsys.readouterr().err


def test_a_profile_that_cannot_answer_any_question_is_a_one_line_error(tmp_path, capsys):
    from test_tasks_gqa import write_gqa

    data = write_gqa(tmp_path / "gqa", split="testdev")
    (data / "testdev_sceneGraphs.json").unlink()  # as GQA ships testdev: no scene graphs
    programs = tmp_path / "p.jsonl"
    program = "def execute_command(image):\n    return ImagePatch(image).simple_query('what is it?')\n"
    programs.write_text("".join(json.dumps({"question_id": q, "program": program}) + "\n" for q in ("201", "202", "203")))
    code = main(["eval", "--task", "gqa", "--data-dir", str(data), "--split", "testdev", "--programs", str(programs),
                 "--profile", "scene-graph"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "every program" in err[-1] and "scene graph" in err[-1]
