"""Where the fine-tuning trainer's logs go: the `viprog.finetune` logger and the progress bar.

Why: transformers' `ProgressCallback` writes every log entry (`{'loss': ..., 'grad_norm':
...}`) to stdout as a printed dict, and `PrinterCallback` (with `disable_tqdm`) prints them
too. `python selftrain.py` keeps stdout for its result (one JSON line of accuracies), so
the trainer's entries go instead to the bar's postfix, as they arrive, and to the logger:
each step at DEBUG, the closing summary (runtime, mean loss) at INFO.

This module imports transformers; `viprog.finetune` imports it when it trains.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger("viprog.finetune")

#: entries shown on the bar, in this order, when a log entry has them
SHOWN = ("loss", "grad_norm", "learning_rate", "epoch")


def _fmt(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


class LoggedProgress(ProgressCallback):
    """transformers' training bar, whose log entries go to the bar's postfix and the logger
    instead of being written out."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        entries = {key: _fmt(value) for key, value in logs.items() if key != "total_flos"}
        if "train_runtime" in logs:
            log.info("trainer: %s", ", ".join(f"{key} {value}" for key, value in entries.items()))
        else:
            log.debug("trainer step %d: %s", state.global_step, entries)
        if self.training_bar is not None:
            shown = {key: entries[key] for key in SHOWN if key in entries}
            if shown:
                self.training_bar.set_postfix(shown, refresh=False)


def route_logs(trainer: Trainer) -> Trainer:
    """Replace the trainer's printing callbacks with `LoggedProgress`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LoggedProgress())
    return trainer
