"""What an evaluation returns: the flat metrics, the shots used, and a table for the console."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvaluationReport:
    """Metrics of one evaluation; ``__rich__`` renders them as a table, :meth:`to_dict` as JSON."""

    model: str
    """The base model evaluated."""
    adapter: str | None
    """The PEFT adapter applied on top, if any."""
    metrics: dict[str, float]
    """``{"<task or group>/<metric>": value}`` (0..1; the paper reports x100)."""
    n_shot: dict[str, int] = field(default_factory=dict)
    """Shots used per task."""
    samples: dict[str, int] = field(default_factory=dict)
    """Examples evaluated per task."""
    output: str | None = None
    """The results JSON written, if any."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "adapter": self.adapter, "metrics": self.metrics, "n_shot": self.n_shot,
                "samples": self.samples, "output": self.output}

    def __rich__(self):
        from rich.table import Table

        title = self.model + (f" + {self.adapter}" if self.adapter else "")
        table = Table(title=title)
        for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("shots", "right"), ("examples", "right")):
            table.add_column(column, justify=justify)
        for key, value in self.metrics.items():
            task, _, metric = key.rpartition("/")
            table.add_row(task, metric, f"{value:.4f}", str(self.n_shot.get(task, "")), str(self.samples.get(task, "")))
        return table
