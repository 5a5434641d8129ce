"""The options of `viprog selftrain` (`SelfTrainConfig`), its presets, and how a saved run's
`config.json` is read back and checked.

Why its own module: the round loop (`viprog.selftrain`) had reached the 500-line limit, and
the options are a concept of their own that the CLI, the study and the benches name without
running a round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import tyro

from viprog.config import SamplingSettings, TaskPolicyConfig
from viprog.errors import UsageError
from viprog.finetune import LoraSettings, TrainSettings
from viprog.grpo import GrpoOptions, check_options
from viprog.launch import check_launcher
from viprog.runs import Run, read_json

log = logging.getLogger("viprog.selftrain")


@dataclass
class SelfTrainConfig(TaskPolicyConfig):
    """Reinforced self-training of a program-writing policy on a task's rewards."""

    # TaskPolicyConfig's fields with this command's defaults: the embedded policy, short programs
    policy: str = "qwen2.5-coder-0.5b"
    max_new_tokens: int = 96
    quantize: Literal["auto", "none", "int8"] = "auto"
    """hf sampling from an int8 dynamically quantised copy (LoRA merged in first) — `auto`: int8 for
    transformers on the CPU (~1.7x the fp32 tokens/s), none elsewhere; llama.cpp ignores it (its GGUF is quantised)."""
    rounds: int = 2
    """Self-training rounds after the round-0 baseline."""
    questions_per_round: int = 12
    """Train questions sampled per round (a new slice of the shuffled train split each round)."""
    sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    """How the train programs are sampled (--sampling.n, --sampling.temperature, --sampling.top-p, --sampling.retry)."""
    tau: float = 1.0
    """Reward threshold: keep programs with reward ≥ tau."""
    dedup: bool = True
    """Drop programs identical (up to layout and comments) to one kept for the same question."""
    cap_per_question: int | None = 2
    """Keep at most this many programs per question (None: no cap)."""
    drop_lucky: bool = True
    """Do not keep lucky guesses: programs that made no primitive call or return a constant."""
    dedup_across_questions: bool = False
    """Do not keep a program identical to one kept for an earlier question of the round."""
    restart_from_base: bool = False
    """Fine-tune each round from the base model on the whole library, instead of continuing
    the last adapter on this round's programs."""
    lora: LoraSettings = dataclasses.field(default_factory=lambda: LoraSettings(r=8, alpha=16))
    """The LoRA adapter each round trains."""
    train: TrainSettings = dataclasses.field(default_factory=lambda: TrainSettings(epochs=2.0))
    """Fine-tuning settings of each round (its seed is --seed plus the round)."""
    base_prompt: Literal["few-shot", "short"] = "few-shot"
    """Prompt for the base policy (round 0, and sampling in round 1)."""
    tuned_prompt: Literal["few-shot", "short"] = "few-shot"
    """Prompt for the tuned policy (sampling from round 2, evaluation from round 1)."""
    train_prompt: Literal["short", "few-shot"] = "short"
    """Prompt the programs are trained under (ViReP: the short prompt, query only)."""
    library_shots: int = 2
    """Few-shot prompts also show this many stored programs of similar train questions."""
    eval_library: bool = True
    """Evaluation prompts show library programs too (False: the few-shot prompt alone, what the weights learned)."""
    train_split: str | None = None
    """Split the rollouts sample questions from (None: the task's train split)."""
    eval_split: str | None = None
    """Held-out split for evaluation (None: the task's evaluation split, e.g. test for shapes, val for GQA)."""
    eval_size: int | None = 30
    """Questions evaluated per round (None: the whole split)."""
    seed: int = 0
    """Seed for question order, sampling and training."""
    run_name: str | None = None
    """Name of the run folder under runs_dir (None: <task>-<policy>)."""
    runs_dir: str = "runs"
    """Where run folders live."""
    resume: bool = False
    """Continue the run with this name from its last finished step."""
    overwrite: bool = False
    """Delete the run with this name and start again."""
    train_launcher: str | None = None
    """Run each round's fine-tuning as this launcher's processes instead of in this one, e.g. 'accelerate launch
    --multi_gpu --num_processes 2' (DDP; on CPUs over gloo) or 'accelerate launch --config_file
    scripts/accelerate/fsdp.yaml' (viprog.launch)."""
    report: bool = True
    """Write runs/<name>/report.html at the end."""
    algo: Literal["rest", "grpo"] = "rest"
    """rest: ViReP's filtered behaviour cloning; grpo: online RL (TRL's GRPOTrainer, the sandbox's reward; --grpo.*)."""
    grpo: GrpoOptions = dataclasses.field(default_factory=GrpoOptions)
    """Options of --algo grpo."""
    corrections: str | None = None
    """A JSONL file of hand-written programs (`viprog corrections suggest RUN` lists what to
    write): in every round's training data (rest: its SFT pairs; grpo: an SFT step before each round) and the library."""
    preset: Literal["embedded", "virep-gpu"] | None = None
    """Start from a preset; every option given on the command line wins over it. (In Python:
    `SelfTrainConfig.from_preset(name, **options)`.)"""

    @classmethod
    def from_preset(cls, name: str, **options: Any) -> SelfTrainConfig:
        """The preset `name` with `options` on top (each one wins, whatever its value)."""
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        flat = sorted(options.keys() & FLAT_OPTIONS.keys())
        if flat:
            group, new = FLAT_OPTIONS[flat[0]]
            raise UsageError(f"{flat[0]} is now {group}.{new}: pass {group}={type(getattr(cls(), group)).__name__}(...)")
        return dataclasses.replace(PRESETS[name](), preset=name, **options)

    @classmethod
    def from_cli(cls, args: Sequence[str], **tyro_options: Any) -> SelfTrainConfig:
        """Parse the command line over its base: the dataclass defaults, else the preset it
        names, else (with --resume) the run's saved config — so every option given on the
        command line wins, including one whose value equals a dataclass default."""
        preset = _named_preset(args)  # looked up first, so that --help shows the preset's values too
        cfg = tyro.cli(cls, args=list(args), default=cls.from_preset(preset) if preset else None, **tyro_options)
        if cfg.resume:
            saved = saved_config(cfg)
            if saved is not None:
                new = tyro.cli(cls, args=list(args), default=dataclasses.replace(saved, resume=True, overwrite=False),
                               **tyro_options)
                for f in dataclasses.fields(cls):
                    if getattr(new, f.name) != getattr(saved, f.name) and f.name not in ("resume", "overwrite"):
                        log.info("resume: %s changed from %r to %r", f.name, getattr(saved, f.name),
                                 getattr(new, f.name))
                cfg = new
        return cfg


