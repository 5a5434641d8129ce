"""A `--ray-address` where nothing listens is one line within seconds (Ray alone retries for
minutes), and `--ray-model-gpus` is a number or an object per model kind; an ask no node can
place is refused before any actor exists."""

import json
import socket
import time

import pytest

pytest.importorskip("ray", reason="the dist extra (pip install 'viprog[dist]') is not installed")

import selftrain_fixtures as F  # noqa: F401  (registers the toy task and profile)

from viprog.cli import main
from viprog.errors import UsageError
from viprog.executor.backend import parse_model_gpus
from viprog.executor.ray_backend import probe
from viprog.executor.ray_place import check_placement, cpus_per_model, gpus_per_kind, model_routes, threads
from viprog.primitives.profile import build_profile
from viprog.tasks import TASKS


def closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_closed_port_fails_fast_with_one_line(tmp_path, capsys):
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{closed_port()}"
    example = TASKS.get("toy-count")(data_dir=tmp_path).examples("test")[0]
    programs = tmp_path / "p.jsonl"
    programs.write_text(json.dumps({"question_id": example.id, "program": example.reference_program}) + "\n")
    start = time.monotonic()
    code = main(["eval", "--task", "toy-count", "--data-dir", str(tmp_path), "--programs", str(programs),
                 "--executor", "ray", "--ray-address", address])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 2 and seconds < 10, seconds
    assert len(err.splitlines()) == 1 and address in err and "ray start --head" in err, err
    assert not ray.is_initialized()


def test_probe_leaves_auto_and_portless_addresses_to_ray():
    for address in ("auto", "local", "head-node"):
        probe(address)  # nothing to check: no exception, no wait
    with pytest.raises(UsageError, match="ray://127.0.0.1"):
        probe(f"ray://127.0.0.1:{closed_port()}", timeout=1.0)


def test_model_gpus_per_kind():
    neural = build_profile("neural", {"depth": None}, preflight=False)
    routes = model_routes(neural)
    assert routes["find"] == routes["exists"] == "detector" and routes["simple_query"] == "vqa"
    assert "compute_depth" not in routes and "llm_query" not in routes  # not configured: no actor for them
    kinds = sorted(set(routes.values()))
    assert kinds == ["clip", "detector", "vqa"]
    assert gpus_per_kind(None, kinds, "cpu") == {"clip": 0.0, "detector": 0.0, "vqa": 0.0}
    assert gpus_per_kind(None, kinds, "cuda") == dict.fromkeys(kinds, 1 / 3)  # one GPU, shared
    assert gpus_per_kind(parse_model_gpus('{"vqa": 1}'), kinds, "cuda:0") == {"clip": 1 / 3, "detector": 1 / 3, "vqa": 1.0}
    assert gpus_per_kind(parse_model_gpus("0.5"), kinds, "cpu") == dict.fromkeys(kinds, 0.5)
    assert set(model_routes(build_profile("shapes", preflight=False)).values()) == {"models"}
    with pytest.raises(UsageError, match="'depth'.*clip, detector, vqa"):
        gpus_per_kind({"depth": 1}, kinds, "cuda")
    with pytest.raises(UsageError, match="ray-model-gpus"):
        parse_model_gpus("{vqa: 1}")
    for negative in ("-1", '{"vqa": -0.5}'):  # Ray's own error for these is a traceback
        with pytest.raises(UsageError, match="ray-model-gpus"):
            parse_model_gpus(negative)


def test_an_address_ray_cannot_parse_is_one_line(tmp_path, capsys):
    import ray

    assert not ray.is_initialized()
    example = TASKS.get("toy-count")(data_dir=tmp_path).examples("test")[0]
    programs = tmp_path / "p.jsonl"
    programs.write_text(json.dumps({"question_id": example.id, "program": example.reference_program}) + "\n")
    code = main(["eval", "--task", "toy-count", "--data-dir", str(tmp_path), "--programs", str(programs),
                 "--executor", "ray", "--ray-address", "127.0.0.1"])  # no port: Ray raises ValueError
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "127.0.0.1" in err, err
    assert not ray.is_initialized()


def test_asks_are_checked_against_each_node_and_the_cluster():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]  # a dead node offers nothing
    check_placement([("vqa model actor", 1.0, 1.0), ("sandbox actor", 2.0, 0.0), ("sandbox actor", 2.0, 0.0)], nodes)
    with pytest.raises(UsageError, match=r"offers 2 GPU for the vqa model actor \(its nodes offer at most 1\)"):
        check_placement([("vqa model actor", 0.0, 2.0)], nodes)
    with pytest.raises(UsageError, match="offers 8 CPU for the sandbox actor"):
        check_placement([("sandbox actor", 8.0, 0.0)], nodes)
    with pytest.raises(UsageError, match="ask for 1.5 GPU together and the cluster has 1"):
        check_placement([("vqa model actor", 0.0, 1.0), ("clip model actor", 0.0, 0.5)], nodes)
    assert cpus_per_model(None, "cpu") == 1.0 and cpus_per_model(None, "cuda:0") == 0.0
    assert [threads(c) for c in (0.0, 0.5, 1.0, 2.7)] == [1, 1, 1, 2]
    with pytest.raises(UsageError, match="ray-model-cpus"):
        cpus_per_model(-1, "cpu")
