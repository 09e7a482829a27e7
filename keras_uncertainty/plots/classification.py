"""Plots for classifiers: reliability diagram and MC vote histogram."""

import numpy as np

from keras_uncertainty.metrics import expected_calibration_error, reliability_bins
from keras_uncertainty.plots._axes import axes_or_new


def reliability_diagram(labels, probs, num_bins=15, ax=None, label=None):
    """Accuracy against confidence per bin, with the confidence histogram.

    Bars: the accuracy of each equal-width confidence bin; the diagonal is
    perfect calibration; the grey bars under it show the share of points in
    each bin. The title gives the ECE.

    Args:
        labels: `(N,)` integer labels.
        probs: `(N, C)` probabilities.
        num_bins: Number of equal-width bins.
        ax: Matplotlib Axes to draw on; None makes a new figure.
        label: Legend label of the accuracy bars.

    Returns:
        The Axes.
    """
    ax = axes_or_new(ax)
    weight, accuracy, confidence = reliability_bins(labels, probs, num_bins)
    width = 1.0 / num_bins
    centers = (np.floor(confidence / width).clip(0, num_bins - 1) + 0.5) * width
    ax.bar(
        centers,
        accuracy,
        width=width,
        edgecolor="black",
        alpha=0.8,
        label=label or "accuracy",
    )
    ax.bar(
        centers, weight, width=width, color="grey", alpha=0.4, label="share of points"
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ece = expected_calibration_error(labels, probs, num_bins)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Reliability diagram (ECE = {ece:.3f})",
    )
    ax.legend(loc="upper left")
    return ax


def vote_histogram(prediction, index, class_names=None, ax=None):
    """Count plot of the samples' argmax for one input.

    The plot of the MNIST epistemic-uncertainty article: of T dropout (or
    ensemble) samples, how many chose each class. Disagreement is epistemic
    uncertainty.

    Args:
        prediction: A `ku.ClassificationPrediction`.
        index: Which input to show.
        class_names: Optional names of the C classes.
        ax: Matplotlib Axes; None makes a new figure.

    Returns:
        The Axes.
    """
    if prediction.votes is None:
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "prediction with votes. Received: votes=None (call "
            "`ku.predict_classification(..., votes=True)`)"
        )
    votes = np.asarray(prediction.votes)
    if not 0 <= index < len(votes):
        raise ValueError(
            "Invalid value received for argument `index`. Expected an integer "
            f"in [0, {len(votes) - 1}]. Received: index={index!r}"
        )
    ax = axes_or_new(ax)
    counts = votes[index]
    names = class_names or [str(c) for c in range(len(counts))]
    ax.bar(np.arange(len(counts)), counts, color="tab:blue", label="samples")
    ax.set_xticks(np.arange(len(counts)), names)
    ax.set(
        xlabel="predicted class",
        ylabel="number of samples",
        title=(
            f"Votes of {int(counts.sum())} samples for input {index} "
            f"(MI = {float(prediction.mutual_information[index]):.3f})"
        ),
    )
    ax.legend()
    return ax
