"""Plots for regression: uncertainty bands and the calibration curve."""

import numpy as np

from keras_uncertainty.metrics import (
    regression_calibration_curve,
    regression_calibration_error,
)
from keras_uncertainty.plots._axes import axes_or_new


def regression_uncertainty(x, y, prediction, ax=None, num_std=2.0, target=0):
    """Data, predictive mean, and aleatoric and total uncertainty bands (1-D).

    Args:
        x: `(N,)` or `(N, 1)` training (or test) inputs, plotted as points
            with `y`.
        y: `(N,)` or `(N, 1)` targets, or None to plot no points.
        prediction: `(grid, RegressionPrediction)`: the inputs the model was
            evaluated on, `(M,)` or `(M, 1)`, and its prediction there.
        ax: Matplotlib Axes; None makes a new figure.
        num_std: Half-width of the bands in standard deviations.
        target: Which target column to show.

    Returns:
        The Axes.
    """
    if not isinstance(prediction, tuple) or len(prediction) != 2:
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "tuple (grid, RegressionPrediction). Received: "
            f"{type(prediction).__name__}"
        )
    grid, pred = prediction
    grid = np.asarray(grid, np.float64).reshape(-1)
    order = np.argsort(grid)
    grid = grid[order]
    mean = pred.mean[order, target]
    total = num_std * pred.std[order, target]
    aleatoric = num_std * pred.aleatoric_std[order, target]
    ax = axes_or_new(ax, figsize=(7.0, 4.0))
    ax.fill_between(
        grid,
        mean - total,
        mean + total,
        color="tab:orange",
        alpha=0.3,
        label=f"total (±{num_std:g} std)",
    )
    ax.fill_between(
        grid,
        mean - aleatoric,
        mean + aleatoric,
        color="tab:blue",
        alpha=0.3,
        label=f"aleatoric (±{num_std:g} std)",
    )
    if y is not None:
        ax.scatter(
            np.asarray(x).reshape(-1),
            np.asarray(y).reshape(-1),
            s=6,
            color="black",
            alpha=0.5,
            label="data",
        )
    ax.plot(grid, mean, color="tab:red", label="predictive mean")
    ax.set(
        xlabel="x",
        ylabel="y",
        title="Predictive mean with aleatoric and total uncertainty",
    )
    ax.legend(loc="best")
    return ax


def regression_calibration(y_true, mean, std, num_levels=20, ax=None):
    """Observed against expected coverage of central intervals.

    The curve of `ku.metrics.regression_calibration_curve`, the diagonal of
    perfect calibration and, shaded, the miscalibration area between them.

    Args:
        y_true: `(N,)` or `(N, k)` targets.
        mean: Predictive means, shaped like `y_true`.
        std: Predictive standard deviations (> 0), shaped like `y_true`.
        num_levels: Integer >= 2, the number of nominal levels.
        ax: Matplotlib Axes; None makes a new figure.

    Returns:
        The Axes.
    """
    expected, observed = regression_calibration_curve(y_true, mean, std, num_levels)
    error = regression_calibration_error(y_true, mean, std, num_levels)
    ax = axes_or_new(ax)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.plot(expected, observed, marker="o", label="model")
    ax.fill_between(
        expected,
        expected,
        observed,
        alpha=0.2,
        label=f"miscalibration area {error:.3f}",
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="expected coverage",
        ylabel="observed coverage",
        title="Regression calibration",
    )
    ax.legend(loc="upper left")
    return ax
