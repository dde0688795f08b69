"""A training run's progress on disk: its per-step log (JSON lines) and its loss curve (PNG)."""
from __future__ import annotations

import io
import json
from pathlib import Path

from .io import atomic_write_bytes


def write_log(path: Path, losses: list[float], seconds: list[float]) -> None:
    rows = [json.dumps({"step": i + 1, "loss": loss, "seconds_per_step": s})
            for i, (loss, s) in enumerate(zip(losses, seconds))]
    atomic_write_bytes(path, ("\n".join(rows) + "\n").encode("utf-8"))


def write_loss_curve(path: Path, losses: list[float]) -> Path:
    """Per-step loss and its running mean (matplotlib's object API: no pyplot, no global backend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100, layout="tight")
    axes = figure.add_subplot(xlabel="step", ylabel="MSE loss", title="Custom Diffusion training loss")
    steps, window = range(1, len(losses) + 1), max(1, len(losses) // 20)
    axes.plot(steps, losses, linewidth=0.8, alpha=0.5, label="loss")
    running = [sum(losses[max(0, i - window): i + 1]) / (i + 1 - max(0, i - window)) for i in range(len(losses))]
    axes.plot(steps, running, linewidth=1.5, label=f"mean of the last {window + 1}")
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return atomic_write_bytes(path, buffer.getvalue())
