"""Small plotting helpers the demos share. They draw on a matplotlib Axes the caller made, so this
module never imports matplotlib itself (minimem does not need it; the demos import it lazily).
"""

from __future__ import annotations

import numpy as np


def running_mean(values, max_window: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """(steps, means, window): the mean of every `window` consecutive values, window = max(1,
    min(max_window, n // 10)), and the 1-based step of the last value in each window.
    values: (n,) with n >= 1."""
    values = np.asarray(values, dtype=float)
    window = max(1, min(max_window, len(values) // 10))
    means = np.convolve(values, np.ones(window) / window, mode="valid")      # (n - window + 1,)
    return np.arange(window, len(values) + 1), means, window


def plot_training_curve(ax, values, max_window: int = 50, color: str = "C0") -> int:
    """Every value (thin grey, "per batch") and their running mean ("mean of <window>") against the
    1-based step, on a log y-axis. Returns the window."""
    values = np.asarray(values, dtype=float)
    steps, means, window = running_mean(values, max_window)
    ax.plot(np.arange(1, len(values) + 1), values, color="0.8", lw=0.5, label="per batch")
    ax.plot(steps, means, color=color, label=f"mean of {window}")
    ax.set_yscale("log")
    return window
