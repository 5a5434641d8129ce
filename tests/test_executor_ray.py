"""`--executor ray` on a real two-node Ray cluster on this machine: `viprog eval`, a tiny
self-training round (one executor for the whole run, the models loaded in the model actors
only), `viprog.load` and the tiny neural profile (one model actor per kind) give the local
executor's rows; no actor is created with arguments Ray could not rebuild; an ask the
cluster cannot place, a model that cannot load, a model that kills its actor at every call
and a refused run folder are each one UsageError with nothing left running; images go to
the object store once per run; a node killed in the middle of a rollout loses and
duplicates no result, its chunk run again. (The node kill is the last test: it leaves the
module's cluster with its head alone.)"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the dist extra (pip install 'viprog[dist]') is not installed")

import selftrain_fixtures as F
from ray_cluster import Crashing, LocalCluster, SlowToy, Unloadable, calls_logged
from test_selftrain_loop import cli_args, tiny_config, tiny_model  # noqa: F401  (session fixture)

import viprog
from viprog.cli import main
from viprog.errors import UsageError
from viprog.executor import Executor, Job
from viprog.executor.ray_backend import RESTARTS, RayExecutor
from viprog.finetune import TrainSettings
from viprog.library import Library
from viprog.primitives.profile import build_profile
from viprog.runs import Run, read_jsonl, write_json_atomic, write_jsonl_atomic
from viprog.tasks import TASKS


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray's CPUs are a count, not the cores: the neural test's 3 model actors and 2 sandbox actors need 5
    cluster = LocalCluster(tmp_path_factory.mktemp("ray"), head_cpus=4, node_cpus=2)
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


def test_a_self_training_round_is_the_local_executors(cluster, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    runs, opened, real_init = {}, [], RayExecutor.__init__

    def counted(self, *args, **kwargs):
        opened.append(self)
        real_init(self, *args, **kwargs)

    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", cluster.address])):
        cfg = tiny_config(tiny_model, tmp_path / "data", tmp_path, rounds=1, run_name=name, questions_per_round=8,
                          eval_size=8, train=TrainSettings(epochs=2.0, batch_size=4, learning_rate=1e-2))
        if extra:  # the three rollouts (round 0 eval, round 1 samples and eval) share one executor
            monkeypatch.setattr(RayExecutor, "__init__", counted)
            monkeypatch.setattr(F.ToyProfile, "preflight", lambda self, kinds=None: pytest.fail("loaded in the driver"))
        assert main(cli_args(cfg)[:-2] + ["--run-name", name, "--rounds", "1", *extra]) == 0
        runs[name] = tmp_path / name / "round_1"
    assert len(opened) == 1 and not opened[0].hosts  # opened once, closed at the end of the run
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


NEURAL_PROGRAM = ("def execute_command(image, query):\n    patch = ImagePatch(image)\n"
                  "    return [len(patch.find('circle')), patch.exists('square'), patch.verify_property('shape', 'red'),\n"
                  "            patch.best_text_match(['red', 'blue', 'green']), patch.simple_query(query)]\n")


def test_the_tiny_neural_profile_runs_in_one_model_actor_per_kind(cluster, tiny_models_dir):
    from viprog.primitives.backends.tiny import build_tiny_models

    options = {**build_tiny_models(tiny_models_dir), "depth": None, "llm": None}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    queries = ["what color is this?", "how many circle?", "what shape is the object?", "is this a star?"]
    jobs = [Job(NEURAL_PROGRAM, f"img-{i % 3}", images[i % 3], query=queries[i % 4]) for i in range(12)]
    with Executor(build_profile("neural", options), workers=1) as local:
        expected = outcome(local.run_many(jobs))
    assert all(error is None for _, error, _, _ in expected)
    with RayExecutor("neural", profile_options=options, workers=1, chunk=4) as remote:
        assert sorted(remote.hosts) == ["clip", "detector", "vqa"]  # no depth or LLM model configured: no actor
        pids = set(remote.model_pids.values())  # each kind loaded its models in a process of its own
        assert len(pids) == 3 and os.getpid() not in pids
        assert outcome(remote.run_many(jobs)) == expected
        stats = remote.model_stats()
    assert all(stats[kind]["requests"] > 0 for kind in ("clip", "detector", "vqa")), stats


def all_cpus_free(seconds: float = 30.0) -> bool:
    """Whether every CPU of the cluster is free again within `seconds`: no actor is left
    (Ray frees a killed actor's CPUs shortly after the kill)."""
    deadline = time.monotonic() + seconds
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def test_a_model_that_cannot_load_in_its_actor_is_one_usage_error(cluster):
    with pytest.raises(UsageError, match=r"cannot load its detector '/nowhere/owl'.*--profile-options"):
        RayExecutor(Unloadable(), workers=1)


def test_a_neural_model_file_missing_on_the_cluster_closes_what_was_opened(cluster, tiny_models_dir):
    from viprog.primitives.backends.tiny import build_tiny_models

    options = {**build_tiny_models(tiny_models_dir), "depth": None, "llm": None, "detector": "/nowhere/owl"}
    with pytest.raises(UsageError, match="/nowhere/owl") as error:  # the profile built by name, in its actor
        RayExecutor("neural", profile_options=options, workers=1)
    assert "\n" not in str(error.value)
    assert all_cpus_free()  # the three model actors (one CPU each) were killed


def test_an_ask_no_node_can_place_is_one_usage_error_at_once(cluster):
    assert all_cpus_free()
    start = time.monotonic()
    with pytest.raises(UsageError, match="no node of the Ray cluster offers 1 GPU for the models model actor"):
        RayExecutor(F.ToyProfile(device="cuda"), workers=1)  # --device cuda on a CPU-only cluster
    with pytest.raises(UsageError, match="offers 64 CPU for the models model actor"):
        RayExecutor(F.ToyProfile(), model_cpus=64, workers=1)
    assert time.monotonic() - start < 10 and all_cpus_free(0)  # refused before any actor was created


def test_a_model_that_kills_its_actor_every_time_ends_the_rollout(cluster, tmp_path):
    examples = TASKS.get("toy-count")(data_dir=tmp_path).examples("test")[:4]
    jobs = [Job(ex.reference_program, ex.image_key, ex.image, query=ex.query, meta=ex.meta) for ex in examples]
    with (RayExecutor(Crashing(), workers=1, sandboxes=1) as executor,
          pytest.raises(UsageError, match=f"the models model actor died {RESTARTS + 1} times")):
        executor.run_many(jobs)
    assert all_cpus_free()


def test_a_cpu_model_actor_computes_with_the_cpus_it_holds(cluster):
    with RayExecutor(F.ToyProfile(), model_cpus=2, workers=1, sandboxes=1) as executor:
        stats = executor.model_stats()["models"]
    assert (stats["omp_threads"], stats["threads"]) == (2, 2)


def test_images_go_to_the_object_store_once_per_run(cluster, tmp_path, monkeypatch):
    examples = TASKS.get("toy-count")(data_dir=tmp_path).examples("test")[:3]
    jobs = [Job(ex.reference_program, ex.image_key, ex.image, query=ex.query, meta=ex.meta) for ex in examples * 2]
    puts, real_put = [], ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kw: puts.append(value) or real_put(value, **kw))
    with RayExecutor(F.ToyProfile(), workers=1, chunk=2) as executor:
        first, second = (outcome(executor.run_many(jobs)) for _ in range(2))  # two rollouts of one run
    assert first == second and all(error is None for _, error, _, _ in first)
    assert len(puts) == len({ex.image_key for ex in examples}) == 3


