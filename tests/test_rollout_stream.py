"""A rollout's rows go to disk as their programs finish; the parent keeps only summaries."""

from __future__ import annotations

import selftrain_fixtures as F

from viprog.rollout import execute_programs, load_images
from viprog.runs import read_jsonl
from viprog.tasks import TASKS

BIG = 'def execute_command(image):\n    n = len(ImagePatch(image).find("{shape}"))\n    return str(n) + "x" * 200000\n'


def test_rows_stream_to_the_file_in_order_and_summaries_come_back(tmp_path):
    task = TASKS.get("toy-count")(data_dir=tmp_path / "data")
    examples = task.examples("test")[:6]
    programs = {ex.id: [("", F.right_program(ex.question_type)), ("", BIG.format(shape=ex.question_type))]
                for ex in examples}
    images = load_images(task, examples)
    kept = execute_programs(task, examples, programs, profile="toy", images=images, workers=1)
    streamed = execute_programs(task, examples, programs, profile="toy", images=images, workers=1,
                                out=tmp_path / "samples.jsonl")
    on_disk = read_jsonl(tmp_path / "samples.jsonl")
    drop = ("seconds",)  # run time differs between two runs
    assert [{k: v for k, v in r.items() if k not in drop} for r in on_disk] == \
           [{k: v for k, v in r.items() if k not in drop} for r in kept]
    assert [(r["question_id"], r["sample"], r["reward"]) for r in streamed] == \
           [(r["question_id"], r["sample"], r["reward"]) for r in kept]
    assert all("trace" not in r and "answer" not in r for r in streamed)
    assert sum(isinstance(r["answer"], str) and len(r["answer"]) > 100000 for r in on_disk) == 6  # the large answers are in the file only
