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
  Every split's network trains at once (`uci.fit_members`; BatchEnsemble's
  and MIMO's heads by `uci.HeadsLoss`). Their sampled predictions are
  scored by the same `SplitMixtureNLL` as MC dropout's.
"""

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


def single_network(method, splits, protocol):
    """Trains and scores one network per split of registry entry `method`
    (`uci_network`, `uci_loss`, `uci_after_fit`, `uci_score`); returns
    `(rmses, nlls)`.

    Every split's network trains at once, as the members of one
    `ku.Ensemble` with `per_member_inputs` (packed when its layers pack),
    each member on its own split's rows with its own input standardization
    as its first layer (`uci.fit_members`): the same updates as alone, one
    compiled step for all splits (about 3x faster for a Flipout or
    evidential network, more when packed). A multi-head network, whose
    outputs are `(N, K, outputs)` (BatchEnsemble's members, MIMO's heads),
    trains with `uci.HeadsLoss` of the method's loss: its mean over the
    heads, each against the targets; one whose inputs are `(N, K, d)`
    (MIMO) reads each head's own shuffle of the split's batch."""
    keras.utils.set_random_seed(protocol.seed)
    x, y = uci.data_table(splits)
    train_rows = [s.train_rows for s in splits]
    members = [
        method.uci_network(
            x.shape[1],
            split.n_hidden,
            len(rows),
            uci.normalization_layer(x[rows]),
            protocol.variance_objective,
        )
        for split, rows in zip(splits, train_rows)
    ]
    loss = method.uci_loss(protocol)
    heads = None
    if len(members[0].inputs[0].shape) == 3:
        heads = int(members[0].inputs[0].shape[1])
    if heads is not None or len(members[0].outputs[0].shape) == 3:
        loss = uci.heads_loss(loss, members[0])
    trained = uci.fit_members(
        members,
        x,
        y,
        train_rows,
        loss,
        protocol.epochs(splits[0]),
        SINGLE_NETWORK_BATCH_SIZE,
        protocol.seed,
        callbacks=protocol.callbacks,
        learning_rate=protocol.learning_rate,
        schedule=protocol.schedule,
        clip_value=protocol.clip_value,
        heads=heads,
        split_axis=method.uci_split_axis,
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
