"""One-call reports: every relevant metric of a prediction, as a flat dict.

`regression_report` and `classification_report` score a prediction of
`ku.predict_regression` / `ku.predict_classification` (or anything with the
same fields) against its targets and return `{name: float}`, sorted by name.
Each value is computed by one of the metric functions of `ku.metrics` (or is a
plain mean of a prediction field): no formula lives here. The prediction
classes are taken by their fields, so this module imports no models.
"""

import math
import numbers

import numpy as np

from keras_uncertainty._validation import check_positive_int
from keras_uncertainty.metrics import classification as _classification
from keras_uncertainty.metrics import regression as _regression
from keras_uncertainty.metrics import selective as _selective
from keras_uncertainty.metrics._checks import (
    as_array,
    classification_inputs,
    unit_interval,
)

DEFAULT_LEVELS = (0.5, 0.9, 0.95)
_REGRESSION_FIELDS = ("mean", "std", "aleatoric_std", "epistemic_std")
_CLASSIFICATION_FIELDS = ("probs", "entropy", "expected_entropy", "mutual_information")
_UNCERTAINTIES = ("entropy", "expected_entropy", "mutual_information")


def _level_name(level):
    """The key suffix of an interval level: `0.95 -> "95"`, `0.975 -> "97.5"`.

    Args:
        level: A nominal coverage in (0, 1).

    Returns:
        str, `100 * level` with up to 6 significant digits and no trailing
        zeros.
    """
    return format(100.0 * unit_interval(level, "levels"), "g")


def _check_prefix(prefix):
    if not isinstance(prefix, str):
        raise ValueError(
            "Invalid value received for argument `prefix`. Expected a string. "
            f"Received: prefix={prefix!r}"
        )
    return prefix


def _check_levels(levels):
    if isinstance(levels, numbers.Real) or isinstance(levels, (str, bytes)):
        raise ValueError(
            "Invalid value received for argument `levels`. Expected a sequence "
            f"of numbers in (0, 1), such as (0.9, 0.95). Received: levels={levels!r}"
        )
    levels = [float(unit_interval(level, "levels")) for level in levels]
    names = [_level_name(level) for level in levels]
    if len(set(names)) != len(names):
        raise ValueError(
            "Invalid value received for argument `levels`. Expected distinct "
            "levels (each names its keys by 100 * level to 6 significant "
            f"digits). Received: levels={tuple(levels)} (key suffixes {names})"
        )
    return list(zip(levels, names))


def _fields(prediction, fields, kind):
    # A method (an array's `mean`, `std`) is not a field.
    missing = [
        name
        for name in fields
        if not hasattr(prediction, name) or callable(getattr(prediction, name))
    ]
    if missing:
        raise ValueError(
            f"Invalid value received for argument `prediction`. Expected a "
            f"{kind} (or an object with the fields {', '.join(fields)}). "
            f"Received: {type(prediction).__name__} without "
            f"{', '.join(missing)}"
        )
    return {
        name: as_array(getattr(prediction, name), f"prediction.{name}")
        for name in fields
    }


def _same_rows(first, first_name, arrays):
    if first.ndim == 0:
        raise ValueError(
            f"Invalid value received for argument `{first_name}`. Expected an "
            f"array with one row per point. Received: a scalar {first_name}"
        )
    for name, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != first.shape[0]:
            rows = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise ValueError(
                f"Expected `{first_name}` and `{name}` to have the same number "
                f"of rows. Received: {first.shape[0]} rows in {first_name} "
                f"(shape {first.shape}) and {rows} in {name} (shape "
                f"{array.shape})"
            )


def _keyed(values, prefix):
    return {prefix + name: float(values[name]) for name in sorted(values)}


