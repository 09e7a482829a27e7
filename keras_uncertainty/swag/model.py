"""`SWAG`: a trained model with the SWAG Gaussian over its weights, sampled
by the engine.

Sample s draws the flattened weights (Maddox et al. 2019, eq. 1 and their
code's `sample(scale)`)

    w_s = mean + sqrt(scale) * (std * z1 + D^T z2 / sqrt(K - 1)),
    z1 ~ N(0, I_P), z2 ~ N(0, I_K),

a draw of N(mean, scale * (diag(var) + D^T D / (K - 1))). With the paper's
`scale = 0.5` this is `mean + std * z1 / sqrt(2) + D^T z2 / sqrt(2 (K - 1))`.
`z1` and `z2` come from the sampling call's key (`ku.sampling.random_normal`
with `per_sample=True`), so a seed reproduces the samples whatever the
chunking.

The network is evaluated for every weight sample in one compiled call: the
T weight vectors are unflattened into the model's variables and
`model.stateless_call` runs under `tf.vectorized_map` over the sample axis,
which turns every layer into one batched kernel, or under `tf.map_fn`, a
compiled loop over the samples (the default on a CPU, measured faster
there: see `SWAG`'s `vectorize`). There is no Python loop over samples.
Where the model has BatchNormalization layers and `bn_update_data` is
given, each sample's moving statistics are recomputed inside the same map
from a few training batches (see `SWAG`).
"""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from keras_uncertainty import _budget, _keras_compat
from keras_uncertainty._validation import (
    check_positive_finite,
    check_positive_int,
    check_seed,
)
from keras_uncertainty.sampling import SampledModel, graph, keys
from keras_uncertainty.swag.callback import SWAGCallback
from keras_uncertainty.swag.state import SWAGState, check_max_rank, state_bytes

# Smallest diagonal variance kept (the reference code's `var_clamp`).
VAR_CLAMP = 1e-30


def _as_state(state):
    if isinstance(state, SWAGCallback):
        return state.state
    if isinstance(state, SWAGState):
        return state
    if isinstance(state, dict):
        return SWAGState.from_state(state)
    raise ValueError(
        "Invalid value received for argument `state`. Expected a "
        "ku.swag.SWAGCallback, a ku.swag.SWAGState or the dict of "
        f"`SWAGState.get_state()`. Received: {type(state).__name__}"
    )


def _check_rank(rank, stored):
    if rank is None:
        if stored < 2:
            raise ValueError(
                "Invalid value received for argument `rank`. Expected 0 "
                "(SWAG-diagonal) or an integer in [2, stored deviations]; "
                "rank=None uses every stored deviation and needs at least 2. "
                f"Received: rank=None with {stored} stored deviation(s)"
            )
        return stored
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(
            "Invalid value received for argument `rank`. Expected None, 0 or "
            f"an integer in [2, {stored}]. Received: rank={rank!r}"
        )
    rank = int(rank)
    if rank == 0:
        return 0
    if rank < 2 or rank > stored:
        raise ValueError(
            "Invalid value received for argument `rank`. Expected 0 "
            f"(SWAG-diagonal) or an integer in [2, {stored}] (the deviations "
            "the state holds: min(snapshots, max_rank); the low-rank part "
            f"divides by K - 1). Received: rank={rank}"
        )
    return rank


