"""What the two evidential heads and the two evidential losses share."""

import numbers

import keras

from keras_uncertainty._validation import value_errors_from_config
from keras_uncertainty.sampling.outputs import check_declared_task


@value_errors_from_config
class DenseHead(keras.layers.Layer):
    """A `Dense(width_per_unit * units)` whose outputs `_parameters` maps to
    a distribution's parameters (the evidential heads' common part).

    Args:
        units: Integer >= `min_units`.
        kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer: As for `keras.layers.Dense`.
        **kwargs: Base layer arguments.
    """

    width_per_unit = 1
    min_units = 1
    units_meaning = "a positive integer"

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(units, bool)
            or not isinstance(units, numbers.Integral)
            or units < self.min_units
        ):
            raise ValueError(
                "Invalid value received for argument `units`. Expected "
                f"{self.units_meaning}. Received: units={units!r}"
            )
        self.units = int(units)
        self.dense = keras.layers.Dense(
            self.width_per_unit * self.units,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            name="dense",
        )

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, inputs):
        return self._parameters(self.dense(inputs))

    def _parameters(self, raw):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.width_per_unit * self.units)

    def get_config(self):
        config = super().get_config()
        dense = self.dense.get_config()
        config.update(
            units=self.units,
            kernel_initializer=dense["kernel_initializer"],
            bias_initializer=dense["bias_initializer"],
            kernel_regularizer=dense["kernel_regularizer"],
            bias_regularizer=dense["bias_regularizer"],
        )
        return config


class SuppliesReducer:
    """Mixin of a loss or an output layer whose output holds a
    distribution's parameters: it declares how `ku.predict_*`, `ku.export`
    and the callback reduce it (`task_reducer`, the output declaration of
    `keras_uncertainty.sampling.outputs`). Subclasses set `task` and define
    `_summary()`, which returns the reducer."""

    task = None

    def _summary(self):
        raise NotImplementedError

    def task_reducer(self, task, **options):
        """The reducer `ku.predict_*`, `ku.export` and the
        `UncertaintyMetrics` callback use for an output computed by this
        head or compiled with this loss: one pass, the distribution's own
        split.

        Args:
            task: The declared `task` ("regression" or "classification");
                another task raises a ValueError.
            **options: The generic reducers' `from_logits`, `votes`,
                `variance_head`: must be unset.

        Returns:
            A `ku.sampling.Reducer`.
        """
        check_declared_task(task, self.task, type(self).__name__)
        given = {k: v for k, v in options.items() if v not in (None, False)}
        if given:
            name = next(iter(given))
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected it "
                f"unset for an evidential output ({type(self).__name__}). "
                f"Received: {name}={given[name]!r}"
            )
        return self._summary()
