"""A run's components close their executor whatever happens: when the policy's `close`
raises, and when the block guarded by `closed_on_error` fails (a refused run folder)."""

from __future__ import annotations

import pytest

from viprog.errors import UsageError
from viprog.rollout import Components


class Closing:
    def __init__(self, fails: bool = False) -> None:
        self.closed, self.fails = 0, fails

    def close(self) -> None:
        self.closed += 1
        if self.fails:
            raise RuntimeError("the policy's engine is gone")


def components(policy: Closing | None, executor: Closing) -> Components:
    return Components(task=None, profile_name="toy", profile=None, policy=policy, prompter=None,  # type: ignore[arg-type]
                      executor=executor)


def test_the_executor_closes_when_the_policys_close_raises():
    executor = Closing()
    parts = components(Closing(fails=True), executor)
    with pytest.raises(RuntimeError, match="engine is gone"):
        parts.close()
    assert executor.closed == 1 and parts.executor == "local"


def test_closed_on_error_closes_on_a_failure_only():
    policy, executor = Closing(), Closing()
    parts = components(policy, executor)
    with parts.closed_on_error():
        pass
    assert policy.closed == executor.closed == 0
    with pytest.raises(UsageError, match="already holds a run"), parts.closed_on_error():
        raise UsageError("runs/r already holds a run; pass --resume to continue it")
    assert policy.closed == executor.closed == 1 and parts.executor == "local"
