"""`Laplace`: a Gaussian posterior around a trained network's weights."""

import threading
import warnings
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_uncertainty import _budget
from keras_uncertainty._validation import (
    as_array,
    check_bool,
    check_positive_finite,
    check_positive_int,
    check_seed,
)
from keras_uncertainty.laplace import _glm
from keras_uncertainty.laplace import _numerics as num
from keras_uncertainty.laplace._last_layer import check_activation, find_last_layer
from keras_uncertainty.laplace._last_layer import invalid as _invalid
from keras_uncertainty.laplace.model import (
    PREDICTIVES,
    AllLayerGLMSampledModel,
    LastLayerPosterior,
    build_model,
)
from keras_uncertainty.posthoc.base import FittedMethod
from keras_uncertainty.sampling import (
    graph,
    has_variance_head,
    predict_classification,
    predict_regression,
    sampled_model,
)
from keras_uncertainty.sampling.engine import release_compiled
from keras_uncertainty.sampling.inputs import flatten_inputs

_LIKELIHOODS = ("regression", "classification")
_SUBSETS = ("last_layer", "all")
_HESSIANS = ("full", "kron", "diag")
# `predict`'s: the GLM predictives (`as_model` also takes "weights").
_PREDICTIVES = tuple(p for p in PREDICTIVES if p != "weights")


def _as_array(x, name):
    """`x` (a structure of arrays or tensors) as numpy arrays of their own
    dtypes, each checked by `_validation.as_array` and given rows."""
    if isinstance(x, (list, tuple)):
        return [_as_array(item, name) for item in x]
    if isinstance(x, dict):
        return {key: _as_array(item, name) for key, item in x.items()}
    if tf.is_tensor(x):
        x = keras.ops.convert_to_numpy(x)
    array = np.asarray(x)
    if array.ndim == 0:
        raise _invalid(name, "an array with at least one row", array.shape)
    return as_array(array, name, dtype=None)


# Compiled functions of a model (features, GLM steps, Jacobians), kept while
# the model lives, so that refitting or a second `Laplace` does not retrace.
_COMPILED = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.RLock()  # a build may compile another part


def _compiled(model, key, build):
    with _COMPILED_LOCK:
        per_model = _COMPILED.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build()
        return per_model[key]


def _rows(x):
    first = x
    while isinstance(first, (list, tuple, dict)):
        first = list(first.values())[0] if isinstance(first, dict) else first[0]
    return first.shape[0]


