"""The methods of the UCI benchmark: one class per method, one contract.

Every method is a `UCIMethod`: `run_splits(splits, protocol)` trains it on
each `UCISplit` of `splits` (on its training rows only; any choice it makes
uses the last 20% of them) and returns the test RMSE and NLL per split, in
the target's original units, NaN where a split diverged. `METHODS` maps the
command line's names to them; `run` runs any of them and knows none by name.

Two families:

- MC dropout (with and without a variance head) and Deep Ensembles train
  every split (and grid cell, or member) at once, as the members of one
  packed `ku.Ensemble` (see `keras_uncertainty.experiments.uci`).
- The other methods (`SingleNetworkMethod`) build one network per split
  with the toolkit's public API, as a user would: the protocol's
  one-hidden-layer ReLU network (`n_hidden` units) on inputs and targets
  standardized with the split's training rows, Adam with the protocol's
  step schedule, `n_epochs x multiplier` epochs of batches of
  `SINGLE_NETWORK_BATCH_SIZE`. Those that train by plain `fit` train every
  split's network at once (`uci.fit_members`), the others split after
  split. Their sampled predictions are scored by the same
  `SplitMixtureNLL` as MC dropout's.

Each class lists its settings and their sources in `settings`, which the
README's defaults table reproduces.
"""

import math
import time

import keras
import numpy as np
import tensorflow as tf

from keras_uncertainty.experiments import uci
from keras_uncertainty.experiments.uci import Protocol  # noqa: F401 (re-exported)
from keras_uncertainty.metrics.regression import gaussian_nll, rmse
from keras_uncertainty.sampling import reduce_samples

# Rows per step of the single-network methods: the MC dropout protocol's
# batch (Gal & Ghahramani 2016); at the Deep Ensembles protocol's 32 a
# network per split costs 4x the steps (about 40 minutes per method on
# naval's 20 splits on 2 CPU cores).
SINGLE_NETWORK_BATCH_SIZE = 128


class UCIMethod:
    """One method of the UCI benchmark (see the module docstring).

    Attributes:
        name: The command line's `--method` name.
        family: The README's family (MC dropout, ensembles, ...).
        settings: `(setting, value, source)` triples for the defaults table.
    """

    name = None
    family = None
    settings = ()

    def run_splits(self, splits, protocol):
        """Trains and tests on every split; returns `(rmses, nlls)`."""
        raise NotImplementedError


class MCDropout(UCIMethod):
    name = "mc-dropout"
    family = "MC dropout"
    settings = (
        ("network", "input and hidden dropout, 1 hidden ReLU layer", "[G&G 2016]"),
        ("grid", "dropout rate x tau from the data folder", "[G&G 2016]"),
        ("weight decay", "l^2 (1 - p) / (2 N tau), l = 0.01", "[G&G 2016]"),
        ("batch", "128", "[G&G 2016]"),
    )
    heteroscedastic = False

    def run_splits(self, splits, protocol):
        return uci.dropout_grid(splits, protocol, self.heteroscedastic)


class HeteroMCDropout(MCDropout):
    name = "hetero-mc-dropout"
    settings = (
        ("network", "as MC dropout, (mean, log-variance) output", "[K&G 2017]"),
        ("grid", "dropout rate from the data folder, tau = 1", "ours"),
        ("loss", "Gaussian NLL, log-variance floor -20", "[K&G 2017]"),
        ("batch", "128", "[G&G 2016]"),
    )
    heteroscedastic = True


class DeepEnsemble(UCIMethod):
    name = "ensemble"
    family = "Ensembles"
    settings = (
        ("members", "5, (mean, log-variance) output, Gaussian NLL", "[L 2017]"),
        ("adversarial step", "1% of each feature's range", "[L 2017]"),
        ("batch", "32", "ours"),
        ("epochs", "chosen on the validation rows (20 checks)", "ours"),
    )

    def run_splits(self, splits, protocol):
        return uci.deep_ensemble(splits, protocol)


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