def regression_report(
    y_true,
    prediction,
    levels=DEFAULT_LEVELS,
    *,
    sample_means=None,
    sample_stds=None,
    num_levels=20,
    prefix="",
):
    """Every regression metric of a predictive distribution, in one dict.

    The predictive Gaussian is `N(prediction.mean, prediction.std^2)`. The
    NLL of the samples' uniform Gaussian mixture (the test log-likelihood of
    the MC dropout and Deep Ensembles papers) is added as `mixture_nll` when
    it can be computed: from a `ku.sampling.MixtureScore` passed as
    `prediction` (`ku.sampling.MixtureNLL`'s streamed log-likelihoods), or
    from the samples' `sample_means` and `sample_stds` (`mixture_nll`).

    Keys (sorted by name; `{L}` is `100 * level`, e.g. `95`, `97.5`), each
    a float, averaged over every point and target:

    | key | value (the `ku.metrics` function that computes it) |
    | --- | --- |
    | `calibration_error` | miscalibration area (`regression_calibration_error`) |
    | `coverage_{L}` | fraction of `y` in the central interval (`interval_coverage`) |
    | `crps` | CRPS of the predictive Gaussian (`crps_gaussian`) |
    | `gaussian_nll` | NLL of the predictive Gaussian, nats (`gaussian_nll`) |
    | `interval_score_{L}` | interval score of that interval (`interval_score`) |
    | `mean_aleatoric_std` | mean of `prediction.aleatoric_std` |
    | `mean_epistemic_std` | mean of `prediction.epistemic_std` |
    | `mean_std` | mean of `prediction.std` |
    | `mixture_nll` | NLL of the samples' mixture, nats (`mixture_nll`) [1] |
    | `rmse` | root mean squared error of `prediction.mean` (`rmse`) |
    | `width_{L}` | mean width `2 z std` of that interval (`interval_coverage`) |

    [1] Only with a `MixtureScore` (its `nll`) or `sample_means`.

    With `prefix="val_"` every key starts with `val_`.

    Args:
        y_true: `(N,)` or `(N, k)` targets (`(N,)` against `(N, 1)`
            predictions is accepted).
        prediction: A `ku.RegressionPrediction` (fields `mean`, `std`,
            `aleatoric_std`, `epistemic_std`, shaped like `y_true`), or a
            `ku.sampling.MixtureScore` (its `prediction` and per-point
            `log_likelihood`).
        levels: Nominal coverages in (0, 1) of the central intervals
            `mean +- z std` scored by coverage, width and interval score;
            default `(0.5, 0.9, 0.95)`; `()` for none.
        sample_means: Optional `(T, *y_true.shape)` means of the T samples,
            with `sample_stds`, for `mixture_nll`.
        sample_stds: Their standard deviations (> 0): the same shape, or a
            scalar (a homoscedastic model's `1 / sqrt(tau)`).
        num_levels: Integer >= 2, the nominal levels of the calibration
            curve behind `calibration_error`.
        prefix: A string put before every key.

    Returns:
        A dict `{key: float}` sorted by key (see the table).

    Example:

    >>> pred = ku.predict_regression(model, x_test, num_samples=100)
    >>> report = ku.metrics.regression_report(y_test, pred, levels=(0.9,))
    >>> report["rmse"], report["gaussian_nll"], report["coverage_90"]
    """
    prefix = _check_prefix(prefix)
    levels = _check_levels(levels)
    log_likelihood = None
    if hasattr(prediction, "log_likelihood") and hasattr(prediction, "prediction"):
        score, prediction = prediction, prediction.prediction
        log_likelihood = _log_likelihood(score.log_likelihood)
    fields = _fields(prediction, _REGRESSION_FIELDS, "RegressionPrediction")
    y_true = as_array(y_true, "y_true")
    mean = fields["mean"]
    if y_true.ndim == mean.ndim - 1 and mean.shape[-1] == 1:
        y_true = y_true[..., None]
    _same_rows(y_true, "y_true", {f"prediction.{k}": v for k, v in fields.items()})
    for name, array in fields.items():
        if array.shape != y_true.shape:
            raise ValueError(
                f"Expected `y_true` and `prediction.{name}` to have the same "
                f"shape. Received: y_true with shape {y_true.shape} and "
                f"prediction.{name} with shape {array.shape}"
            )
    for name in ("aleatoric_std", "epistemic_std"):
        if np.any(fields[name] < 0):
            raise ValueError(
                f"Invalid value received for argument `prediction`. Expected "
                f"`prediction.{name}` >= 0. Received: smallest "
                f"{fields[name].min()!r}"
            )
    if (sample_means is None) != (sample_stds is None):
        raise ValueError(
            "Invalid value received for arguments `sample_means` and "
            "`sample_stds`. Expected both (for `mixture_nll`) or neither. "
            f"Received: sample_means {'None' if sample_means is None else 'given'}"
            f" and sample_stds {'None' if sample_stds is None else 'given'}"
        )
    if sample_means is not None and log_likelihood is not None:
        raise ValueError(
            "Invalid value received for argument `sample_means`. Expected "
            "either a MixtureScore or samples for `mixture_nll`, not both. "
            "Received: a MixtureScore and sample_means"
        )
    if log_likelihood is not None and log_likelihood.shape != y_true.shape:
        raise ValueError(
            "Expected `y_true` and `prediction.log_likelihood` to have the same "
            f"shape. Received: y_true with shape {y_true.shape} and "
            f"prediction.log_likelihood with shape {log_likelihood.shape}"
        )
    if sample_means is not None:
        sample_means = as_array(sample_means, "sample_means")
        if sample_means.shape[1:] != y_true.shape:
            raise ValueError(
                "Invalid value received for argument `sample_means`. Expected "
                f"shape (T, *{y_true.shape}), one row of means per sample. "
                f"Received: shape {sample_means.shape}"
            )
    num_levels = check_positive_int(num_levels, "num_levels")
    std = fields["std"]
    values = {
        "calibration_error": _regression.regression_calibration_error(
            y_true, mean, std, num_levels
        ),
        "crps": _regression.crps_gaussian(y_true, mean, std),
        "gaussian_nll": _regression.gaussian_nll(y_true, mean, std),
        "mean_aleatoric_std": np.mean(fields["aleatoric_std"]),
        "mean_epistemic_std": np.mean(fields["epistemic_std"]),
        "mean_std": np.mean(std),
        "rmse": _regression.rmse(y_true, mean),
    }
    for level, name in levels:
        coverage, width = _regression.interval_coverage(y_true, mean, std, level)
        values[f"coverage_{name}"] = coverage
        values[f"width_{name}"] = width
        values[f"interval_score_{name}"] = _regression.interval_score(
            y_true, mean, std, level
        )
    if log_likelihood is not None:
        values["mixture_nll"] = score.nll
    elif sample_means is not None:
        values["mixture_nll"] = _regression.mixture_nll(
            y_true, sample_means, sample_stds
        )
    return _keyed(values, prefix)


