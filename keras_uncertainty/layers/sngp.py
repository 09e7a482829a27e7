"""SNGP: spectral normalization and a random-feature Gaussian-process head.

Liu et al. (2020), "Simple and Principled Uncertainty Estimation with
Deterministic Deep Learning via Distance Awareness". A deterministic network
becomes distance aware in one forward pass with two changes:

1. its hidden layers are wrapped in `SNGPSpectralNormalization`, which bounds
   the spectral norm of each kernel by `norm_multiplier` (so the hidden map
   cannot collapse distant inputs onto the training data);
2. its output layer is a `RandomFeatureGaussianProcess`: random Fourier
   features of the hidden representation, a trainable linear output on them,
   and a Laplace posterior covariance of that output accumulated over the
   last epoch of training, which gives each input a predictive variance and
   mean-field logits `logits / sqrt(1 + lambda * var)`.

The method (`ku.sngp.SNGPModel`, its sampling adapter and the
`ku.sngp.SNGPCovarianceReset` callback) lives in `keras_uncertainty.sngp`;
this module holds the two layers.
"""

import math
import numbers

import keras
from keras import ops

from keras_uncertainty import _budget, _deprecation
from keras_uncertainty._precision import float32_layer_dtype
from keras_uncertainty._validation import (
    check_bool,
    check_choice,
    check_finite,
    check_positive_finite,
    check_positive_int,
    check_seed,
    value_errors_from_config,
)

_PACKAGE = "keras_uncertainty"
_ACTIVATIONS = ("softmax", "sigmoid", None)
_LIKELIHOODS = ("logistic", "gaussian")
_TASKS = ("classification", "regression")