def test_a_refused_run_folder_closes_the_ray_executor(cluster, tiny_model, tmp_path, monkeypatch):  # noqa: F811
    opened, real_init = [], RayExecutor.__init__

    def counted(self, *args, **kwargs):
        opened.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(RayExecutor, "__init__", counted)
    cfg = tiny_config(tiny_model, tmp_path / "data", tmp_path, rounds=1, run_name="taken")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")  # an earlier run's folder: needs --resume or --overwrite
    assert main(cli_args(cfg) + ["--executor", "ray", "--ray-address", cluster.address]) == 2
    assert len(opened) == 1 and not opened[0].hosts and not opened[0].actors


CONTROL = "then an actor with a handle among its arguments"
OPEN_AND_RUN = textwrap.dedent(f"""
    import sys, ray
    import selftrain_fixtures as F
    from viprog.executor import Job
    from viprog.executor.ray_backend import RayExecutor

    ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
    ex = F.ToyCountTask(data_dir=sys.argv[2]).examples("test")[0]
    with RayExecutor("toy", workers=1) as executor:
        (result,) = executor.run_many([Job(ex.reference_program, ex.image_key, ex.image, query=ex.query, meta=ex.meta)])
    assert result.error is None, result.error
    print("{CONTROL}", file=sys.stderr, flush=True)

    @ray.remote
    class Other:
        def ping(self):
            return 1

    @ray.remote(max_restarts=1)
    class Holder:
        def __init__(self, other):
            self.other = other

        def ping(self):
            return ray.get(self.other.ping.remote())

    assert ray.get(Holder.remote(Other.remote()).ping.remote()) == 1
""")