def _batch_norm_layers(model):
    return [
        layer
        for layer in _keras_compat.flatten_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


_CONVOLUTIONS = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def _has_convolution(model):
    return any(
        isinstance(layer, _CONVOLUTIONS)
        for layer in _keras_compat.flatten_layers(model)
    )


@keras.saving.register_keras_serializable(package="keras_uncertainty")
class SWAG(keras.Model):
    """SWAG (Maddox et al. 2019): a Gaussian over a trained model's weights.

    Wraps `model` and the moments a `ku.swag.SWAGCallback` collected during
    its `fit` (or a `ku.swag.SWAGState`). `ku.sample`, `ku.predict_regression`,
    `ku.predict_classification` and `ku.export` draw, for each of the T
    samples, one weight vector (see the module docstring for the formula)

        w = mean + sqrt(scale) * (std * z1 + D^T z2 / sqrt(K - 1)),

    where `mean` and `std**2 = max(sq_mean - mean**2, 1e-30)` are the SWA
    mean and diagonal variance and `D` the last K deviations; `scale=0.5`
    is the paper's `1/sqrt(2)` on each part. The T networks are evaluated
    in one compiled call (`model.stateless_call` under
    `tf.vectorized_map`, one batched kernel per layer, or under `tf.map_fn`,
    a compiled loop over the samples, the default on a CPU: see
    `vectorize`; either is faster than MC dropout on the 8-50-2 MLP). A
    convolutional network costs T full forward passes per input, where MC
    dropout before the last layer computes the convolutions once. The
    weight draws themselves cost `T * P` normals and a `(T, K) x (K, P)`
    product per chunk of samples.

    Calling the model (`swag(x)`, `swag.predict(x)`) gives the SWA
    prediction: the network at the mean weights.

    BatchNormalization: the moving statistics that match a weight sample are not
    those of training. When the model has BatchNormalization layers and
    `bn_update_data` is given, each weight sample (and the SWA mean in `call`)
    gets its statistics recomputed, as the paper's `bn_update` does: the first
    `bn_batches` batches of `bn_batch_size` rows of `bn_update_data` are run in
    training mode and the batch means and variances are averaged per layer. This
    runs inside the same map over the samples, so it costs `bn_batches` extra
    training-mode forward passes of `bn_batch_size` rows per sample (with the
    defaults, 4 x 128 = 512 rows per sample: measured 2.4-2.7x the time of the
    same prediction without BatchNormalization for the 8-50-2 MLP, T = 100
    samples of 1000 inputs); those rows are held in the compiled graph (and in
    an export). Without `bn_update_data` the trained moving statistics are used,
    with a warning. Dropout layers are active during the recomputation, as in
    the paper's training-mode passes; BatchNormalization with `renorm=True` is
    not supported.

    The model may not hold layers that are stochastic at inference (MC
    dropout): their masks would not differ between the vectorized samples.

    Saving: `swag.save("swag.keras")` writes one file, the network, the
    SWAG moments (float64, as collected) and the settings, and
    `keras.models.load_model("swag.keras")` gives back a SWAG that draws
    the same samples for the same seed. The rows of `bn_update_data` that
    the BatchNormalization recomputation uses are saved with it when they
    are a single array (a structure of arrays is refused at `save`: save
    the parts instead, `model.save("net.keras")` and
    `swag.state.save("swag.npz")`).

    Args:
        model: The trained, built `keras.Model` whose weights were collected
            (Functional or Sequential for `ku.export` and input checks).
        state: A `ku.swag.SWAGCallback`, a `ku.swag.SWAGState` or the dict
            of `SWAGState.get_state()`, with at least one snapshot of the
            model's trainable weights.
        scale: Positive float, the multiplier of the covariance (0.5, the
            paper's value, by default).
        rank: K, the last deviations used for the low-rank part: None uses
            every stored one (at least 2 needed), 0 gives SWAG-diagonal, else
            an integer in [2, stored deviations].
        bn_update_data: Optional training inputs (an array, or a structure
            of arrays as the model takes) for recomputing BatchNormalization
            statistics; ignored when the model has none.
        bn_batches: Positive integer, the batches of `bn_update_data` used.
        bn_batch_size: Positive integer, rows per batch.
        vectorize: How the T networks are evaluated (never a Python loop).
            True: `tf.vectorized_map`, one batched kernel per layer over
            the samples. False: `tf.map_fn`, a compiled loop running up to
            10 samples in parallel. "auto" (default): True when a GPU is
            visible and the model has no convolution layer, else False.
            Measured on a shared 2-core CPU (`benchmarks/swag.py`): on the
            8-50-2 MLP with 1000 inputs and T=100, `tf.map_fn` was 1.1-2.7x
            faster than `tf.vectorized_map` over several runs (both 0.4-0.6x
            the time of MC dropout), on 100 inputs 1.4-2x slower (a few
            milliseconds either way); on a small CNN 2.7-4x faster
            (`tf.vectorized_map` turns a per-sample convolution kernel into
            a slow batched one). On a GPU, not measured here, the batched
            kernels avoid T sequential launches per layer.
        seed: Optional integer seed in [0, 2**63 - 1] of the generator used
            when the draws run outside a sampling call (calling
            `draw_weights` directly).
        name: Optional name of the model.

    Example:

    >>> swag = ku.swag.SWAG(model, swag_callback, scale=0.5)
    >>> prediction = ku.predict_regression(swag, x_test, num_samples=30)
    """

    def __init__(
        self,
        model,
        state,
        scale=0.5,
        rank=None,
        bn_update_data=None,
        bn_batches=4,
        bn_batch_size=128,
        vectorize="auto",
        seed=None,
        name=None,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                f"keras.Model. Received: {type(model).__name__}"
            )
        if not model.built or not model.trainable_variables:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "built model with trainable weights. Received: "
                f"'{model.name}' ({'built' if model.built else 'not built'}, "
                f"{len(model.trainable_variables)} trainable variables)"
            )
        stochastic = graph.stochastic_layers(model)
        if stochastic:
            raise ValueError(
                "Invalid value received for argument `model`. Expected a "
                "model without layers that are stochastic at inference (their "
                "draws would be shared by the vectorized weight samples). "
                f"Received: layer '{stochastic[0].name}' "
                f"({type(stochastic[0]).__name__})"
            )
        state = _as_state(state)
        if state.num_snapshots == 0:
            raise ValueError(
                "Invalid value received for argument `state`. Expected a SWAG "
                "state with at least one snapshot. Received: 0 snapshots (was "
                "the callback's `start_epoch` reached during `fit`?)"
            )
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        sizes = [int(np.prod(s)) for s in shapes]
        if sum(sizes) != state.num_params:
            raise ValueError(
                "Invalid value received for argument `state`. Expected the "
                f"moments of {sum(sizes)} weights (the trainable weights of "
                f"'{model.name}': {shapes}). Received: a state of "
                f"{state.num_params} weights (collected shapes {state.shapes})"
            )
        scale = check_positive_finite(scale, "scale")
        seed = check_seed(seed)
        rank = _check_rank(rank, state.rank)
        bn_batches = check_positive_int(bn_batches, "bn_batches")
        bn_batch_size = check_positive_int(bn_batch_size, "bn_batch_size")
        super().__init__(name=name or f"swag_{model.name}")
        self.base_model = model
        self.scale = scale
        self.seed = seed
        self.bn_batches, self.bn_batch_size = bn_batches, bn_batch_size
        self.vectorize_option = vectorize
        self.max_rank = state.max_rank
        self.num_snapshots = state.num_snapshots
        self.rank = rank
        self.var_shapes = shapes
        self.var_sizes = sizes
        self.num_params = sum(sizes)
        # ku.predict_* reads the output head from the loss (as of now).
        self.loss = getattr(model, "loss", None)
        dtype = model.trainable_variables[0].dtype
        std = np.sqrt(np.maximum(state.variance, VAR_CLAMP))
        deviations = state.deviations[state.rank - rank :]
        self.swag_mean = self.add_weight(
            shape=(self.num_params,), initializer="zeros", trainable=False,
            dtype=dtype, name="swag_mean",
        )  # fmt: skip
        self.swag_std = self.add_weight(
            shape=(self.num_params,), initializer="zeros", trainable=False,
            dtype=dtype, name="swag_std",
        )  # fmt: skip
        self.swag_deviations = self.add_weight(
            shape=(rank, self.num_params), initializer="zeros", trainable=False,
            dtype=dtype, name="swag_deviations",
        )  # fmt: skip
        self.swag_mean.assign(state.mean.astype(dtype))
        self.swag_std.assign(std.astype(dtype))
        self.swag_deviations.assign(deviations.astype(dtype))
        # The moments as collected (float64), so `state` and a `.keras`
        # file keep them exactly.
        self.state_mean = self.add_weight(
            shape=(self.num_params,), initializer="zeros", trainable=False,
            dtype="float64", name="state_mean",
        )  # fmt: skip
        self.state_sq_mean = self.add_weight(
            shape=(self.num_params,), initializer="zeros", trainable=False,
            dtype="float64", name="state_sq_mean",
        )  # fmt: skip
        self.state_deviations = self.add_weight(
            shape=(state.rank, self.num_params), initializer="zeros",
            trainable=False, dtype="float64", name="state_deviations",
        )  # fmt: skip
        self.state_mean.assign(state.mean)
        self.state_sq_mean.assign(state.sq_mean)
        self.state_deviations.assign(state.deviations)
        self.seed_generator = keras.random.SeedGenerator(seed)
        if isinstance(vectorize, str) and vectorize == "auto":
            vectorize = bool(tf.config.list_logical_devices("GPU")) and not (
                _has_convolution(model)
            )
        if not isinstance(vectorize, bool):
            raise ValueError(
                "Invalid value received for argument `vectorize`. Expected "
                f'True, False or "auto". Received: vectorize={vectorize!r}'
            )
        self.vectorize = vectorize
        self.bn_plan = self.batch_norm_plan(
            model, bn_update_data, bn_batches, bn_batch_size
        )
        self.bn_rows = None  # the recomputation's rows, when saved with it
        self.bn_structured = False
        if self.bn_plan is not None:
            if isinstance(bn_update_data, np.ndarray) or tf.is_tensor(bn_update_data):
                rows = keras.ops.convert_to_numpy(bn_update_data)
                rows = rows[: bn_batches * bn_batch_size]
                self.bn_rows = self.add_weight(
                    shape=rows.shape, initializer="zeros", trainable=False,
                    dtype=rows.dtype.name, name="bn_update_rows",
                )  # fmt: skip
                self.bn_rows.assign(rows)
            else:
                self.bn_structured = True
        self.built = True

    @property
    def state(self):
        """The SWAG moments this model samples from, as a
        `ku.swag.SWAGState` (a copy: collecting into it does not change
        the model)."""
        return SWAGState.from_state(
            {
                "max_rank": self.max_rank,
                "num_snapshots": self.num_snapshots,
                "mean": keras.ops.convert_to_numpy(self.state_mean),
                "sq_mean": keras.ops.convert_to_numpy(self.state_sq_mean),
                "deviations": keras.ops.convert_to_numpy(self.state_deviations),
                "shapes": [list(s) for s in self.var_shapes],
            }
        )

    @staticmethod
    def batch_norm_plan(model, data, batches, batch_size):
        """The BatchNormalization recomputation plan: None when the model
        has no BatchNormalization layer or no data is given, else
        `(batches, [(mean_index, variance_index, momentum), ...])` with the
        indices in `model.non_trainable_variables`."""
        layers = _batch_norm_layers(model)
        if not layers:
            return None
        if data is None:
            warnings.warn(
                f"Model '{model.name}' has {len(layers)} BatchNormalization "
                "layer(s) and no `bn_update_data` was given: every SWAG weight "
                "sample uses the moving statistics of training, which do not "
                "match it. Pass a few batches of training inputs as "
                "`bn_update_data` to recompute them per sample.",
                UserWarning,
                stacklevel=3,
            )
            return None
        positions = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        entries = []
        for layer in layers:
            if getattr(layer, "renorm", False):
                raise ValueError(
                    "Invalid value received for argument `model`. Expected "
                    "BatchNormalization layers without renorm. Received: "
                    f"layer '{layer.name}' with renorm=True"
                )
            if not 0 <= layer.momentum < 1:
                raise ValueError(
                    "Invalid value received for argument `model`. Expected "
                    "BatchNormalization momentum in [0, 1). Received: layer "
                    f"'{layer.name}' with momentum={layer.momentum}"
                )
            entries.append(
                (
                    positions[id(layer.moving_mean)],
                    positions[id(layer.moving_variance)],
                    float(layer.momentum),
                )
            )
        flat = [np.asarray(keras.ops.convert_to_numpy(a)) for a in tree.flatten(data)]
        rows = flat[0].shape[0] if flat and flat[0].ndim else 0
        if rows == 0 or any(a.shape[:1] != (rows,) for a in flat):
            raise ValueError(
                "Invalid value received for argument `bn_update_data`. "
                "Expected arrays with the same number (>= 1) of rows. "
                f"Received: shapes {[a.shape for a in flat]}"
            )
        used = min(rows, batches * batch_size)
        bounds = list(range(0, used, batch_size))
        single = isinstance(data, np.ndarray) or tf.is_tensor(data)
        batch_list = []
        for lo in bounds:
            parts = [tf.constant(a[lo : lo + batch_size]) for a in flat]
            batch_list.append(
                parts[0] if single else tree.pack_sequence_as(data, parts)
            )
        return batch_list, entries

    def unflatten(self, flat):
        """The model's trainable variable values from a flat `(P,)` vector."""
        parts = tf.split(flat, self.var_sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, self.var_shapes)]

    def call_with_weights(self, flat, inputs):
        """The model's outputs on `inputs` with trainable weights `flat`
        (a `(P,)` tensor), BatchNormalization statistics recomputed when
        planned (see the class docstring). Traceable and vectorizable.

        Args:
            flat: `(P,)` flattened weights.
            inputs: The model's inputs.

        Returns:
            The model's outputs (inference mode).
        """
        model = self.base_model
        trainable = self.unflatten(flat)
        non_trainable = [v.value for v in model.non_trainable_variables]
        if self.bn_plan is not None:
            batches, entries = self.bn_plan
            start = list(non_trainable)
            for mean_i, var_i, _ in entries:
                start[mean_i] = tf.zeros_like(start[mean_i])
                start[var_i] = tf.zeros_like(start[var_i])
            sums = {}
            for batch in batches:
                _, updated = model.stateless_call(
                    trainable, start, batch, training=True
                )
                for mean_i, var_i, momentum in entries:
                    for index in (mean_i, var_i):
                        # From zero, the update leaves (1 - momentum) * stat.
                        value = updated[index] / (1.0 - momentum)
                        sums[index] = (
                            value if index not in sums else sums[index] + value
                        )
            for index, total in sums.items():
                non_trainable[index] = total / float(len(batches))
        outputs, _ = model.stateless_call(
            trainable, non_trainable, inputs, training=False
        )
        return outputs

    def draw_weights(self, num_samples):
        """`(num_samples, P)` weight samples from the SWAG Gaussian.

        In a sampling call (`forward`, `sample_weights`) the draws follow
        the call's key and each sample's global index; outside one they
        come from the model's seed generator.

        Args:
            num_samples: T (Python int or scalar int tensor).

        Returns:
            A `(T, P)` tensor.
        """
        dtype = self.swag_mean.dtype
        root = math.sqrt(self.scale)
        z1 = keys.random_normal(
            (num_samples, self.num_params), self.seed_generator,
            per_sample=True, dtype=dtype,
        )  # fmt: skip
        weights = self.swag_mean[None, :] + (root * self.swag_std)[None, :] * z1
        if self.rank:
            z2 = keys.random_normal(
                (num_samples, self.rank), self.seed_generator,
                per_sample=True, dtype=dtype,
            )  # fmt: skip
            low_rank = tf.matmul(z2, self.swag_deviations)
            weights = weights + (root / math.sqrt(self.rank - 1)) * low_rank
        return weights

    def sample_weights(self, num_samples, seed=None):
        """The flattened weights of samples `0 .. num_samples - 1`: those a
        `ku.sample(swag, x, num_samples, seed=seed)` call evaluates.

        Args:
            num_samples: Positive integer T.
            seed: Optional non-negative integer (None: a fresh key).

        Returns:
            A `(T, P)` numpy array, in `model.trainable_variables` order.
        """
        num_samples = check_positive_int(num_samples, "num_samples")
        key = keys.key_from_seed(check_seed(seed))
        call_key = keys.CallKey(
            tf.constant(key), tf.constant(0), tf.constant(0), num_samples,
            tf.constant(1),
        )  # fmt: skip
        with keys.sampling_call(call_key):
            return keras.ops.convert_to_numpy(self.draw_weights(num_samples))

    def call(self, inputs):
        """The SWA prediction: the network at the mean weights."""
        return self.call_with_weights(self.swag_mean, inputs)

    def as_sampled_model(self):
        """How the engine samples this model (`SWAGSampledModel`)."""
        return SWAGSampledModel(self)

    def get_config(self):
        """The settings and the network's config; the moments are weights.

        Raises:
            ValueError: when BatchNormalization statistics are recomputed
                from a structure of arrays (not saved: save the parts).
        """
        if self.bn_structured:
            raise ValueError(
                "Invalid value received for argument `bn_update_data`. "
                "Expected a single array to save a ku.swag.SWAG as one "
                "`.keras` file. Received: a structure of arrays; save the "
                "parts instead: `swag.base_model.save('net.keras')` and "
                "`swag.state.save('swag.npz')`, and rebuild with "
                "`ku.swag.SWAG(keras.models.load_model('net.keras'), "
                "ku.swag.SWAGState.load('swag.npz'), bn_update_data=...)`."
            )
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.base_model),
            "scale": self.scale,
            "rank": self.rank,
            "bn_batches": self.bn_batches,
            "bn_batch_size": self.bn_batch_size,
            "vectorize": self.vectorize_option,
            "seed": self.seed,
            "max_rank": self.max_rank,
            "num_snapshots": self.num_snapshots,
            "stored_rank": int(self.state_deviations.shape[0]),
            "bn_update_rows": None
            if self.bn_rows is None
            else {"shape": list(self.bn_rows.shape), "dtype": self.bn_rows.dtype},
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A SWAG with placeholder moments, filled when its weights load.

        The saved sizes are checked before any placeholder is allocated:
        `max_rank` within `keras_uncertainty._budget.MAX_SWAG_RANK`,
        `stored_rank == min(num_snapshots, max_rank)`, the BatchNormalization
        rows at most `bn_batches * bn_batch_size`, shaped as the network's
        input, and the bytes of it all within
        `keras_uncertainty._budget.MAX_WORKING_BYTES` (a `ValueError` naming
        the value).
        """
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        num_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        max_rank, num_snapshots, stored_rank = _check_saved_ranks(config)
        rows = _check_saved_rows(config.pop("bn_update_rows", None), model, config)
        _budget.check_bytes(
            "stored_rank",
            stored_rank,
            _saved_bytes(max_rank, stored_rank, num_params, rows),
            f"the SWAG moments of the file's network ({num_params} weights, "
            f"max_rank={max_rank}) and their placeholders",
            "Save the SWAG model with fewer deviations (a smaller max_rank).",
        )
        # Placeholders of the saved shapes (a variance of 1, so nothing is
        # clamped); `load_own_variables` puts the saved values in.
        state = SWAGState.from_state(
            {
                "max_rank": max_rank,
                "num_snapshots": num_snapshots,
                "mean": np.zeros(num_params),
                "sq_mean": np.ones(num_params),
                "deviations": np.zeros((stored_rank, num_params)),
            }
        )
        if rows is not None:
            config["bn_update_data"] = np.zeros(rows["shape"], rows["dtype"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BatchNormalization without data
            return cls(model, state, **config)

    def load_own_variables(self, store):
        """Loads the moments, then rebuilds the BatchNormalization plan from
        the saved rows (the plan holds them as constants)."""
        super().load_own_variables(store)
        if self.bn_rows is not None:
            self.bn_plan = self.batch_norm_plan(
                self.base_model,
                keras.ops.convert_to_numpy(self.bn_rows),
                self.bn_batches,
                self.bn_batch_size,
            )


def _saved_int(config, key):
    """A positive integer of a saved config (refused before any allocation)."""
    if key not in config:
        raise ValueError(
            f"Invalid value received for argument `{key}`. Expected a positive "
            f"integer in the saved SWAG config. Received: no `{key}`"
        )
    return check_positive_int(config.pop(key), key)


def _check_saved_ranks(config):
    """`(max_rank, num_snapshots, stored_rank)` of a saved config: positive
    integers, `max_rank` within `_budget.MAX_SWAG_RANK` and `stored_rank`
    the deviations such a state stores, `min(num_snapshots, max_rank)`."""
    max_rank = check_max_rank(_saved_int(config, "max_rank"))
    num_snapshots = _saved_int(config, "num_snapshots")
    stored_rank = _saved_int(config, "stored_rank")
    if stored_rank != min(num_snapshots, max_rank):
        raise ValueError(
            "Invalid value received for argument `stored_rank`. Expected "
            f"min(num_snapshots, max_rank) = {min(num_snapshots, max_rank)}, "
            "the deviations such a state stores. Received: "
            f"stored_rank={stored_rank}"
        )
    for key in ("bn_batches", "bn_batch_size"):
        if key in config:
            config[key] = check_positive_int(config[key], key)
    return max_rank, num_snapshots, stored_rank


def _check_saved_rows(rows, model, config):
    """The saved BatchNormalization rows' `{"shape", "dtype"}`: at most
    `bn_batches * bn_batch_size` rows shaped as the network's input."""
    if rows is None:
        return None
    if not isinstance(rows, dict) or set(rows) != {"shape", "dtype"}:
        raise ValueError(
            "Invalid value received for argument `bn_update_rows`. Expected "
            'None or {"shape": [...], "dtype": "..."}. Received: '
            f"bn_update_rows={rows!r}"
        )
    shape = rows["shape"]
    if (
        not isinstance(shape, (list, tuple))
        or not shape
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        )
    ):
        raise ValueError(
            "Invalid value received for argument `bn_update_rows`. Expected a "
            f"shape of positive integers. Received: shape={shape!r}"
        )
    try:
        dtype = np.dtype(rows["dtype"])
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise ValueError(
            "Invalid value received for argument `bn_update_rows`. Expected a "
            f"numeric dtype. Received: dtype={rows['dtype']!r}"
        )
    most = config.get("bn_batches", 4) * config.get("bn_batch_size", 128)
    if shape[0] > most:
        raise ValueError(
            "Invalid value received for argument `bn_update_rows`. Expected at "
            f"most bn_batches * bn_batch_size = {most} rows. Received: "
            f"shape={list(shape)}"
        )
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) == 1 and None not in tuple(inputs[0].shape[1:]):
        expected = [int(d) for d in inputs[0].shape[1:]]
        if list(shape[1:]) != expected:
            raise ValueError(
                "Invalid value received for argument `bn_update_rows`. "
                f"Expected rows of shape {expected}, the network's input. "
                f"Received: shape={list(shape)}"
            )
    return {"shape": [int(d) for d in shape], "dtype": dtype.name}


