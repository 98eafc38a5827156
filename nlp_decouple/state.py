"""Where a training run stands: everything a checkpoint needs to continue exactly (besides the weights,
optimizer and scheduler states that ``Accelerator.save_state`` writes)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class TrainState:
    epoch: int = 1  # the epoch being trained (1-based)
    batches_done: int = 0  # batches of that epoch already trained
    step: int = 0  # optimizer steps over the whole run
    samples: int = 0  # training texts seen, over all processes
    train_time: float = 0.0  # seconds spent training (evaluation excluded)
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    best: dict | None = None  # the row of the best validation accuracy so far
    best_report: dict = field(default_factory=dict)  # per-class report and confusion matrix at that epoch
    epoch_losses: list[list[float]] = field(default_factory=list)  # this epoch's stage losses per step
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def count_step(self, samples: int) -> None:
        """A finished optimizer step of ``samples`` texts (over all processes)."""
        self.step += 1
        self.batches_done += 1
        self.samples += samples

    def record_losses(self, stage_losses: list[float]) -> list[int]:
        """One step's stage losses, in step order; returns the stages whose loss was non-finite (their
        update was skipped, on every process alike)."""
        self.epoch_losses.append(stage_losses)
        bad = [k for k, v in enumerate(stage_losses) if not math.isfinite(v)]
        self.nonfinite_in_row = self.nonfinite_in_row + 1 if bad else 0
        self.nonfinite_total += bool(bad)
        return bad

    def out_of_patience(self, patience: int | None) -> bool:
        """Early stopping: ``patience`` finished epochs in a row without a new best validation accuracy
        (read from the history, so a resumed run decides exactly as an uninterrupted one)."""
        if patience is None or not self.history:
            return False
        return self.history[-1]["epoch"] - self.best["epoch"] >= patience

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = 0
        self.epoch_losses = []