def test_no_actor_is_created_with_arguments_ray_cannot_rebuild(cluster, tmp_path):
    # Ray logs (once per process, at error level) when an actor that may restart is created with an
    # object-store argument or an actor handle (Ray issue 53727); the control shows the line would be seen
    out = subprocess.run([sys.executable, "-c", OPEN_AND_RUN, cluster.address, str(tmp_path)], env=cluster.env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    ours, control = out.stderr.split(CONTROL)
    line = "constructor arguments in the object store"
    assert line not in ours and line in control, out.stderr[-3000:]


def test_a_node_lost_mid_rollout_loses_and_duplicates_no_result(cluster, tmp_path):
    # the node is killed while both sandbox actors are inside a chunk (the model has answered some of its
    # calls and the chunk has not finished), so the lost actor's chunk is run again: more calls answered than
    # in the local run. Each job has an image id of its own (`<key>-<job>`), so a call names its chunk.
    examples = TASKS.get("toy-count")(data_dir=tmp_path).examples("train")
    program = ("def execute_command(image, query):\n    patch = ImagePatch(image)\n"
               "    return [len(patch.find(s)) for s in ['circle', 'square', 'triangle', 'star']]\n")
    jobs = [Job(program if i % 5 else F.right_program("star"), f"{ex.image_key}-{i}", ex.image, query=ex.query,
                meta=ex.meta) for i, ex in enumerate(examples * 4)]  # 192 programs
    chunk = 8
    local_log, ray_log = tmp_path / "local.calls", tmp_path / "ray.calls"
    with Executor(SlowToy(str(local_log)), workers=1, cache=False) as local:
        expected = outcome(local.run_many(jobs))
    seen, finished = [], threading.Event()
    with RayExecutor(SlowToy(str(ray_log)), workers=1, chunk=chunk, cache=False) as executor:
        assert len(set(executor.nodes())) == 2  # one sandbox actor on each node

        def kill_while_two_chunks_run():
            while not finished.is_set():
                started = {int(image.rsplit("-", 1)[1]) // chunk for image in calls_logged(ray_log)}
                if len(started - {index // chunk for index, _ in list(seen)}) >= 2:  # called, not yet returned
                    cluster.kill_node()
                    return
                time.sleep(0.01)

        killer = threading.Thread(target=kill_while_two_chunks_run)
        killer.start()
        try:
            for item in executor.run_iter(jobs):
                seen.append(item)  # noqa: PERF402 — read by the killer thread meanwhile
        finally:
            finished.set()
            killer.join()
        assert cluster.alive() == 1 and len(set(executor.nodes())) == 1  # the lost actor came back on the head
    assert sorted(i for i, _ in seen) == list(range(len(jobs)))  # each program exactly once
    assert outcome(r for _, r in sorted(seen, key=lambda t: t[0])) == expected
    assert len(calls_logged(ray_log)) > len(calls_logged(local_log)) > 0  # the lost chunk's calls were made again