def _saved_bytes(max_rank, stored_rank, num_params, rows):
    """The bytes a loaded SWAG allocates: its placeholders and state (float64
    moments, twice), its float32 sampling copies, and the BatchNormalization
    rows (the placeholder, the weight, the plan's constants)."""
    size = 2 * state_bytes(stored_rank, num_params)
    size += state_bytes(max_rank, num_params)
    size += _budget.FLOAT32 * (stored_rank + 2) * num_params
    if rows is not None:
        itemsize = np.dtype(rows["dtype"]).itemsize
        size += 3 * itemsize * int(np.prod(rows["shape"], dtype=object))
    return size


def _merge_sample_axis(value):
    """`(T, n, ...)` -> `(T * n, ...)`: sample-major rows."""
    rest = [
        size if size is not None else tf.shape(value)[i + 2]
        for i, size in enumerate(value.shape[2:])
    ]
    return tf.reshape(value, [-1, *rest])


class SWAGSampledModel(SampledModel):
    """The `SampledModel` of a `ku.swag.SWAG`: one weight draw per sample,
    the network evaluated for all samples at once.

    `forward(inputs, num_samples)` draws `(T, P)` weights (`SWAG.draw_weights`)
    and maps `SWAG.call_with_weights` over them with `tf.vectorized_map`
    (or `tf.map_fn` when the model was built with `vectorize=False`),
    returning `T * n` sample-major rows.

    Args:
        swag: The `ku.swag.SWAG` model.
    """

    def __init__(self, swag):
        super().__init__(swag)
        # A sample's weight vector, its normals and the low-rank part.
        self.floats_per_sample = 3 * swag.num_params + swag.rank
        self.input_view = graph.functional_view(swag.base_model)
        if self.input_view is not None:
            self.floats_per_row = graph.floats_per_row(self.input_view)

    def stochastic_layers(self):
        return []

    def forward(self, inputs, num_samples):
        swag = self.model
        view = self.input_view
        flat_inputs = tree.flatten(inputs)
        if view is not None and len(tree.flatten(view.input)) == 1:
            inputs = flat_inputs[0]  # a single input, as the model takes it
        weights = swag.draw_weights(num_samples)

        def one_sample(flat):
            return swag.call_with_weights(flat, inputs)

        if swag.vectorize:
            outputs = tf.vectorized_map(one_sample, weights)
        else:
            try:  # Keras 3.3: a Sequential built without a call has none
                output = swag.base_model.output if view else None
            except (AttributeError, ValueError):
                output = None
            signature = (
                tree.map_structure(lambda t: tf.as_dtype(t.dtype), output)
                if output is not None
                else tf.as_dtype(swag.base_model.compute_dtype)
            )
            outputs = tf.map_fn(one_sample, weights, fn_output_signature=signature)
        return tree.map_structure(_merge_sample_axis, outputs)