class SingleNetworkMethod(UCIMethod):
    """A method that trains one network per split (see the module).

    Subclasses build the network (`build`), may train it further or wrap it
    (`after_fit`), and score it (`score`: by default its samples, through
    `SplitMixtureNLL`).

    A method whose network trains by plain `fit` (`trains_together`) trains
    every split's network at once, as the members of one `ku.Ensemble` with
    `per_member_inputs` (packed when its layers pack), each member on its
    own split's rows with its own input standardization as its first layer
    (`uci.fit_members`): the same updates as alone, one compiled step for
    all splits (about 3x faster for a Flipout or evidential network, more
    when packed). The others (BatchEnsemble and MIMO, whose models bring
    their own training step) train split after split on standardized
    inputs."""

    trains_together = True

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        """The network; `normalization`: its first layer (None: the inputs
        arrive standardized)."""
        raise NotImplementedError

    def compile_loss(self):
        from keras_uncertainty.losses import GaussianNLL

        return GaussianNLL(min_log_var=uci.MIN_LOG_VAR)

    def after_fit(self, model, x, y, protocol, epochs):
        return model

    def run_splits(self, splits, protocol):
        if self.trains_together:
            return self._run_together(splits, protocol)
        return self._run_each(splits, protocol)

    def _run_together(self, splits, protocol):
        keras.utils.set_random_seed(protocol.seed)
        x, y = uci.data_table(splits)
        train_rows = [s.train_rows for s in splits]
        members = [
            self.build(
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
            self.compile_loss(),
            protocol.epochs(splits[0]),
            SINGLE_NETWORK_BATCH_SIZE,
            protocol.seed,
            callbacks=protocol.callbacks,
            learning_rate=protocol.learning_rate,
            schedule=protocol.schedule,
            clip_value=protocol.clip_value,
        )
        return self.score_together(trained, splits, protocol)

    def score_together(self, trained, splits, protocol):
        """Every split's RMSE and NLL: each member of the trained ensemble
        (a split's network, on raw inputs) through `after_fit` and `score`.
        (Sampling the ensemble at once costs more: 25 s against 6 s for
        10,000 Flipout samples of 4 energy splits.)"""
        rmses, nlls = np.full(len(splits), np.nan), np.full(len(splits), np.nan)
        members = trained.model.members  # refreshed once from packed weights
        for k, (split, member) in enumerate(zip(splits, members)):
            if not all(np.all(np.isfinite(w)) for w in member.get_weights()):
                # A diverged split scores NaN (and is left out, with a
                # warning) without stopping the others: SWAG's collection
                # refuses non-finite weights.
                continue
            y_mean, y_std = float(trained.y_mean[k]), float(trained.y_std[k])
            y_train = ((split.y_train - y_mean) / y_std).astype("float32")[:, None]
            wrapped = self.after_fit(
                member,
                split.x_train.astype("float32"),
                y_train,
                protocol,
                protocol.epochs(split),
            )
            rmses[k], nlls[k] = self.score(
                wrapped,
                split.x_test.astype("float32"),
                split.y_test,
                y_mean,
                y_std,
                protocol,
            )
        return rmses, nlls

    def _run_each(self, splits, protocol):
        rmses, nlls = np.full(len(splits), np.nan), np.full(len(splits), np.nan)
        model, compiled_for = None, None
        for k, split in enumerate(splits):
            keras.utils.set_random_seed(protocol.seed + split.split)
            x, y, x_test, y_mean, y_std = _standardize(split)
            epochs = protocol.epochs(split)
            steps = math.ceil(len(x) / SINGLE_NETWORK_BATCH_SIZE)
            fresh = self.build(x.shape[1], split.n_hidden, len(x))
            if compiled_for != (epochs, steps):
                model = fresh
                model.compile(
                    keras.optimizers.Adam(
                        uci.step_schedule(
                            protocol.learning_rate, protocol.schedule, epochs * steps
                        )
                    ),
                    loss=self.compile_loss(),
                    steps_per_execution=uci.steps_per_call(epochs * steps),
                )
                compiled_for = (epochs, steps)
            else:
                # The next split trains the same compiled model from a fresh
                # initialization and a fresh optimizer: one trace per data
                # set, not one per split (seconds each).
                model.set_weights(fresh.get_weights())
                for variable in model.optimizer.variables:
                    variable.assign(keras.ops.zeros_like(variable))
            model.fit(
                epoch_stream(x, y, epochs, protocol.seed + split.split),
                shuffle=False,  # the stream shuffles every pass itself
                verbose=0,
                callbacks=list(protocol.callbacks),
            )
            wrapped = self.after_fit(model, x, y, protocol, epochs)
            rmses[k], nlls[k] = self.score(
                wrapped, x_test, split.y_test, y_mean, y_std, protocol
            )
        return rmses, nlls

    def score(self, model, x_test, y_test, y_mean, y_std, protocol):
        """RMSE and mixture NLL of the model's samples (NaN if not finite)."""
        reducer = uci.SplitMixtureNLL(1, 1, [y_mean], [y_std])
        score, diverged = reduce_samples(
            model,
            x_test,
            reducer,
            self.num_samples(protocol),
            seed=protocol.seed,
            verbose=0,
            y=y_test[:, None],
        )
        return uci.scored_group(score, diverged, y_test)

    def num_samples(self, protocol):
        return protocol.num_samples


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


def _standardized_inputs_only(method, normalization):
    """The split-after-split methods train on standardized inputs."""
    if normalization is not None:
        raise ValueError(
            f"`normalization` must be None for {method.name!r}, which trains "
            "split after split on standardized inputs; received "
            f"{normalization!r}"
        )


def _inputs(num_inputs, normalization):
    """The network's input and what its first layer sees."""
    inputs = keras.Input((num_inputs,))
    return inputs, inputs if normalization is None else normalization(inputs)


def _hidden_then(num_inputs, hidden, head, normalization=None):
    inputs, h = _inputs(num_inputs, normalization)
    h = keras.layers.Dense(hidden, activation="relu")(h)
    return keras.Model(inputs, head(h))


class Flipout(SingleNetworkMethod):
    name = "vi"
    family = "Bayesian weights"
    settings = (
        ("layers", "DenseFlipout hidden and output, (mean, log-variance)", "ours"),
        ("posterior", "mean-field Gaussian, scale 1e-3 at start", "[W 2018]"),
        ("prior", "N(0, 1)", "[B 2015]"),
        ("KL weight", "1 / N (the ELBO)", "[B 2015]"),
    )

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        from keras_uncertainty.layers import DenseFlipout

        inputs, h = _inputs(num_inputs, normalization)
        h = DenseFlipout(hidden, activation="relu", kl_weight=1.0 / num_rows)(h)
        return keras.Model(inputs, DenseFlipout(2, kl_weight=1.0 / num_rows)(h))


class LastLayerLaplace(SingleNetworkMethod):
    name = "laplace"
    family = "Bayesian weights"
    settings = (
        ("network", "MAP network, MSE, no weight decay", "[D 2021]"),
        ("posterior", "last layer, KFAC GGN", "[D 2021]"),
        ("prior precision, noise", "fitted by the marginal likelihood", "[D 2021]"),
        ("predictive", "linearized (GLM), closed form", "[D 2021]"),
    )

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        return _hidden_then(num_inputs, hidden, keras.layers.Dense(1), normalization)

    def compile_loss(self):
        # Homoscedastic, as Laplace Redux's regression: the noise is fitted
        # with the prior. (A variance head trained for the protocol's 10x
        # epochs drives its training variances toward 0 and the last-layer
        # posterior does not cover it: NLL 14.0 against 3.1 on boston's
        # splits 0-2 in a probe.)
        return "mse"

    def after_fit(self, model, x, y, protocol, epochs):
        from keras_uncertainty.laplace import Laplace

        return Laplace(model, "regression", variance_head=False).fit(x, y)

    def score(self, model, x_test, y_test, y_mean, y_std, protocol):
        prediction = model.predict(x_test)
        # Back to target units in float64 (float32 would round a target far
        # from 0, such as one near 1e9, to its spacing there).
        mean = np.asarray(prediction.mean, np.float64)[:, 0] * y_std + y_mean
        std = np.asarray(prediction.std, np.float64)[:, 0] * y_std
        if not (np.all(np.isfinite(mean)) and np.all(std > 0)):
            return np.nan, np.nan
        return rmse(y_test, mean), gaussian_nll(y_test, mean, std)


class SWAG(SingleNetworkMethod):
    name = "swag"
    family = "Bayesian weights"
    settings = (
        ("network", "MAP (mean, log-variance) network", "ours"),
        ("collection", "25% more epochs, Adam at 1/10 the step, every epoch", "ours"),
        ("rank", "20 deviations, scale 0.5", "[M 2019]"),
    )
    collect_fraction = 0.25
    rank = 20

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        return _hidden_then(num_inputs, hidden, keras.layers.Dense(2), normalization)

    def after_fit(self, model, x, y, protocol, epochs):
        from keras_uncertainty.swag import SWAG as SWAGModel
        from keras_uncertainty.swag import SWAGCallback

        collect = max(2, int(round(self.collect_fraction * epochs)))
        # The MAP weights stay; a constant step explores around them.
        model.compile(
            keras.optimizers.Adam(protocol.learning_rate / 10),
            loss=self.compile_loss(),
            steps_per_execution=uci.steps_per_call(
                math.ceil(len(x) / SINGLE_NETWORK_BATCH_SIZE)
            ),
        )
        # One snapshot per pass over the rows (the stream is one Keras epoch).
        steps = math.ceil(len(x) / SINGLE_NETWORK_BATCH_SIZE)
        callback = SWAGCallback(
            collect_every=steps, unit="batch", max_rank=min(self.rank, collect)
        )
        model.fit(
            epoch_stream(x, y, collect, protocol.seed),
            shuffle=False,
            verbose=0,
            callbacks=[callback, *protocol.callbacks],
        )
        return SWAGModel(model, callback, rank=min(self.rank, collect))


class BatchEnsemble(SingleNetworkMethod):
    name = "batch-ensemble"
    family = "Ensembles"
    settings = (
        ("members", "4, rank-1 factors on every Dense layer", "[W 2020]"),
        ("output", "(mean, log-variance), Gaussian NLL", "[L 2017]"),
    )
    members = 4
    trains_together = False  # its model brings its own training step

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        _standardized_inputs_only(self, normalization)
        from keras_uncertainty.ensemble.batch_ensemble import BatchEnsemble as BE
        from keras_uncertainty.layers import BatchEnsembleDense

        def network(m):
            return keras.Sequential(
                [
                    keras.Input((num_inputs,)),
                    BatchEnsembleDense(hidden, m, activation="relu"),
                    BatchEnsembleDense(2, m),
                ]
            )

        return BE(network, num_members=self.members)

    def num_samples(self, protocol):
        return None  # one sample per member


class MIMO(SingleNetworkMethod):
    name = "mimo"
    family = "Ensembles"
    settings = (
        ("members", "3 heads, no input repetition", "[H 2021]"),
        ("output", "(mean, log-variance) per head, Gaussian NLL", "[L 2017]"),
    )
    members = 3
    trains_together = False  # its model brings its own training step

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        _standardized_inputs_only(self, normalization)
        from keras_uncertainty.ensemble.mimo import MIMO as MIMOModel

        def backbone(shape):
            inputs = keras.Input(shape)
            return keras.Model(
                inputs, keras.layers.Dense(hidden, activation="relu")(inputs)
            )

        return MIMOModel(
            backbone, (num_inputs,), num_outputs=2, num_members=self.members
        )

    def num_samples(self, protocol):
        return None  # one sample per member


class Evidential(SingleNetworkMethod):
    name = "evidential"
    family = "One pass"
    settings = (
        ("head", "Normal-Inverse-Gamma", "[A 2020]"),
        ("loss", "NIG NLL + 0.01 x evidence regularizer", "[A 2020]"),
        ("NLL", "the Student-t marginal", "[A 2020]"),
    )
    coeff = 1e-2

    def build(self, num_inputs, hidden, num_rows, normalization=None):
        from keras_uncertainty.evidential import NormalInverseGammaHead

        return _hidden_then(
            num_inputs, hidden, NormalInverseGammaHead(1), normalization
        )

    def compile_loss(self):
        from keras_uncertainty.evidential import EvidentialRegressionLoss

        return EvidentialRegressionLoss(self.coeff)

    def score(self, model, x_test, y_test, y_mean, y_std, protocol):
        from keras_uncertainty.evidential.regression import nig_nll, split_nig

        outputs = model.predict(x_test, verbose=0)
        standardized = (y_test - y_mean) / y_std
        # The Student-t's NLL in original units: the standardized one plus
        # log(y_std), the Jacobian of the standardization.
        nll = np.asarray(nig_nll(standardized[:, None], outputs), np.float64)[:, 0]
        mean = np.asarray(split_nig(outputs)[0], np.float64)[:, 0] * y_std + y_mean
        if not (np.all(np.isfinite(nll)) and np.all(np.isfinite(mean))):
            return np.nan, np.nan
        return rmse(y_test, mean), float(nll.mean() + math.log(y_std))


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
    from keras_uncertainty.datasets.uci import float32_problem

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
    rmses, nlls = METHODS[method].run_splits(splits, protocol)
    return uci.result_of_splits(
        dataset, method, splits, rmses, nlls, time.perf_counter() - start
    )


METHODS = {
    method.name: method
    for method in (
        MCDropout(),
        HeteroMCDropout(),
        DeepEnsemble(),
        Flipout(),
        LastLayerLaplace(),
        SWAG(),
        BatchEnsemble(),
        MIMO(),
        Evidential(),
    )
}
