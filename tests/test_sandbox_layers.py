"""Kernel-level layers of the sandbox worker: each one active on this machine is tested by
what it refuses, in a process that applied it exactly as a worker does, and on the
workers of a live Executor; a layer the machine refuses is warned about once."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from viprog.cli import main
from viprog.executor import Executor, Job, pool
from viprog.executor import layers as L

IMAGE = np.zeros((8, 8, 3), np.uint8)


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor("scene-graph", workers=1) as ex:
        assert ex.run(Job("def execute_command(image):\n    return 2\n", "i", IMAGE)).answer == 2
        yield ex


def active(ex: Executor, name: str) -> None:
    if ex.layers.get(name) is not None:
        pytest.skip(f"layer {name} is refused on this machine: {ex.layers[name]}")


def in_layers(attempt: Callable[[], object], late: bool = True) -> dict:
    """Run `attempt` in a forked child after the worker's layers; its outcome as
    {"ok": repr} or {"error": exception class name}."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os-level calls from here on
        os.close(read)
        try:
            applied = L.apply_early()
            if late:
                applied.update(L.apply_late())
            try:
                out = {"ok": repr(attempt()), "layers": applied}
            except BaseException as exc:  # noqa: BLE001 — the refusal is what we test
                out = {"error": type(exc).__name__, "layers": applied}
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_every_layer_is_reported(executor: Executor) -> None:
    assert set(executor.layers) == set(L.LAYERS)
    assert all(v is None or (isinstance(v, str) and v) for v in executor.layers.values())


def test_network_namespace_reaches_no_address(executor: Executor) -> None:
    active(executor, "network")
    pid = executor.worker_pids()[0]
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        out = in_layers(lambda: socket.create_connection(("127.0.0.1", port), timeout=2), late=False)
        assert out["error"] in ("OSError", "ConnectionRefusedError", "TimeoutError"), out
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # control: outside, it connects
    finally:
        server.close()


@pytest.mark.parametrize("name, attempt", [
    ("socket", lambda: socket.socket(socket.AF_UNIX)),
    ("fork", os.fork),
    ("exec", lambda: os.execv("/bin/true", ["true"])),
    ("thread", lambda: __import__("threading").Thread(target=len, args=((),)).start()),
    ("signal", lambda: os.kill(os.getppid(), 0)),
    ("unshare", lambda: 1 / (__import__("ctypes").CDLL(None, use_errno=True).unshare(0x40000000) + 1)),
])
def test_seccomp_filter_refuses(executor: Executor, name: str, attempt: Callable[[], object]) -> None:
    active(executor, "syscalls")
    out = in_layers(attempt)
    assert out["layers"]["syscalls"] is None and "error" in out, out
    assert out["error"] in ("PermissionError", "RuntimeError", "ZeroDivisionError"), out


def io_uring_setup() -> tuple[int, int]:
    """io_uring_setup(1 entry) as a raw syscall: (return value, errno)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(425, ctypes.c_uint(1), params)  # 425 on x86_64 and aarch64 alike
    if fd >= 0:
        os.close(fd)
    return fd, ctypes.get_errno()


def test_seccomp_filter_refuses_io_uring(executor: Executor) -> None:
    # io_uring would do socket and file work without the syscalls the filter checks
    active(executor, "syscalls")
    out = in_layers(io_uring_setup)
    assert out["ok"] == repr((-1, errno.EPERM)), out


def test_seccomp_filter_lets_a_process_signal_itself(executor: Executor) -> None:
    active(executor, "syscalls")
    assert in_layers(lambda: os.kill(os.getpid(), 0)) == {"ok": "None", "layers": in_layers(lambda: 0)["layers"]}


def test_file_descriptor_limit(executor: Executor) -> None:
    active(executor, "files")
    out = in_layers(lambda: [open("/dev/null") for _ in range(1000)])  # noqa: SIM115 — left open on purpose
    assert out["error"] == "OSError", out
    limits = Path(f"/proc/{executor.worker_pids()[0]}/limits").read_text()
    nofile = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
    assert nofile[0] == nofile[1] and int(nofile[0]) < 64


def test_no_new_privileges_and_no_capabilities(executor: Executor) -> None:
    active(executor, "privileges")
    status = Path(f"/proc/{executor.worker_pids()[0]}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    if os.geteuid() == 0:
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0


def test_workers_run_under_the_filter(executor: Executor) -> None:
    active(executor, "syscalls")
    tasks = list(Path(f"/proc/{executor.worker_pids()[0]}/task").iterdir())
    assert len(tasks) > 1, "a worker runs its programs in threads"
    assert all("Seccomp:\t2" in (task / "status").read_text() for task in tasks), "every thread is filtered"


def test_a_refused_layer_is_warned_about_once(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setattr(pool, "_WARNED", set())
    with Executor("scene-graph", workers=1) as ex, caplog.at_level(logging.WARNING, logger="viprog.executor.pool"):
        for _ in range(3):  # as three workers would report it
            ex._hello({**dict.fromkeys(L.LAYERS), "network": "unshare(CLONE_NEWNET) refused (EPERM)"})
    warned = [r.getMessage() for r in caplog.records if "network" in r.getMessage()]
    assert len(warned) == 1 and "EPERM" in warned[0]


def seccomp_mode(pid: int | str) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Seccomp:"))


def test_without_layers_nothing_is_applied() -> None:
    ours = seccomp_mode("self")  # "Seccomp:\t2" already under a container's own filter (Docker)
    with Executor("scene-graph", workers=1, layers=False) as ex:
        assert ex.run(Job("def execute_command(image):\n    return 2\n", "i", IMAGE)).answer == 2
        assert ex.layers == {}
        assert seccomp_mode(ex.worker_pids()[0]) == ours


def test_doctor_lists_the_layers(capsys: pytest.CaptureFixture, executor: Executor) -> None:
    code = main(["doctor", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out["layers"]) == set(L.LAYERS) and out["program"]["answer"] == 2
    assert code == (0 if all(v is None for v in out["layers"].values()) else 1)
    main(["doctor"])
    text = capsys.readouterr().out
    assert all(name in text for name in L.LAYERS)