# -- presets: config as code ---------------------------------------------------------------
def embedded() -> SelfTrainConfig:
    """The embedded default: shapes world, Qwen2.5-Coder-0.5B on CPU, two frugal rounds."""
    return SelfTrainConfig()


def virep_gpu() -> SelfTrainConfig:
    """ViReP on one GPU: a 7B coder, LoRA r=16 alpha=32 (q/k/v/o), lr 2e-4, T 1.0, top-p 0.9, 10 rounds, no cap."""
    return SelfTrainConfig(task="gqa", policy="vllm", model="Qwen/Qwen2.5-Coder-7B", device="cuda", rounds=10,
                           questions_per_round=2000, sampling=SamplingSettings(n=8), max_new_tokens=256, batch_questions=64,
                           cap_per_question=None, lora=LoraSettings(r=16, alpha=32),
                           train=TrainSettings(learning_rate=2e-4, epochs=1.0, batch_size=8, grad_accum=2,
                                               max_length=1024), eval_size=2000, workers=8,
                           tuned_prompt="short", library_shots=0)


PRESETS: dict[str, Callable[[], SelfTrainConfig]] = {"embedded": embedded, "virep-gpu": virep_gpu}


def _named_preset(args: Sequence[str]) -> str | None:
    """The preset `--preset NAME` / `--preset=NAME` names (the last one), if it is one."""
    name = None
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            name = args[i + 1]
        elif arg.startswith("--preset="):
            name = arg.split("=", 1)[1]
    return name if name in PRESETS else None


