"""Feature-space OOD scores: class-conditional Gaussians fitted post-hoc.

`Mahalanobis` (Lee et al. 2018, one covariance shared by the classes) and
`FeatureDensity` (DDU's GDA, Mukhoti et al. 2021, one covariance per class)
are `ku.posthoc.PostHocMethod`s: `fit(features, labels)` on the features of
the (in-distribution) training or held-out inputs, then `transform(features)`
returns `(N,)` scores, higher = more likely OOD. `feature_extractor` and
`layer_features` read the features off a named layer of a Keras model.
"""

import numbers

import keras
import numpy as np

from keras_uncertainty._validation import (
    check_finite,
    check_positive_int,
    class_indices,
    shaped_array,
)
from keras_uncertainty.posthoc.base import PostHocMethod
from keras_uncertainty.sampling import formulas

_LOG_2PI = float(np.log(2.0 * np.pi))


def feature_extractor(model, layer):
    """A Keras model from `model`'s inputs to the output of one of its layers.

    `keras.Model(model.inputs, model.get_layer(layer).output)`: the public
    Keras API, for Functional and Sequential models built on `keras.Input`
    (a subclassed model has no graph of layers to cut). The new model shares
    the layers, and so the weights, of `model`.

    If an MC layer (`ku.layers.MCDropout`, ...) comes before `layer`, the
    features are random at every call: choose a layer before the first MC
    layer (for a network whose only MC dropout sits before its last `Dense`,
    the layer that feeds that dropout), or average several calls.

    Args:
        model: A Functional or Sequential `keras.Model` with known inputs.
        layer: The name (str) or index (int) of the layer whose output is
            the features.

    Returns:
        A `keras.Model`.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: {type(model).__name__}"
        )
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            "Functional or Sequential model built on `keras.Input` (it has "
            "`model.inputs`). Received: a model without known inputs "
            f"({type(model).__name__} {model.name!r})"
        )
    names = [each.name for each in model.layers]
    if isinstance(layer, str) and layer in names:
        chosen = model.get_layer(name=layer)
    elif (
        isinstance(layer, numbers.Integral)
        and not isinstance(layer, bool)
        and -len(names) <= layer < len(names)
    ):
        chosen = model.layers[layer]
    else:
        raise ValueError(
            "Invalid value received for argument `layer`. Expected the name "
            f"or index of a layer of model {model.name!r} (names: {names}). "
            f"Received: layer={layer!r}"
        )
    return keras.Model(model.inputs, chosen.output, name=f"{model.name}_features")


def layer_features(model, x, layer, batch_size=256):
    """The output of a named layer of `model` on inputs `x`, as numpy.

    `feature_extractor(model, layer).predict(x, batch_size=batch_size)`,
    in inference mode.

    Args:
        model: A Functional or Sequential `keras.Model` with known inputs.
        x: The inputs, as `model` takes them.
        layer: The name (str) or index (int) of the layer.
        batch_size: Positive integer, the inputs per step.

    Returns:
        A numpy array, `(N, ...)` as the layer outputs it; `Mahalanobis` and
        `FeatureDensity` need `(N, D)` (pool or flatten a feature map first,
        for instance with a `GlobalAveragePooling2D` layer as `layer`).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    extractor = feature_extractor(model, layer)
    return np.asarray(extractor.predict(x, batch_size=batch_size, verbose=0))


def _features(value, name="features"):
    return shaped_array(
        value,
        name,
        "(N, D)",
        ": one feature vector per row (pool or flatten feature maps first)",
    )


def _labels(value, num_rows):
    """Integer class labels, one per row of `features` (any integers)."""
    return class_indices(value, num_rows)


def _power_of_two_scale(values):
    """A power of two near the largest `|value|` (1 for all zeros).

    The scorers fit on `values / scale`: dividing by a power of two is
    exact, so features of ordinary size give bit for bit the same fit,
    while the squares and products of features at 1e200 (or 1e-200) neither
    overflow nor underflow float64 (they did: covariance inf, Mahalanobis
    scores 0.0 and FeatureDensity NaN)."""
    peak = float(np.max(np.abs(values)))
    if not 0 < peak < np.inf:
        return 1.0
    return float(2.0 ** np.round(np.log2(peak)))


