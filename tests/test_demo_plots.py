"""minimem.demo_plots: the running mean the demos' training curves draw."""

import numpy as np

from minimem.demo_plots import plot_training_curve, running_mean


def test_running_mean_window_and_steps():
    values = np.arange(1.0, 101.0)                          # n = 100: window min(50, 10) = 10
    steps, means, window = running_mean(values)
    assert window == 10 and steps[0] == 10 and steps[-1] == 100 and len(means) == 91
    np.testing.assert_allclose(means[0], np.mean(values[:10]))
    np.testing.assert_allclose(means[-1], np.mean(values[-10:]))
    assert running_mean([3.0, 5.0])[2] == 1                 # short runs: no smoothing
    assert running_mean(np.ones(10_000), max_window=25)[2] == 25


def test_plot_training_curve_draws_both_lines_on_a_log_axis():
    class Axes:                                            # records what is drawn (no matplotlib needed)
        def __init__(self):
            self.lines, self.scale = [], None

        def plot(self, x, y, **style):
            self.lines.append((np.asarray(x), np.asarray(y), style))

        def set_yscale(self, scale):
            self.scale = scale

    ax = Axes()
    assert plot_training_curve(ax, np.linspace(2.0, 1.0, 40)) == 4
    (x_raw, y_raw, raw), (x_mean, y_mean, mean) = ax.lines
    assert len(x_raw) == 40 and x_raw[0] == 1 and raw["label"] == "per batch"
    assert x_mean[0] == 4 and mean["label"] == "mean of 4" and ax.scale == "log"
