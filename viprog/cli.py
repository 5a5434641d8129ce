"""The `viprog` command: one subcommand per job, each parsed from a typed config.

Each subcommand names a dataclass config (fields documented with docstrings) and a
`main(config) -> int`; `tyro` generates the parser from the dataclass. Both are imported
only when their subcommand runs, so `viprog --help` imports no torch and no model.
Bad input (unknown names, missing files, unreadable data) ends with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version

import tyro

from viprog.errors import DataError, UsageError
from viprog.registry import RegistryError, resolve

#: subcommand -> (config target, main target, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("viprog.executor.cli:RunConfig", "viprog.executor.cli:main",
            "run one program on one image in the sandbox and print its ExecutionResult as JSON"),
    "doctor": ("viprog.executor.cli:DoctorConfig", "viprog.executor.cli:doctor_main",
               "list the sandbox's kernel-level layers (network, seccomp, limits) active on this machine"),
    "eval": ("viprog.evaluate:EvalConfig", "viprog.evaluate:main",
             "score programs (a JSONL file, or a policy's) on a task split; print a JSON metrics report"),
    "selftrain": ("viprog.selftrain_config:SelfTrainConfig", "viprog.selftrain:main",
                  "reinforced self-training: sample, execute, filter, LoRA fine-tune, evaluate, in rounds"),
    "corrections": ("viprog.corrections:CorrectionsConfig", "viprog.corrections:main",
                    "corrections suggest RUN: a run's question types that no sample was ever rewarded for"),
    "reinforce": ("viprog.reinforce.cli:ReinforceConfig", "viprog.reinforce.cli:main",
                  "REINFORCE tuning of pixel-output vision models with task rewards (demos)"),
    "primitives": ("viprog.listing:PrimitivesConfig", "viprog.listing:primitives_main",
                   "list primitives and the profiles that implement them (--api: the prompt's API section)"),
    "tasks": ("viprog.listing:TasksConfig", "viprog.listing:tasks_main",
              "list tasks (with a task name and --stats: its splits and answer distributions)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: viprog <command> [options]   (viprog <command> --help for its options)", "",
             "Visual program synthesis with reinforced self-training.", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def fail(command: str, message: str) -> int:
    print(f"viprog {command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None, prog: str = "viprog") -> int:
    """Entry point of the `viprog` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(version("viprog"))
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=2)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; commands: {', '.join(COMMANDS)}"
        return fail(command, f"unknown command {command!r}{hint}")
    return run_command(command, rest, prog=f"{prog} {command}" if prog == "viprog" else prog)


def parse_command(command: str, rest: list[str], prog: str) -> object:
    """The subcommand's config parsed from `rest`, without running it (tyro exits with
    status 2 on an unknown or malformed option, as on the command line)."""
    config_target, _, help_ = COMMANDS[command]
    config_cls = resolve(config_target)
    # a config may parse itself over a base of its own (a preset, a saved run): `from_cli`
    parse = getattr(config_cls, "from_cli", None)
    return (parse(rest, prog=prog, description=help_) if parse is not None
            else tyro.cli(config_cls, args=rest, prog=prog, description=help_))


def run_command(command: str, rest: list[str], prog: str) -> int:
    try:
        config = parse_command(command, rest, prog)
        return int(resolve(COMMANDS[command][1])(config) or 0)
    except (UsageError, RegistryError, DataError) as exc:
        return fail(command, str(exc))
    except BrokenPipeError:  # `viprog ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
