"""The UCI benchmark's runner: any registry method, under one contract.

`run(dataset, method, splits, protocol)` runs the method named `method` of
`keras_uncertainty.experiments.registry` on each `UCISplit` of `splits`
(trained on its training rows only; any choice it makes uses the last 20%
of them) and returns a `uci.Result` of the test RMSE and NLL per split, in
the target's original units, NaN where a split diverged. It knows no method
by name: each registry entry's `uci_run` trains and scores it.

Two families:

- MC dropout (with and without a variance head) and Deep Ensembles train
  every split (and grid cell, or member) at once, as the members of one
  packed `ku.Ensemble` (see `keras_uncertainty.experiments.uci`).
- The other methods build one network per split (the entry's
  `uci_network`) with the toolkit's public API, as a user would, and train
  it here (`single_network`): the protocol's one-hidden-layer ReLU network
  (`n_hidden` units) on inputs and targets standardized with the split's
  training rows, Adam with the protocol's step schedule,
  `n_epochs x multiplier` epochs of batches of `SINGLE_NETWORK_BATCH_SIZE`.
  Those that train by plain `fit` train every split's network at once
  (`uci.fit_members`), the others split after split. Their sampled
  predictions are scored by the same `SplitMixtureNLL` as MC dropout's.
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_uncertainty.datasets.uci import float32_problem
from keras_uncertainty.experiments import registry, uci
from keras_uncertainty.experiments.uci import Protocol  # noqa: F401 (re-exported)

# Rows per step of the single-network methods: the MC dropout protocol's
# batch (Gal & Ghahramani 2016); at the Deep Ensembles protocol's 32 a
# network per split costs 4x the steps (about 40 minutes per method on
# naval's 20 splits on 2 CPU cores).
SINGLE_NETWORK_BATCH_SIZE = 128

# The methods of the `uci` command, in the order they run and are reported:
# the registry's entries that run under the UCI protocol.
METHODS = registry.methods(registry.UCI)


def _standardize(split):
    """The split's inputs and targets standardized with its training rows."""
    x_mean, x_std = split.x_train.mean(0), split.x_train.std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_mean, y_std = float(split.y_train.mean()), float(split.y_train.std())
    y_std = y_std if y_std > 0 else 1.0
    return (
        ((split.x_train - x_mean) / x_std).astype("float32"),
        ((split.y_train - y_mean) / y_std).astype("float32")[:, None],
        ((split.x_test - x_mean) / x_std).astype("float32"),
        y_mean,
        y_std,
    )


def single_network(method, splits, protocol):
    """Trains and scores one network per split of registry entry `method`
    (`uci_network`, `uci_loss`, `uci_after_fit`, `uci_score`); returns
    `(rmses, nlls)`.

    A method whose network trains by plain `fit` (`uci_trains_together`)
    trains every split's network at once, as the members of one
    `ku.Ensemble` with `per_member_inputs` (packed when its layers pack),
    each member on its own split's rows with its own input standardization
    as its first layer (`uci.fit_members`): the same updates as alone, one
    compiled step for all splits (about 3x faster for a Flipout or
    evidential network, more when packed). The others (BatchEnsemble and
    MIMO, whose models bring their own training step) train split after
    split on standardized inputs."""
    if method.uci_trains_together:
        return _run_together(method, splits, protocol)
    return _run_each(method, splits, protocol)


def _run_together(method, splits, protocol):
    keras.utils.set_random_seed(protocol.seed)
    x, y = uci.data_table(splits)
    train_rows = [s.train_rows for s in splits]
    members = [
        method.uci_network(
            x.shape[1],
            split.n_hidden,
            len(rows),
            uci.normalization_layer(x[rows]),
        )
        for split, rows in zip(splits, train_rows)
    ]
    trained = uci.fit_members(
        members,
        x,
        y,
        train_rows,
        method.uci_loss(protocol),
        protocol.epochs(splits[0]),
        SINGLE_NETWORK_BATCH_SIZE,
        protocol.seed,
        callbacks=protocol.callbacks,
        learning_rate=protocol.learning_rate,
        schedule=protocol.schedule,
        clip_value=protocol.clip_value,
    )
    return _score_together(method, trained, splits, protocol)


