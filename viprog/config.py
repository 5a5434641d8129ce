"""The options every command that runs programs shares (`viprog eval`, `viprog selftrain`,
and the saved `config.json` that `viprog.load` reads back).

Why its own module: the commands differ in what they do with programs, not in how the
task, its primitive profile, the policy and the sandbox are named; one dataclass keeps
those names and their meaning the same everywhere, and `viprog.rollout.build` turns it
into components.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplingSettings:
    """How each round's training programs are drawn: `n` per question at this temperature
    and top-p (ViReP: 1.0 and 0.9), and `retry` more for the questions that gave nothing to
    keep. Evaluation is always greedy."""

    n: int = 4
    """Programs sampled per train question (the group size under --algo grpo)."""
    temperature: float = 1.0
    """Sampling temperature of the train rollouts."""
    top_p: float = 0.9
    """Nucleus sampling top-p."""
    retry: int = 0
    """Programs drawn once more, at the same temperature, for each train question whose first n left the filter
    nothing to keep (0: no second draw; --algo rest only): the hard questions get more tries, the easy ones none."""


@dataclass
class TaskPolicyConfig:
    """The options `viprog eval` and `viprog selftrain` share: the task and its data, the
    primitive profile, the policy that writes programs and the sandbox that runs them."""

    task: str = "shapes"
    """Task (`viprog tasks` lists them)."""
    data_dir: str | None = None
    """The task's data folder (None: the task's default; the shapes world is generated)."""
    profile: str | None = None
    """Primitive profile (None: the task's default)."""
    profile_options: str | None = None
    """Options of the primitive profile as a JSON object, e.g. '{"detector": "google/owlv2-base-patch16-ensemble",
    "clip": "ViT-B-32", "vqa": "/models/blip-vqa-base", "batch_size": 64}' (`viprog primitives` lists the
    profiles; a model is a hub name or a local folder). Its "device" follows --device unless given."""
    policy: str | None = None
    """Policy backend or an embedded model's name (hf, vllm, llamacpp, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b)."""
    model: str | None = None
    """Model for the policy: a hub name or a local folder (given to the embedded policy, it samples with hf)."""
    policy_options: str | None = None
    """Options of the policy backend as a JSON object: '{"engine": "hf"}' samples the embedded model with
    transformers instead of llama.cpp; for vllm across GPUs and nodes over Ray
    '{"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}'."""
    device: str = "cpu"
    """Device for the policy, the primitive models and the fine-tuning in selftrain (cpu, cuda, cuda:1)."""
    prompt_style: str = "completion"
    """Prompt format of the Prompter: completion (ViperGPT-style code) or chat."""
    max_new_tokens: int = 256
    """Longest program the policy may write, in tokens."""
    batch_questions: int = 4
    """Questions per call to the policy (each with all its samples)."""
    workers: int = 2
    """Sandbox worker processes."""
    timeout: float = 10.0
    """Seconds per program before it is killed."""
    executor: str = "local"
    """Where programs run: local (this machine) or ray (sandbox and primitive-model actors on a Ray cluster;
    --workers is then per sandbox actor, one per node; needs viprog[dist])."""
    ray_address: str | None = None
    """The Ray cluster for --executor ray: host:port, or auto for the one started on this machine by `ray start`
    (None: $RAY_ADDRESS, else a Ray started for this run alone)."""
    ray_model_gpus: str | None = None
    """GPUs of each primitive-model actor under --executor ray (one per model kind: detector, clip, vqa, depth,
    llm for the neural profile): a number for all, or a JSON object per kind, e.g. '{"vqa": 1, "detector": 0.5}'
    (None: on --device cuda the kinds share one GPU)."""
    ray_model_cpus: float | None = None
    """CPUs each primitive-model actor reserves under --executor ray, also its torch/OpenMP threads (Ray sets
    OMP_NUM_THREADS to them; None: 1 for models on the CPU, 0 on --device cuda)."""
