"""minimem.demo_plots: the running mean the demos' training curves draw, the copy demos' length
generalisation figure and the stacked image rows of the memory demos."""

import numpy as np
import pytest

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


class RecordingAxes:
    """Records every call made on it (no matplotlib needed): [(method, args, kwargs), ...]."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    def called(self, name):
        return [(args, kwargs) for method, args, kwargs in self.calls if method == name]


def test_plot_length_generalisation_draws_errors_chance_and_perfect_copies():
    from minimem.demo_plots import plot_length_generalisation
    rows = [{"length": n, "bit_errors": 0.5 * n, "perfect": 1.0 / n} for n in (1, 2, 3, 4)]
    ax_err, ax_ok = RecordingAxes(), RecordingAxes()
    lengths = plot_length_generalisation(ax_err, ax_ok, rows, (1, 2), 6, "DNC", 64, 16)
    np.testing.assert_array_equal(lengths, [1, 2, 3, 4])
    for ax in (ax_err, ax_ok):                                 # the trained lengths, shaded on both
        (span, style), = ax.called("axvspan")
        assert span == (0.5, 2.5) and style["label"] == "trained lengths 1-2"
    (model, chance) = ax_err.called("plot")
    np.testing.assert_array_equal(model[0][1], [0.5, 1.0, 1.5, 2.0])
    assert model[1]["label"] == "DNC"
    np.testing.assert_array_equal(chance[0][1], [3.0, 6.0, 9.0, 12.0])   # half of 6 bits per vector
    (perfect,) = ax_ok.called("plot")
    np.testing.assert_array_equal(perfect[0][1], [1.0, 0.5, 1.0 / 3, 0.25])
    assert ax_ok.called("set_xlabel")[0][0][0] == "sequence length (64 fresh sequences each; N = 16 slots)"


def test_plot_image_rows_one_image_per_axes_with_its_scale_and_labels():
    from minimem.demo_plots import plot_image_rows
    axes = [RecordingAxes() for _ in range(3)]
    image = np.zeros((2, 5))
    plot_image_rows(axes, [("inputs", image, "Greys", "bit"), ("signed", image, "coolwarm", "bit", -1)])
    (args, style), = axes[0].called("imshow")
    assert args[0] is image and (style["cmap"], style["vmin"], style["vmax"]) == ("Greys", 0, 1)
    assert axes[1].called("imshow")[0][1]["vmin"] == -1
    assert axes[1].called("set_title")[0][0] == ("signed",) and axes[1].called("set_ylabel")[0][0] == ("bit",)
    assert axes[2].calls == []                                 # more Axes than panels: the rest untouched
    with pytest.raises(ValueError, match="an Axes per panel"):
        plot_image_rows(axes[:1], [("a", image, "Greys", "bit")] * 2)
