"""visualize_grid values and shapes; plot helpers return Figures with the expected axes."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from mlcore.vis import (
    plot_filter_grid,
    plot_loss_curve,
    plot_predicted_vs_true,
    plot_residuals,
    plot_training_curves,
    visualize_grid,
)


def test_visualize_grid_layout_and_scaling():
    rng = np.random.default_rng(0)
    Xs = rng.standard_normal((5, 3, 4, 2))  # 5 images -> a 3x3 grid
    grid = visualize_grid(Xs, ubound=255.0, padding=1)
    assert grid.shape == (3 * 3 + 2, 3 * 4 + 2, 2)
    for idx in range(5):
        r, c = divmod(idx, 3)
        cell = grid[r * 4 : r * 4 + 3, c * 5 : c * 5 + 4]
        img = Xs[idx]
        np.testing.assert_allclose(cell, 255 * (img - img.min()) / (img.max() - img.min()))
    assert not grid[3].any() and not grid[:, 4].any()  # padding rows and columns
    assert not grid[8:, 5:].any()  # unused cells (6th to 9th) stay zero
    assert grid.min() == 0 and grid.max() == 255


def test_visualize_grid_padding_and_constant_image():
    Xs = np.ones((4, 2, 2, 1))
    Xs[1] = np.arange(4).reshape(2, 2, 1)
    grid = visualize_grid(Xs, ubound=1.0, padding=0)
    assert grid.shape == (4, 4, 1)
    np.testing.assert_allclose(grid[0:2, 2:4, 0], [[0, 1 / 3], [2 / 3, 1]])
    assert not grid[0:2, 0:2].any()  # a constant image has no range: zeros, no NaN
    with pytest.raises(ValueError, match=r"Xs must be \(N, H, W, C\)"):
        visualize_grid(np.ones((2, 2, 2)))


def test_plot_training_curves():
    fig = plot_training_curves([2.3, 2.0, 1.5, 1.2], [0.1, 0.5, 0.7], [0.1, 0.4, 0.5])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    np.testing.assert_array_equal(loss_ax.lines[0].get_ydata(), [2.3, 2.0, 1.5, 1.2])
    assert len(acc_ax.lines) == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_filter_grid(channels):
    W1 = np.random.default_rng(0).standard_normal((6, channels, 3, 3))
    fig = plot_filter_grid(W1)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    image = fig.axes[0].images[0].get_array()
    expected = visualize_grid(W1.transpose(0, 2, 3, 1), ubound=1.0)
    assert image.shape == ((3 * 3 + 2, 3 * 3 + 2) if channels == 1 else expected.shape)
    np.testing.assert_allclose(np.asarray(image).reshape(expected.shape), expected)


def test_predicted_vs_true_draws_sklearn_prediction_error_display():
    y_true = np.array([[1.0], [2.0], [3.0]])
    y_pred = np.array([1.5, 1.5, 3.5])
    fig = plot_predicted_vs_true(y_true, y_pred, title="test set")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "test set"
    # kind="actual_vs_predicted": the predictions on x, the actual values on y
    (scatter,) = ax.collections
    np.testing.assert_array_equal(scatter.get_offsets(), [[1.5, 1.0], [1.5, 2.0], [3.5, 3.0]])
    (line,) = ax.lines  # y = x over the range of both
    np.testing.assert_array_equal(line.get_xydata(), [[1.0, 1.0], [3.5, 3.5]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["y = x"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted values", "Actual values")
    assert ax.get_aspect() == 1.0


def test_predicted_vs_true_ticks_are_round_numbers():
    """The display would put five ticks at the quarters of the data range (5, 16.25, ...)."""
    ax = plot_predicted_vs_true([5.0, 20.0, 50.0], [7.0, 23.0, 41.0]).axes[0]
    for ticks in (ax.get_xticks(), ax.get_yticks()):
        assert len(ticks) >= 4
        np.testing.assert_array_equal(ticks % 10, 0)


def test_residuals_draws_sklearn_prediction_error_display():
    y_true = np.array([[1.0], [2.0], [3.0]])
    y_pred = np.array([1.5, 1.5, 3.5])
    fig = plot_residuals(y_true, y_pred, title="res")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_title() == "res"
    (scatter,) = ax.collections
    np.testing.assert_array_equal(scatter.get_offsets(), [[1.5, -0.5], [1.5, 0.5], [3.5, -0.5]])
    (line,) = ax.lines  # the zero line across the predictions
    np.testing.assert_array_equal(line.get_xydata(), [[1.5, 0.0], [3.5, 0.0]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "Predicted values",
        "Residuals (actual - predicted)",
    )


@pytest.mark.parametrize("plot", [plot_predicted_vs_true, plot_residuals])
def test_regression_plots_show_every_point_in_order(plot):
    """PredictionErrorDisplay draws 1000 points drawn with replacement by default; mlcore's
    plots show all of them, as given."""
    rng = np.random.default_rng(0)
    y_true = rng.standard_normal(1500)
    y_pred = y_true + 0.1 * rng.standard_normal(1500)
    offsets = plot(y_true, y_pred).axes[0].collections[0].get_offsets()
    expected = (
        np.column_stack([y_pred, y_true])
        if plot is plot_predicted_vs_true
        else np.column_stack([y_pred, y_true - y_pred])
    )
    np.testing.assert_array_equal(offsets, expected)


@pytest.mark.parametrize("plot", [plot_predicted_vs_true, plot_residuals])
def test_regression_plots_reject_mismatched_or_empty_input(plot):
    with pytest.raises(ValueError, match=f"{plot.__name__}: y_true and y_pred have 3 and 2 values"):
        plot([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=f"{plot.__name__}: y_true and y_pred are empty"):
        plot([], [])


def _rc_params():
    # reading rcParams["backend"] would resolve a backend not chosen yet: get_backend reads it
    return {k: repr(matplotlib.rcParams[k]) for k in matplotlib.rcParams.keys() if k != "backend"}


def _draw_both_plots():
    for plot in (plot_predicted_vs_true, plot_residuals):
        plot([1.0, 2.0, 3.0], [1.5, 1.5, 3.5], title="t").savefig(io.BytesIO(), format="png")


def test_regression_plots_change_nothing_process_wide():
    """The backend chosen here (the suite's MPLBACKEND) and every rcParam stay as they were,
    and pyplot (which scikit-learn's display imports) tracks no figure of ours."""
    backend, before, figures = (
        matplotlib.get_backend(auto_select=False),
        _rc_params(),
        plt.get_fignums(),
    )
    _draw_both_plots()
    assert matplotlib.get_backend(auto_select=False) == backend
    assert {k: v for k, v in _rc_params().items() if before[k] != v} == {}
    assert plt.get_fignums() == figures


# A fresh interpreter, nothing drawn before and no MPLBACKEND: the backend is still unresolved
# after both plots are drawn and saved (resolving it could pick an interactive one).
FRESH_PROCESS = """
import json, sys
import matplotlib
from tests.mlcore.nn.test_vis import _draw_both_plots, _rc_params

backend, before = matplotlib.get_backend(auto_select=False), _rc_params()
_draw_both_plots()
print(json.dumps({
    "backend": [backend, matplotlib.get_backend(auto_select=False)],
    "changed": sorted(k for k, v in _rc_params().items() if before[k] != v),
    "pyplot_figures": sys.modules["matplotlib.pyplot"].get_fignums(),
}))
"""


def test_regression_plots_leave_an_unchosen_backend_unchosen():
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        env=env,
        cwd=Path(__file__).parents[3],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"backend": [None, None], "changed": [], "pyplot_figures": []}


def test_plot_loss_curve():
    fig = plot_loss_curve([3, 2, 1], title="loss")
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and len(fig.axes[0].lines) == 1
    fig = plot_loss_curve([3, 2, 1], val_loss_history=[3.5, 2.5, 2], title="loss")
    assert len(fig.axes[0].lines) == 2


@pytest.mark.parametrize("plot", [plot_predicted_vs_true, plot_residuals])
def test_long_titles_wrap_and_everything_stays_on_the_figure(plot):
    """Fixed margins (no constrained layout): a model label as long as the housing flow's
    SGD runs is wrapped, and the title, tick labels and axis labels all lie inside the PNG."""
    title = "sgd(lr=0.01, epochs=200, batch_size=32, random_state=1234): test residuals"
    fig = plot(np.linspace(-5, 50, 30), np.linspace(-3, 48, 30), title=title)
    ax = fig.axes[0]
    assert ax.get_title().replace("\n", " ") == title and "\n" in ax.get_title()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    figure_box = fig.bbox
    ticks = [
        tick.label1
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim()))
        for tick in axis.get_major_ticks()
        if lo <= tick.get_loc() <= hi  # ticks outside the view limits are not drawn
    ]
    for artist in [ax.title, ax.xaxis.label, ax.yaxis.label, *ticks]:
        if not artist.get_text():
            continue
        box = artist.get_window_extent(renderer)
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, artist.get_text()
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, artist.get_text()
