"""The sandboxed executor: restricted compile, worker processes, the PrimitiveServer."""

from viprog.executor.result import ERROR_KINDS, ExecutionResult

__all__ = ["ERROR_KINDS", "ExecutionResult"]
