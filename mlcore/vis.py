"""Image grids and plots. Every plot helper returns a matplotlib Figure built without pyplot,
so nothing is shown or saved here and no display is needed; the caller decides."""

from __future__ import annotations

import textwrap
from math import ceil, sqrt

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator


def visualize_grid(Xs, ubound=255.0, padding=1):
    """Tile N images into one square-ish grid, each rescaled to [0, ubound].

    Xs: (N, H, W, C). Returns the grid (G * H + (G - 1) * padding, G * W + (G - 1) * padding, C)
    with G = ceil(sqrt(N)); padding and unused cells are zero. A constant image becomes zeros.
    """
    Xs = np.asarray(Xs)
    if Xs.ndim != 4:
        raise ValueError(f"visualize_grid: Xs must be (N, H, W, C), got shape {Xs.shape}")
    N, H, W, C = Xs.shape
    grid_size = int(ceil(sqrt(N)))
    grid_height = H * grid_size + padding * (grid_size - 1)
    grid_width = W * grid_size + padding * (grid_size - 1)
    grid = np.zeros((grid_height, grid_width, C))
    for idx in range(N):
        row, col = divmod(idx, grid_size)
        y0, x0 = row * (H + padding), col * (W + padding)
        img = Xs[idx]
        low, high = np.min(img), np.max(img)
        if high > low:
            grid[y0 : y0 + H, x0 : x0 + W] = ubound * (img - low) / (high - low)
    return grid


def plot_training_curves(loss_history, train_acc_history, val_acc_history):
    """Two panels: the training loss per iteration, and train / val accuracy per epoch."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(np.asarray(loss_history), "o", markersize=2)
    ax_loss.set(title="Training loss", xlabel="Iteration", ylabel="Loss")
    ax_acc.plot(np.asarray(train_acc_history), "-o", label="train")
    ax_acc.plot(np.asarray(val_acc_history), "-o", label="val")
    ax_acc.set(title="Accuracy", xlabel="Epoch", ylabel="Accuracy")
    ax_acc.legend(loc="lower right")
    return fig


def plot_filter_grid(W1, title="First-layer filters"):
    """Show conv filters W1 (F, C, HH, WW) as one image grid (grayscale when C == 1)."""
    W1 = np.asarray(W1)
    if W1.ndim != 4:
        raise ValueError(f"plot_filter_grid: W1 must be (F, C, HH, WW), got shape {W1.shape}")
    grid = visualize_grid(W1.transpose(0, 2, 3, 1), ubound=1.0)
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    if grid.shape[2] == 1:
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
    elif grid.shape[2] == 3:
        ax.imshow(grid)
    else:
        raise ValueError(f"plot_filter_grid: filters need 1 or 3 channels, got W1 {W1.shape}")
    ax.set_title(title)
    ax.axis("off")
    return fig


def _single_axes(figsize, title):
    """A figure with one axes, fixed margins and ``title`` wrapped to the figure's width: a
    constrained layout measures every tick label to place the axes, which costs more than
    drawing these small plots (the housing flow draws about twenty of them)."""
    width, height = figsize
    lines = textwrap.wrap(title, int(width * 9)) or [""]
    fig = Figure(figsize=figsize)
    fig.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.2 / width,
        bottom=0.55 / height,
        top=1 - (0.2 + 0.2 * len(lines)) / height,
    )
    ax = fig.subplots()
    ax.set_title("\n".join(lines))
    return fig, ax


def _two_vectors(fn, y_true, y_pred):
    y_true, y_pred = np.ravel(y_true), np.ravel(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"{fn}: y_true and y_pred have {y_true.size} and {y_pred.size} values; they must match"
        )
    if y_true.size == 0:
        raise ValueError(f"{fn}: y_true and y_pred are empty; there is nothing to plot")
    return y_true, y_pred


# scikit-learn draws these two plots (PredictionErrorDisplay). subsample=None: every point is
# shown (its default draws 1000 with replacement); smaller, lighter markers than its defaults
# keep a few hundred housing points apart.
_SCATTER = {"s": 10, "alpha": 0.7}


def plot_predicted_vs_true(y_true, y_pred, title="Predicted vs true"):
    """Scatter of the actual values (y axis) against the predictions (x axis) with the y = x
    line, equal scales on both axes (scikit-learn's ``PredictionErrorDisplay``,
    kind="actual_vs_predicted")."""
    y_true, y_pred = _two_vectors("plot_predicted_vs_true", y_true, y_pred)
    fig, ax = _single_axes((5, 5), title)
    from sklearn.metrics import PredictionErrorDisplay  # (2 s of imports: when drawn)

    PredictionErrorDisplay.from_predictions(
        y_true,
        y_pred,
        kind="actual_vs_predicted",
        subsample=None,
        ax=ax,
        scatter_kwargs=_SCATTER,
        line_kwargs={"label": "y = x"},
    )
    # the display puts five ticks at the ends and quarters of the data range (-5.05, 8.71, ...);
    # matplotlib's default locator gives round values
    ax.xaxis.set_major_locator(AutoLocator())
    ax.yaxis.set_major_locator(AutoLocator())
    ax.legend(loc="upper left")
    return fig


def plot_residuals(y_true, y_pred, title="Residuals"):
    """Residuals (actual - predicted) against the predictions, with the zero line
    (scikit-learn's ``PredictionErrorDisplay``, kind="residual_vs_predicted")."""
    y_true, y_pred = _two_vectors("plot_residuals", y_true, y_pred)
    fig, ax = _single_axes((6, 4), title)
    from sklearn.metrics import PredictionErrorDisplay  # (2 s of imports: when drawn)

    PredictionErrorDisplay.from_predictions(
        y_true,
        y_pred,
        kind="residual_vs_predicted",
        subsample=None,
        ax=ax,
        scatter_kwargs=_SCATTER,
    )
    return fig


def plot_loss_curve(loss_history, val_loss_history=None, title="Loss"):
    """Training loss per step, optionally with a validation loss on the same axes."""
    fig, ax = _single_axes((6, 4), title)
    ax.plot(np.asarray(loss_history), label="train")
    if val_loss_history is not None:
        ax.plot(np.asarray(val_loss_history), label="val")
    ax.set(xlabel="Step", ylabel="Loss")
    ax.legend(loc="upper right")
    return fig