def _log_likelihood(values):
    """Per-point log-likelihoods: -inf (a density below float64) is a
    value, NaN and +inf are not."""
    if hasattr(values, "numpy") and not isinstance(values, np.ndarray):
        values = values.numpy()
    values = np.asarray(values, np.float64)
    bad = np.isnan(values) | (values == math.inf)
    if values.size == 0 or np.any(bad):
        raise ValueError(
            "Invalid value received for argument `prediction`. Expected a "
            "non-empty `prediction.log_likelihood` of log densities (finite "
            f"or -inf). Received: shape {values.shape} with "
            f"{int(np.sum(bad))} NaN or +inf entries"
        )
    return values


def classification_report(
    labels,
    prediction,
    *,
    num_bins=15,
    adaptive=False,
    uncertainty="entropy",
    prefix="",
):
    """Every classification metric of a predictive distribution, in one dict.

    Keys (sorted by name), each a float over the N points:

    | key | value (the `ku.metrics` function that computes it) |
    | --- | --- |
    | `accuracy` | fraction whose most probable class is the label (`accuracy`) |
    | `aurc` | risk-coverage area, referral by `uncertainty` (`aurc`) |
    | `brier` | multiclass Brier score, in [0, 2] (`brier_score`) |
    | `ece` | `num_bins` bins (`expected_calibration_error`) |
    | `error_auroc` | AUROC of `uncertainty` for the misclassified (`auroc`) [1] |
    | `mce` | `num_bins` bins (`max_calibration_error`) |
    | `mean_entropy` | mean predictive entropy `H[probs]` (total, nats) |
    | `mean_expected_entropy` | mean `mean_t H[p_t]` (aleatoric, nats) |
    | `mean_mutual_information` | mean mutual information (epistemic, nats) |
    | `nll` | mean negative log-likelihood, nats (`classification_nll`) |

    [1] NaN when every point, or none, is misclassified.

    With `prefix="val_"` every key starts with `val_`.

    Args:
        labels: `(N,)` integer labels in `[0, C)`.
        prediction: A `ku.ClassificationPrediction` (or an object with its
            fields `probs` `(N, C)`, `entropy`, `expected_entropy` and
            `mutual_information` `(N,)`).
        num_bins: Positive integer, the confidence bins of `ece` and `mce`.
        adaptive: Equal-mass bins instead of equal-width ones.
        uncertainty: The score that ranks the points for `aurc` and
            `error_auroc` (larger: less certain): `"entropy"`,
            `"expected_entropy"`, `"mutual_information"` (a field of
            `prediction`), or an `(N,)` array.
        prefix: A string put before every key.

    Returns:
        A dict `{key: float}` sorted by key (see the table).

    Example:

    >>> pred = ku.predict_classification(model, x_test, num_samples=50)
    >>> report = ku.metrics.classification_report(labels, pred)
    >>> report["accuracy"], report["nll"], report["ece"], report["aurc"]
    """
    prefix = _check_prefix(prefix)
    num_bins = check_positive_int(num_bins, "num_bins")
    if not isinstance(adaptive, (bool, np.bool_)):
        raise ValueError(
            "Invalid value received for argument `adaptive`. Expected True or "
            f"False. Received: adaptive={adaptive!r}"
        )
    fields = _fields(prediction, _CLASSIFICATION_FIELDS, "ClassificationPrediction")
    labels = as_array(labels, "labels", dtype=None)
    _same_rows(labels, "labels", {f"prediction.{k}": v for k, v in fields.items()})
    labels, probs = classification_inputs(labels, fields["probs"])
    for name in _UNCERTAINTIES:
        if fields[name].shape != labels.shape:
            raise ValueError(
                f"Expected `prediction.{name}` to have one value per label. "
                f"Received: labels with shape {labels.shape} and "
                f"prediction.{name} with shape {fields[name].shape}"
            )
    if isinstance(uncertainty, str):
        if uncertainty not in _UNCERTAINTIES:
            raise ValueError(
                "Invalid value received for argument `uncertainty`. Expected "
                f"one of {_UNCERTAINTIES} or an (N,) array. Received: "
                f"uncertainty={uncertainty!r}"
            )
        scores = fields[uncertainty]
    else:
        scores = as_array(uncertainty, "uncertainty")
        if scores.shape != labels.shape:
            raise ValueError(
                "Invalid value received for argument `uncertainty`. Expected "
                f"one score per label, shape {labels.shape}. Received: shape "
                f"{scores.shape}"
            )
    errors = np.argmax(probs, axis=-1) != labels
    values = {
        "accuracy": _classification.accuracy(labels, probs),
        "aurc": _selective.aurc(labels, probs, scores),
        "brier": _classification.brier_score(labels, probs),
        "ece": _classification.expected_calibration_error(
            labels, probs, num_bins, adaptive
        ),
        # AUROC needs both misclassified and correct points.
        "error_auroc": (
            _classification.auroc(errors, scores)
            if 0 < errors.sum() < len(errors)
            else math.nan
        ),
        "mce": _classification.max_calibration_error(labels, probs, num_bins, adaptive),
        "mean_entropy": np.mean(fields["entropy"]),
        "mean_expected_entropy": np.mean(fields["expected_entropy"]),
        "mean_mutual_information": np.mean(fields["mutual_information"]),
        "nll": _classification.classification_nll(labels, probs),
    }
    return _keyed(values, prefix)
