"""Out-of-distribution detection metrics: AUROC, AUPR-in, AUPR-out, FPR95.

Every function takes the scores of in-distribution inputs and of OOD inputs
(`in_scores`, `out_scores`: 1-D, finite, numpy or Keras/TF tensors), with the
convention of `ku.ood`: **higher score = more likely OOD**. Which class is
"positive" depends on the metric and is stated in each docstring; the three
below follow the usual definitions (Hendrycks & Gimpel 2017, ODIN, OpenOOD):

- AUPR-in: in-distribution is positive, ranked by `-score`;
- AUPR-out: OOD is positive, ranked by `score`;
- FPR at 95% TPR: in-distribution is positive; the FPR is the fraction of
  OOD inputs accepted as in-distribution.

An evaluation needs both kinds of inputs: with no in-distribution scores
(or no OOD scores) every one of these numbers is undefined, and the
functions raise `ValueError` instead of returning one.
"""

import dataclasses
import numbers

import numpy as np

from keras_uncertainty.metrics._checks import as_array, binary_inputs
from keras_uncertainty.metrics.classification import auroc


def _scores(value, name, meaning):
    if value is None:
        size = 0
    else:
        if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
            value = value.numpy()
        size = np.size(value)
    if size == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at least "
            f"one {meaning} score: an OOD evaluation needs both "
            "in-distribution and OOD inputs (without one kind every metric is "
            f"undefined). Received: {name} with no scores"
        )
    array = as_array(value, name)
    if array.ndim != 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a 1-D "
            f"array of scores. Received: shape {array.shape}"
        )
    return array


def _in_out(in_scores, out_scores):
    return (
        _scores(in_scores, "in_scores", "in-distribution"),
        _scores(out_scores, "out_scores", "out-of-distribution"),
    )


def _binary(is_positive, scores):
    positive, scores = binary_inputs(is_positive, scores)
    if not positive.any():
        raise ValueError(
            "Invalid value received for argument `is_positive`. Expected at "
            "least one positive (precision is undefined without one). "
            f"Received: 0 positives among {len(positive)}"
        )
    return positive, scores


def average_precision(is_positive, scores):
    """Average precision, the area under the precision-recall curve.

    `AP = sum_k (R_k - R_{k-1}) P_k`, where `P_k` and `R_k` are the
    precision and recall when every input scoring `>= t_k` is called
    positive, for the distinct scores `t_1 > t_2 > ...` (`R_0 = 0`): tied
    scores enter together, with no interpolation, exactly as scikit-learn's
    `average_precision_score` defines it.

    Args:
        is_positive: `(N,)` booleans, or integers that are all 0 or 1; at
            least one positive.
        scores: `(N,)` finite scores; higher should mean positive.

    Returns:
        float in [0, 1]; chance is the fraction of positives.
    """
    positive, scores = _binary(is_positive, scores)
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked = scores[order], positive[order]
    # The last row of each group of tied scores closes a threshold.
    last = np.r_[np.flatnonzero(np.diff(ranked_scores)), len(ranked) - 1]
    true_pos = np.cumsum(ranked)[last]
    called = last + 1
    precision = true_pos / called
    recall_steps = np.diff(true_pos, prepend=0) / true_pos[-1]
    return float(np.sum(recall_steps * precision))


def aupr_in(in_scores, out_scores):
    """AUPR-in: average precision with in-distribution as the positive class.

    `average_precision(is_in, -score)` over the pooled inputs: how well low
    scores pick out the in-distribution inputs (see `average_precision` for
    the formula; ties enter together).

    Args:
        in_scores: `(N_in,)` scores of in-distribution inputs (N_in >= 1).
        out_scores: `(N_out,)` scores of OOD inputs (N_out >= 1).

    Returns:
        float in [0, 1]; chance is `N_in / (N_in + N_out)`.
    """
    in_scores, out_scores = _in_out(in_scores, out_scores)
    is_in = np.r_[np.ones(len(in_scores), bool), np.zeros(len(out_scores), bool)]
    return average_precision(is_in, -np.r_[in_scores, out_scores])


def aupr_out(in_scores, out_scores):
    """AUPR-out: average precision with OOD as the positive class.

    `average_precision(is_out, score)` over the pooled inputs: how well high
    scores pick out the OOD inputs (see `average_precision` for the formula;
    ties enter together).

    Args:
        in_scores: `(N_in,)` scores of in-distribution inputs (N_in >= 1).
        out_scores: `(N_out,)` scores of OOD inputs (N_out >= 1).

    Returns:
        float in [0, 1]; chance is `N_out / (N_in + N_out)`.
    """
    in_scores, out_scores = _in_out(in_scores, out_scores)
    is_out = np.r_[np.zeros(len(in_scores), bool), np.ones(len(out_scores), bool)]
    return average_precision(is_out, np.r_[in_scores, out_scores])


