"""A two-node Ray cluster on this machine for tests: a head and a second node, each a
`ray start --block` process of its own session, so the second can be killed (SIGKILL to its
process group: its raylet and object store go at once, as when a machine is lost).

The head checks its nodes' health every 0.5 s, so a lost node is declared dead in about
two seconds instead of Ray's default fifteen.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from selftrain_fixtures import ToyProfile

from viprog.primitives.patch import PrimitiveError
from viprog.primitives.profile import Call

_FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
                "RAY_health_check_initial_delay_ms": "0"}
# A loopback cluster of the test's own: no token authentication (with a token in ~/.ray, left by any
# earlier `ray.init()`, Ray turns it on for the head only, and the second node is refused).
_NO_AUTH = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """The process ids below `pid` (children, their children ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class LocalCluster:
    """`ray start` a head (`head_cpus`) and one more node (`node_cpus`); `close` ends both."""

    def __init__(self, root: Path, *, head_cpus: int = 2, node_cpus: int = 1, store_bytes: int = 80_000_000) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | _FAST_HEALTH | _NO_AUTH
        # the tests' profiles (selftrain_fixtures' `toy`) must import in Ray's workers as they do here
        here = str(Path(__file__).resolve().parent)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self.common = ["--node-ip-address=127.0.0.1", f"--object-store-memory={store_bytes}",
                       "--disable-usage-stats", "--block"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.saved_auth: str | None = os.environ.get("RAY_AUTH_MODE")
        try:
            self._start("head", "--head", f"--port={self.port}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
                        f"--temp-dir={root / 'ray'}")
            self._wait(lambda: self._port_open(), "the head's port")
            self._start("node", f"--address={self.address}", f"--num-cpus={node_cpus}")
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 — the process keeps it
        self.procs[name] = subprocess.Popen([self.ray, "start", *args, *self.common], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 1).close()
            return True
        except OSError:
            return False

    def _wait(self, ready: Any, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray {name} exited ({proc.returncode}): {(self.root / f'{name}.log').read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g} s for {what}")
            time.sleep(0.3)

    def connect(self) -> None:
        """Join from this process and wait until both nodes are alive."""
        import ray

        self.saved_auth = os.environ.get("RAY_AUTH_MODE")
        os.environ.update(_NO_AUTH)  # read by ray.init in this process; restored by close
        ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        self._wait(lambda: self.alive() == 2, "two alive nodes")

    @staticmethod
    def alive() -> int:
        import ray

        return sum(1 for n in ray.nodes() if n["Alive"])

    def kill_node(self) -> None:
        """Lose the second node at once: its raylet, store and every worker process. (The
        workers are not all in the node's process group, and a worker left alive keeps
        answering the actor calls it has, as a machine that is gone would not.)"""
        proc = self.procs.pop("node")
        doomed = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)
        if self.saved_auth is not None:
            os.environ["RAY_AUTH_MODE"] = self.saved_auth
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self.procs.clear()


class SlowToy(ToyProfile):
    """The toy profile with a model's latency: 50 ms a batch (so a rollout lasts long enough
    to lose a node in the middle of it); with `log`, each call appends its image id to that
    file (so a test can see which jobs' calls were answered, wherever the profile runs)."""

    def __init__(self, log: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.log = log

    def find(self, calls: list[Call]) -> list[Any]:
        time.sleep(0.05)
        if self.log:
            with open(self.log, "a", encoding="utf-8") as f:
                f.write("".join(f"{call.patches[0].image_id}\n" for call in calls))
        return super().find(calls)


def calls_logged(path: Path) -> list[str]:
    """The image id of each call a `SlowToy(log=path)` has answered, in order."""
    return path.read_text().split() if path.exists() else []


class Crashing(ToyProfile):
    """The toy profile with a model that kills its process at every call (as a native crash
    or the kernel's out-of-memory killer would)."""

    def find(self, calls: list[Call]) -> list[Any]:
        os._exit(3)


class Unloadable(ToyProfile):
    """The toy profile with a model that cannot be had (as a wrong hub name or an offline machine)."""

    def preflight(self, kinds: Any = None) -> None:
        raise PrimitiveError("profile 'toy' cannot load its detector '/nowhere/owl' (OSError: no such folder)")