def _score_together(method, trained, splits, protocol):
    """Every split's RMSE and NLL: each member of the trained ensemble (a
    split's network, on raw inputs) through `uci_after_fit` and
    `uci_score`. (Sampling the ensemble at once costs more: 25 s against
    6 s for 10,000 Flipout samples of 4 energy splits.)"""
    rmses, nlls = np.full(len(splits), np.nan), np.full(len(splits), np.nan)
    members = trained.model.members  # refreshed once from packed weights
    for k, (split, member) in enumerate(zip(splits, members)):
        if not all(np.all(np.isfinite(w)) for w in member.get_weights()):
            # A diverged split scores NaN (and is left out, with a warning)
            # without stopping the others: SWAG's collection refuses
            # non-finite weights.
            continue
        y_mean, y_std = float(trained.y_mean[k]), float(trained.y_std[k])
        y_train = ((split.y_train - y_mean) / y_std).astype("float32")[:, None]
        wrapped = method.uci_after_fit(
            member,
            split.x_train.astype("float32"),
            y_train,
            protocol,
            protocol.epochs(split),
        )
        rmses[k], nlls[k] = method.uci_score(
            wrapped,
            split.x_test.astype("float32"),
            split.y_test,
            y_mean,
            y_std,
            protocol,
        )
    return rmses, nlls


def _run_each(method, splits, protocol):
    rmses, nlls = np.full(len(splits), np.nan), np.full(len(splits), np.nan)
    model, compiled_for = None, None
    for k, split in enumerate(splits):
        keras.utils.set_random_seed(protocol.seed + split.split)
        x, y, x_test, y_mean, y_std = _standardize(split)
        epochs = protocol.epochs(split)
        steps = math.ceil(len(x) / SINGLE_NETWORK_BATCH_SIZE)
        fresh = method.uci_network(x.shape[1], split.n_hidden, len(x))
        if compiled_for != (epochs, steps):
            model = fresh
            model.compile(
                keras.optimizers.Adam(
                    uci.step_schedule(
                        protocol.learning_rate, protocol.schedule, epochs * steps
                    )
                ),
                loss=method.uci_loss(protocol),
                steps_per_execution=uci.steps_per_call(epochs * steps),
            )
            compiled_for = (epochs, steps)
        else:
            # The next split trains the same compiled model from a fresh
            # initialization and a fresh optimizer: one trace per data set,
            # not one per split (seconds each).
            model.set_weights(fresh.get_weights())
            for variable in model.optimizer.variables:
                variable.assign(keras.ops.zeros_like(variable))
        model.fit(
            epoch_stream(x, y, epochs, protocol.seed + split.split),
            shuffle=False,  # the stream shuffles every pass itself
            verbose=0,
            callbacks=list(protocol.callbacks),
        )
        wrapped = method.uci_after_fit(model, x, y, protocol, epochs)
        rmses[k], nlls[k] = method.uci_score(
            wrapped, x_test, split.y_test, y_mean, y_std, protocol
        )
    return rmses, nlls


def epoch_stream(x, y, epochs, seed):
    """`epochs` shuffled passes over `(x, y)` in batches of
    `SINGLE_NETWORK_BATCH_SIZE`, as one Keras epoch: `fit(x, y,
    epochs=epochs)` costs tens of milliseconds per epoch on top of the
    steps, more than the steps themselves on the small data sets."""
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(SINGLE_NETWORK_BATCH_SIZE)
        .repeat(epochs)
        .prefetch(tf.data.AUTOTUNE)
    )


def run(dataset, method, splits, protocol):
    """Runs method `method` (a name of `METHODS`) on `splits` (a list of
    `UCISplit`) under `protocol` (a `Protocol`); returns a `uci.Result`.

    Raises:
        ValueError: A split's values cannot be standardized in float32
            (`keras_uncertainty.datasets.uci.float32_problem`), checked
            before any training.
        FloatingPointError: It diverged on every split (a split that
            diverged is left out of the mean, with a RuntimeWarning).
    """
    for split in splits:
        problem = float32_problem(split)
        if problem is not None:
            raise ValueError(
                "Invalid value received for argument `splits`. Expected "
                "values the protocol can standardize in float32. Received: "
                f"split {split.split} of {dataset}: {problem}"
            )
    start = time.perf_counter()
    keras.utils.set_random_seed(protocol.seed)
    rmses, nlls = METHODS[method].uci_run(splits, protocol)
    return uci.result_of_splits(
        dataset, method, splits, rmses, nlls, time.perf_counter() - start
    )