def default_run_name(cfg: SelfTrainConfig) -> str:
    return cfg.run_name or f"{cfg.task}-{cfg.policy}".replace("/", "_")


def saved_config(cfg: SelfTrainConfig) -> SelfTrainConfig | None:
    """The config saved by the run `cfg` names (None: no such run yet)."""
    path = Run(f"{cfg.runs_dir}/{default_run_name(cfg)}").config_path
    if not path.exists():
        return None
    return config_from_dict(read_json(path))


#: where the options of config files written before the `lora` and `train` groups went
FLAT_OPTIONS = {"lora_r": ("lora", "r"), "lora_alpha": ("lora", "alpha"), "lora_dropout": ("lora", "dropout"),
                "target_modules": ("lora", "target_modules"), "learning_rate": ("train", "learning_rate"),
                "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"),
                "grad_accum": ("train", "grad_accum"), "max_length": ("train", "max_length"),
                "report_to": ("train", "report_to"), "samples_per_question": ("sampling", "n"),
                "temperature": ("sampling", "temperature"), "top_p": ("sampling", "top_p")}


def config_from_dict(saved: dict[str, Any]) -> SelfTrainConfig:
    """A `SelfTrainConfig` from its saved `config.json` (`dataclasses.asdict`), including
    one saved with the flat option names of earlier versions (`lora_r`, `learning_rate`, ...).
    Keys it does not know are left out."""
    saved = dict(saved)
    groups: dict[str, dict[str, Any]] = {group: dict(saved.pop(group, None) or {}) for group in ("lora", "train", "grpo", "sampling")}
    for old, (group, name) in FLAT_OPTIONS.items():
        if old in saved:
            groups[group].setdefault(name, saved.pop(old))
    default = SelfTrainConfig()
    built = {}
    for group, values in groups.items():
        base = getattr(default, group)
        known = {f.name for f in dataclasses.fields(base)}
        built[group] = dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in values.items() if k in known})
    known = {f.name for f in dataclasses.fields(SelfTrainConfig)} - set(groups)
    return SelfTrainConfig(**{k: v for k, v in saved.items() if k in known}, **built)


def _preset_unapplied(cfg: SelfTrainConfig) -> bool:
    """True when `cfg` names a preset but holds none of its settings (built in Python as
    `SelfTrainConfig(preset=...)`, which applies nothing)."""
    if not cfg.preset:
        return False
    own, default = PRESETS[cfg.preset](), SelfTrainConfig()
    changed = [f.name for f in dataclasses.fields(cfg) if getattr(own, f.name) != getattr(default, f.name)]
    return bool(changed) and all(getattr(cfg, name) == getattr(default, name) for name in changed)


def resolve_config(cfg: SelfTrainConfig, task: Any = None) -> SelfTrainConfig:
    """Check the options and fill in what follows from them: the run name, and the task's
    default train / eval splits (`task`: the built task, when there is one)."""
    if _preset_unapplied(cfg):
        raise UsageError(f"SelfTrainConfig(preset={cfg.preset!r}) applies no preset; "
                         f"use SelfTrainConfig.from_preset({cfg.preset!r}, ...)")
    cfg = dataclasses.replace(cfg, run_name=default_run_name(cfg))
    if task is not None:
        train, held_out = task.default_splits
        cfg = dataclasses.replace(cfg, train_split=cfg.train_split or train, eval_split=cfg.eval_split or held_out)
    if cfg.rounds < 0 or cfg.questions_per_round < 1 or cfg.sampling.n < 1:
        raise UsageError("--rounds must be ≥ 0, --questions-per-round and --sampling.n ≥ 1")
    if cfg.sampling.retry < 0 or (cfg.sampling.retry and cfg.algo == "grpo"):
        raise UsageError(f"--sampling.retry must be ≥ 0 and is for --algo rest (GRPO samples inside its trainer), "
                         f"got {cfg.sampling.retry} with --algo {cfg.algo}")
    if not 0.0 <= cfg.tau <= 1.0:
        raise UsageError(f"tau must be within [0, 1] (rewards are), got {cfg.tau}")
    if cfg.algo == "grpo":
        check_options(cfg)
    check_launcher(cfg.train_launcher)
    return cfg