def fpr_at_tpr(in_scores, out_scores, tpr=0.95):
    """FPR at a given TPR (FPR95 at the default): OOD inputs let through.

    In-distribution is the positive class: an input is accepted as
    in-distribution when its score is `<= theta`. The threshold `theta` is
    the smallest score with at least a fraction `tpr` of the
    in-distribution inputs accepted, that is the k-th smallest
    in-distribution score for the smallest k with `k / N_in >= tpr`; then

        FPR = #{OOD inputs with score <= theta} / N_out.

    Ties: inputs with equal scores are accepted or rejected together (no
    interpolation and no random tie-breaking), so OOD inputs that tie with
    the threshold count as false positives (accepted). This is the first
    point with `TPR >= tpr` of scikit-learn's
    `roc_curve(is_in, -score, drop_intermediate=False)`.

    Args:
        in_scores: `(N_in,)` scores of in-distribution inputs (N_in >= 1).
        out_scores: `(N_out,)` scores of OOD inputs (N_out >= 1).
        tpr: Number in (0, 1], the fraction of in-distribution inputs kept.

    Returns:
        float in [0, 1]; lower is better.
    """
    in_scores, out_scores = _in_out(in_scores, out_scores)
    if isinstance(tpr, bool) or not isinstance(tpr, numbers.Real) or not 0 < tpr <= 1:
        raise ValueError(
            "Invalid value received for argument `tpr`. Expected a number in "
            f"(0, 1]. Received: tpr={tpr!r}"
        )
    tpr = float(tpr)
    num_in = len(in_scores)
    # The smallest k with k / N_in >= tpr, in the float arithmetic of a TPR
    # (so that tpr=0.95 on 20 inputs gives k = 19, not 20 by rounding).
    counts = np.arange(1, num_in + 1)
    k = int(counts[np.argmax(counts / num_in >= tpr)])
    theta = np.partition(in_scores, k - 1)[k - 1]
    return float(np.count_nonzero(out_scores <= theta) / len(out_scores))


@dataclasses.dataclass(frozen=True)
class OODReport:
    """The OOD metrics of one evaluation, from `ood_report`.

    Attributes:
        auroc: float, P(score of an OOD input > score of an in-distribution
            input), ties counted half (`ku.metrics.auroc` with OOD
            positive); 0.5 is chance, higher is better.
        aupr_in: float, `aupr_in` (in-distribution positive); higher is
            better.
        aupr_out: float, `aupr_out` (OOD positive); higher is better.
        fpr95: float, `fpr_at_tpr(..., tpr=0.95)`; lower is better.
        num_in: int, the number of in-distribution inputs.
        num_out: int, the number of OOD inputs.
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    num_in: int
    num_out: int

    def as_dict(self):
        """The report as a flat dict (for JSON or a table row).

        Returns:
            A dict from field name to value.
        """
        return dataclasses.asdict(self)


def ood_report(in_scores, out_scores):
    """AUROC, AUPR-in, AUPR-out and FPR95 of one OOD evaluation.

    Refuses (`ValueError`) an evaluation without in-distribution inputs or
    without OOD inputs, and scores that are NaN, infinite or not 1-D.

    Args:
        in_scores: `(N_in,)` scores of in-distribution inputs (N_in >= 1),
            higher = more likely OOD (a `ku.ood` score).
        out_scores: `(N_out,)` scores of OOD inputs (N_out >= 1).

    Returns:
        An `OODReport` (a frozen dataclass; `.as_dict()` for a dict).

    Example:

    >>> report = ku.metrics.ood_report(ku.ood.entropy(p_test), ku.ood.entropy(p_ood))
    >>> report.auroc, report.fpr95
    """
    in_scores, out_scores = _in_out(in_scores, out_scores)
    is_out = np.r_[np.zeros(len(in_scores), bool), np.ones(len(out_scores), bool)]
    return OODReport(
        auroc=auroc(is_out, np.r_[in_scores, out_scores]),
        aupr_in=aupr_in(in_scores, out_scores),
        aupr_out=aupr_out(in_scores, out_scores),
        fpr95=fpr_at_tpr(in_scores, out_scores, 0.95),
        num_in=len(in_scores),
        num_out=len(out_scores),
    )
