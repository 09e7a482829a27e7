"""`LaplaceModel`: a fitted last-layer Laplace posterior, predicted by the engine.

Two ways to predict it, chosen when it is built (`Laplace.as_model(
predictive=...)`) and saved with it:

- the GLM predictive ("probit", the default, or "mc"): the linearized
  network's output distribution `N(f_mean, f_var)`, `f_var = J Sigma J^T`,
  computed in float64 from one forward pass of the features
  (`LaplaceGLMSampledModel`): closed form for regression, the probit
  approximation (or Monte Carlo over the logits) for classification;
- "weights": T draws of the last layer's weights from the posterior, one
  per sample (`LaplaceSampledModel`).
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops, tree

from keras_uncertainty import _budget
from keras_uncertainty._precision import float32_layer_dtype
from keras_uncertainty._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_positive_int,
    value_errors_from_config,
)
from keras_uncertainty.laplace import _glm
from keras_uncertainty.laplace._last_layer import invalid as _invalid
from keras_uncertainty.losses.gaussian_nll import gaussian_nll
from keras_uncertainty.sampling import (
    ClassificationSummary,
    RegressionMoments,
    SampledModel,
    formulas,
    graph,
    keys,
)
from keras_uncertainty.sampling.outputs import check_declared_task

_PACKAGE = "keras_uncertainty"
_LIKELIHOODS = ("regression", "classification")
_STRUCTURES = ("full", "kron", "diag")
# "probit" and "mc": the GLM predictive; "weights": sampled weights.
PREDICTIVES = ("probit", "mc", "weights")
# probit: softmax(mu / sqrt(1 + pi/8 var)) (MacKay 1992; Daxberger et al. 2021).
PROBIT_FACTOR = math.pi / 8.0


class _Placeholder:
    """The shape of a weight a saved file fills (nothing allocated)."""

    def __init__(self, shape):
        self.shape = shape


def _shape_of(value, name):
    """The shape of an array (or placeholder) as a tuple of ints >= 1."""
    shape = value.shape if hasattr(value, "shape") else np.shape(value)
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1
        for d in shape
    ):
        key = "weights_shape" if name == "weights_map" else "factor_shapes"
        raise _invalid(key, "a shape of positive integers", shape)
    return tuple(int(d) for d in shape)


def _check_shapes(likelihood, structure, k, log_noise, weights, factors):
    """Checks the posterior's shapes against each other and the memory
    budget (before any allocation); returns them."""
    if len(weights) != 2:
        raise _invalid("weights_shape", "[d1, outputs]", list(weights))
    d1, width = weights
    heads = likelihood == "regression" and log_noise is None
    expected_width = 2 * k if heads else k
    if width != expected_width:
        raise _invalid(
            "weights_shape",
            f"{expected_width} columns for num_means={k} ({likelihood}"
            f"{', a variance head' if heads else ''})",
            list(weights),
        )
    p = d1 * k
    expected = {
        "full": [(p, p)],
        "kron": [(d1, d1), (k, k), (d1, k)],
        "diag": [(p,)],
    }[structure]
    if list(factors) != expected:
        raise _invalid(
            "factor_shapes",
            f"{[list(s) for s in expected]} for structure={structure!r} with "
            f"weights_shape={list(weights)}",
            [list(s) for s in factors],
        )
    floats = d1 * width + sum(math.prod(s) for s in factors)
    _budget.check_bytes(
        "weights_shape",
        list(weights),
        2 * _budget.FLOAT32 * floats,
        f"the posterior's float32 weights ({floats} values, held twice while "
        "they load)",
        "Fit the posterior with hessian='kron' or 'diag', or on fewer features.",
    )
    return tuple(weights), [tuple(s) for s in factors]


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class LastLayerPosterior(keras.layers.Layer):
    """The Gaussian posterior of a Dense layer's weights (held as constants).

    Called on the features `phi` (the Dense layer's inputs), it returns the
    MAP network's output in the engine's format: probabilities for
    classification; `(means, log-variances)` for regression, the
    log-variance `log sigma_noise^2` for a homoscedastic model, the head's
    own for a variance head. `sample(phi, t)` returns `t` samples, each with
    its own draw of the last layer's weights from the posterior. It
    computes in float32 under a `mixed_float16` or `mixed_bfloat16` global
    policy (the features below it arrive in half precision and are cast).

    Args:
        likelihood: "regression" or "classification".
        structure: "full", "kron" or "diag": how the posterior's square
            root is held.
        weights_map: `(d1, k_total)` MAP kernel, with the bias as a last row
            when `use_bias`.
        factors: The square-root factors (see `_numerics.sampling_factor`).
        num_means: k, the columns the posterior covers (the means of a
            variance head, else every column).
        use_bias: Whether `phi` is augmented with a constant 1.
        log_noise_variance: `log sigma_noise^2` (homoscedastic regression),
            else None.
        predictive: How the engine predicts the model: "probit" or "mc"
            (the GLM predictive, `glm_moments`; the posterior is then held
            in float64) or "weights" (`sample`).
    """

    stochastic_at_inference = True
    draws_from_call_key = True

    def __init__(
        self,
        likelihood,
        structure,
        weights_map,
        factors,
        num_means,
        use_bias,
        log_noise_variance=None,
        predictive="weights",
        **kwargs,
    ):
        # The posterior's draws and the features they multiply stay float32
        # under a mixed-precision policy (Keras's advice for an output layer).
        kwargs["dtype"] = float32_layer_dtype(kwargs.get("dtype"), type(self))
        super().__init__(**kwargs)
        self.likelihood = check_choice(likelihood, "likelihood", _LIKELIHOODS)
        self.structure = check_choice(structure, "structure", _STRUCTURES)
        self.num_means = check_positive_int(num_means, "num_means")
        if isinstance(use_bias, np.bool_):
            use_bias = bool(use_bias)
        self.use_bias = check_bool(use_bias, "use_bias")
        self.log_noise_variance = check_finite(
            log_noise_variance, "log_noise_variance", allow_none=True
        )
        # "weights" by default: a file saved before the GLM predictive
        # existed samples weights, as it did.
        self.predictive = check_choice(predictive, "predictive", PREDICTIVES)
        if factors is None or isinstance(factors, (str, bytes)):
            raise _invalid("factors", "a list of arrays", factors)
        self.weights_shape, self.factor_shapes = _check_shapes(
            self.likelihood,
            self.structure,
            self.num_means,
            self.log_noise_variance,
            _shape_of(weights_map, "weights_map"),
            [_shape_of(f, "factors") for f in factors],
        )
        # The arrays become weights in `build`, once the features' width is
        # checked against them (None: zeros that a saved file fills).
        self._initial = (weights_map, list(factors))

    def build(self, input_shape):
        width = input_shape[-1]
        d1 = self.weights_shape[0]
        if width is not None and int(width) + int(self.use_bias) != d1:
            raise _invalid(
                "weights_shape",
                f"{int(width) + int(self.use_bias)} rows: the {width} features "
                f"the layer is called on{' and the bias row' if self.use_bias else ''}",
                list(self.weights_shape),
            )
        weights_map, factors = self._initial

        # The GLM predictive is computed in float64, as `Laplace.fit` fits it.
        dtype = "float32" if self.predictive == "weights" else "float64"

        def constant(name, shape, value):
            initializer = "zeros"
            if value is not None and not isinstance(value, _Placeholder):
                value = np.asarray(value, dtype)
                initializer = keras.initializers.Constant(value)
            return self.add_weight(
                name=name,
                shape=shape,
                initializer=initializer,
                trainable=False,
                dtype=dtype,
            )

        self.weights_map = constant("weights_map", self.weights_shape, weights_map)
        self.factors = [
            constant(f"factor_{i}", shape, f)
            for i, (shape, f) in enumerate(zip(self.factor_shapes, factors))
        ]
        self._initial = None
        self.built = True

    def get_config(self):
        # The posterior's arrays are weights (saved with the model's
        # weights); the config records their shapes so `from_config` builds
        # placeholders of the right size for the saved values to fill.
        config = super().get_config()
        config.update(
            {
                "likelihood": self.likelihood,
                "structure": self.structure,
                "weights_shape": list(self.weights_shape),
                "factor_shapes": [list(s) for s in self.factor_shapes],
                "num_means": self.num_means,
                "use_bias": self.use_bias,
                "log_noise_variance": self.log_noise_variance,
                "predictive": self.predictive,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """The layer of a saved config: its settings and shapes are checked
        (choices, shapes consistent with each other and with the features it
        is called on, the memory budget) before any weight is allocated; the
        weights are zeros until the saved values load."""
        config = dict(config)
        for key in ("weights_shape", "factor_shapes"):
            if key not in config:
                raise _invalid(key, "a list of dimensions (a saved config)", None)
        weights_map = _Placeholder(config.pop("weights_shape"))
        shapes = config.pop("factor_shapes")
        if not isinstance(shapes, (list, tuple)):
            raise _invalid("factor_shapes", "a list of shapes", shapes)
        factors = [_Placeholder(shape) for shape in shapes]
        return cls(weights_map=weights_map, factors=factors, **config)

    @property
    def floats_per_sample(self):
        """Floats one sample's weight draw holds (its normals, the drawn
        weights and, for "full", the product with the square root)."""
        return 3 * int(self.weights_shape[0]) * self.num_means

    def _augment(self, phi):
        if not self.use_bias:
            return phi
        ones = ops.ones_like(phi[:, :1])
        return ops.concatenate([phi, ones], axis=-1)

    def _format(self, means, phi_aug, weights):
        """Engine format from sampled (or MAP) mean outputs `(rows, k)`,
        with `phi_aug` the matching rows of features."""
        if self.likelihood == "classification":
            return ops.softmax(means, axis=-1)
        if self.log_noise_variance is not None:
            log_var = ops.full_like(means, self.log_noise_variance)
        else:
            log_var = ops.matmul(phi_aug, weights[:, self.num_means :])
        return ops.concatenate([means, log_var], axis=-1)

    def call(self, phi):
        phi_aug = self._augment(phi)
        # A GLM posterior holds float64 weights; the MAP output stays in the
        # layer's dtype.
        weights = ops.cast(self.weights_map, phi_aug.dtype)
        means = ops.matmul(phi_aug, weights[:, : self.num_means])
        return self._format(means, phi_aug, weights)

    @tf.autograph.experimental.do_not_convert
    def glm_moments(self, phi):
        """The GLM predictive of features `phi (n, d)`, in float64.

        Returns:
            `(f_mean (n, k), f_var (n, k, k), log_var)`: the linearized
            outputs' means and covariances `J Sigma J^T` (for the last
            layer, `J = phi~ (x) I`), and, for regression, the noise's
            log-variances `(n, k)` (`log sigma_noise^2`, or the head's);
            None for classification.
        """
        phi_aug = self._augment(tf.cast(phi, tf.float64))
        weights = tf.cast(self.weights_map, tf.float64)
        k = self.num_means
        f_mean = tf.matmul(phi_aug, weights[:, :k])
        f_var = _glm.last_layer_variance(
            self.structure, phi_aug, self._variance_factors(), k
        )
        log_var = None
        if self.likelihood == "regression":
            if self.log_noise_variance is not None:
                log_var = tf.fill(
                    tf.shape(f_mean), tf.constant(self.log_noise_variance, tf.float64)
                )
            else:
                log_var = tf.matmul(phi_aug, weights[:, k:])
        return f_mean, f_var, log_var

    def _variance_factors(self):
        """The square-root factors as `_glm.last_layer_variance` reads them
        (`Sigma = R R^T`)."""
        factors = [tf.cast(f, tf.float64) for f in self.factors]
        d1, k = int(self.weights_shape[0]), self.num_means
        if self.structure == "diag":
            return (tf.reshape(tf.square(factors[0]), (d1, k)),)
        if self.structure == "kron":
            u_a, u_g, root = factors
            return (u_a, u_g, tf.square(root))
        (root,) = factors  # (P, P), rows in (input, output) order
        return (tf.reshape(root, (d1, k, -1)), tf.ones(tf.shape(root)[1:], tf.float64))

    def compute_output_shape(self, input_shape):
        k = self.num_means
        width = k if self.likelihood == "classification" else 2 * k
        return (input_shape[0], width)

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent control flow
    def weight_noise(self, num_samples):
        """`(t, d1, k)` draws of the last layer's weights minus the MAP."""
        d1 = self.weights_map.shape[0]
        k = self.num_means
        eps = keys.random_normal((num_samples, d1 * k), None, per_sample=True)
        if self.structure == "full":
            (root,) = self.factors
            return tf.reshape(tf.matmul(eps, root, transpose_b=True), (-1, d1, k))
        eps = tf.reshape(eps, (-1, d1, k))
        if self.structure == "kron":
            u_a, u_g, scale = self.factors
            inner = eps * scale[None]
            return tf.einsum("ij,tjc,kc->tik", u_a, inner, u_g)
        (scale,) = self.factors
        return eps * tf.reshape(scale, (1, d1, k))

    @tf.autograph.experimental.do_not_convert
    def sample(self, phi, num_samples):
        """`t * n` rows (sample-major) of outputs for `n` rows of features,
        each sample with its own weight draw."""
        phi_aug = self._augment(tf.cast(phi, self.compute_dtype))
        means_map = tf.matmul(phi_aug, self.weights_map[:, : self.num_means])
        noise = self.weight_noise(num_samples)  # (t, d1, k)
        means = means_map[None] + tf.einsum("ni,tik->tnk", phi_aug, noise)
        means = tf.reshape(means, (-1, self.num_means))
        return self._format(
            means, graph.tile_rows(phi_aug, num_samples), self.weights_map
        )


class LaplaceSampledModel(SampledModel):
    """How the engine samples a `LaplaceModel`: the features once per input,
    then `t` draws of the last layer's weights (one per sample, shared by
    the inputs of a call, from the call's key).

    Args:
        model: A `LaplaceModel`.
    """

    def __init__(self, model):
        super().__init__(model)
        self.stochastic = True
        self.floats_per_row = graph.floats_per_row(model)
        self.feature_model = keras.Model(model.input, model.posterior.input)

    def stochastic_layers(self):
        return [self.model.posterior]

    @tf.autograph.experimental.do_not_convert
    def forward(self, inputs, num_samples):
        phi = self.feature_model(inputs, training=False)
        return self.model.posterior.sample(phi, num_samples)


class GLMSummary(ClassificationSummary):
    """The summary of the GLM classification predictive
    (`GLMSampledModel`), summed in float64.

    Each sample is `[probs, H[softmax(f_t)]]` `(n, C + 1)`, with `f_t ~
    N(f_mean, f_var)` one draw of the logits and `probs` the probit
    probabilities `softmax(f_mean / sqrt(1 + pi/8 diag f_var))` (the same in
    every sample) or, for the "mc" predictive, `softmax(f_t)`. Summed over
    the samples like `ClassificationSummary`'s state, it finalizes to a
    `ClassificationPrediction` whose `probs` are their mean, `entropy =
    H[probs]`, `expected_entropy` the mean of the draws' entropies and
    `mutual_information = max(entropy - expected_entropy, 0)`.
    """

    uncertainty_in_output = True

    def __init__(self):
        super().__init__(from_logits=False, votes=False)

    def get_config(self):
        return {}

    def reduce(self, samples):
        samples = tf.cast(samples, tf.float64)
        return (
            tf.reduce_sum(samples[..., :-1], axis=0),
            tf.reduce_sum(samples[..., -1], axis=0),
        )

    def summary(self, state, num_samples):
        fields = super().summary(state, num_samples)
        return {name: tf.cast(value, tf.float32) for name, value in fields.items()}


class GLMSampledModel(SampledModel):
    """How the engine predicts a Laplace posterior's GLM predictive: the
    linearized network's outputs `N(f_mean, f_var)`, `f_var = J Sigma J^T`,
    in float64 from one pass (`moments`, the subclass's). It declares its
    output (see `keras_uncertainty.sampling.outputs`):

    - regression: two samples, the sigma points `(f_mean -/+ sqrt(diag
      f_var), log sigma^2)`: their mixture has exactly the GLM mean, its
      epistemic variance `diag f_var` and the noise `sigma^2` (or the
      head's) as the aleatoric part, whatever `num_samples` says;
    - classification: `num_samples` draws of the logits, summarised by
      `GLMSummary` in float64: the probit probabilities ("probit") or the
      draws' mean softmax ("mc"), and the draws' expected entropy.

    Args:
        model: The `keras.Model` whose inputs it reads.
        task: The posterior's likelihood.
        link: "probit" or "mc".
    """

    uncertainty_in_output = True

    def __init__(self, model, task, link):
        super().__init__(model)
        self.task = task
        self.link = link
        self.stochastic = task == "classification"

    def moments(self, inputs):
        """`(f_mean (n, k), f_var (n, k, k), log_var (n, k) or None)` of a
        chunk of inputs, float64."""
        raise NotImplementedError

    def stochastic_layers(self):
        return []

    def samples_per_member(self, num_samples):
        return 2 if self.task == "regression" else num_samples

    def task_reducer(self, task, from_logits=False, votes=False, variance_head=None):
        """The reducer of the GLM predictive (see the class docstring).

        Args:
            task: The posterior's likelihood; another raises a ValueError.
            from_logits: Must be False (the output is not logits).
            votes: Must be False (no samples of the network vote).
            variance_head: Must be None or True (regression).

        Returns:
            A `ku.sampling.Reducer`.
        """
        check_declared_task(task, self.task, "a Laplace posterior of that likelihood")
        if from_logits:
            raise _invalid(
                "from_logits", "False: the GLM predictive gives probabilities", True
            )
        if task == "regression":
            if variance_head is False:
                raise _invalid(
                    "variance_head",
                    "None or True: the GLM predictive has a noise variance",
                    False,
                )
            return RegressionMoments(True)
        if votes:
            raise _invalid(
                "votes",
                "False: the GLM predictive's probabilities are not votes of "
                "samples (sample the weights, `as_model('weights')`, to count "
                "votes)",
                True,
            )
        return GLMSummary()

    @tf.autograph.experimental.do_not_convert
    def forward(self, inputs, num_samples):
        f_mean, f_var, log_var = self.moments(inputs)
        n, k = tf.shape(f_mean)[0], tf.shape(f_mean)[1]
        if self.task == "regression":
            spread = tf.sqrt(tf.linalg.diag_part(f_var))
            first = keys.current().sample_offset
            return formulas.sigma_points(f_mean, spread, log_var, num_samples, first)
        eps = keys.random_normal((num_samples * n, k), None, dtype="float64")
        logits = _glm.draw_logits(f_mean, f_var, tf.reshape(eps, (-1, n, k)))
        draws = tf.nn.softmax(logits, axis=-1)
        entropy = formulas.entropy(draws)
        if self.link == "mc":
            probs = draws
        else:
            kappa = tf.math.rsqrt(1.0 + PROBIT_FACTOR * tf.linalg.diag_part(f_var))
            probs = tf.nn.softmax(f_mean * kappa, axis=-1)
            probs = tf.broadcast_to(probs[None], tf.shape(logits))
        out = tf.concat([probs, entropy[..., None]], axis=-1)
        return tf.reshape(out, (-1, k + 1))


class LaplaceGLMSampledModel(GLMSampledModel):
    """The GLM predictive of a `LaplaceModel` built for it
    (`predictive="probit"` or `"mc"`): the network below the last layer runs
    once per input, and `f_mean`, `f_var` follow in float64
    (`LastLayerPosterior.glm_moments`); see `GLMSampledModel`.

    Args:
        model: The `LaplaceModel`.
    """

    def __init__(self, model):
        posterior = model.posterior
        super().__init__(model, posterior.likelihood, posterior.predictive)
        k = posterior.num_means
        below = graph.floats_per_row(model)
        # The covariance (k, k), its root and the draws, in float64.
        self.floats_per_row = None if below is None else below + 6 * k * k + 4 * k
        self.feature_model = keras.Model(model.input, posterior.input)

    def moments(self, inputs):
        phi = self.feature_model(inputs, training=False)
        phi = tf.reshape(phi, (tf.shape(phi)[0], -1))
        return self.model.posterior.glm_moments(phi)


class AllLayerGLMSampledModel(GLMSampledModel):
    """The GLM predictive of an all-layer Laplace posterior (`subset="all"`):
    per chunk, the network's outputs and their per-example Jacobians in
    every trainable weight `J (n, k, P)`, then `f_var = (J R)(J R)^T` with
    `R` the Cholesky root of the posterior covariance (`(P, P)`, float64,
    a constant of the graph); see `GLMSampledModel`.

    Args:
        model: The trained network.
        task: The posterior's likelihood.
        link: "probit" or "mc".
        features: The network up to its last Dense layer's inputs.
        last: That Dense layer.
        num_means: k, the output columns the posterior covers.
        weights: `(d1, k_total)` float64 MAP kernel (the bias as a last row
            when the layer has one).
        root: `(P, P)` float64 root of the posterior covariance.
        log_noise_variance: `log sigma_noise^2` (homoscedastic regression),
            else None.
    """

    def __init__(
        self,
        model,
        task,
        link,
        features,
        last,
        num_means,
        weights,
        root,
        log_noise_variance=None,
    ):
        super().__init__(model, task, link)
        self.features = features
        self.last = last
        self.num_means = num_means
        self.weights = tf.constant(weights, tf.float64)
        self.root = tf.constant(root, tf.float64)
        self.log_noise_variance = log_noise_variance
        below = graph.floats_per_row(model)
        p = int(root.shape[0])
        # The Jacobian (k, P) and its product with the root, in float64.
        self.floats_per_row = None if below is None else below + 4 * num_means * p

    def moments(self, inputs):
        k = self.num_means
        variables = list(self.model.trainable_variables)
        with tf.GradientTape() as tape:
            phi = self.features(inputs, training=False)
            phi = tf.reshape(phi, (tf.shape(phi)[0], -1))
            z = tf.matmul(phi, self.last.kernel[:, :k])
            if self.last.use_bias:
                z = z + self.last.bias[:k]
        parts = tape.jacobian(z, variables, experimental_use_pfor=True)
        rows = tf.shape(z)[0]
        jacobian = tf.concat(
            [
                tf.zeros((rows, k, int(np.prod(v.shape))), z.dtype)
                if part is None
                else tf.reshape(part, (rows, k, -1))
                for part, v in zip(parts, variables)
            ],
            axis=-1,
        )
        rotated = tf.matmul(tf.cast(jacobian, tf.float64), self.root)  # (n, k, P)
        f_var = tf.matmul(rotated, rotated, transpose_b=True)
        phi = tf.cast(phi, tf.float64)
        if self.last.use_bias:
            phi = tf.concat([phi, tf.ones_like(phi[:, :1])], axis=1)
        outputs = tf.matmul(phi, self.weights)
        f_mean = outputs[:, :k]
        log_var = None
        if self.task == "regression":
            if self.log_noise_variance is not None:
                log_var = tf.fill(
                    tf.shape(f_mean),
                    tf.constant(self.log_noise_variance, tf.float64),
                )
            else:
                log_var = outputs[:, k:]
        return f_mean, f_var, log_var


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LaplaceModel(keras.Model):
    """A network with a last-layer Laplace posterior, for the sampling engine.

    Built by `ku.laplace.Laplace.as_model()` (last-layer subset). Called
    directly it returns the MAP network's output in the format
    `ku.predict_*` reads: probabilities for classification; `(means,
    log-variances)` for regression (compiled with `ku.losses.gaussian_nll`,
    so `ku.has_variance_head` is True), with `log sigma_noise^2` for a
    homoscedastic model. `ku.predict_regression`, `ku.predict_classification`,
    `ku.sample` and `ku.export` predict it as its posterior says
    (`LastLayerPosterior.predictive`): the GLM predictive ("probit" or "mc",
    `as_model()`'s default; `LaplaceGLMSampledModel`), or, built with
    `as_model("weights")`, T samples that each draw the last layer's weights
    from the posterior (the network below it runs once per input), so the
    aleatoric part of a regression is `sigma_noise` (or the head's) and the
    epistemic part the spread of the sampled means.

    Saved with `model.save("laplace.keras")` (the network and the
    posterior's arrays in one file) and read back with
    `keras.models.load_model`, it samples as before. The file's config is
    checked before any weight is allocated (`LastLayerPosterior.from_config`):
    the likelihood and structure, the posterior's shapes against each other
    and against the features the layer is called on, and their bytes
    against `keras_uncertainty._budget.MAX_WORKING_BYTES`; a ValueError
    names the value.

    Args:
        *args: `inputs, outputs` as a functional `keras.Model` takes them:
            the base network's inputs and the `LastLayerPosterior`'s output
            on its features.
        **kwargs: The same by name, and `name`.

    Example:

    >>> glm = laplace.as_model()  # the probit GLM predictive
    >>> ku.predict_classification(glm, x_test)
    >>> sampled = laplace.as_model("weights")  # 100 weight draws
    >>> ku.predict_classification(sampled, x_test, num_samples=100)
    """

    def __init__(self, *args, **kwargs):
        # `(*args, **kwargs)`, a functional model's signature on every
        # Keras 3 version, so Keras saves and loads a LaplaceModel as one:
        # its `.keras` file holds the network and the posterior's arrays.
        super().__init__(*args, **kwargs)
        self.posterior = self.layers[-1]
        if self.posterior.likelihood == "regression":
            self.compile(loss=gaussian_nll)

    def as_sampled_model(self):
        """The engine's view of the model (see `ku.sampling.SampledModel`).

        Returns:
            A `LaplaceGLMSampledModel` for the GLM predictive ("probit",
            "mc"), a `LaplaceSampledModel` for sampled weights.
        """
        if self.posterior.predictive == "weights":
            return LaplaceSampledModel(self)
        return LaplaceGLMSampledModel(self)


def build_model(base_view, features, posterior):
    """A `LaplaceModel` on `base_view`'s inputs and its `features` tensor."""
    outputs = posterior(features)
    inputs = base_view.input  # the structure Keras matches inputs by
    if len(tree.flatten(inputs)) == 1:
        inputs = tree.flatten(inputs)[0]
    return LaplaceModel(inputs, outputs, name=f"{base_view.name}_laplace")
