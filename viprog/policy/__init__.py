"""Policy backends: the LLM that writes programs (`hf`, `vllm`, `scripted`)."""

from viprog.policy.base import POLICIES, Policy, SamplingParams

__all__ = ["POLICIES", "Policy", "SamplingParams"]
