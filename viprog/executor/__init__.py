"""The sandboxed executor: restricted compile, worker processes, the PrimitiveServer.

`Executor(profile).run_many(jobs)` runs untrusted programs (`Job`s) in sandbox workers and
returns one `ExecutionResult` per job (`run_iter` yields them as they finish);
`check_program(source)` reports a syntax or policy violation before anything runs. What
is and is not isolated: see `viprog.executor.pool` and `viprog.executor.layers`.
"""

from viprog.executor.pool import Executor, Job
from viprog.executor.restrict import check_program
from viprog.executor.result import ERROR_KINDS, ExecutionResult
from viprog.executor.server import PrimitiveServer

__all__ = ["ERROR_KINDS", "ExecutionResult", "Executor", "Job", "PrimitiveServer", "check_program"]
