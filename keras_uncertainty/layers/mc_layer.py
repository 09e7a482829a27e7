"""`MCLayer`: the contract of a layer that stays random at inference."""

import inspect

import keras

from keras_uncertainty import _keras_compat
from keras_uncertainty._validation import check_seed, value_errors_from_config
from keras_uncertainty.sampling import keys

_PACKAGE = "keras_uncertainty"


def _parent_takes_seed(cls):
    """Whether the first `__init__` after `MCLayer` in `cls`'s MRO takes `seed`."""
    mro = cls.__mro__
    for parent in mro[mro.index(MCLayer) + 1 :]:
        if "__init__" in vars(parent):
            return "seed" in inspect.signature(parent.__init__).parameters
    return False


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class MCLayer(keras.layers.Layer):
    """Base class of the layers that draw Monte Carlo samples at inference.

    The contract a layer meets so that `ku.sample`, `ku.predict_*`,
    `ku.export` and `ku.callbacks.UncertaintyMetrics` sample it correctly:

    1. `stochastic_at_inference = True` (set here): the engine tiles the
       batch where a tensor first meets the layer, so each of the T copies
       of an input row is one sample.
    2. It ignores `training`: the layer is random whenever it is called.
    3. It draws its randomness only through `self.random_bits16`,
       `self.random_uniform` or `self.random_normal`. Inside a sampling call
       these are hashes of the call's key and each entry's (sample, input)
       position, so a seed gives the same samples in any thread, chunking,
       `batch_size` or device; outside one (training, calling the model
       directly) they draw from `self.seed_generator`, as Keras layers do.
    4. It owns `self.seed_generator` whatever its other arguments (a rate of
       0 included), created from `seed`.
    5. `get_config` mirrors `__init__` (the base adds `seed`), so the layer
       round-trips through `.keras` files.

    A layer that draws a whole weight perturbation per sample (Flipout in
    a sampling call) says how many floats one sample holds in
    `floats_per_sample` (0 here): the engine bounds the samples of one call
    by it, as it bounds rows by their activations.

    `ku.testing.check_mc_layer(layer)` checks a layer against this contract.

    Args:
        seed: Optional non-negative integer, the seed of the layer's own
            generator (used outside sampling calls).
        **kwargs: Arguments of the parent layer (`name`, `dtype`, ...).

    Example:

    >>> @keras.saving.register_keras_serializable(package="my_project")
    ... class MCGaussianNoise(ku.layers.MCLayer):
    ...     def __init__(self, stddev, **kwargs):
    ...         super().__init__(**kwargs)
    ...         self.stddev = stddev
    ...     def call(self, inputs, training=None):
    ...         noise = self.random_normal(keras.ops.shape(inputs))
    ...         return inputs + self.stddev * noise
    ...     def get_config(self):
    ...         return {**super().get_config(), "stddev": self.stddev}
    """

    stochastic_at_inference = True
    floats_per_sample = 0
    # The engine's mark of a layer whose draws follow the call key (item 3).
    draws_from_call_key = True
    # Item 4 (a layer converted in place by `to_mc_dropout` gets one too).
    owns_seed_generator = True

    def __init__(self, *args, seed=None, **kwargs):
        seed = check_seed(seed)
        if _parent_takes_seed(type(self)):
            kwargs["seed"] = seed
        super().__init__(*args, **kwargs)
        self.seed = seed
        generator = getattr(self, "seed_generator", None)
        if not isinstance(generator, keras.random.SeedGenerator):
            # Whatever the rate: Keras's Dropout makes one only when rate > 0
            # (and builds, locking its state, when rate == 0).
            _keras_compat.set_state_after_build(
                self, "seed_generator", keras.random.SeedGenerator(seed)
            )

    def random_bits16(self, shape, row_axis=0):
        """Uniform uint16 draws of `shape` (ints or scalar tensors).

        Args:
            shape: The shape of the draw; axis `row_axis` lists the rows.
            row_axis: The batch (rows) axis; axes before it are members.
        """
        return keys.random_bits16(shape, self.seed_generator, row_axis=row_axis)

    def random_uniform(self, shape, row_axis=0, per_sample=False, dtype=None):
        """Uniform draws in (0, 1) of `shape`.

        Args:
            shape: The shape of the draw.
            row_axis: The batch (rows) axis; axes before it are members.
            per_sample: One value per sample shared by every input (for a
                perturbation of weights rather than of activations).
            dtype: Float dtype; defaults to the layer's compute dtype.
        """
        return keys.random_uniform(
            shape,
            self.seed_generator,
            row_axis=row_axis,
            per_sample=per_sample,
            dtype=dtype or self.compute_dtype,
        )

    def random_normal(self, shape, row_axis=0, per_sample=False, dtype=None):
        """Standard normal draws of `shape` (arguments as `random_uniform`).

        Args:
            shape: The shape of the draw.
            row_axis: The batch (rows) axis; axes before it are members.
            per_sample: One value per sample shared by every input.
            dtype: Float dtype; defaults to the layer's compute dtype.
        """
        return keys.random_normal(
            shape,
            self.seed_generator,
            row_axis=row_axis,
            per_sample=per_sample,
            dtype=dtype or self.compute_dtype,
        )

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