def _l2_normalize(x):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x)), 1e-12))


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class SNGPSpectralNormalization(keras.layers.Wrapper):
    """Bounds the spectral norm of a layer's kernel by `norm_multiplier`.

    SNGP's spectral normalization (Liu et al. 2020, eq. 7): at each training
    call, `power_iterations` steps of the power iteration refine the
    estimate `sigma` of the largest singular value of the kernel (reshaped
    to a matrix `(-1, kernel.shape[-1])`), and the kernel is rescaled only
    when it exceeds the bound, `W <- W / max(1, sigma / norm_multiplier)`.
    Unlike `keras.layers.SpectralNormalization`, which always divides by
    `sigma` (a norm of exactly 1), a kernel already within the bound is left
    as it is, so `norm_multiplier` < 1 contracts and > 1 allows some growth.

    The rescaled kernel is written into the wrapped layer (as Keras's
    wrapper does): the forward pass and the optimizer see it, and the
    power-iteration vector `u` (a non-trainable weight, saved with the
    model) is carried from one training step to the next, so one iteration
    per step suffices once it has converged. At inference nothing is
    computed: the layer runs as the wrapped layer does, with the kernel of
    the last training step (the last optimizer update may move it by one
    step beyond the bound; call `normalize_kernel()` to enforce it exactly).

    For a convolution the norm bounded is that of the reshaped kernel
    `(kh * kw * in, out)` (Miyato et al. 2018), not the exact operator norm
    of the convolution.

    Args:
        layer: A `keras.layers.Layer` with a `kernel` weight once built
            (`Dense`, `Conv1D`/`Conv2D`/`Conv3D`, `EinsumDense`, ...).
        norm_multiplier: Finite float > 0, the bound `c` on the spectral
            norm. The default 0.95 is the paper's (its Wide ResNet on CIFAR
            uses 6, in uncertainty-baselines). In a plain (non-residual)
            network wrap every weighted layer, the last hidden Dense
            included, at 0.95: a looser bound, or an unbounded last layer,
            makes the hidden features large against the GP head's length
            scale and cost 2.5-5.4 points of accuracy on a small CNN (issue
            37, on the validation images of `benchmarks/sngp.py quality`).
            The bounded network needs the GP head's unscaled random
            features to reach confident logits: with a Dense softmax head
            instead, the same bounded CNN trained to 28% where the plain
            one reached 89%.
        power_iterations: Positive integer, power-iteration steps per
            training call.
        seed: Optional non-negative integer for the initial `u`.
        **kwargs: Base wrapper keyword arguments (`name`, ...).

    Call arguments:
        inputs: The wrapped layer's inputs.
        training: Whether to update `u` and rescale the kernel.

    Example:

    >>> layer = SNGPSpectralNormalization(keras.layers.Dense(64), 0.9)
    >>> y = layer(np.ones((2, 8), "float32"), training=True)
    """

    def __init__(
        self, layer, norm_multiplier=0.95, power_iterations=1, seed=None, **kwargs
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Invalid value received for argument `layer`. Expected a "
                "keras.layers.Layer with a `kernel` (Dense, Conv2D, ...). "
                f"Received: {type(layer).__name__}"
            )
        super().__init__(layer, **kwargs)
        self.norm_multiplier = check_positive_finite(norm_multiplier, "norm_multiplier")
        self.power_iterations = check_positive_int(power_iterations, "power_iterations")
        self.seed = check_seed(seed)

    def build(self, input_shape):
        super().build(input_shape)
        kernel = getattr(self.layer, "kernel", None)
        if kernel is None:
            raise ValueError(
                "Invalid value received for argument `layer`. Expected a layer "
                "with a `kernel` weight once built (Dense, Conv1D, Conv2D, "
                f"Conv3D, EinsumDense). Received: {type(self.layer).__name__} "
                f"'{self.layer.name}' without one"
            )
        self.vector_u = self.add_weight(
            name="vector_u",
            shape=(1, kernel.shape[-1]),
            initializer=keras.initializers.RandomNormal(seed=self.seed),
            trainable=False,
            dtype=kernel.dtype,
        )

    def _kernel_matrix(self):
        kernel = self.layer.kernel
        return ops.reshape(kernel.value, (-1, kernel.shape[-1]))

    def _power_iteration(self):
        """`(u, sigma)`: the refined vector and the spectral norm estimate."""
        w = ops.stop_gradient(self._kernel_matrix())
        u = self.vector_u.value
        v = u
        for _ in range(self.power_iterations):
            v = _l2_normalize(ops.matmul(u, ops.transpose(w)))
            u = _l2_normalize(ops.matmul(v, w))
        sigma = ops.squeeze(ops.matmul(ops.matmul(v, w), ops.transpose(u)))
        return u, sigma

    def normalize_kernel(self):
        """Runs the power iteration and rescales the kernel if it exceeds
        the bound: what a training call does before its forward pass.

        Returns:
            The estimated spectral norm `sigma` before the rescaling (a
            scalar tensor).
        """
        u, sigma = self._power_iteration()
        self.vector_u.assign(u)
        scale = ops.maximum(1.0, sigma / self.norm_multiplier)
        kernel = self.layer.kernel
        kernel.assign(ops.cast(kernel.value / scale, kernel.dtype))
        return sigma

    def call(self, inputs, training=False):
        if training:
            self.normalize_kernel()
        return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "norm_multiplier": self.norm_multiplier,
                "power_iterations": self.power_iterations,
                "seed": self.seed,
            }
        )
        return config


# Bytes per entry of the (D, D) matrices: the float32 precision and cached
# covariance, and the float64 inverse with its symmetrized copies and
# workspace (measured peak: about 12 float32-sized copies).
_BYTES_PER_COVARIANCE_ENTRY = 48


