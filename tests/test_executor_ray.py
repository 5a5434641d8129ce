"""`--executor ray` on a real two-node Ray cluster on this machine: `viprog eval`, a tiny
self-training round and `viprog.load` give the local executor's rows, and a node killed in
the middle of a rollout loses and duplicates no result. (The node kill is the last test:
it leaves the module's cluster with its head alone.)"""

import json

import pytest

ray = pytest.importorskip("ray", reason="the dist extra (pip install 'viprog[dist]') is not installed")

import selftrain_fixtures as F
from ray_cluster import LocalCluster, SlowToy
from test_selftrain_loop import cli_args, tiny_config, tiny_model  # noqa: F401  (session fixture)

import viprog
from viprog.cli import main
from viprog.executor import Executor, Job
from viprog.executor.ray_backend import RayExecutor
from viprog.finetune import TrainSettings
from viprog.library import Library
from viprog.runs import Run, read_jsonl, write_json_atomic, write_jsonl_atomic
from viprog.tasks import TASKS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("ray"), head_cpus=2, node_cpus=1)
    try:
        cluster.connect()
        yield cluster
    finally:
        cluster.close()


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def outcome(results):
    return [(r.answer, r.error, r.error_kind, r.trace) for r in results]


def test_eval_rows_are_the_local_executors(cluster, tmp_path, capsys):
    task = TASKS.get("toy-count")(data_dir=tmp_path)
    examples = task.examples("test")
    broken = "def execute_command(image):\n    return ImagePatch(image).find(1, 2, 3)\n"
    programs = tmp_path / "p.jsonl"  # reference programs, some swapped for wrong or failing ones
    programs.write_text("".join(json.dumps({"question_id": ex.id, "program": (
        ex.reference_program, F.wrong_program(ex.question_type), broken)[i % 3]}) + "\n"
        for i, ex in enumerate(examples)))
    base = ["eval", "--task", "toy-count", "--data-dir", str(tmp_path), "--programs", str(programs)]
    assert main([*base, "--output", str(tmp_path / "local.jsonl")]) == 0
    local_report = json.loads(capsys.readouterr().out)
    assert main([*base, "--output", str(tmp_path / "ray.jsonl"), "--executor", "ray",
                 "--ray-address", cluster.address]) == 0
    ray_report = json.loads(capsys.readouterr().out)
    rows = read_jsonl(tmp_path / "ray.jsonl")
    assert len(rows) == len(examples) and {r["error_kind"] for r in rows} == {None, "runtime"}
    assert without_timing(rows) == without_timing(read_jsonl(tmp_path / "local.jsonl"))
    assert ray_report == local_report and 0 < ray_report["accuracy"] < 1


def test_a_self_training_round_is_the_local_executors(cluster, tiny_model, tmp_path):  # noqa: F811
    runs = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", cluster.address])):
        cfg = tiny_config(tiny_model, tmp_path / "data", tmp_path, rounds=1, run_name=name, questions_per_round=8,
                          eval_size=8, train=TrainSettings(epochs=2.0, batch_size=4, learning_rate=1e-2))
        assert main(cli_args(cfg)[:-2] + ["--run-name", name, "--rounds", "1", *extra]) == 0
        runs[name] = tmp_path / name / "round_1"
    for artifact in ("samples.jsonl", "eval.jsonl", "kept.jsonl"):
        local, remote = (read_jsonl(runs[n] / artifact) for n in ("local", "ray"))
        assert local and without_timing(remote) == without_timing(local), artifact
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["executor"] == "ray"


def test_viprog_load_runs_a_stored_program_on_the_cluster(cluster, tmp_path):
    examples = TASKS.get("toy-count")(data_dir=tmp_path / "data").examples("train")
    run = Run(tmp_path / "run")
    write_json_atomic(run.config_path, {"task": "toy-count", "data_dir": str(tmp_path / "data"), "profile": None})
    circle = next(ex for ex in examples if ex.question_type == "circle")
    write_jsonl_atomic(run.artifact(1, "kept.jsonl"), [{"question_id": circle.id, "query": circle.query,
                                                        "program": F.right_program("circle"), "reward": 1.0}])
    Library.write(run, [1])
    answers = []
    for options in ({}, {"executor": "ray", "ray_address": cluster.address}):
        with viprog.load(run.root, **options) as library:
            out = library.program(circle.id)(circle.image)
            answers.append((out.ok, out.answer, out.trace))
            assert isinstance(library._executor, RayExecutor) == bool(options)
    assert answers[0] == answers[1] and answers[0][0]


def test_a_node_lost_mid_rollout_loses_and_duplicates_no_result(cluster, tmp_path):
    examples = TASKS.get("toy-count")(data_dir=tmp_path).examples("train")
    program = ("def execute_command(image, query):\n    patch = ImagePatch(image)\n"
               "    return [len(patch.find(s)) for s in ['circle', 'square', 'triangle', 'star']]\n")
    jobs = [Job(program if i % 5 else F.right_program("star"), ex.image_key, ex.image, query=ex.query, meta=ex.meta)
            for i, ex in enumerate(examples * 4)]  # 192 programs
    with Executor(SlowToy(), workers=1) as local:
        expected = outcome(local.run_many(jobs))
    seen = []
    with RayExecutor(SlowToy(), workers=1, chunk=8, cache=False) as executor:
        assert len(set(executor.nodes())) == 2  # one sandbox actor on each node
        for index, result in executor.run_iter(jobs):
            if not seen:
                cluster.kill_node()  # both actors are running a chunk now
            seen.append((index, result))
        assert cluster.alive() == 1 and len(set(executor.nodes())) == 1  # the lost actor came back on the head
    assert sorted(i for i, _ in seen) == list(range(len(jobs)))  # each program exactly once
    assert outcome(r for _, r in sorted(seen, key=lambda t: t[0])) == expected
