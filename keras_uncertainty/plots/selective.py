"""The referral (retention) plot of Filos et al. (2019)."""

from keras_uncertainty.metrics import RetentionCurve
from keras_uncertainty.plots._axes import axes_or_new


def retention_curve(curve_or_curves, ax=None):
    """Accuracy on the retained data against the retained fraction.

    Args:
        curve_or_curves: A `ku.metrics.RetentionCurve`, or a dict
            `{method name: RetentionCurve}` to compare several methods on one
            axis (the random and oracle baselines are drawn from the first).
        ax: Matplotlib Axes; None makes a new figure.

    Returns:
        The Axes.
    """
    curves = curve_or_curves
    if isinstance(curves, RetentionCurve):
        curves = {"model": curves}
    if (
        not isinstance(curves, dict)
        or not curves
        or not all(isinstance(c, RetentionCurve) for c in curves.values())
    ):
        raise ValueError(
            "Invalid value received for argument `curve_or_curves`. Expected a "
            "RetentionCurve or a non-empty dict of them. Received: "
            f"{type(curve_or_curves).__name__}"
        )
    ax = axes_or_new(ax)
    first = next(iter(curves.values()))
    percent = 100.0 * first.retained_fraction
    ax.plot(percent, first.oracle_accuracy, "k:", label="oracle")
    ax.plot(percent, first.random_accuracy, "k--", label="random referral")
    for name, curve in curves.items():
        ax.plot(
            100.0 * curve.retained_fraction,
            curve.accuracy,
            marker="o",
            label=f"{name} (AUC {curve.auc:.3f})",
        )
    ax.set(
        xlabel="data retained (%)",
        ylabel="accuracy on retained data",
        title="Referral of the most uncertain cases",
    )
    ax.legend()
    return ax