def _check_inducing_memory(num_inducing, features, units):
    """Refuses, before any weight exists, a `num_inducing` whose matrices
    (the `(D, D)` precision, covariance and float64 inverse, and, once the
    input width is known, the `(features, D)` random kernel and `(D, units)`
    output) exceed `keras_uncertainty._budget.MAX_WORKING_BYTES`."""
    d = num_inducing
    size = _BYTES_PER_COVARIANCE_ENTRY * d * d
    if features is not None:
        size += _budget.FLOAT32 * d * (features + 1 + int(units))
    most = math.isqrt(_budget.most_within(_BYTES_PER_COVARIANCE_ENTRY))
    _budget.check_bytes(
        "num_inducing",
        num_inducing,
        size,
        f"the ({d}, {d}) precision and covariance matrices and the float64 "
        f"inverse ({_BYTES_PER_COVARIANCE_ENTRY} bytes per entry)",
        f"Use fewer random features (at most about {most} fit; the SNGP "
        "paper uses 1024).",
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class RandomFeatureGaussianProcess(keras.layers.Layer):
    """SNGP's output layer: a random-feature Gaussian process.

    For a hidden representation `h` (rows of a 2-D input) the layer computes
    (Liu et al. 2020, section 3.2 and Algorithm 1):

    - random Fourier features `phi = cos(h W + b)` with `D = num_inducing`,
      `W ~ N(0, 1 / l^2)` (`l = gp_kernel_scale`) and `b ~ U(0, 2 pi)` drawn
      once (non-trainable weights, saved with the model):
      `phi(h) . phi(h')` approximates `D / 2` times the RBF kernel
      `exp(-|h - h'|^2 / (2 l^2))` (exactly the kernel with
      `scale_random_features=True`, which multiplies `phi` by `sqrt(2 / D)`);
    - logits `phi beta` with `beta` `(D, units)` trainable (no bias: far from
      the data the logits go to 0, the GP prior mean);
    - during training (`training=True`), the Laplace posterior precision of
      `beta`, shared by the classes (the paper's mean-field approximation):
      `Sigma^-1 = ridge * I + sum_i w_i phi_i phi_i^T` with
      `w_i = 1` (`gp_cov_likelihood="gaussian"`, the default, as edward2's)
      or `w_i = p_i (1 - p_i)` (`"logistic"`; `p_i` the largest softmax
      probability of row i for `activation="softmax"`, the sigmoid for
      `"sigmoid"`, averaged over the units); accumulated exactly over every
      training batch since the last `reset_covariance()`
      (`gp_cov_momentum < 0`; `ku.sngp.SNGPCovarianceReset` resets it
      at every epoch start, so after `fit` it holds the last epoch), or as a
      moving average `m * P + (1 - m) * P_batch / n` (`0 < m < 1`);
    - at inference, the covariance `Sigma = (Sigma^-1)^-1` (computed in
      float64 on the first inference call after training changed the
      precision, then cached as a non-trainable weight), the predictive
      variance `var_i = phi_i^T Sigma phi_i` and the mean-field logits
      `logits_i / sqrt(1 + lambda * var_i)` with `lambda =
      mean_field_factor` (`pi / 8`, the probit approximation of the
      expected softmax).

    The output is `activation` of those logits: probabilities (softmax or
    sigmoid) by default, raw logits with `activation=None`. Training calls
    return the un-adjusted (MAP) logits' activation.

    With `task="regression"` the layer is a GP regression head (Bayesian
    linear regression on the random features): `units` means `phi beta`
    and a trainable homoscedastic noise `log sigma^2` per unit; the
    precision is `ridge * I + sum_i phi_i phi_i^T / sigma^2` (the exact
    Gaussian posterior of `beta`, `sigma^2` averaged over the units when
    there are several; `gp_cov_likelihood` does not apply), and the output
    is `(batch, 2 * units)`: the means, then the log-variances
    `log sigma^2` while training (train it with `ku.losses.gaussian_nll`)
    and `log(sigma^2 + phi^T Sigma phi)` at inference, the GP's total
    predictive variance. `activation` and `mean_field_factor` do not apply.

    Args:
        units: Positive integer, the number of classes (1 for a binary
            sigmoid output).
        num_inducing: Positive integer D, the number of random features.
            Refused (`ValueError`, before any weight exists) when its
            matrices, about `48 * D**2` bytes, exceed
            `keras_uncertainty._budget.MAX_WORKING_BYTES` (16 GiB: D up to
            about 18900).
        gp_kernel_scale: Finite float > 0, the RBF length scale `l`.
        gp_cov_momentum: -1 (or any negative number) for exact accumulation,
            else a momentum in (0, 1) for a moving average.
        gp_cov_ridge_penalty: Finite float > 0, the prior precision `ridge`.
        gp_cov_likelihood: `"gaussian"` (weights 1, the default) or
            `"logistic"` (weights `p (1 - p)`). With `"logistic"` a training
            row the network already fits confidently (`p` near 1) adds
            almost nothing to the precision, so after a few epochs the
            variance of in-distribution inputs stays near the prior's and
            the mean-field logits of every input are shrunk (LeNet-5 on
            MNIST, 10 epochs: median `phi^T Sigma phi` 34 on held-out
            digits, probabilities underconfident, ECE 0.35 against 0.006
            with `"gaussian"`).
        mean_field_factor: Float >= 0, `lambda` of the mean-field logits;
            0 turns the adjustment off.
        normalize_input: Whether to apply a `LayerNormalization` to the
            inputs before the random features (off by default: it discards
            the norm of the hidden representation, part of its distance).
        scale_random_features: Whether to multiply the features by
            `sqrt(2 / D)` (so `|phi|^2` is about 1 and the prior variance
            about `1 / ridge`; without it `|phi|^2` is about `D / 2`, the
            prior variance about `D / (2 ridge)`). Off by default, as
            edward2 recommends for a GP output layer: scaled features make
            the logits `phi beta` move `sqrt(D / 2)` times (23x at D = 1024)
            less per optimizer step, so a network trained for a few epochs
            ends with small logits (underconfident: LeNet-5 on MNIST, 10
            epochs, ECE 0.047) or does not train (a small CNN on a 10-class
            grating task, 5 epochs: 30% accuracy against 89% for the plain
            network; see `benchmarks/sngp.py quality`).
        activation: `"softmax"`, `"sigmoid"` or None (logits). With None
            the logistic weights use the sigmoid for `units == 1`, else the
            softmax.
        task: `"classification"` or `"regression"` (see above).
        kernel_regularizer: Optional regularizer of `beta` (an L2 penalty is
            the GP prior in the paper).
        seed: Optional non-negative integer for `W` and `b`.
        **kwargs: Base layer keyword arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, features)` tensor.
        training: Whether to accumulate the precision (and return MAP
            outputs) or to return mean-field outputs.

    Example:

    >>> gp = RandomFeatureGaussianProcess(3, num_inducing=256)
    >>> probs = gp(np.ones((4, 8), "float32"))  # mean-field probabilities
    """

    def __init__(
        self,
        units,
        num_inducing=1024,
        gp_kernel_scale=1.0,
        gp_cov_momentum=-1.0,
        gp_cov_ridge_penalty=1.0,
        gp_cov_likelihood="gaussian",
        mean_field_factor=math.pi / 8,
        normalize_input=False,
        scale_random_features=False,
        activation="softmax",
        kernel_regularizer=None,
        seed=None,
        task="classification",
        **kwargs,
    ):
        # float32 under a mixed-precision global policy: the precision sums
        # phi phi^T over every training row (float16 overflows at 65504) and
        # the random features take the cosine of large projections.
        kwargs["dtype"] = float32_layer_dtype(kwargs.get("dtype"), type(self))
        super().__init__(**kwargs)
        self.task = check_choice(task, "task", _TASKS)
        self.units = check_positive_int(units, "units")
        self.num_inducing = check_positive_int(num_inducing, "num_inducing")
        _check_inducing_memory(self.num_inducing, None, units)
        self.gp_kernel_scale = check_positive_finite(gp_kernel_scale, "gp_kernel_scale")
        if (
            isinstance(gp_cov_momentum, bool)
            or not isinstance(gp_cov_momentum, numbers.Real)
            or not math.isfinite(gp_cov_momentum)
            or gp_cov_momentum == 0
            or gp_cov_momentum >= 1
        ):
            raise ValueError(
                "Invalid value received for argument `gp_cov_momentum`. "
                "Expected a negative number (exact accumulation) or a "
                f"momentum in (0, 1). Received: gp_cov_momentum={gp_cov_momentum!r}"
            )
        self.gp_cov_momentum = float(gp_cov_momentum)
        self.gp_cov_ridge_penalty = check_positive_finite(
            gp_cov_ridge_penalty, "gp_cov_ridge_penalty"
        )
        self.gp_cov_likelihood = check_choice(
            gp_cov_likelihood, "gp_cov_likelihood", _LIKELIHOODS
        )
        self.mean_field_factor = check_finite(
            mean_field_factor,
            "mean_field_factor",
            0,
            hint=" (pi / 8 for the probit approximation)",
        )
        self.normalize_input = check_bool(normalize_input, "normalize_input")
        self.scale_random_features = check_bool(
            scale_random_features, "scale_random_features"
        )
        self.activation = check_choice(activation, "activation", _ACTIVATIONS)
        if (
            self.task == "classification"
            and self.activation == "softmax"
            and self.units < 2
        ):
            raise ValueError(
                "Invalid value received for argument `units`. Expected at "
                "least 2 classes with activation='softmax' (use "
                f"activation='sigmoid' for one binary unit). Received: units={units}"
            )
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.seed = check_seed(seed)
        self.input_norm = (
            keras.layers.LayerNormalization(name="input_norm")
            if self.normalize_input
            else None
        )

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "Invalid value received for argument `inputs`. Expected a 2-D "
                "input (batch, features) with a known number of features "
                "(flatten or pool a feature map first). Received: shape "
                f"{tuple(input_shape)}"
            )
        features = int(input_shape[-1])
        d = self.num_inducing
        _check_inducing_memory(d, features, self.units)
        if self.input_norm is not None:
            self.input_norm.build(input_shape)
        seed = self.seed
        self.random_kernel = self.add_weight(
            name="random_kernel",
            shape=(features, d),
            initializer=keras.initializers.RandomNormal(
                stddev=1.0 / self.gp_kernel_scale, seed=seed
            ),
            trainable=False,
        )
        self.random_bias = self.add_weight(
            name="random_bias",
            shape=(d,),
            initializer=keras.initializers.RandomUniform(
                0.0, 2.0 * math.pi, seed=None if seed is None else seed + 1
            ),
            trainable=False,
        )
        self.beta = self.add_weight(
            name="beta",
            shape=(d, self.units),
            initializer=keras.initializers.RandomNormal(
                stddev=0.05, seed=None if seed is None else seed + 2
            ),
            regularizer=self.kernel_regularizer,
            trainable=True,
        )
        if self.task == "regression":
            self.log_noise_variance = self.add_weight(
                name="log_noise_variance",
                shape=(self.units,),
                initializer="zeros",
                trainable=True,
            )
        ridge_identity = keras.initializers.Identity(gain=self.gp_cov_ridge_penalty)
        self.precision_matrix = self.add_weight(
            name="precision_matrix",
            shape=(d, d),
            initializer=ridge_identity,
            trainable=False,
        )
        self.covariance_matrix = self.add_weight(
            name="covariance_matrix",
            shape=(d, d),
            initializer=keras.initializers.Identity(
                gain=1.0 / self.gp_cov_ridge_penalty
            ),
            trainable=False,
        )
        # 1.0 while the cached covariance lags the precision.
        self.covariance_stale = self.add_weight(
            name="covariance_stale",
            shape=(),
            initializer="zeros",
            trainable=False,
        )

    # -- the pieces, public for inspection and tests ------------------------

    def random_features(self, inputs):
        """`phi(inputs)`, `(batch, num_inducing)`."""
        x = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if self.input_norm is not None:
            x = self.input_norm(x)
        projected = ops.matmul(x, self.random_kernel) + self.random_bias
        features = ops.cos(projected)
        if self.scale_random_features:
            features = features * math.sqrt(2.0 / self.num_inducing)
        return features

    def _laplace_weights(self, logits):
        if self.task == "regression":
            inverse_noise = ops.exp(-ops.cast(self.log_noise_variance, "float32"))
            return ops.ones_like(logits[:, 0]) * ops.mean(inverse_noise)
        if self.gp_cov_likelihood == "gaussian":
            return ops.ones_like(logits[:, 0])
        use_sigmoid = self.activation == "sigmoid" or (
            self.activation is None and self.units == 1
        )
        if use_sigmoid:
            p = ops.sigmoid(logits)
            return ops.mean(p * (1.0 - p), axis=-1)
        p = ops.max(ops.softmax(logits, axis=-1), axis=-1)
        return p * (1.0 - p)

    def _update_precision(self, features, logits):
        features = ops.stop_gradient(ops.cast(features, "float32"))
        weights = ops.stop_gradient(self._laplace_weights(ops.cast(logits, "float32")))
        weighted = features * ops.sqrt(weights)[:, None]
        batch = ops.matmul(ops.transpose(weighted), weighted)
        if self.gp_cov_momentum < 0:
            new = self.precision_matrix.value + batch
        else:
            n = ops.cast(ops.shape(features)[0], "float32")
            m = self.gp_cov_momentum
            new = m * self.precision_matrix.value + (1.0 - m) * batch / n
        self.precision_matrix.assign(new)
        self.covariance_stale.assign(1.0)

    def _inverse(self):
        precision = ops.cast(self.precision_matrix.value, "float64")
        precision = 0.5 * (precision + ops.transpose(precision))
        covariance = ops.inv(precision)
        covariance = 0.5 * (covariance + ops.transpose(covariance))
        return ops.cast(covariance, "float32")

    def _covariance(self):
        """The cached covariance, recomputed first when stale."""

        def recompute():
            covariance = self._inverse()
            self.covariance_matrix.assign(covariance)
            self.covariance_stale.assign(0.0)
            return covariance

        return ops.cond(
            self.covariance_stale.value > 0.5,
            recompute,
            lambda: self.covariance_matrix.value,
        )

    def update_covariance(self):
        """Computes and caches the covariance `Sigma = (Sigma^-1)^-1` now
        (the first inference call after training does it otherwise).

        Returns:
            The covariance, a `(D, D)` tensor.
        """
        covariance = self._inverse()
        self.covariance_matrix.assign(covariance)
        self.covariance_stale.assign(0.0)
        return covariance

    def reset_covariance(self):
        """Resets the precision to the prior's, `ridge * I` (at the start of
        an epoch: see `ku.sngp.SNGPCovarianceReset`)."""
        d = self.num_inducing
        self.precision_matrix.assign(
            self.gp_cov_ridge_penalty * ops.eye(d, dtype="float32")
        )
        self.covariance_stale.assign(1.0)

    def variance_of_features(self, features):
        """`phi_i^T Sigma phi_i` per row of random features `(batch, D)`."""
        features = ops.cast(features, "float32")
        return ops.sum(ops.matmul(features, self._covariance()) * features, axis=-1)

    def predictive_variance(self, inputs):
        """The GP's predictive variance `phi_i^T Sigma phi_i` of the logits,
        `(batch,)`, one per input row, shared by the classes."""
        return self.variance_of_features(self.random_features(inputs))

    def _activate(self, logits):
        if self.activation == "softmax":
            return ops.softmax(logits, axis=-1)
        if self.activation == "sigmoid":
            return ops.sigmoid(logits)
        return logits

    def regression_moments(self, inputs):
        """`(mean, log_noise_variance, epistemic_variance)` of a regression
        head at inference: `(batch, units)`, `(units,)` and `(batch,)`."""
        if self.task != "regression":
            raise ValueError(
                "Invalid value received for argument `task`. Expected a layer "
                "with task='regression' for regression_moments. Received: "
                f"task={self.task!r}"
            )
        features = self.random_features(inputs)
        mean = ops.matmul(features, ops.cast(self.beta, features.dtype))
        log_noise = ops.cast(self.log_noise_variance, mean.dtype)
        return mean, log_noise, self.variance_of_features(features)

    def _regression_call(self, features, training):
        mean = ops.matmul(features, ops.cast(self.beta, features.dtype))
        log_noise = ops.cast(self.log_noise_variance, mean.dtype)
        log_var = ops.zeros_like(mean) + log_noise
        if training:
            self._update_precision(features, mean)
        else:
            variance = ops.cast(self.variance_of_features(features), mean.dtype)
            log_var = ops.log(ops.exp(log_var) + variance[:, None])
        return ops.concatenate([mean, log_var], axis=-1)

    def call(self, inputs, training=False):
        features = self.random_features(inputs)
        if self.task == "regression":
            return self._regression_call(features, training)
        logits = ops.matmul(features, ops.cast(self.beta, features.dtype))
        if training:
            self._update_precision(features, logits)
            return self._activate(logits)
        if self.mean_field_factor > 0:
            variance = self.variance_of_features(features)
            scale = ops.sqrt(1.0 + self.mean_field_factor * variance)
            logits = logits / ops.cast(scale[:, None], logits.dtype)
        return self._activate(logits)

    def compute_output_shape(self, input_shape):
        width = 2 * self.units if self.task == "regression" else self.units
        return (input_shape[0], width)

    @property
    def variance_head(self):
        """True for a regression head, whose output is `(means,
        log-variances)`; None otherwise (the output declaration read by
        `ku.predict_*`, see `keras_uncertainty.sampling.outputs`)."""
        return True if self.task == "regression" else None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_inducing": self.num_inducing,
                "gp_kernel_scale": self.gp_kernel_scale,
                "gp_cov_momentum": self.gp_cov_momentum,
                "gp_cov_ridge_penalty": self.gp_cov_ridge_penalty,
                "gp_cov_likelihood": self.gp_cov_likelihood,
                "mean_field_factor": self.mean_field_factor,
                "normalize_input": self.normalize_input,
                "scale_random_features": self.scale_random_features,
                "activation": self.activation,
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                )
                if self.kernel_regularizer is not None
                else None,
                "seed": self.seed,
                "task": self.task,
            }
        )
        return config


# Moved in 0.3 to `keras_uncertainty.sngp` (the method's own package): kept
# here one release, with a warning.
__getattr__ = _deprecation.moved_names(
    __name__,
    {
        name: "keras_uncertainty.sngp"
        for name in ("SNGPModel", "SNGPSampledModel", "gaussian_process_layers")
    },
)
