"""When a training-time callback acts: every n optimizer steps, at given steps, at epoch ends."""

from __future__ import annotations

from typing import Iterable


class _Schedule:
    """When to act during training: every n optimizer steps, at given steps, at epoch ends."""

    def _init_schedule(self, every_n_steps: int, steps: Iterable[int] | None, at_epoch_end: bool) -> None:
        if every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0")
        self.every_n_steps = int(every_n_steps)
        self.at_steps = sorted({int(s) for s in (steps or [])})
        if any(s <= 0 for s in self.at_steps):
            raise ValueError(f"steps must be positive optimizer steps, got {self.at_steps}")
        self.at_epoch_end = at_epoch_end
        if not (self.every_n_steps or self.at_steps or at_epoch_end):
            raise ValueError("nothing to record: set every_n_steps, steps or at_epoch_end")

    def _due_at_step(self, step: int) -> bool:
        return step > 0 and ((self.every_n_steps and step % self.every_n_steps == 0) or step in self.at_steps)


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"

