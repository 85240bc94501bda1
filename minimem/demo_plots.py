"""Small plotting helpers the demos share (the training curve, the copy demos' length
generalisation). They draw on matplotlib Axes the caller made, so this module never imports
matplotlib itself (minimem does not need it; the demos import it lazily).
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


def plot_length_generalisation(ax_err, ax_ok, rows, trained: tuple[int, int], num_bits: int, label: str,
                               sequences: int, N: int) -> np.ndarray:
    """The copy demos' generalisation figure, drawn on two Axes sharing x: on ax_err the bit errors
    per sequence against length (symlog) beside chance (num_bits / 2 per vector), on ax_ok the
    fraction of sequences copied perfectly; the trained lengths (min, max) shaded on both.
    rows: dicts with "length", "bit_errors", "perfect" (minimem.train.length_generalisation);
    label names the model; sequences (per length) and N (slots) go into the x label.
    Returns the lengths (n,)."""
    lengths = np.array([row["length"] for row in rows])
    low, high = trained
    for ax in (ax_err, ax_ok):
        ax.axvspan(low - 0.5, high + 0.5, color="C2", alpha=0.12, lw=0, label=f"trained lengths {low}-{high}")
    ax_err.plot(lengths, [row["bit_errors"] for row in rows], "o-", color="C3", label=label)
    ax_err.plot(lengths, lengths * num_bits / 2, "--", color="0.5", label="chance (half the bits)")
    ax_err.set_yscale("symlog", linthresh=0.1)
    ax_err.set_ylabel("bit errors per sequence")
    ax_err.legend(fontsize=8)
    ax_ok.plot(lengths, [row["perfect"] for row in rows], "s-", color="C0")
    ax_ok.set_ylim(-0.05, 1.05)
    ax_ok.set_ylabel("sequences copied perfectly")
    ax_ok.set_xlabel(f"sequence length ({sequences} fresh sequences each; N = {N} slots)")
    ax_ok.set_xticks(lengths)
    return lengths


def plot_image_rows(axes, panels) -> None:
    """Images over time stacked one per Axes (the memory demos' inputs, outputs and weightings):
    each panel is (title, image (rows, T), cmap, ylabel), or with a fifth element vmin for a
    signed row; the colour scale runs from vmin (default 0) to 1 and pixels are not smoothed. A
    masked image (np.ma) leaves its masked pixels blank. axes may hold more Axes than panels."""
    if len(panels) > len(axes):
        raise ValueError(f"need an Axes per panel; got {len(axes)} Axes for {len(panels)} panels")
    for ax, (title, image, cmap, ylabel, *vmin) in zip(axes, panels):
        ax.imshow(image, aspect="auto", cmap=cmap, vmin=vmin[0] if vmin else 0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
