"""Kernel-level layers of the sandbox worker, applied where Linux (and the container) allows.

Why: the restricted language is the first wall; if a flaw in RestrictedPython or CPython
lets a program reach the worker's interpreter, these layers decide what it can still do.
Each layer is independent, and one the machine refuses (a container without the
capability, another architecture) is reported, never fatal:

- `network`: the worker moves into a new, empty network namespace (`unshare(CLONE_NEWNET)`,
  or `CLONE_NEWUSER | CLONE_NEWNET` for an unprivileged user); it has no interface but a
  downed loopback, so no address on this machine or beyond is reachable. Needs a
  single-threaded process: applied before the worker starts its threads.
- `syscalls`: a seccomp filter (on all threads, `SECCOMP_FILTER_FLAG_TSYNC`) refuses with
  EPERM new sockets, new processes and threads (`fork`, `clone`, `execve`, ...), signals
  to any process but the worker itself, `ptrace`, namespace and mount changes, and
  io_uring (whose queued operations would bypass the checks on each syscall). Applied
  once the worker's threads exist, which is why new threads can be refused.
- `processes`: `RLIMIT_NPROC` at the current count for a worker that does not run as
  root; the kernel exempts root, for whom this layer is the seccomp filter's refusals.
- `files`: `RLIMIT_NOFILE` a few descriptors above the ones the worker holds.
- `privileges`: `PR_SET_NO_NEW_PRIVS` (no setuid gain through exec) and, for root, an
  empty capability set (no `CAP_SYS_ADMIN`, `CAP_NET_ADMIN`, `CAP_DAC_OVERRIDE`, ...).

`apply_early()` and `apply_late()` return {layer: None when active, else the reason}.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
from pathlib import Path
from typing import Any

LAYERS: dict[str, str] = {
    "network": "no network: a new, empty network namespace",
    "syscalls": "seccomp: no sockets, processes, threads, exec, ptrace, io_uring or signals to others",
    "processes": "no new processes: RLIMIT_NPROC, or for root (exempt from it) the seccomp filter",
    "files": "RLIMIT_NOFILE: a few file descriptors above those the worker holds",
    "privileges": "no_new_privs, and no capabilities when the worker runs as root",
}

_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 38, 24
_SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, _SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1, 1, 4
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
_SPARE_FDS = 16

# per architecture: audit arch, seccomp syscall, the refused syscalls, and kill / tgkill
# (allowed only with the worker's own pid as first argument)
_ARCH: dict[str, tuple[int, int, dict[str, int], tuple[int, int]]] = {
    "x86_64": (0xC000003E, 317, {
        "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59,
        "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "tkill": 200,
        "pidfd_open": 434, "pidfd_send_signal": 424, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166,
        "pivot_root": 155, "chroot": 161, "setuid": 105, "setgid": 106, "setresuid": 117, "setresgid": 119,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }, (62, 234)),
    "aarch64": (0xC00000B7, 277, {
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435, "execve": 221, "execveat": 281,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "tkill": 130, "pidfd_open": 434,
        "pidfd_send_signal": 424, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "chroot": 51, "setuid": 146, "setgid": 144, "setresuid": 147, "setresgid": 149,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    }, (129, 131)),
}


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _failed(what: str) -> str:
    code = ctypes.get_errno()
    return f"{what} refused ({errno.errorcode.get(code, code)}: {os.strerror(code)})"


def _new_network() -> str | None:
    libc = _libc()
    if libc.unshare(_CLONE_NEWNET) == 0:
        return None
    first = _failed("unshare(CLONE_NEWNET)")
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return None
    return f"{first}; {_failed('unshare(CLONE_NEWUSER|CLONE_NEWNET)')}"


def apply_early() -> dict[str, str | None]:
    """Layers that need a single-threaded process (call before starting threads)."""
    return {"network": _new_network()}


def _filter(arch: str, pid: int) -> bytes:
    """The seccomp BPF program: refuse the listed syscalls, and signals to other processes."""
    audit, _, refused, signals = _ARCH[arch]
    prog: list[tuple[int, int, int, int]] = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, audit), (_RET, 0, 0, _RET_KILL_PROCESS),
                                             (_LD_ABS, 0, 0, 0)]
    if arch == "x86_64":  # the x32 ABI: the same calls under other numbers
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, _RET_ERRNO | errno.EPERM)]
    for number in refused.values():
        prog += [(_JEQ, 0, 1, number), (_RET, 0, 0, _RET_ERRNO | errno.EPERM)]
    kill, tgkill = signals
    prog += [(_JEQ, 1, 0, kill), (_JEQ, 0, 3, tgkill), (_LD_ABS, 0, 0, 16), (_JEQ, 1, 0, pid),
             (_RET, 0, 0, _RET_ERRNO | errno.EPERM), (_RET, 0, 0, _RET_ALLOW)]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


def _seccomp() -> str | None:
    arch = platform.machine()
    if arch not in _ARCH:
        return f"no seccomp filter for architecture {arch}"
    code = _filter(arch, os.getpid())
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buffer))
    libc = _libc()
    # SPEC_ALLOW: a filter would otherwise turn on the kernel's Spectre mitigations for the
    # worker (a barrier at each context switch, and the worker switches threads at every
    # primitive call); they protect secrets in the process, and a worker holds none
    for flags in (_SECCOMP_FILTER_FLAG_TSYNC | _SECCOMP_FILTER_FLAG_SPEC_ALLOW, _SECCOMP_FILTER_FLAG_TSYNC):
        if libc.syscall(_ARCH[arch][1], _SECCOMP_SET_MODE_FILTER, flags, fprog) == 0:
            return None
    return _failed("seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)")


def _no_privileges() -> str | None:
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return _failed("prctl(PR_SET_NO_NEW_PRIVS)")
    if os.geteuid() != 0:
        return None
    cap_last = Path("/proc/sys/kernel/cap_last_cap")
    last = int(cap_last.read_text()) if cap_last.exists() else 40
    for cap in range(last + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # needs CAP_SETPCAP; the capset below is what counts
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(header, bytes(24)) != 0:
        return _failed("capset(no capabilities)")
    return None


def _count_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
    return count


def _nproc() -> str | None:
    if os.geteuid() == 0:
        return "RLIMIT_NPROC does not apply to root"
    count = _count_processes()
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))
    except (OSError, ValueError) as exc:
        return f"setrlimit(RLIMIT_NPROC) refused ({exc})"
    return None


def _nofile() -> str | None:
    highest = max((int(fd) for fd in os.listdir("/proc/self/fd")), default=2)
    limit = highest + 1 + _SPARE_FDS
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (OSError, ValueError) as exc:
        return f"setrlimit(RLIMIT_NOFILE) refused ({exc})"
    return None


def apply_late() -> dict[str, str | None]:
    """Layers for the finished worker, its threads started (order matters: NPROC counts
    before the filter, capabilities go after the limits were lowered, seccomp last)."""
    out = {"processes": _nproc(), "files": _nofile(), "privileges": _no_privileges()}
    out["syscalls"] = _seccomp()
    if out["processes"] and not out["syscalls"]:
        out["processes"] = None  # root: the filter refuses fork, clone and exec instead
    elif out["processes"]:
        out["processes"] += "; and the seccomp filter was refused"
    return out