def _regularized_cholesky(covariance, ridge, what, unit=1.0):
    """Lower Cholesky factor of `covariance + ridge * (trace / D) * I`
    (`covariance` in units of `unit`: the fit's scale, squared)."""
    dim = covariance.shape[-1]
    scale = np.trace(covariance) / dim
    regularized = covariance + (ridge * scale) * np.eye(dim)
    try:
        return np.linalg.cholesky(regularized)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"The {what} is not positive definite even with the ridge "
            f"(mean variance {scale * unit:.4g}): the features do not vary "
            "within the classes along some direction. Expected a larger "
            f"`ridge` (Received: ridge={ridge!r}) or features that vary."
        ) from None


def _whitening(cholesky):
    """`L^-1`, the inverse of the lower Cholesky factor, by a triangular
    solve of the identity: `||L^-1 (f - mu)||^2` is the squared Mahalanobis
    distance, and one matrix product whitens many rows (five times faster
    than solving for them, and as accurate: the inverse of `Sigma` itself is
    never formed)."""
    return np.linalg.solve(cholesky, np.eye(len(cholesky)))


class _ClassGaussians(PostHocMethod):
    """Shared checks of the class-conditional Gaussian scorers."""

    _min_per_class = 1

    def __init__(self, ridge=1e-6):
        self.ridge = ridge
        self._check_params()

    def _check_params(self):
        self.ridge = check_finite(self.ridge, "ridge", 0)

    def fit(self, features, labels):
        """Fits the class-conditional Gaussians.

        Args:
            features: `(N, D)` features of in-distribution inputs (numpy,
                list or Keras/TF tensor; finite).
            labels: `(N,)` integer class labels (any integers; the classes
                are the distinct values, in `classes_`).

        Returns:
            self, fitted.
        """
        return super().fit(features, labels)

    def transform(self, features):
        """The OOD scores of new features (higher = more likely OOD).

        Args:
            features: `(N, D)` features, `D` as in `fit`.

        Returns:
            `(N,)` float64 scores.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        return super().transform(features)

    def _grouped(self, features, labels):
        """The rows sorted by class, divided by `scale` (a power of two near
        their largest magnitude, `_power_of_two_scale`) and centred on their
        class means (a new array, so the input is never modified), the
        classes, the class means (in units of `scale`) and counts, the
        start of each class among the rows, and `scale`."""
        features = _features(features)
        labels = _labels(labels, len(features))
        classes, inverse, counts = np.unique(
            labels, return_inverse=True, return_counts=True
        )
        if counts.min() < self._min_per_class:
            few = classes[counts < self._min_per_class].tolist()[:5]
            raise ValueError(
                "Invalid value received for argument `labels`. Expected at "
                f"least {self._min_per_class} rows per class. Received: "
                f"classes {few} with fewer"
            )
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        scale = _power_of_two_scale(features)
        rows = features[order] / scale
        means = np.empty((len(classes), rows.shape[1]))
        for c, (start, count) in enumerate(zip(starts, counts)):
            block = rows[start : start + count]
            means[c] = block.mean(axis=0)
            block -= means[c]  # in place: no (N, D) temporary
        return rows, classes, means, counts, starts, scale

    def _test_features(self, features):
        self._check_is_fitted("transform")
        features = _features(features)
        dim = self.means_.shape[1]
        if features.shape[1] != dim:
            raise ValueError(
                "Invalid value received for argument `features`. Expected "
                f"{dim} features per row, as in `fit`. Received: shape "
                f"{features.shape}"
            )
        return features


class Mahalanobis(_ClassGaussians):
    """Mahalanobis distance to the closest class mean (Lee et al. 2018).

    `fit` models the features of class c as `N(mu_c, Sigma)`, one covariance
    shared (tied) by all classes, as in linear discriminant analysis:

    - `mu_c = (1/N_c) sum_{i: y_i = c} f_i`;
    - `Sigma = (1/N) sum_c sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T`,
      the maximum-likelihood within-class covariance (`covariance_`, equal
      to scikit-learn's `LinearDiscriminantAnalysis(...).covariance_` with
      the empirical class priors).

    The score of a feature vector f is its squared Mahalanobis distance to
    the closest class mean,

        score(f) = min_c (f - mu_c)^T Sigma_r^-1 (f - mu_c),

    the negated confidence `M(x)` of the paper (without its input
    preprocessing or layer ensemble), so higher means more likely OOD. The
    distance is computed with the Cholesky factor `L` of the regularized
    `Sigma_r = Sigma + ridge * (trace(Sigma) / D) * I` (`cholesky_`): it is
    `||L^-1 (f - mu_c)||^2` (`L^-1` from a triangular solve; the inverse of
    `Sigma_r` is never formed).
    The ridge is relative to the mean feature variance, so it does not
    depend on the features' scale; the default 1e-6 only matters for a
    (nearly) singular `Sigma` (more feature dimensions than rows, or
    collapsed features). The fit is computed on the features divided by a
    power of two near their largest magnitude (exact), so features at
    1e200 or 1e-200 score as the same features at 1 would; `covariance_`
    is then `inf` where `Sigma` exceeds float64 (features beyond about
    1e154), while the scores use `cholesky_`, which does not.

    Args:
        ridge: Finite number >= 0, the relative ridge above.

    Attributes:
        classes_: `(C,)` the distinct labels seen by `fit`, sorted.
        means_: `(C, D)` float64 class means.
        covariance_: `(D, D)` float64 shared covariance `Sigma` (without the
            ridge).
        cholesky_: `(D, D)` float64 lower Cholesky factor of `Sigma_r`.

    Example:

    >>> features = ku.ood.feature_extractor(model, "penultimate")
    >>> detector = ku.ood.Mahalanobis().fit(features.predict(x_train), y_train)
    >>> in_scores = detector.transform(features.predict(x_test))
    >>> out_scores = detector.transform(features.predict(x_ood))
    >>> ku.metrics.ood_report(in_scores, out_scores).auroc
    """

    def _fit(self, features, labels):
        centered, classes, means, _, _, scale = self._grouped(features, labels)
        covariance = (centered.T @ centered) / len(centered)
        cholesky = _regularized_cholesky(
            covariance, self.ridge, "shared covariance", scale * scale
        )
        self.classes_ = classes
        # Back to the features' units (exact: powers of two).
        self.means_ = means * scale
        with np.errstate(over="ignore"):
            self.covariance_ = covariance * scale * scale
        self.cholesky_ = cholesky * scale

    def class_distances(self, features):
        """Squared Mahalanobis distances to every class mean.

        Args:
            features: `(N, D)` features, `D` as in `fit`.

        Returns:
            `(N, C)` float64, `(f - mu_c)^T Sigma_r^-1 (f - mu_c)` for the
            classes of `classes_`; `+inf` where it exceeds float64.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        features = self._test_features(features)
        # Centred on the mean of the class means, the squared norms below
        # are of the order of the distances, so the expansion
        # |a - b|^2 = |a|^2 - 2 a.b + |b|^2 loses no accuracy to cancellation.
        center = self.means_.mean(axis=0)
        whitening = _whitening(self.cholesky_).T
        whitened = (features - center) @ whitening
        means = (self.means_ - center) @ whitening
        with np.errstate(over="ignore", invalid="ignore"):
            distances = (
                np.sum(whitened**2, axis=1)[:, None]
                - 2.0 * whitened @ means.T
                + np.sum(means**2, axis=1)[None, :]
            )
            # A row beyond float64's distances (features at 1e200 against a
            # fit at 1): +inf, summed directly, never inf - inf = NaN.
            far = np.flatnonzero(~np.all(np.isfinite(distances), axis=1))
            if far.size:
                gaps = whitened[far, None, :] - means[None, :, :]
                distances[far] = np.sum(gaps**2, axis=2)
        return np.maximum(distances, 0.0)

    def _transform(self, features):
        return np.min(self.class_distances(features), axis=1)


