"""`LaplaceModel`: a fitted last-layer Laplace posterior, sampled by the engine."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops, tree

from keras_uncertainty._precision import float32_layer_dtype
from keras_uncertainty.losses.gaussian_nll import gaussian_nll
from keras_uncertainty.sampling import SampledModel, graph, keys

_PACKAGE = "keras_uncertainty"


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
        **kwargs,
    ):
        # The posterior's draws and the features they multiply stay float32
        # under a mixed-precision policy (Keras's advice for an output layer).
        kwargs["dtype"] = float32_layer_dtype(kwargs.get("dtype"), type(self))
        super().__init__(**kwargs)
        self.likelihood = likelihood
        self.structure = structure
        self.num_means = int(num_means)
        self.use_bias = bool(use_bias)
        self.log_noise_variance = log_noise_variance

        def constant(name, value):
            value = np.asarray(value, np.float32)
            return self.add_weight(
                name=name,
                shape=value.shape,
                initializer=keras.initializers.Constant(value),
                trainable=False,
            )

        self.weights_map = constant("weights_map", weights_map)
        self.factors = [constant(f"factor_{i}", f) for i, f in enumerate(factors)]

    def get_config(self):
        # The posterior's arrays are weights (saved with the model's
        # weights); the config records their shapes so `from_config` builds
        # placeholders of the right size for the saved values to fill.
        config = super().get_config()
        config.update(
            {
                "likelihood": self.likelihood,
                "structure": self.structure,
                "weights_shape": list(self.weights_map.shape),
                "factor_shapes": [list(f.shape) for f in self.factors],
                "num_means": self.num_means,
                "use_bias": self.use_bias,
                "log_noise_variance": self.log_noise_variance,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        weights_map = np.zeros(config.pop("weights_shape"), np.float32)
        factors = [np.zeros(s, np.float32) for s in config.pop("factor_shapes")]
        return cls(weights_map=weights_map, factors=factors, **config)

    @property
    def floats_per_sample(self):
        """Floats one sample's weight draw holds (its normals, the drawn
        weights and, for "full", the product with the square root)."""
        return 3 * int(self.weights_map.shape[0]) * self.num_means

    def _augment(self, phi):
        if not self.use_bias:
            return phi
        ones = ops.ones_like(phi[:, :1])
        return ops.concatenate([phi, ones], axis=-1)

    def _format(self, means, phi_aug):
        """Engine format from sampled (or MAP) mean outputs `(rows, k)`,
        with `phi_aug` the matching rows of features."""
        if self.likelihood == "classification":
            return ops.softmax(means, axis=-1)
        if self.log_noise_variance is not None:
            log_var = ops.full_like(means, self.log_noise_variance)
        else:
            log_var = ops.matmul(phi_aug, self.weights_map[:, self.num_means :])
        return ops.concatenate([means, log_var], axis=-1)

    def call(self, phi):
        phi_aug = self._augment(phi)
        means = ops.matmul(phi_aug, self.weights_map[:, : self.num_means])
        return self._format(means, phi_aug)

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
        return self._format(means, graph.tile_rows(phi_aug, num_samples))


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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LaplaceModel(keras.Model):
    """A network with a last-layer Laplace posterior, for the sampling engine.

    Built by `ku.laplace.Laplace.as_model()` (last-layer subset). Called
    directly it returns the MAP network's output in the format
    `ku.predict_*` reads: probabilities for classification; `(means,
    log-variances)` for regression (compiled with `ku.losses.gaussian_nll`,
    so `ku.has_variance_head` is True), with `log sigma_noise^2` for a
    homoscedastic model. `ku.predict_regression`, `ku.predict_classification`,
    `ku.sample` and `ku.export` sample it: each of the T samples draws the
    last layer's weights from the posterior (the network below it runs once
    per input), so the aleatoric part of a regression is `sigma_noise` (or
    the head's) and the epistemic part the spread of the sampled means.

    Saved with `model.save("laplace.keras")` (the network and the
    posterior's arrays in one file) and read back with
    `keras.models.load_model`, it samples as before.

    Args:
        *args: `inputs, outputs` as a functional `keras.Model` takes them:
            the base network's inputs and the `LastLayerPosterior`'s output
            on its features.
        **kwargs: The same by name, and `name`.

    Example:

    >>> sampled = laplace.as_model()
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
            A `LaplaceSampledModel`.
        """
        return LaplaceSampledModel(self)


def build_model(base_view, features, posterior):
    """A `LaplaceModel` on `base_view`'s inputs and its `features` tensor."""
    outputs = posterior(features)
    inputs = base_view.input  # the structure Keras matches inputs by
    if len(tree.flatten(inputs)) == 1:
        inputs = tree.flatten(inputs)[0]
    return LaplaceModel(inputs, outputs, name=f"{base_view.name}_laplace")
