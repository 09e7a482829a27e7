"""`SNGPModel`: a network with an SNGP head, predicted in one pass.

The layers (`ku.layers.SNGPSpectralNormalization`,
`ku.layers.RandomFeatureGaussianProcess`) are in `keras_uncertainty.layers`;
this module holds the model and how the sampling engine reads it
(`SNGPSampledModel`).
"""

import keras
from keras import ops

from keras_uncertainty import _keras_compat
from keras_uncertainty.layers.sngp import RandomFeatureGaussianProcess
from keras_uncertainty.sampling import (
    SampledModel,
    formulas,
    graph,
    has_variance_head,
    keys,
)

_PACKAGE = "keras_uncertainty"


def gaussian_process_layers(model):
    """Every `RandomFeatureGaussianProcess` in `model`, at any depth."""
    return [
        layer
        for layer in _keras_compat.flatten_layers(model)
        if isinstance(layer, RandomFeatureGaussianProcess)
    ]


def regression_output_head(model):
    """The model's GP regression head when it computes the model's one
    output (`SNGPSampledModel` reads its moments), else None."""
    layers = gaussian_process_layers(model)
    if len(layers) == 1 and layers[0].task == "regression":
        outputs = getattr(model, "outputs", None) or []
        if len(outputs) == 1 and outputs[0] is layers[0].output:
            return layers[0]
    return None


class SNGPSampledModel(SampledModel):
    """How the engine predicts an `SNGPModel`: one deterministic forward
    pass whose output is already the mean-field predictive, so one sample
    whatever `num_samples` asks.

    A model whose output is a regression GP head gives two samples instead,
    the sigma points `(mean -/+ sqrt(var), log sigma^2)`, computed from one
    pass of the network: their mixture has exactly the GP's mean, its
    epistemic variance `var = phi^T Sigma phi` (the spread of the two means)
    and its noise `sigma^2` (the aleatoric part), so `ku.predict_regression`
    splits the predictive variance as the GP does.

    Args:
        model: The `SNGPModel`.
    """

    # Deterministic, one pass: the GP head's output carries the uncertainty
    # (no warning that the samples are identical).
    stochastic = False
    uncertainty_in_output = True

    def __init__(self, model):
        super().__init__(model)
        self.floats_per_row = graph.floats_per_row(model)
        self.regression_head = regression_output_head(model)
        if self.regression_head is not None:
            # `model.input`: the model's input structure (a dict stays a
            # dict, matched by its keys), not the flat `model.inputs`.
            with graph.quiet_input_names():
                self.feature_model = keras.Model(
                    model.input, self.regression_head.input
                )

    def samples_per_member(self, num_samples):
        return 1 if self.regression_head is None else 2

    def stochastic_layers(self):
        return []

    def forward(self, inputs, num_samples):
        if self.regression_head is None:
            return self.model(inputs, training=False)
        features = self.feature_model(inputs, training=False)
        mean, log_noise, variance = self.regression_head.regression_moments(features)
        spread = ops.sqrt(ops.cast(variance, mean.dtype))[:, None]  # (n, 1)
        first = keys.current().sample_offset
        return formulas.sigma_points(mean, spread, log_noise, num_samples, first)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SNGPModel(keras.Model):
    """A Functional model with an SNGP head, predicted in one pass.

    Build it as a Functional model, `SNGPModel(inputs, outputs)`, with one
    or more `RandomFeatureGaussianProcess` layers (usually the last) and,
    for distance awareness, `SNGPSpectralNormalization` around the hidden
    layers. Train it with `compile` / `fit` and the
    `ku.sngp.SNGPCovarianceReset()` callback. At inference the model
    returns the mean-field predictive (probabilities, or logits with
    `activation=None`), and `ku.predict_classification(model, x)` reads it
    in one forward pass: the result holds one sample, so `num_samples` is
    irrelevant (any value gives the same result and the cost of one pass),
    the `entropy` is the uncertainty (it grows far from the training
    data) and `mutual_information` is 0. `ku.sample` returns `(1, N, C)`,
    and `ku.export` serves the same one-pass summary.

    With a regression head (`RandomFeatureGaussianProcess(...,
    task="regression")` as the model's output, compiled with
    `ku.losses.gaussian_nll`), `ku.predict_regression(model, x)` gives the
    GP's mean, `aleatoric_std = sigma` and `epistemic_std = sqrt(phi^T
    Sigma phi)` from one pass (two sigma points, see `SNGPSampledModel`;
    `ku.sample` returns those two points). `compile` refuses, with a
    ValueError naming `loss`, a loss that does not declare
    `variance_head = True` (`"mse"` fitted the log-variance columns as
    means, and `ku.predict_regression` then read a 2-column mean).

    Args:
        *args: `inputs, outputs` as a functional `keras.Model` takes them:
            the model's inputs and its outputs, computed through a
            `RandomFeatureGaussianProcess`.
        **kwargs: The same by name, and `name` (passed to `keras.Model`).

    Example:

    >>> inputs = keras.Input((2,))
    >>> h = SNGPSpectralNormalization(keras.layers.Dense(64, "relu"))(inputs)
    >>> outputs = RandomFeatureGaussianProcess(3, num_inducing=256)(h)
    >>> model = SNGPModel(inputs, outputs)
    """

    def __init__(self, *args, **kwargs):
        # `(*args, **kwargs)`, a functional model's signature on every
        # Keras 3 version (3.3's `Functional.__init__` takes only those), so
        # Keras saves and loads an SNGPModel as a functional model.
        super().__init__(*args, **kwargs)
        if not gaussian_process_layers(self):
            raise ValueError(
                "Invalid value received for argument `outputs`. Expected a "
                "model with a ku.layers.RandomFeatureGaussianProcess layer. "
                "Received: none among the layers of the model"
            )

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, refusing a loss a regression GP head
        cannot use (see the class docstring)."""
        super().compile(*args, **kwargs)
        if (
            regression_output_head(self) is not None
            and has_variance_head(self) is False
        ):
            loss = self.loss
            received = loss if isinstance(loss, str) else type(loss).__name__
            raise ValueError(
                "Invalid value received for argument `loss`. Expected a loss "
                "on the GP regression head's (means, log-variances) output, "
                "one that declares `variance_head = True` "
                "(ku.losses.gaussian_nll or ku.losses.GaussianNLL): another "
                "fits the log-variance columns as means, read back as a "
                f"second mean. Received: loss={received!r}"
            )

    def gaussian_process_layers(self):
        """The model's `RandomFeatureGaussianProcess` layers."""
        return gaussian_process_layers(self)

    def reset_covariance(self):
        """Resets the precision of every GP layer (see
        `RandomFeatureGaussianProcess.reset_covariance`)."""
        for layer in self.gaussian_process_layers():
            layer.reset_covariance()

    def update_covariance(self):
        """Computes and caches the covariance of every GP layer now."""
        for layer in self.gaussian_process_layers():
            layer.update_covariance()

    def as_sampled_model(self):
        """The engine's view of the model (see `ku.sampling.SampledModel`).

        Returns:
            An `SNGPSampledModel`: one forward pass, one sample.
        """
        return SNGPSampledModel(self)