class Laplace(FittedMethod):
    """The Laplace approximation of a trained Keras network (post hoc).

    Fitted on the training data, it puts a Gaussian around the trained
    weights `theta*`: mean `theta*`, precision `s H + delta I`, with `H` the
    generalized Gauss-Newton (GGN) matrix of the negative log-likelihood,
    `delta` the prior precision and `s = 1 / sigma_noise^2` for
    homoscedastic regression (1 otherwise). `delta` (and `sigma_noise`)
    are fitted by maximizing the Laplace log marginal likelihood (the
    evidence, Daxberger et al. 2021, "Laplace Redux"):

        log p(D) ~ log p(D | theta*) - delta |theta*|^2 / 2
            - (1/2) log det(s H + delta I) + (P / 2) log delta,

    over a grid on a log scale refined by Newton steps; `theta*` stays fixed.
    For a linear model with a Gaussian likelihood every step is exact: the
    posterior, predictive and evidence are Bayesian linear regression's.

    The network's output must be computed by a `keras.layers.Dense` on
    `(batch, d)` inputs, its last linear layer (`last_layer`), with a linear
    activation for regression; softmax or linear, read as logits, for
    classification. Its inputs are the features `phi`. The Dense layer may
    be followed by weightless layers that only reshape (`Reshape`,
    `Flatten`, `Identity`) or apply the activation (`Activation`,
    `Softmax`): a model ending `Dense(10, name="logits")` and
    `Activation("softmax")` is read as one ending `Dense(10,
    activation="softmax")` (a categorical likelihood on the logits). Any
    other trailing layer (a `Lambda`, a custom layer, a `Normalization`) is
    refused.

    - `subset="last_layer"`: the posterior covers the Dense layer's kernel
      and bias (the rest stays at its trained values). The GGN is
      `sum_n kron(phi~ phi~^T, Lambda_n)` with `phi~ = [phi, 1]` and
      `Lambda_n` the likelihood's Hessian in the outputs: `I / sigma^2`
      (regression), `diag(p) - p p^T` (classification), `diag(exp(-log
      var_n))` for a variance head (then the posterior covers the mean
      columns only, the log-variance columns stay at their trained values,
      and the head's per-example precision weights the GGN; `sigma_noise`
      is not used). `hessian="kron"` (KFAC) keeps `(A / N) (x) G` with
      `A = sum phi~ phi~^T`, `G = sum Lambda_n`: exact for homoscedastic
      regression, an approximation for classification; `"full"` the whole
      GGN; `"diag"` its diagonal.
    - `subset="all"` (small models): every trainable weight, from
      per-example Jacobians. `"full"` and `"diag"` as above; `"kron"` is
      all-layer KFAC: block-diagonal over layers, each Dense layer (on
      `(N, d)` inputs) a Kronecker block `(A / N) (x) G` from its augmented
      inputs `a~` and the Jacobians `g_n` in its pre-activations (`A = sum
      a~ a~^T`, `G = sum g_n^T Lambda_n g_n`), every other weight its
      exact GGN diagonal.

    Predictives: `predict` gives the linearized (GLM) predictive: the
    network's output `f_mu` with covariance `f_var = J Sigma J^T`. For
    regression, in closed form: `epistemic_std = sqrt(diag f_var)`,
    `aleatoric_std = sigma_noise` (or the head's). For classification,
    `predictive="probit"`: `probs = softmax(f_mu / sqrt(1 + pi/8
    diag(f_var)))`, `entropy = H[probs]`, with `expected_entropy` the Monte
    Carlo mean of `H[softmax(f)]` over `num_samples` draws of the GLM
    logits `f ~ N(f_mu, f_var)` and `mutual_information = max(entropy -
    expected_entropy, 0)`; `predictive="mc"`: every field from those draws.
    The same predictive comes from `ku.predict_regression(la, x)` /
    `ku.predict_classification(la, x)`, `ku.predict`, `ku.sample` and
    `ku.export(la, ...)`: one compiled pass through the sampling engine
    (deterministic but for the draws of the expected entropy, seeded by
    `seed`). `as_model()` (last layer) returns that GLM predictive as a
    `keras.Model` to save; `as_model("weights")` one that the engine
    samples by drawing the last layer's weights from the posterior, one
    draw per sample.

    The network must be deterministic: a model with MC layers
    (`ku.layers.MCDropout`, Flipout, ...) is refused at `fit` with a
    ValueError naming them. The approximation linearizes one function
    around `theta*`; with MC layers the features are random at every call
    (two identical `predict` calls on a network with MCDropout gave
    probabilities 0.27 apart). Build it on the network with
    `keras.layers.Dropout` (off at inference) in their place, with the same
    weights.

    `fit`, `predict` and `predict_f` check their inputs against the model's
    inputs (shape and dtype) before any work, with a ValueError naming `x`.

    Memory: before any work, `fit` adds up the bytes its structures take
    and refuses (a ValueError naming the largest: `hessian`, `batch_size`
    or `x`, with what to do instead) a fit above
    `keras_uncertainty._budget.MAX_WORKING_BYTES` (16 GiB): the features and
    output Hessians of the N rows in float64; the Hessian, `"full"` `5 P^2`
    float64 values with its eigendecomposition (P = `d1 * k` last-layer,
    every trainable weight all-layer: 16 GiB holds P up to about 20700),
    `"kron"` its factors, `"diag"` P values; all-layer, one batch of
    per-example Jacobians, `32 * batch_size * k * P` bytes (they are
    computed and summed one batch at a time, never all held). `predict`
    checks its covariances `(N, k, k)` and batch structures the same way,
    and `posterior_covariance` / `posterior_precision` their dense
    `(P, P)` matrix.

    Args:
        model: A trained, deterministic Functional or Sequential
            `keras.Model` with one output, computed by a final
            `keras.layers.Dense` (then, at most, weightless activation and
            reshape layers).
        likelihood: "regression" (Gaussian) or "classification"
            (categorical).
        subset: "last_layer" or "all".
        hessian: "kron" (KFAC), "full" or "diag".
        prior_precision: `delta > 0`, the initial (or, without
            `fit_prior_precision`, fixed) prior precision.
        sigma_noise: `sigma > 0`, the initial (or fixed) observation noise
            of homoscedastic regression.
        fit_prior_precision: Whether `fit` maximizes the evidence in
            `delta` (see `optimize_prior_precision`).
        fit_sigma_noise: Whether it also fits `sigma_noise` (homoscedastic
            regression only).
        variance_head: Regression: whether the output is `(means,
            log-variances)`; None reads the compiled loss
            (`ku.has_variance_head`), False when the model is not compiled.
        batch_size: Rows per forward pass (and per Jacobian chunk).

    Attributes (after `fit`):
        posterior_mean_: `(P,)` float64, `theta*` (last layer: the kernel
            with the bias as a last row, flattened row-major).
        prior_precision_: The fitted (or given) `delta`.
        sigma_noise_: The fitted (or given) `sigma`; None for
            classification and variance heads.
        log_marginal_likelihood_: The evidence at the fitted values.
        num_data_: N, the training rows.
        hessian_: The GGN in eigen form (a dict).

    Example:

    >>> la = ku.laplace.Laplace(model, "classification").fit(x_train, y_train)
    >>> pred = la.predict(x_test)  # a ku.ClassificationPrediction
    >>> ku.export(la.as_model(), "served/1", task="classification")
    """

    _fitted_on = "the network's training inputs and their targets"

    def __init__(
        self,
        model,
        likelihood="classification",
        subset="last_layer",
        hessian="kron",
        prior_precision=1.0,
        sigma_noise=1.0,
        fit_prior_precision=True,
        fit_sigma_noise=True,
        variance_head=None,
        batch_size=256,
    ):
        self.model = model
        self.likelihood = likelihood
        self.subset = subset
        self.hessian = hessian
        self.prior_precision = prior_precision
        self.sigma_noise = sigma_noise
        self.fit_prior_precision = fit_prior_precision
        self.fit_sigma_noise = fit_sigma_noise
        self.variance_head = variance_head
        self.batch_size = batch_size

    # Checks -------------------------------------------------------------------

    def _check_params(self):
        if not isinstance(self.model, keras.Model):
            raise _invalid("model", "a keras.Model", type(self.model).__name__)
        for name, allowed in (
            ("likelihood", _LIKELIHOODS),
            ("subset", _SUBSETS),
            ("hessian", _HESSIANS),
        ):
            if getattr(self, name) not in allowed:
                raise _invalid(name, f"one of {allowed}", getattr(self, name))
        check_positive_finite(self.prior_precision, "prior_precision")
        check_positive_finite(self.sigma_noise, "sigma_noise")
        check_bool(self.fit_prior_precision, "fit_prior_precision")
        check_bool(self.fit_sigma_noise, "fit_sigma_noise")
        if self.variance_head is not None and not isinstance(self.variance_head, bool):
            raise _invalid("variance_head", "True, False or None", self.variance_head)
        if self.variance_head and self.likelihood != "regression":
            raise _invalid("variance_head", "None or False for classification", True)
        check_positive_int(self.batch_size, "batch_size")

    def _structure(self):
        """The network's last linear layer (`_last_layer.find_last_layer`),
        checked against the likelihood."""
        last = find_last_layer(self.model)
        check_activation(last, self.likelihood)
        return last

    @property
    def last_layer(self):
        """The `keras.layers.Dense` the posterior is built on: the model's
        last linear layer, found through trailing weightless activation and
        reshape layers.

        Raises:
            ValueError: The model has no such layer.
        """
        return find_last_layer(self.model).dense

    def __repr__(self):
        text = super().__repr__()
        try:
            name = self.last_layer.name
        except ValueError:
            name = None
        return f"{text[:-1]}, last_layer={name!r})"

    def _check_deterministic(self):
        """Refuses a model with MC layers (see the class docstring)."""
        random = [layer.name for layer in graph.stochastic_layers(self.model)]
        if random:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "deterministic network: the Laplace approximation linearizes "
                "it at its weights, and MC layers make its features random at "
                "every call (predictions would differ between identical "
                "calls). Build it on the network with keras.layers.Dropout "
                "(off at inference) in their place. Received: a model with MC "
                f"layers {random[:5]}"
            )

    def _inputs(self, x):
        """`x` checked against the model's inputs (`flatten_inputs`: shape
        and dtype, one ValueError naming `x`) before any work, as arrays."""
        flatten_inputs(self._structure().view, x, "x")
        return _as_array(x, "x")

    def _uses_variance_head(self, width):
        head = self.variance_head
        if self.likelihood != "regression":
            return False
        if head is None:
            head = bool(has_variance_head(self.model))
        if head and width % 2:
            raise _invalid("variance_head", "an output of even width 2k", width)
        return head

    # Fit ----------------------------------------------------------------------

    def fit(self, x, y):
        """Fits the posterior on the training data.

        Computes the GGN at the trained weights and, with
        `fit_prior_precision`, the prior precision (and `sigma_noise`) that
        maximize the marginal likelihood.

        Args:
            x: Training inputs (arrays: what the model's `predict` takes).
            y: Targets: `(N, k)` (or `(N,)`) for regression; integer labels
                `(N,)` or one-hot `(N, C)` for classification.

        Returns:
            self, fitted.
        """
        self._check_params()
        self._check_deterministic()
        last = self._structure().dense
        x = self._inputs(x)
        y = _as_array(y, "y")
        n = _rows(x)
        if y.shape[0] != n:
            raise _invalid("y", f"{n} rows, one per input", y.shape)
        use_bias = bool(last.use_bias)
        width = int(last.kernel.shape[1])
        head = self._uses_variance_head(width)
        k = width // 2 if head else width
        self._check_memory(n, k, head)
        kernel = np.asarray(keras.ops.convert_to_numpy(last.kernel), np.float64)
        weights = kernel
        if use_bias:
            bias = np.asarray(keras.ops.convert_to_numpy(last.bias), np.float64)
            weights = np.concatenate([kernel, bias[None]], axis=0)
        phi = self._features(x)
        z = phi @ weights
        targets = self._targets(y, n, k)
        precision, loglik, sse = None, 0.0, None
        if self.likelihood == "classification":
            loglik = float(np.sum(num.log_softmax(z)[np.arange(n), targets]))
        elif head:
            log_var = z[:, k:]
            precision = np.exp(-log_var)
            residual = targets - z[:, :k]
            loglik = float(
                -0.5 * np.sum(np.log(2 * np.pi) + log_var + residual**2 * precision)
            )
        else:
            sse = float(np.sum(np.square(targets - z)))
        lambdas = num.output_hessians(self.likelihood, z[:, :k], precision)
        if self.subset == "last_layer":
            eigen = num.last_layer_ggn(self.hessian, phi, lambdas)
            mean = weights[:, :k].ravel()
        else:
            mean, eigen = self._all_layer_ggn(x, k, lambdas)
        self.posterior_mean_ = mean
        self.hessian_ = eigen.to_state()
        self._fit_token = object()  # the models built from an earlier fit go
        self.num_data_ = n
        self.fit_statistics_ = {
            "k": k,
            "use_bias": use_bias,
            "variance_head": head,
            "weights": weights,
            "loglik": loglik,
            "num_targets": None if sse is None else n * k,
            "sse": sse,
            "sq_norm": float(mean @ mean),
        }
        self.prior_precision_ = float(self.prior_precision)
        homoscedastic = self.likelihood == "regression" and not head
        self.sigma_noise_ = float(self.sigma_noise) if homoscedastic else None
        if self.fit_prior_precision:
            self.optimize_prior_precision(fit_sigma_noise=self.fit_sigma_noise)
        else:
            self.log_marginal_likelihood_ = self.log_marginal_likelihood()
        return self

    def _targets(self, y, n, k):
        if self.likelihood == "classification":
            if y.ndim == 2 and y.shape[1] == k and y.shape[1] > 1:
                return np.argmax(y, axis=1)
            labels = y.reshape(n) if y.size == n else None
            if (
                labels is None
                or not np.all(labels == np.round(labels))
                or labels.min() < 0
                or labels.max() >= k
            ):
                raise _invalid("y", f"labels in [0, {k}) or one-hot (N, {k})", y.shape)
            return labels.astype(np.int64)
        if y.size != n * k:
            raise _invalid("y", f"targets of shape ({n}, {k})", y.shape)
        return y.reshape(n, k).astype(np.float64)

    def _jacobian_function(self, k):
        features, last, _ = self._feature_model()
        variables = list(self.model.trainable_variables)

        @tf.function(reduce_retracing=True, autograph=False)
        def jacobians(inputs):
            with tf.GradientTape() as tape:
                phi = features(inputs, training=False)
                z = tf.matmul(phi, last.kernel[:, :k])
                if last.use_bias:
                    z = z + last.bias[:k]
            parts = tape.jacobian(z, variables, experimental_use_pfor=True)
            rows = tf.shape(z)[0]
            flat = [
                tf.zeros((rows, k, int(np.prod(v.shape))), z.dtype)
                if part is None
                else tf.reshape(part, (rows, k, -1))
                for part, v in zip(parts, variables)
            ]
            return tf.concat(flat, axis=-1)

        return jacobians, variables

    def _jacobian_step(self, k):
        """The compiled per-example Jacobians of a batch (`(b, k, P)` in
        every trainable weight) and the variables, in their order."""
        return _compiled(
            self.model, ("jacobians", k), lambda: self._jacobian_function(k)
        )

    def _all_layer_ggn(self, x, k, lambdas):
        """The weights `(P,)` and the all-layer GGN in eigen form, from the
        per-example Jacobians of one batch of `batch_size` rows at a time
        (never all of them at once)."""
        function, variables = self._jacobian_step(k)
        mean = np.concatenate(
            [np.ravel(keras.ops.convert_to_numpy(v)) for v in variables]
        ).astype(np.float64)
        if self.hessian == "kron":
            ranges, layers = self._kfac_plan()
            probe = None
            if layers:
                view = self._structure().view
                probe = keras.Model(view.input, [layer.input for layer in layers])
            total = num.JacobianKFAC(ranges)
        else:
            total = num.JacobianGGN(self.hessian, mean.size)
        lo = 0
        for chunk in self._batches(x):
            jacobians = np.asarray(function(chunk), np.float64)
            hi = lo + jacobians.shape[0]
            if self.hessian == "kron":
                inputs = self._kfac_inputs(ranges, layers, probe, chunk)
                total.add(jacobians, lambdas[lo:hi], inputs)
            else:
                total.add(jacobians, lambdas[lo:hi])
            lo = hi
        return mean, total.eigen()

    def _kfac_plan(self):
        """The parameter ranges of all-layer KFAC (`_numerics.JacobianKFAC`)
        and the Dense layers of its Kronecker blocks: each Dense layer of the
        network whose kernel is followed by its bias (or has none) in
        `model.trainable_variables` gets a Kronecker block from its augmented
        inputs; every other weight a diagonal.

        Returns:
            `(ranges, layers)`: `(start, stop, d1)` per range (`d1` the
            augmented input width of a block, None for a diagonal range),
            and the blocks' layers in order.
        """
        view = self._structure().view
        variables = list(self.model.trainable_variables)
        starts = np.cumsum([0] + [int(np.prod(v.shape)) for v in variables])
        index = {id(v): i for i, v in enumerate(variables)}
        dense = {}
        for layer in view.layers:
            if not isinstance(layer, keras.layers.Dense) or len(layer.input.shape) != 2:
                continue  # a Dense on sequences shares its weights over time
            i = index.get(id(layer.kernel))
            if i is None:
                continue
            if layer.use_bias and index.get(id(layer.bias)) != i + 1:
                continue  # not laid out [kernel; bias]: diagonal
            dense[i] = layer
        ranges, layers, i = [], [], 0
        while i < len(variables):
            if i in dense:
                layer = dense[i]
                width = 2 if layer.use_bias else 1
                d1 = int(layer.kernel.shape[0]) + int(layer.use_bias)
                ranges.append((int(starts[i]), int(starts[i + width]), d1))
                layers.append(layer)
                i += width
            else:
                ranges.append((int(starts[i]), int(starts[i + 1]), None))
                i += 1
        return ranges, layers

    @staticmethod
    def _kfac_inputs(ranges, layers, probe, chunk):
        """The augmented inputs `(b, d1)` of each Kronecker block on a batch
        (None for a diagonal range)."""
        values = []
        if probe is not None:
            out = probe(chunk, training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            values = [
                num.augment(np.asarray(value, np.float64), layer.use_bias)
                for value, layer in zip(out, layers)
            ]
        blocks = iter(values)
        return [None if d1 is None else next(blocks) for _, _, d1 in ranges]

    # Memory -----------------------------------------------------------------

    def _sizes(self, k):
        """`(d1, P)`: the last layer's augmented input width and the weights
        the posterior covers (`d1 * k` last-layer, every trainable weight
        all-layer)."""
        last = self._structure().dense
        d1 = int(last.kernel.shape[0]) + int(bool(last.use_bias))
        if self.subset == "last_layer":
            return d1, d1 * k
        sizes = [int(np.prod(v.shape)) for v in self.model.trainable_variables]
        return d1, sum(sizes)

    def _hessian_part(self, n, k, p):
        """`(bytes, needs, instead)` of the Hessian structure of `fit`."""
        others = "hessian='kron' (KFAC) or hessian='diag'"
        if self.subset == "all":
            others += ", or subset='last_layer'"
        else:
            others += ", or fewer features (a narrower layer before the last Dense)"
        if self.hessian == "full":
            return (
                40 * p * p,
                f"the ({p}, {p}) float64 GGN of P={p} weights and its "
                "eigendecomposition (5 P^2 x 8 bytes)",
                f"Use {others}.",
            )
        if self.hessian == "diag":
            return 16 * p, f"the float64 diagonal of P={p} weights", ""
        if self.subset == "last_layer":
            d1 = p // k
            return (
                40 * (d1 * d1 + k * k) + 16 * p,
                f"the Kronecker factors ({d1}, {d1}) and ({k}, {k}) in float64 "
                "and their eigendecompositions",
                "Use hessian='diag', or fewer features (a narrower layer "
                "before the last Dense).",
            )
        ranges, _ = self._kfac_plan()
        size = 16 * p
        for start, stop, d1 in ranges:
            if d1 is not None:
                d2 = (stop - start) // d1
                size += 40 * (d1 * d1 + d2 * d2)
        return (
            size,
            f"the per-layer Kronecker factors of P={p} weights in float64",
            "Use hessian='diag', or subset='last_layer'.",
        )

    def _jacobian_part(self, n, k, p, per_entry):
        """`(bytes, needs, instead)` of one batch of all-layer Jacobians."""
        rows = min(self.batch_size, n)
        fits = _budget.most_within(per_entry * k * p)
        return (
            per_entry * rows * k * p,
            f"one batch of per-example Jacobians ({rows} rows x {k} outputs x "
            f"{p} weights, {per_entry} bytes each in float32, float64 and "
            "their products)",
            f"Use a smaller batch_size (at most {fits} rows fit), "
            "subset='last_layer', or a smaller network.",
        )

    @staticmethod
    def _refuse(parts):
        """Raises the budget's `ValueError` when the parts (`(name, value,
        bytes, needs, instead)`, held at once) exceed it, naming the
        largest part."""
        total = sum(part[2] for part in parts)
        if total <= _budget.working_budget():
            return
        name, value, size, needs, instead = max(parts, key=lambda part: part[2])
        others = total - size
        if others:
            needs += f" (and {_budget.format_bytes(others)} for the rest)"
        _budget.check_bytes(name, value, total, needs, instead)

    def _check_memory(self, n, k, head):
        """Refuses, before any work, a `fit` whose structures would exceed
        `keras_uncertainty._budget.MAX_WORKING_BYTES`: the features and
        output Hessians of the N rows, the Hessian structure and, all-layer,
        one batch of per-example Jacobians."""
        d1, p = self._sizes(k)
        dense_lambdas = self.likelihood == "classification" or head
        width = 2 * k if head else k
        data = 24 * n * d1 + 16 * n * width
        data += 16 * n * k * k if dense_lambdas else 0
        fits = _budget.most_within(data // max(n, 1))
        parts = [
            (
                "x",
                f"{n} rows",
                data,
                f"the features ({n} x {d1}) and output Hessians ({n} x {k} x "
                f"{k}) of the rows in float64",
                f"Fit on fewer rows (at most {fits} fit), or a network with "
                "fewer features or outputs.",
            ),
            ("hessian", self.hessian, *self._hessian_part(n, k, p)),
        ]
        if self.subset == "all":
            parts.append(
                ("batch_size", self.batch_size, *self._jacobian_part(n, k, p, 32))
            )
        self._refuse(parts)

    def _check_predict_memory(self, n):
        """Refuses, before any work, a prediction whose outputs or batch
        structures would exceed the budget."""
        stats = self.fit_statistics_
        k = stats["k"]
        d1, p = self._sizes(k)
        width = 2 * k if stats["variance_head"] else k
        outputs = 16 * n * (k * k + width + k)
        fits = _budget.most_within(outputs // max(n, 1))
        parts = [
            (
                "x",
                f"{n} rows",
                outputs,
                f"the predictive covariances ({n} x {k} x {k}) and means in float64",
                f"Predict slices of x (at most {fits} rows per call).",
            )
        ]
        if self.subset == "all":
            parts.append(("x", f"{n} rows", 24 * n * d1, "the rows' features", ""))
            parts.append(
                ("batch_size", self.batch_size, *self._jacobian_part(n, k, p, 40))
            )
        elif self.hessian == "full":
            rows = min(self.batch_size, n)
            parts.append(
                (
                    "batch_size",
                    self.batch_size,
                    8 * p * p + 16 * rows * k * p,
                    f"the ({p}, {p}) posterior root and one batch of rows "
                    "rotated into it",
                    "Use a smaller batch_size, or fit hessian='kron'.",
                )
            )
        self._refuse(parts)

    # Evidence -----------------------------------------------------------------

    def _evidence(self):
        stats = self.fit_statistics_
        return num.Evidence(
            self.hessian_["eigenvalues"],
            stats["sq_norm"],
            stats["loglik"],
            stats["num_targets"],
            stats["sse"],
        )

    def _noise_precision(self, sigma_noise=None):
        sigma = self.sigma_noise_ if sigma_noise is None else sigma_noise
        return 1.0 if sigma is None else 1.0 / float(sigma) ** 2

    def log_marginal_likelihood(self, prior_precision=None, sigma_noise=None):
        """The Laplace log marginal likelihood (see the class docstring).

        Args:
            prior_precision: `delta`; None: the fitted one.
            sigma_noise: `sigma` (homoscedastic regression); None: the
                fitted one.

        Returns:
            A float (nats).
        """
        self._check_is_fitted("log_marginal_likelihood")
        delta = self.prior_precision_ if prior_precision is None else prior_precision
        check_positive_finite(delta, "prior_precision")
        if sigma_noise is not None:
            check_positive_finite(sigma_noise, "sigma_noise")
        return self._evidence().value(delta, self._noise_precision(sigma_noise))

    def optimize_prior_precision(self, fit_sigma_noise=True):
        """Sets `prior_precision_` (and `sigma_noise_`) to the maximizer of
        the marginal likelihood.

        Args:
            fit_sigma_noise: Whether to fit `sigma_noise_` too (homoscedastic
                regression only).

        Returns:
            self.
        """
        self._check_is_fitted("optimize_prior_precision")
        check_bool(fit_sigma_noise, "fit_sigma_noise")
        evidence = self._evidence()
        delta, s = evidence.maximize(
            self.prior_precision_, self._noise_precision(), fit_sigma_noise
        )
        self.prior_precision_ = delta
        if self.sigma_noise_ is not None:
            self.sigma_noise_ = float(1.0 / np.sqrt(s))
        self.log_marginal_likelihood_ = evidence.value(delta, s)
        return self

    # Posterior ------------------------------------------------------------------

    def _eigen(self):
        return num.Eigen.from_state(self.hessian_)

    def _scale(self):
        """`1 / (s lam + delta)`: the posterior covariance's eigenvalues."""
        return num.posterior_scale(
            self._eigen(), self._noise_precision(), self.prior_precision_
        )

    def _check_dense(self, method):
        """Refuses a dense `(P, P)` matrix (and the basis it is built
        from) above the budget."""
        p = int(self.posterior_mean_.size)
        _budget.check_bytes(
            "hessian",
            self.hessian,
            24 * p * p,
            f"the dense ({p}, {p}) float64 matrix of `{method}` and the basis "
            "it is built from",
            "Use predict / predict_f, which never form it, or read the "
            "posterior in eigen form from `hessian_`.",
        )

    def posterior_covariance(self):
        """The posterior covariance as a dense `(P, P)` matrix (float64).

        Returns:
            `(s H + delta I)^-1`, in the layout of `posterior_mean_`.
        """
        self._check_is_fitted("posterior_covariance")
        self._check_dense("posterior_covariance")
        return self._eigen().dense(self._scale())

    def posterior_precision(self):
        """The posterior precision `s H + delta I` as a dense `(P, P)` matrix.

        Returns:
            A float64 array.
        """
        self._check_is_fitted("posterior_precision")
        self._check_dense("posterior_precision")
        eigen = self._eigen()
        return eigen.dense(1.0 / self._scale())

    # Predictives ----------------------------------------------------------------

    def _feature_model(self):
        """The network up to the last Dense layer's inputs, that layer, and
        a compiled function of the flattened features (built once per
        model)."""

        def build():
            last = self._structure()
            features = keras.Model(last.view.input, last.features)

            @tf.function(reduce_retracing=True, autograph=False)
            def flat_features(inputs):
                phi = features(inputs, training=False)
                return tf.reshape(phi, (tf.shape(phi)[0], -1))

            return features, last.dense, flat_features

        return _compiled(self.model, "features", build)

    def _batches(self, x):
        """`x` in slices of `batch_size` rows, as tensors."""
        size = self.batch_size
        for lo in range(0, _rows(x), size):
            yield keras.tree.map_structure(
                lambda a, lo=lo: tf.convert_to_tensor(a[lo : lo + size]), x
            )

    def _features(self, x):
        _, last, flat_features = self._feature_model()
        phi = [np.asarray(flat_features(chunk)) for chunk in self._batches(x)]
        phi = np.concatenate(phi, axis=0).astype(np.float64)
        return num.augment(phi, last.use_bias)

    def _step(self):
        """The compiled GLM step of the last-layer posterior (built once per
        model and posterior structure)."""
        features, _, _ = self._feature_model()
        stats = self.fit_statistics_
        key = (self.hessian, stats["use_bias"], stats["k"])
        return _compiled(self.model, key, lambda: _glm.last_layer_step(features, *key))

    def _graph_factors(self, scale):
        """The posterior's factors as the compiled step reads them."""
        eigen = self._eigen()
        k = self.fit_statistics_["k"]
        if eigen.structure == "diag":
            factors = (scale.reshape(-1, k),)
        elif eigen.structure == "kron":
            u_a, u_g = eigen.factors
            factors = (u_a, u_g, scale.reshape(u_a.shape[0], k))
        else:
            (q,) = eigen.factors
            factors = (q.reshape(-1, k, q.shape[1]), scale)
        return tuple(tf.constant(f, tf.float64) for f in factors)

    def predict_f(self, x):
        """The linearized network's output distribution (the GLM predictive).

        Args:
            x: Inputs.

        Returns:
            `(f_mean, f_var)`: `(N, k)` means (logits for classification)
            and `(N, k, k)` covariances `J Sigma J^T` (float64).
        """
        self._check_is_fitted("predict_f")
        x = self._inputs(x)
        return self._glm(x)

    def _glm(self, x):
        """`(f_mean, f_var)` of `x`, `batch_size` rows at a time, in float64
        (see `_glm.last_layer_step`; all layers: the per-example Jacobians
        in eigen form): `predict_f`'s path, independent of the engine's."""
        stats = self.fit_statistics_
        k = stats["k"]
        scale = self._scale()
        n = _rows(x)
        self._check_predict_memory(n)
        size = self.batch_size
        chunks = self._batches(x)
        if self.subset == "last_layer":
            step = self._step()
            weights = tf.constant(stats["weights"], tf.float64)
            factors = self._graph_factors(scale)
        else:
            phi = self._features(x)
            f_mean = (phi @ stats["weights"])[:, :k]
            jacobian_step, _ = self._jacobian_step(k)
            eigen = self._eigen()
        parts = []
        for lo in range(0, n, size):
            if self.subset == "last_layer":
                out = step(next(chunks), weights, factors)
            else:
                jacobians = np.asarray(jacobian_step(next(chunks)), np.float64)
                f_var = num.jacobian_variance(eigen, jacobians, scale)
                out = (f_mean[lo : lo + size], f_var)
            parts.append([np.asarray(v) for v in out])
        return tuple(np.concatenate(p, axis=0) for p in zip(*parts))

    def predict(self, x, predictive="probit", num_samples=100, seed=None):
        """The GLM predictive of `x`.

        This is `ku.predict_regression(laplace, x)` /
        `ku.predict_classification(laplace, x, num_samples, seed=seed)`:
        the same compiled pass through the engine, chunked by it, the same
        draws for the same seed (last layer: the `as_model(predictive)`
        model; all layers: the network's per-example Jacobians, in-graph,
        and the posterior covariance's root).

        Args:
            x: Inputs.
            predictive: Classification: "probit" (the probit approximation,
                with the expected entropy from `num_samples` draws of the
                logits) or "mc" (every field from the draws). Regression is
                in closed form whatever it says.
            num_samples: Draws of the GLM logits (classification).
            seed: Optional non-negative seed of those draws (the same seed
                and `batch_size` give the same draws); None: fresh draws.

        Returns:
            A `ku.RegressionPrediction` or `ku.ClassificationPrediction`.
        """
        self._check_is_fitted("predict")
        if predictive not in _PREDICTIVES:
            raise _invalid("predictive", f"one of {_PREDICTIVES}", predictive)
        check_positive_int(num_samples, "num_samples")
        seed = check_seed(seed)
        x = self._inputs(x)
        model = self._glm_model(predictive)
        if self.likelihood == "regression":
            return predict_regression(model, x, seed=seed, verbose=0)
        return predict_classification(model, x, num_samples, seed=seed, verbose=0)

    def transform(self, x):
        """Deprecated (removed in 0.4): `predict(x)`.

        `Laplace` is fitted on training inputs, not on held-out predictions
        as a `ku.posthoc.PostHocMethod` is, so it predicts; `transform` is
        kept one release for code written against 0.2.

        Args:
            x: Inputs.

        Returns:
            `predict(x)`.
        """
        warnings.warn(
            "Laplace.transform(x) is deprecated and removed in 0.4: use "
            "Laplace.predict(x) (or ku.predict_*(laplace, x)).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.predict(x)

    def fit_transform(self, x, y):
        """Deprecated (removed in 0.4): `fit(x, y).predict(x)`.

        Args:
            x: Training inputs.
            y: Their targets.

        Returns:
            The GLM predictive of `x`.
        """
        warnings.warn(
            "Laplace.fit_transform(x, y) is deprecated and removed in 0.4: "
            "use Laplace.fit(x, y).predict(x).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.fit(x, y).predict(x)

    def set_state(self, state):
        """`ku.posthoc.FittedMethod.set_state`; the models built from the
        state before are let go.

        Args:
            state: A dict of fitted attributes (as `get_state` returns).

        Returns:
            self.
        """
        super().set_state(state)
        self._fit_token = object()
        return self

    # Predicting through the engine ----------------------------------------------

    def as_sampled_model(self):
        """The engine's view of the fitted posterior: what `ku.predict_*`,
        `ku.predict`, `ku.sample` and `ku.export` use when given this
        `Laplace` (its probit GLM predictive).

        Returns:
            A `ku.laplace.LaplaceGLMSampledModel` (last layer: the one of
            `as_model()`) or a `ku.laplace.AllLayerGLMSampledModel`.
        """
        self._check_is_fitted("as_sampled_model")
        return self._glm_model("probit")

    def _glm_model(self, predictive):
        """The `SampledModel` of the GLM predictive (built once per fitted
        state and predictive)."""
        if self.subset == "last_layer":
            return sampled_model(self.as_model(predictive))
        return self._cached(("all", predictive), lambda: self._all_layer(predictive))

    def _all_layer(self, predictive):
        features, last, _ = self._feature_model()
        stats = self.fit_statistics_
        covariance = self.posterior_covariance()
        try:
            root = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError:  # positive semi-definite by rounding
            values, vectors = np.linalg.eigh(covariance)
            root = vectors * np.sqrt(np.clip(values, 0.0, None))
        log_noise = None
        if self.sigma_noise_ is not None:
            log_noise = float(2.0 * np.log(self.sigma_noise_))
        return AllLayerGLMSampledModel(
            self.model,
            self.likelihood,
            predictive,
            features,
            last,
            stats["k"],
            stats["weights"],
            root,
            log_noise,
        )

    def _cached(self, kind, build):
        """`build()` once per `kind` and fitted state (an earlier fit's or
        prior precision's models are let go)."""
        state = (
            self.prior_precision_,
            self.sigma_noise_,
            self.__dict__.get("_fit_token"),
        )
        cache = self.__dict__.setdefault("_models", {})
        for stale in [key for key in cache if key[1] != state]:
            gone = cache.pop(stale)
            if isinstance(gone, AllLayerGLMSampledModel):
                release_compiled(gone)  # its steps hold the old posterior
        key = (kind, state)
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def as_model(self, predictive="probit"):
        """A `keras.Model` of the fitted posterior, for the engine.

        Args:
            predictive: "probit" (the default) or "mc": the GLM predictive,
                as `predict` computes it (regression: in closed form, two
                sigma points); "weights": T draws of the last layer's
                weights from the posterior, one per sample (the spread of
                the sampled networks rather than the linearized one's).

        Returns:
            A `ku.laplace.LaplaceModel` (last-layer subset only) that
            `ku.predict_*`, `ku.sample` and `ku.export` predict. It holds the
            posterior as constants (kept while the fitted values stay the
            same: refitting or a new prior precision gives a new model).
        """
        self._check_is_fitted("as_model")
        if predictive not in PREDICTIVES:
            raise _invalid("predictive", f"one of {PREDICTIVES}", predictive)
        if self.subset != "last_layer":
            raise ValueError(
                "Invalid value received for argument `subset`. Expected "
                "'last_layer': the engine predicts the last layer's posterior "
                "(use `predict` for the all-layer GLM predictive). Received: "
                f"subset={self.subset!r}"
            )
        return self._cached(predictive, lambda: self._last_layer_model(predictive))

    def _last_layer_model(self, predictive):
        last = self._structure()
        stats = self.fit_statistics_
        factors = num.sampling_factor(self._eigen(), self._scale())
        log_noise = None
        if self.sigma_noise_ is not None:
            log_noise = float(2.0 * np.log(self.sigma_noise_))
        posterior = LastLayerPosterior(
            self.likelihood,
            self.hessian,
            stats["weights"],
            factors,
            stats["k"],
            stats["use_bias"],
            log_noise,
            predictive=predictive,
            name="laplace_posterior",
        )
        return build_model(last.view, last.features, posterior)
