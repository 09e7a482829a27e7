"""Conformance checks for code that extends the toolkit.

`check_mc_layer(layer)` tells the author of a custom MC layer whether the
engine samples it correctly (the contract of `ku.layers.MCLayer`), with an
error that names the clause it breaks.
"""

import os
import tempfile

import keras
import numpy as np

from keras_uncertainty.sampling import sample

__all__ = ["ContractError", "check_mc_layer"]


class ContractError(AssertionError):
    """A layer or method breaks the contract it is checked against."""


def _fail(layer, clause, detail):
    raise ContractError(
        f"Layer '{layer.name}' ({type(layer).__name__}) breaks the MCLayer "
        f"contract, clause {clause}: {detail}"
    )


def check_mc_layer(layer, input_shape=(4,), num_samples=8, seed=3):
    """Checks a custom MC layer against the `ku.layers.MCLayer` contract.

    Builds a one-layer model on `input_shape` (one row without the batch
    axis) and checks that: (1) the layer says it is stochastic at inference;
    (2) it is random with `training=False`; (3) a seeded `ku.sample` gives
    the same samples whatever `batch_size` (the draws follow the call key,
    not the layer's own generator), two seeds give different samples, and
    rows of a batch get their own draws; (4) it owns a
    `keras.random.SeedGenerator`; (5) `get_config` round-trips and a
    `.keras` file reloads it.

    Args:
        layer: A layer instance (not yet called).
        input_shape: Shape of one input row, without the batch axis.
        num_samples: Samples per input drawn by the checks.
        seed: Seed of the checks' sampling calls.

    Returns:
        None; raises `ContractError` (an AssertionError) naming the broken
        clause.

    Example:

    >>> ku.testing.check_mc_layer(MyMCLayer(0.1), input_shape=(16,))
    """
    if not getattr(layer, "stochastic_at_inference", False):
        _fail(layer, 1, "`stochastic_at_inference` is not True")
    if not getattr(layer, "draws_from_call_key", False):
        _fail(
            layer,
            3,
            "`draws_from_call_key` is not True: subclass ku.layers.MCLayer and "
            "draw with self.random_bits16 / random_uniform / random_normal",
        )
    if not isinstance(
        getattr(layer, "seed_generator", None), keras.random.SeedGenerator
    ):
        _fail(layer, 4, "it has no `seed_generator` (a keras.random.SeedGenerator)")
    inputs = keras.Input(tuple(input_shape))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, *input_shape)).astype("float32") + 1.0
    first = np.asarray(layer(x, training=False))
    second = np.asarray(layer(x, training=False))
    if np.array_equal(first, second):
        _fail(layer, 2, "two calls with training=False gave the same output")
    whole = sample(model, x, num_samples, seed=seed, verbose=0)
    rows = sample(model, x, num_samples, batch_size=num_samples, seed=seed, verbose=0)
    if not np.array_equal(whole, rows):
        _fail(
            layer,
            3,
            "a seeded ku.sample gave different samples with another "
            "batch_size: draw through self.random_* (the call key), not "
            "through keras.random with self.seed_generator",
        )
    other = sample(model, x, num_samples, seed=seed + 1, verbose=0)
    if np.array_equal(whole, other):
        _fail(layer, 3, "two seeds gave the same samples")
    repeated = np.repeat(x[:1], 2, axis=0)
    pair = sample(model, repeated, num_samples, seed=seed, verbose=0)
    if np.array_equal(pair[:, 0], pair[:, 1]):
        _fail(layer, 3, "two rows of one batch got the same draws")
    config = layer.get_config()
    try:
        clone = type(layer).from_config(config)
    except Exception as error:  # noqa: BLE001 - reported as a contract break
        _fail(layer, 5, f"from_config(get_config()) failed: {error}")
    if clone.get_config() != config:
        _fail(layer, 5, "from_config(get_config()).get_config() differs")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.keras")
        model.save(path)
        try:
            keras.saving.load_model(path)
        except Exception as error:  # noqa: BLE001
            _fail(
                layer,
                5,
                f"a .keras file of it does not load ({error}); register it "
                "with keras.saving.register_keras_serializable",
            )