class FeatureDensity(_ClassGaussians):
    """The negative log feature density of DDU's GDA (Mukhoti et al. 2021).

    `fit` models the features of class c as `N(mu_c, Sigma_c)`, each class
    with its own covariance (Gaussian discriminant analysis):

    - `mu_c = (1/N_c) sum_{i: y_i = c} f_i`;
    - `Sigma_c = (1/(N_c - 1)) sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T`
      (unbiased, as in DDU's code and `np.cov`; at least 2 rows per
      class);
    - `pi_c = N_c / N`, the class priors.

    The score is the negative log density of the mixture,

        score(f) = -log sum_c pi_c N(f | mu_c, Sigma_c,r)
                 = -logsumexp_c (log pi_c + log N(f | mu_c, Sigma_c,r)),

    higher = more likely OOD, with `Sigma_c,r = Sigma_c + ridge *
    (trace(Sigma_c) / D) * I`; the log densities use each class's Cholesky
    factor `L_c` (`log N = -(D log 2 pi + 2 sum log diag L_c + ||L_c^-1 (f -
    mu_c)||^2) / 2`) and the log-sum-exp is shifted by its maximum, so it
    stays finite far from every class. DDU weighs the classes equally; the
    priors here make the score the density of the fitted features (the two
    agree for balanced classes, up to the constant `log C`). A class with
    fewer rows than feature dimensions has a singular `Sigma_c`: the ridge
    then decides the density along the missing directions; raise it, or
    reduce the dimension, if that matters. As for `Mahalanobis`, the fit
    is computed on features divided by a power of two near their largest
    magnitude (features at 1e160 give the densities of the same features at
    1, less `D log 1e160`; `covariances_` is `inf` where it exceeds
    float64), and a point too far from every class for float64 scores
    `+inf`, never NaN.

    Args:
        ridge: Finite number >= 0, the relative ridge above.

    Attributes:
        classes_: `(C,)` the distinct labels seen by `fit`, sorted.
        means_: `(C, D)` float64 class means.
        covariances_: `(C, D, D)` float64 class covariances (without the
            ridge).
        priors_: `(C,)` float64 class frequencies.
        cholesky_: `(C, D, D)` float64 lower Cholesky factors of the
            regularized covariances.

    Example:

    >>> density = ku.ood.FeatureDensity().fit(train_features, y_train)
    >>> scores = density.transform(test_features)  # -log p(f)
    """

    _min_per_class = 2

    def _fit(self, features, labels):
        grouped = self._grouped(features, labels)
        centered, classes, means, counts, starts, scale = grouped
        dim = centered.shape[1]
        covariances = np.empty((len(classes), dim, dim))
        cholesky = np.empty_like(covariances)
        for c, (start, count) in enumerate(zip(starts, counts)):
            block = centered[start : start + count]
            covariances[c] = (block.T @ block) / (count - 1)
            cholesky[c] = _regularized_cholesky(
                covariances[c],
                self.ridge,
                f"covariance of class {classes[c]!r}",
                scale * scale,
            )
        self.classes_ = classes
        # Back to the features' units (exact: powers of two).
        self.means_ = means * scale
        with np.errstate(over="ignore"):
            self.covariances_ = covariances * scale * scale
        self.priors_ = counts / len(centered)
        self.cholesky_ = cholesky * scale

    def class_log_densities(self, features):
        """`log N(f | mu_c, Sigma_c,r)` of every class (no prior).

        Args:
            features: `(N, D)` features, `D` as in `fit`.

        Returns:
            `(N, C)` float64 log densities, for the classes of `classes_`.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        features = self._test_features(features)
        dim = features.shape[1]
        out = np.empty((len(features), len(self.classes_)))
        for c, (mean, factor) in enumerate(zip(self.means_, self.cholesky_)):
            whitened = (features - mean) @ _whitening(factor).T
            with np.errstate(over="ignore"):  # beyond float64: +inf
                squared = np.sum(whitened**2, axis=1)
            log_det = 2.0 * np.sum(np.log(np.diag(factor)))
            out[:, c] = -0.5 * (dim * _LOG_2PI + log_det + squared)
        return out

    def log_density(self, features):
        """`log p(f) = logsumexp_c (log pi_c + log N(f | mu_c, Sigma_c,r))`.

        Args:
            features: `(N, D)` features, `D` as in `fit`.

        Returns:
            `(N,)` float64 log densities (the negated scores).

        Raises:
            NotFittedError: `fit` has not been called.
        """
        joint = self.class_log_densities(features) + np.log(self.priors_)
        # Too far from every class for float64 (every log density -inf):
        # log p = -inf (formulas.logsumexp), not NaN.
        return formulas.logsumexp(joint, axis=1)

    def _transform(self, features):
        return -self.log_density(features)
