"""The UCI regression benchmark protocol of the MC dropout and Deep Ensembles papers.

For each split: standardize inputs and targets with the training rows'
statistics, train, and evaluate RMSE and test NLL in the target's original
units. All splits of a data set, and for MC dropout every cell of the
(dropout rate, tau) grid, train at once as the members of one `ku.Ensemble`
with `per_member_inputs` and `weighted_mean`: every member is a plain Keras
network (`keras.layers.Normalization` with its split's statistics,
`MCDropout` with its rate, `Dense` layers with its L2), the ensemble packs
them into one network, and each member draws its own shuffled batches from
its own rows with a 0/1 row mask, so its loss is the mean over its own rows
and it makes exactly the updates it would make trained alone. The test
log-likelihood is `ku.sampling.MixtureNLL`'s, streamed over the samples,
with each split's members as one mixture.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

import keras_uncertainty as ku
from keras_uncertainty._split_gradient import stop_gradient_after
from keras_uncertainty.ensemble.training import member_losses
from keras_uncertainty.experiments.protocols import (  # noqa: F401 (re-exported)
    ADVERSARIAL_EPSILON,
    LEARNING_RATE,
    METHODS,
    PUBLISHED,
    SCHEDULE,
    VARIANCE_OBJECTIVE,
    VARIANCE_OBJECTIVES,
)
from keras_uncertainty.losses import GaussianNLL
from keras_uncertainty.metrics import rmse
from keras_uncertainty.sampling import (
    MixtureNLL,
    MixtureScore,
    RegressionPrediction,
    reduce_samples,
)

LENGTH_SCALE = 1e-2  # Gal & Ghahramani's UCI experiments
BATCH_SIZE = 128  # the MC dropout experiments
ENSEMBLE_MEMBERS = 5  # Lakshminarayanan et al. (2017)
ENSEMBLE_BATCH_SIZE = 32
ENSEMBLE_CHECKS = 20  # validation scores per training, to choose the epochs
# How the Deep Ensemble's epochs are chosen (see `deep_ensemble`): "joint"
# chooses and keeps in one training. On validation splits (5 of yacht,
# bostonHousing, energy) it scored as well as the retrain or better in 0.4x to
# 0.95x its time; "best" (no retrain, 80% of the rows) lost up to 20% RMSE,
# "none" overfit bostonHousing and wine (docs/guide/benchmarks.md).
ENSEMBLE_EPOCH_CHOICE = "joint"
# Whether each split's Deep Ensemble chooses its adversarial step on the
# validation rows, between the protocol's (the paper's 1% of each feature's
# range) and none: the step lowers the small sets' validation NLL (yacht
# 0.43 against 0.85) but costs naval's nearly noiseless target 40x in RMSE
# (0.0071 against 0.00017; `benchmarks/uci_sweeps.py ensemble-adversarial`).
# It trains the ensemble once per step.
ENSEMBLE_CHOOSES_ADVERSARIAL = True
VALIDATION_FRACTION = 0.2  # the last 20% of each training split choose the grid
VALIDATION_SAMPLES = 200  # MC samples per configuration when choosing
# Floor of the standardized log-variance in the Gaussian NLL (a standard
# deviation of 4.5e-5 target standard deviations), in training and in the
# predictive that is scored (`SplitMixtureNLL`). It never binds on a
# reasonable fit; it stops exp(-log_var) from overflowing when a member drives
# its variance to zero on nearly noise-free data (naval).
MIN_LOG_VAR = -20.0
# Steps per compiled call: saves Keras's per-call overhead between steps
# (about 4% of yacht's grid training on a quiet 2-core machine; see the
# "Where the time goes" in docs/guide/benchmarks.md).
MAX_STEPS_PER_CALL = 32


@dataclasses.dataclass
class Result:
    """Mean and standard error over splits of one data set and method.

    The standard errors are None (null in a results file, `± n/a` in the
    table) when one split ran: one split has no spread to estimate, and 0.0
    would claim one.
    """

    dataset: str
    method: str
    num_splits: int
    rmse_mean: float
    rmse_se: float | None
    nll_mean: float
    nll_se: float | None
    seconds: float

    @classmethod
    def from_splits(cls, dataset, method, rmses, nlls, seconds):
        def se(values):
            values = np.asarray(values, np.float64)
            if len(values) < 2:
                return None
            return float(values.std(ddof=1) / math.sqrt(len(values)))

        return cls(
            dataset,
            method,
            len(rmses),
            float(np.mean(rmses)),
            se(rmses),
            float(np.mean(nlls)),
            se(nlls),
            float(seconds),
        )


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The settings every method of one `uci` run shares.

    Attributes:
        epochs_multiplier: Training epochs are this times `n_epochs`.
        learning_rate: Adam's (initial) step.
        schedule: `"cosine"` or `"constant"` (see
            `keras_uncertainty.experiments.uci.step_schedule`).
        num_samples: Monte Carlo samples per test input (stochastic methods).
        seed: Integer seed.
        adversarial: Deep Ensembles' fast-gradient-sign step (0: none).
        callbacks: Keras callbacks passed to every `fit`.
        clip_value: Adam's element-wise gradient clipping (None: none).
        variance_objective: How the variance heads train: `"beta-nll"`,
            `"nll"` or `"faithful"` (see `variance_loss`).
    """

    epochs_multiplier: float
    learning_rate: float
    schedule: str
    num_samples: int
    seed: int
    adversarial: float = ADVERSARIAL_EPSILON
    callbacks: tuple = ()
    clip_value: float = None
    variance_objective: str = VARIANCE_OBJECTIVE

    def epochs(self, split):
        return max(1, int(round(split.n_epochs * self.epochs_multiplier)))

    def variance_loss(self):
        """The loss of every (mean, log-variance) network of the protocol
        (`variance_loss` of its `variance_objective`)."""
        return variance_loss(self.variance_objective)


def variance_loss(objective=VARIANCE_OBJECTIVE):
    """The protocol's loss of a (mean, log-variance) network, floored at
    `MIN_LOG_VAR`: `ku.losses.GaussianNLL`'s beta-NLL (`"beta-nll"`, beta
    0.5), plain NLL (`"nll"`) or faithful objective (`"faithful"`)."""
    if objective not in VARIANCE_OBJECTIVES:
        raise ValueError(
            "Invalid value received for argument `variance_objective`. Expected "
            f"one of {list(VARIANCE_OBJECTIVES)}. Received: {objective!r}"
        )
    if objective == "faithful":
        return GaussianNLL("faithful", min_log_var=MIN_LOG_VAR)
    beta = 0.5 if objective == "beta-nll" else 0.0
    return GaussianNLL("nll", beta=beta, min_log_var=MIN_LOG_VAR)


def data_table(splits):
    """The rows of `data.txt` that the splits use: `x (R, d)`, `y (R,)`."""
    num_rows = 1 + max(max(s.train_rows.max(), s.test_rows.max()) for s in splits)
    x = np.zeros((num_rows, splits[0].x_train.shape[1]))
    y = np.zeros(num_rows)
    for s in splits:
        x[s.train_rows], y[s.train_rows] = s.x_train, s.y_train
        x[s.test_rows], y[s.test_rows] = s.x_test, s.y_test
    return x, y


def padded_rows(member_rows):
    """`(M, n)` row indices (a shorter list repeats its rows) and 0/1 weights
    that mark each member's real rows."""
    n = max(len(rows) for rows in member_rows)
    index = np.stack([np.resize(rows, n) for rows in member_rows])
    weight = np.stack([np.arange(n) < len(rows) for rows in member_rows])
    return index, weight.astype("float32")


def _standardization(values, member_rows):
    """Each member's mean and standard deviation over its own rows."""
    mean = np.stack([values[rows].mean(0) for rows in member_rows])
    std = np.stack([values[rows].std(0) for rows in member_rows])
    return mean, np.where(std > 0, std, 1.0)  # a constant column stays 0


def member_batches(x, targets, member_rows, epochs, batch_size, seed, heads=None):
    """`epochs` passes in which every member draws shuffled batches of its own
    rows: `(inputs (b, M, d), targets (b, M, 1), weights (b, M))`, the 0/1
    weights marking each member's real rows (a shorter member's padding has
    weight 0), as a `ku.Ensemble` with `per_member_inputs` trains on them.
    `targets` is `(R, M)`, every row standardized per member.

    `heads=K`: each member is a MIMO network whose K heads read their own
    shuffle of the member's batch (Havasi et al. 2021 without input or
    batch repetition, as `ku.MIMO`'s `train_step` draws them):
    `(inputs (b, M, K, d), targets (b, M, K, 1), weights (b, M))`, a
    member's real rows first in every head's column."""
    index, weight = padded_rows(member_rows)
    members, n = index.shape
    x, targets = tf.constant(x, tf.float32), tf.constant(targets, tf.float32)
    index, weight = tf.constant(index), tf.constant(weight)
    member_ids = tf.range(members, dtype=index.dtype)

    def epoch(e):
        keys = tf.random.stateless_uniform(
            (members, n), seed=tf.stack([tf.constant(seed, tf.int64), e])
        )
        order = tf.argsort(keys, axis=1)
        rows = tf.gather(index, order, batch_dims=1)
        return tf.transpose(rows), tf.transpose(tf.gather(weight, order, batch_dims=1))

    def batch(rows, weights):
        ids = member_ids if heads is None else member_ids[:, None]
        pairs = tf.stack([rows, tf.broadcast_to(ids, tf.shape(rows))], -1)
        y = tf.gather_nd(targets, pairs)[..., None]
        return tf.gather(x, rows), y, weights

    batches = (
        tf.data.Dataset.range(epochs)
        .map(epoch)
        .flat_map(
            lambda r, w: tf.data.Dataset.from_tensor_slices((r, w)).batch(batch_size)
        )
    )
    if heads is not None:
        batches = batches.enumerate().map(
            lambda step, pair: _head_shuffles(*pair, heads, seed, step)
        )
    steps = epochs * math.ceil(n / batch_size)
    return (
        batches.map(batch, num_parallel_calls=tf.data.AUTOTUNE)
        .apply(tf.data.experimental.assert_cardinality(steps))
        .prefetch(tf.data.AUTOTUNE)
    )


def _head_shuffles(rows, weights, heads, seed, step):
    """Batch `rows (b, M)` -> `(b, M, K)`: each head's own shuffle of each
    member's rows of the batch (its real rows, of weight 1, first), and the
    members' weights `(b, M)` in that order."""
    keys = tf.random.stateless_uniform(
        (tf.shape(rows)[0], tf.shape(rows)[1], heads),
        seed=tf.stack([tf.constant(seed, tf.int64) + 1, step]),
    )
    # Padding (weight 0) sorts after every real row, in every head.
    keys = keys + 2.0 * (1.0 - weights[..., None])
    order = tf.argsort(keys, axis=0)  # (b, M, K): positions in the batch
    members = tf.broadcast_to(
        tf.range(tf.shape(rows)[1], dtype=order.dtype)[:, None], tf.shape(order)
    )
    shuffled = tf.gather_nd(rows, tf.stack([order, members], -1))
    real = tf.reduce_sum(weights, axis=0)  # (M,)
    position = tf.cast(tf.range(tf.shape(rows)[0]), weights.dtype)[:, None]
    return shuffled, tf.cast(position < real, weights.dtype)


@keras.saving.register_keras_serializable(package="keras_uncertainty.experiments")
class HeadsLoss(keras.losses.Loss):
    """A member's loss on every head of a multi-head network.

    The network gives `(N, K, outputs)`, one row per head (a BatchEnsemble's
    members, a MIMO network's heads), or `(N, K * outputs)`, the heads side
    by side; the targets are `(N, 1)`, the same for every head, or
    `(N, K, 1)`, each head's own (MIMO's shuffles). The
    per-row loss is `loss` on each head, `(N, K)`: reduced as the ensemble
    reduces a member's loss (its weighted mean), the mean over the rows and
    the heads, the loss of `ku.BatchEnsemble` and of `ku.MIMO` trained
    alone.

    Args:
        loss: The loss of one head (a `keras.losses.Loss`, such as
            `ku.losses.GaussianNLL`).
        outputs_major: How `(N, K * outputs)` heads lie side by side: False
            (the default), head after head; True, output after output (the
            K heads' first outputs, then their second: a
            `ku.layers.GaussianHead(K)`'s K means, then K log-variances).
        name: The loss's name.

    Example:

    >>> loss = HeadsLoss(ku.losses.GaussianNLL())
    >>> loss(y, outputs)  # y (N, 1), outputs (N, K, 2): mean over N and K
    """

    def __init__(self, loss, outputs_major=False, name=None):
        loss = keras.losses.get(loss)
        super().__init__(name=name or f"heads_{loss.name}", reduction=loss.reduction)
        self.loss = loss
        self.outputs_major = bool(outputs_major)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        if len(y_true.shape) == len(y_pred.shape) + 1:
            heads = y_true.shape[1]
            outputs = y_pred.shape[-1] // heads
            if self.outputs_major:
                # Output j of every head, then output j + 1: head k's j-th
                # is column j * K + k (a GaussianHead(K): K means, then K
                # log-variances).
                y_pred = ops.transpose(
                    ops.reshape(y_pred, (-1, outputs, heads)), (0, 2, 1)
                )
            else:
                # Head k's outputs are columns [k * o, (k + 1) * o).
                y_pred = ops.reshape(y_pred, (-1, heads, outputs))
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, 1)  # (N, 1, k): every head's
        y_true = ops.broadcast_to(
            y_true, (*ops.shape(y_pred)[:-1], ops.shape(y_true)[-1])
        )
        return self.loss.call(y_true, y_pred)

    def get_config(self):
        return {
            "loss": keras.saving.serialize_keras_object(self.loss),
            "outputs_major": self.outputs_major,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(loss, **config)


def heads_loss(loss, network):
    """`HeadsLoss(loss)` for a multi-head `network`, laid out as it lays its
    heads: one `ku.layers.GaussianHead(K)` on `(N, K, d)` inputs (MIMO's)
    gives the K means, then the K log-variances (`outputs_major`)."""
    heads = network.inputs[0].shape[1] if len(network.inputs[0].shape) == 3 else None
    last = network.layers[-1]
    side_by_side = isinstance(last, ku.layers.GaussianHead) and last.targets == heads
    return HeadsLoss(loss, outputs_major=side_by_side)


class SplitBatchEnsembles(keras.Model):
    """Every split's BatchEnsemble network of the protocol as one network
    with a split axis, to train them at once.

    `networks` are the splits' networks (`keras.Model`s whose one
    `ku.BatchEnsemble` holds a `keras.layers.Normalization` and
    `ku.layers.BatchEnsembleDense` layers, as the registry's
    `batch-ensemble` entry builds them). Each of their variables becomes one
    `(S, ...)` variable, started from the splits' own values, and every
    layer is one batched matmul over the splits: the members of a
    `ku.Ensemble` would each run alone, as many small steps as splits after
    split. The loss is each split's own (`HeadsLoss` of the member loss, its
    weighted mean over its rows and members), summed over the splits, as a
    `ku.Ensemble` with `per_member_inputs` and `weighted_mean` sums its
    members' losses: each split makes the updates it would make alone.
    `store()` copies the trained values back into `networks`.

    Args:
        networks: The S splits' networks (one architecture).
        loss: The loss of one member of one split (a `keras.losses.Loss`).

    Call arguments:
        inputs: `(B, S, d)`: split s reads `inputs[:, s]`.
        training: Unused (the network has no stochastic layer).

    Returns:
        `(B, S, K, outputs)`: every split's K members.
    """

    def __init__(self, networks, loss, **kwargs):
        kwargs.setdefault("name", "split_batch_ensembles")
        super().__init__(**kwargs)
        self.networks = _Untracked(list(networks))
        models = [_batch_ensemble_of(network) for network in networks]

        def layers_of(kind):
            return [
                [layer for layer in m.network.layers if isinstance(layer, kind)]
                for m in models
            ]

        self.dense_layers = _Untracked(layers_of(ku.layers.BatchEnsembleDense))
        normalizations = layers_of(keras.layers.Normalization)
        self.num_members = models[0].num_members
        self.loss_of_split = HeadsLoss(loss)
        self.mean = self.std = None
        if normalizations[0]:  # each split's own, (1, S, d)
            mean = np.stack([np.ravel(n[0].mean) for n in normalizations])
            std = np.stack([np.sqrt(np.ravel(n[0].variance)) for n in normalizations])
            std = np.maximum(std, keras.config.epsilon())  # as Normalization
            self.mean = tf.constant(mean[None], tf.float32)
            self.std = tf.constant(std[None], tf.float32)
        self.activations = [layer.activation for layer in self.dense_layers.value[0]]
        # A faithful head's log-variance columns (from column `targets` on)
        # read the inputs and r with their gradient stopped, as
        # `ku.layers.BatchEnsembleGaussianHead` computes them; None: plain.
        self.variance_columns = [
            layer.targets
            if isinstance(layer, ku.layers.BatchEnsembleGaussianHead)
            and layer.stop_variance_gradient
            else None
            for layer in self.dense_layers.value[0]
        ]
        self.stacked = []
        for j in range(len(self.activations)):
            layers = [split[j] for split in self.dense_layers.value]
            names = ("kernel", "r", "s", "bias")
            self.stacked.append(
                [
                    self.add_weight(
                        shape=(len(layers), *getattr(layers[0], name).shape),
                        initializer=keras.initializers.Constant(
                            np.stack([getattr(layer, name).numpy() for layer in layers])
                        ),
                        name=f"{name}_{j}",
                    )
                    for name in names
                    if getattr(layers[0], name, None) is not None
                ]
            )

    def call(self, inputs, training=None):
        h = ops.cast(inputs, "float32")
        if self.mean is not None:
            h = (h - self.mean) / self.std
        h = ops.transpose(h, (1, 0, 2))[:, None]  # (S, 1, B, d)
        members = self.num_members

        def product(h, r, kernel):
            return _members_matmul(h, r, kernel, members)

        layers = zip(self.activations, self.stacked, self.variance_columns)
        for activation, weights, targets in layers:
            kernel, r, s = weights[:3]
            # A faithful head's log-variance columns read h and r stopped.
            outputs = stop_gradient_after(targets, product, kernel, h, r)
            h = outputs * s[:, :, None, :]
            if len(weights) == 4:
                h = h + weights[3][:, :, None, :]
            h = activation(h)
        return ops.transpose(h, (2, 0, 1, 3))  # (B, S, K, outputs)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        losses = member_losses(
            self.loss_of_split,
            y,
            y_pred,
            sample_weight,
            per_member_targets=True,
            weighted_mean=True,
        )
        return ops.sum(losses)

    def store(self):
        """Copies every split's trained values into its network."""
        for j, weights in enumerate(self.stacked):
            values = [w.numpy() for w in weights]
            for split, layers in enumerate(self.dense_layers.value):
                layer = layers[j]
                targets = [layer.kernel, layer.r, layer.s] + (
                    [layer.bias] if layer.bias is not None else []
                )
                for target, value in zip(targets, values):
                    target.assign(value[split])

    @property
    def members(self):
        """The splits' networks, with the trained values."""
        self.store()
        return list(self.networks.value)

    @property
    def packed(self):
        return True


def _members_matmul(h, r, kernel, members):
    """Every split's members' `(h * r_k) @ W`: `h` `(S, 1 or K, B, in)`, `r`
    `(S, K, in)`, `kernel` `(S, in, out)`; `(S, K, B, out)`."""
    h = h * r[:, :, None, :]  # (S, K, B, in): member k's input scales
    splits, batch = kernel.shape[0], ops.shape(h)[2]
    flat = ops.reshape(h, (splits, -1, h.shape[-1]))
    return ops.reshape(ops.matmul(flat, kernel), (splits, members, batch, -1))


class _Untracked:
    """Holds models out of Keras's tracking (their variables are not the
    split-axis model's)."""

    def __init__(self, value):
        self.value = value


def _batch_ensemble_of(network):
    for layer in [network, *getattr(network, "layers", ())]:
        if isinstance(layer, ku.BatchEnsemble):
            return layer
    raise ValueError(
        "Invalid value received for argument `networks`. Expected models "
        f"holding a ku.BatchEnsemble. Received: {network.name!r}"
    )


@dataclasses.dataclass
class _Trained:
    model: object  # ku.Ensemble, per_member_inputs: member m reads column m
    y_mean: np.ndarray  # (M,)
    y_std: np.ndarray  # (M,)


class _EveryEpochs(keras.callbacks.Callback):
    """Calls `at_epoch(epoch)` after every `every`-th pass over the members'
    rows (the stream is one Keras epoch, so passes are counted in steps).

    Steps are read from the optimizer's update count, not from the batch
    index Keras passes (the first or the last step of a multi-step call,
    depending on the Keras version); `fit_members` makes every call end on
    a pass boundary."""

    def __init__(self, steps_per_pass, every, at_epoch):
        super().__init__()
        self.steps_per_pass, self.every, self.at_epoch = steps_per_pass, every, at_epoch

    def on_train_batch_end(self, batch, logs=None):
        done = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if done % self.steps_per_pass == 0:
            epoch = done // self.steps_per_pass
            if epoch % self.every == 0:
                self.at_epoch(epoch)


def steps_per_call(total_steps, align=None):
    """Training steps per compiled call: the largest divisor of
    `total_steps` (and of `align`, when given) up to `MAX_STEPS_PER_CALL`,
    so that no call is partial and calls end on multiples of `align`."""
    align = total_steps if align is None else align
    for count in range(MAX_STEPS_PER_CALL, 0, -1):
        if total_steps % count == 0 and align % count == 0:
            return count
    return 1


def member_network(
    num_inputs,
    hidden,
    outputs,
    x_mean,
    x_std,
    rate,
    decay,
    seed,
    variance_objective=VARIANCE_OBJECTIVE,
):
    """One network of the protocol, as plain Keras: its split's input
    standardization, dropout of `rate` (None: none) on the inputs and the
    hidden layer, one hidden ReLU layer, an L2 of `decay` on the kernels.
    Two outputs (mean, log-variance) come from `variance_head`."""
    inputs = keras.Input((num_inputs,))
    h = _normalization(x_mean, x_std)(inputs)
    if rate is not None:
        h = ku.layers.MCDropout(rate, seed=seed)(h)
    regularizer = keras.regularizers.L2(decay) if decay else None
    h = keras.layers.Dense(hidden, activation="relu", kernel_regularizer=regularizer)(h)
    if rate is not None:
        h = ku.layers.MCDropout(rate, seed=None if seed is None else seed + 1)(h)
    if outputs == 2:
        head = variance_head(variance_objective, kernel_regularizer=regularizer)
    else:
        head = keras.layers.Dense(outputs, kernel_regularizer=regularizer)
    return keras.Model(inputs, head(h))


def variance_head(objective=VARIANCE_OBJECTIVE, targets=1, **kwargs):
    """The (means, log-variances) output layer of a network trained by
    `variance_loss(objective)` (None: the default objective):
    `ku.layers.GaussianHead(targets)`, whose variances read the features
    with their gradient stopped under `"faithful"` (Stirn et al.'s head; a
    plain Dense layer else). `kwargs`: the layer's (a regularizer, ...)."""
    objective = objective or VARIANCE_OBJECTIVE
    return ku.layers.GaussianHead(
        targets, stop_variance_gradient=objective == "faithful", **kwargs
    )


def step_schedule(learning_rate, schedule, total_steps):
    """Adam's step: `learning_rate` throughout (`"constant"`), or decaying
    from it to 0 along a half cosine over `total_steps` (`"cosine"`,
    Loshchilov & Hutter 2017 without restarts). Both are the same for every
    member, so a packed member still makes the updates it would make alone."""
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)
    raise ValueError(
        f"`schedule` must be 'constant' or 'cosine'; received {schedule!r}"
    )


def train_members(
    x, y, member_rows, outputs, hidden, epochs, batch_size, seed, **options
):
    """Trains one network of the protocol (`member_network`) per entry of
    `member_rows` (the rows it trains on), through `fit_members`.

    `options`: `rates` and `decays` (one per member), and `fit_members`'s
    options.
    """
    rates = options.pop("rates", None)
    decays = options.pop("decays", None)
    objective = options.pop("variance_objective", VARIANCE_OBJECTIVE)
    x_mean, x_std = _standardization(x, member_rows)
    members = [
        member_network(
            x.shape[1],
            hidden,
            outputs,
            x_mean[m],
            x_std[m],
            None if rates is None else float(rates[m]),
            0.0 if decays is None else float(decays[m]),
            seed,
            objective,
        )
        for m in range(len(member_rows))
    ]
    loss = variance_loss(objective) if outputs == 2 else "mse"
    # The protocol's networks always pack: 240 of them unpacked would be
    # far slower, so a change that stops them packing must fail loudly.
    options.setdefault("pack", True)
    return fit_members(
        members, x, y, member_rows, loss, epochs, batch_size, seed, **options
    )


def _normalization(mean, std):
    return keras.layers.Normalization(mean=mean, variance=np.square(std))


def normalization_layer(x):
    """`keras.layers.Normalization` with the mean and variance of the rows
    `x` (a constant column stays 0), as a member network's first layer."""
    mean, std = _standardization(x, [np.arange(len(x))])
    return _normalization(mean[0], std[0])


def fit_members(members, x, y, member_rows, loss, epochs, batch_size, seed, **options):
    """Trains the Keras networks `members` (each on raw inputs: its input
    standardization is its own first layer), member m on the rows
    `member_rows[m]` of `x (R, d)`, `y (R,)`, its targets standardized with
    those rows' mean and standard deviation, by `loss`.

    The networks are the members of one `ku.Ensemble` with
    `per_member_inputs` and `weighted_mean` (packed when they pack), fed by
    `member_batches`: each member makes the updates it would make trained
    alone on its own stream, with its own regularization losses (a
    variational layer's KL). (Exactly so when the members have as many rows
    each, as a data set's splits do: a member with fewer rows gets the
    longest member's number of steps per pass, padded rows weighing 0.)

    `options`: `adversarial_epsilon` (the ensemble's fast-gradient-sign
    step, over each member's own feature range), `callbacks`,
    `learning_rate` (Adam's step, default `LEARNING_RATE`), `schedule`
    (`"cosine"`, the default: the step decays to 0 along a half cosine over
    `schedule_epochs`, default `epochs`; `"constant"`), `clip_value`, and
    `every_epochs=(k, function(trained, epoch))` to look at the networks
    after every k-th epoch, `pack` (`ku.Ensemble`'s: None packs when
    the members pack; True requires it), and `heads=K` for MIMO networks
    whose K heads read their own shuffles of the batch (`member_batches`).
    """
    callbacks = list(options.pop("callbacks", ()))
    pack = options.pop("pack", None)
    learning_rate = options.pop("learning_rate", LEARNING_RATE)
    schedule = options.pop("schedule", SCHEDULE)
    schedule_epochs = options.pop("schedule_epochs", None) or epochs
    clip_value = options.pop("clip_value", None)
    every_epochs = options.pop("every_epochs", None)
    epsilon = options.pop("adversarial_epsilon", None) or None  # 0: none
    heads = options.pop("heads", None)
    split_axis = options.pop("split_axis", None)
    if options:
        raise TypeError(f"Unexpected options: {sorted(options)}")
    y_mean, y_std = _standardization(y, member_rows)
    if split_axis is not None:
        model = split_axis(members, loss)
        loss = None  # the model's own: each split's, summed
    else:
        model = ku.Ensemble.from_models(
            members,
            per_member_inputs=True,
            weighted_mean=True,  # each member: the mean over its own rows
            adversarial_epsilon=epsilon,
            # 240 members' loss logs would cost more than the training step.
            member_logs=False,
            pack=pack,
        )
    trained = _Trained(model, y_mean, y_std)
    steps_per_pass = math.ceil(max(len(r) for r in member_rows) / batch_size)
    model.compile(
        keras.optimizers.Adam(
            step_schedule(learning_rate, schedule, schedule_epochs * steps_per_pass),
            # Element-wise, so a packed member's update stays its own.
            clipvalue=clip_value,
        ),
        loss=loss,
        steps_per_execution=steps_per_call(
            epochs * steps_per_pass,
            steps_per_pass if every_epochs is not None else None,
        ),
    )
    if every_epochs is not None:
        every, function = every_epochs
        callbacks.append(
            _EveryEpochs(steps_per_pass, every, lambda e: function(trained, e))
        )
    feature_range = None
    if epsilon is not None:
        # Each member's range over its own rows (the ensemble's step is
        # `epsilon * range` in the inputs' units: the same step as
        # `epsilon * range / std` on its standardized inputs).
        feature_range = np.stack([np.ptp(x[rows], axis=0) for rows in member_rows])
    targets = (y[:, None] - y_mean) / y_std
    ensemble_options = {}
    if split_axis is None:
        # A diverged member (a split's network) must not stop the others:
        # it scores NaN and its split is left out, with a warning.
        ensemble_options = {"terminate_on_nan": False, "feature_range": feature_range}
    model.fit(
        member_batches(x, targets, member_rows, epochs, batch_size, seed, heads),
        epochs=1,
        shuffle=False,  # the stream shuffles each member's rows itself
        verbose=0,
        callbacks=callbacks,
        **ensemble_options,
    )
    return trained


class SplitMixtureNLL(MixtureNLL):
    """`ku.sampling.MixtureNLL` of every group of `group` consecutive members
    of a per-member-inputs ensemble, each in its own target's units.

    The ensemble's samples arrive member-major, `(M * t, n, outputs)`,
    member m's on its own n rows, standardized with its own `y_mean[m]` and
    `y_std[m]`. The `group` members of each group become the components of
    one mixture on the group's rows: the S = M / group mixtures are scored
    as S targets of one `MixtureNLL`. A non-finite sample (a diverged
    member) is counted per group and leaves the mixture (the group scores
    NaN).

    The mixture is computed in float32 in the standardized units of each
    group's first member (the group's "reference": every member's mean and
    log-variance mapped to them by float64 constants; its log-variance
    floored at `MIN_LOG_VAR` as in the training loss; or a homoscedastic
    precision `taus[m]` in target units), and the targets are standardized
    the same way in float64 before they are cast. `finalize` takes the
    scores back to target units in float64: a target far from 0 in its own
    units (yacht shifted by 1e9) keeps every digit that float32 would lose
    (its RMSE is not rounded to float32's spacing at 1e9).

    Finalizes to `(MixtureScore, diverged (S,) bool)`: `score.prediction.mean`
    `(n, S)` is each group's mixture mean, `score.log_likelihood` `(n, S)`,
    float64 in target units.
    """

    def __init__(self, num_members, group, y_mean, y_std, taus=None):
        super().__init__(variance_head=True)
        self.num_members = int(num_members)
        self.group = int(group)
        self.y_mean = [float(v) for v in y_mean]
        self.y_std = [float(v) for v in y_std]
        self.taus = None if taus is None else [float(v) for v in taus]

    def get_config(self):
        return {
            "num_members": self.num_members,
            "group": self.group,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
            "taus": self.taus,
        }

    def _reference(self):
        """Each group's reference standardization, float64 `(S,)` twice."""
        return (
            np.asarray(self.y_mean, np.float64)[:: self.group],
            np.asarray(self.y_std, np.float64)[:: self.group],
        )

    def reduce(self, samples, targets):
        members, group = self.num_members, self.group
        samples = tf.cast(samples, tf.float32)
        n = tf.shape(samples)[1]
        by_member = tf.reshape(samples, [members, -1, n, samples.shape[-1]])
        ref_mean, ref_std = self._reference()
        member_ref = np.arange(members) // group
        y_mean = np.asarray(self.y_mean, np.float64)
        y_std = np.asarray(self.y_std, np.float64)
        # Member m's standardized output in its group's standardized units:
        # `out * scale + shift`, the constants in float64 (0 and 1 for the
        # reference, and for every member of a group with one standardization).
        scale = y_std / ref_std[member_ref]
        shift = (y_mean - ref_mean[member_ref]) / ref_std[member_ref]

        def constant(values):
            return tf.constant(np.asarray(values, np.float32)[:, None, None])

        mu = by_member[..., 0] * constant(scale) + constant(shift)  # (M, t, n)
        if self.taus is None:
            # The log-variance the training loss saw: floored at MIN_LOG_VAR.
            # Below the floor the loss has no gradient, so the raw output can
            # drift without bound (to a variance that is 0 in float32: on
            # protein, 3 of 5 splits of hetero-mc-dropout scored as diverged
            # for that alone).
            log_var = tf.maximum(by_member[..., 1], MIN_LOG_VAR)
            log_var = log_var + constant(2.0 * np.log(scale))
        else:
            # A precision in target units, in the group's standardized units.
            log_var = -np.log(self.taus) - 2.0 * np.log(ref_std[member_ref])
            log_var = tf.broadcast_to(constant(log_var), tf.shape(mu))
        finite = tf.math.is_finite(mu) & tf.math.is_finite(log_var)
        mu = tf.where(finite, mu, 0.0)
        log_var = tf.where(finite, log_var, 0.0)

        def by_group(values):  # (M, t, n) -> (group * t, n, S)
            values = tf.reshape(values, [members // group, group, -1, n])
            values = tf.transpose(values, (1, 2, 3, 0))
            return tf.reshape(values, [-1, n, members // group])

        mixture = tf.concat([by_group(mu), by_group(log_var)], axis=-1)
        # (n, S): the non-finite samples of each input of each group.
        non_finite = tf.reduce_sum(by_group(1.0 - tf.cast(finite, tf.float32)), 0)
        # The targets, standardized in float64 before they are cast.
        standardized = (
            tf.reshape(tf.cast(targets, tf.float64), [n, members // group])
            - tf.constant(ref_mean)
        ) / tf.constant(ref_std)
        return (
            *super().reduce(mixture, tf.cast(standardized, tf.float32)),
            non_finite,
        )

    def merge(self, a, count_a, b, count_b):
        merged = super().merge(a[:4], count_a, b[:4], count_b)
        return (*merged, a[4] + b[4])

    def finalize(self, state, num_samples):
        # The mixtures have `group` of the ensemble's members each.
        per_group = num_samples * self.group // self.num_members
        score = super().finalize(state[:4], per_group)
        ref_mean, ref_std = self._reference()
        standardized = score.prediction
        prediction = RegressionPrediction(
            mean=np.asarray(standardized.mean, np.float64) * ref_std + ref_mean,
            **{
                field: np.asarray(getattr(standardized, field), np.float64) * ref_std
                for field in ("std", "aleatoric_std", "epistemic_std")
            },
        )
        # The density in target units: the standardized one over y_std.
        log_likelihood = np.asarray(score.log_likelihood, np.float64) - np.log(ref_std)
        score = MixtureScore(prediction=prediction, log_likelihood=log_likelihood)
        return score, np.asarray(state[4]).sum(axis=0) > 0


def evaluate_members(
    trained, x, y, member_rows, num_samples, seed, taus=None, group=1, batch_size=None
):
    """RMSE and NLL, in the target's units, of every group of `group`
    consecutive members on their rows (the same for the whole group).

    A group's prediction is the uniform mixture of its members' MC samples
    (`num_samples` each; one for members without dropout), scored by
    `SplitMixtureNLL` (`ku.sampling.MixtureNLL`, streamed); `taus` `(M,)`
    are homoscedastic precisions, else the network predicts (mean,
    log-variance). Each group's RMSE and NLL are the `rmse` and
    `mixture_nll` of `ku.metrics.regression_report` on its `MixtureScore`.
    A group with a non-finite sample (a member that diverged), or whose
    predictive std is not finite and positive, scores NaN. `batch_size`:
    inputs per compiled sampling call, as in `model.predict`; None: the
    sampling engine's choice.
    """
    index, _ = padded_rows(member_rows)
    inputs = x[index.T].astype("float32")  # (n, M, d): member m's rows
    members = index.shape[0]
    y_true = y[index.T][:, ::group]  # (n, S)
    reducer = SplitMixtureNLL(members, group, trained.y_mean, trained.y_std, taus)
    score, diverged = reduce_samples(
        trained.model,
        inputs,
        reducer,
        num_samples,
        batch_size=batch_size,
        seed=seed,
        verbose=0,
        y=y_true,
    )
    sizes = [len(rows) for rows in member_rows[::group]]
    scores = [
        scored_group(score, diverged, y_true[:k, s], s) for s, k in enumerate(sizes)
    ]
    rmses, nlls = (np.array(values) for values in zip(*scores))
    return rmses, nlls


def scored_group(score, diverged, y_true, group=0):
    """RMSE and mixture NLL of group `group` of a `SplitMixtureNLL`'s
    `(score, diverged)` on its first `len(y_true)` rows; NaN for a group
    that diverged (a non-finite sample, mean or log-likelihood).

    The RMSE is `ku.metrics.rmse` of the mixture mean and the NLL minus the
    mean of the streamed log-likelihoods (`regression_report`'s
    `mixture_nll`). The mixture's std is not needed, and not required to be
    finite: a network can predict a log-variance far beyond the data for an
    outlier input (1,711 on one of protein's validation rows), whose
    variance overflows float32 while its log-likelihood, computed in log
    space, is finite (and large: the input's share of a bad NLL)."""
    rows = len(y_true)
    if diverged[group]:
        return np.nan, np.nan
    mean = np.asarray(score.prediction.mean)[:rows, group]
    log_likelihood = np.asarray(score.log_likelihood)[:rows, group]
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(log_likelihood))):
        return np.nan, np.nan
    return rmse(y_true, mean), float(-np.mean(log_likelihood))


def _split_validation(rows):
    cut = int(round(len(rows) * (1 - VALIDATION_FRACTION)))
    return rows[:cut], rows[cut:]


def _weight_decay(rate, tau, num_rows):
    """Gal & Ghahramani's L2 factor `l^2 (1 - p) / (2 N tau)`."""
    return LENGTH_SCALE**2 * (1 - rate) / (2.0 * num_rows * tau)


def deep_ensemble(
    splits,
    protocol,
    members=ENSEMBLE_MEMBERS,
    epoch_choice=ENSEMBLE_EPOCH_CHOICE,
    choose_adversarial=ENSEMBLE_CHOOSES_ADVERSARIAL,
):
    """Deep Ensembles on every split at once; `(rmses, nlls)` per split.

    `epoch_choice` (`ENSEMBLE_EPOCH_CHOICE` by default) says how long each
    split's members train, with the protocol's step schedule over its
    `epochs`:

    - `"none"`: every split trains on all its training rows for all the
      epochs (the step decaying to 0 with the cosine schedule), as the
      other methods do: one training, no validation.
    - `"best"`: every split trains on the first 80% of its training rows;
      the mixture's NLL on the last 20% is scored every `epochs //
      ENSEMBLE_CHECKS` epochs, and each split keeps its members as they
      were at its best check (early stopping that restores the best
      epoch): one training, `ENSEMBLE_CHECKS` validation scores.
    - `"retrain"`: as `"best"` to choose each split's epoch, then a second
      training on all the training rows, each split's members kept at its
      chosen epoch.
    - `"joint"`: `"retrain"` in one training: every split's members on
      the first 80% of its rows and its members on all its rows train at
      once (one packed ensemble of both), the first scored every
      `epochs // ENSEMBLE_CHECKS` epochs on the last 20%; each split keeps
      its all-rows members as they were at the first members' best check.
      (The first members get the others' steps per pass, their padding
      weighing 0.)

    `members`: per split (the registry's `ensemble` entry gives it).

    With `choose_adversarial` (and a protocol step and an `epoch_choice`
    that validates), each split keeps the ensemble of the adversarial step,
    the protocol's or none, whose members had the lower validation NLL
    (`deep_ensemble_runs`); else the protocol's step alone.
    """
    steps = [protocol.adversarial]
    if choose_adversarial and protocol.adversarial and epoch_choice != "none":
        steps.append(0.0)
    runs = deep_ensemble_runs(splits, protocol, steps, members, epoch_choice)
    validation = np.stack([np.where(np.isfinite(v), v, np.inf) for _, _, v in runs])
    chosen = validation.argmin(axis=0)  # the first step where none validates
    return tuple(np.choose(chosen, [run[k] for run in runs]) for k in (0, 1))


def deep_ensemble_runs(
    splits,
    protocol,
    steps,
    members=ENSEMBLE_MEMBERS,
    epoch_choice=ENSEMBLE_EPOCH_CHOICE,
):
    """`deep_ensemble` at each adversarial step of `steps` (the protocol's
    replaced): `[(rmses, nlls, validation_nlls)]`, one per step, per split;
    `validation_nlls` the members' NLL on the validation rows at the kept
    epoch (NaN under `epoch_choice="none"`)."""
    return [
        _deep_ensemble(
            splits,
            dataclasses.replace(protocol, adversarial=step),
            members,
            epoch_choice,
        )
        for step in steps
    ]


def _deep_ensemble(splits, protocol, members, epoch_choice):
    """One training of `deep_ensemble` at the protocol's step:
    `(rmses, nlls, validation_nlls)`."""
    if epoch_choice not in ("none", "best", "retrain", "joint"):
        raise ValueError(
            "Invalid value received for argument `epoch_choice`. Expected "
            "'none', 'best', 'retrain' or 'joint'. Received: "
            f"epoch_choice={epoch_choice!r}"
        )
    x, y = data_table(splits)
    fit_rows, validation_rows = zip(*(_split_validation(s.train_rows) for s in splits))
    train_rows = [s.train_rows for s in splits]
    test_rows = [s.test_rows for s in splits]
    epochs = protocol.epochs(splits[0])
    seed = protocol.seed

    def each_member(per_split):
        return [rows for rows in per_split for _ in range(members)]

    def train(member_rows, num_epochs, look=None):
        return train_members(
            x,
            y,
            member_rows,
            2,
            splits[0].n_hidden,
            num_epochs,
            ENSEMBLE_BATCH_SIZE,
            seed,
            adversarial_epsilon=protocol.adversarial,
            callbacks=protocol.callbacks,
            every_epochs=None if look is None else (every, look),
            learning_rate=protocol.learning_rate,
            schedule=protocol.schedule,
            clip_value=protocol.clip_value,
            variance_objective=protocol.variance_objective,
            # A retrain stops at the chosen epoch of the same schedule.
            schedule_epochs=epochs,
        )

    def evaluate(trained, per_split):
        return evaluate_members(
            trained, x, y, each_member(per_split), 1, seed, group=members
        )

    def keep_splits(trained, chosen, snapshots, first=0):
        """Each split of `chosen` (indices) keeps the weights its members
        (from group `first + s`) have now."""
        for s in chosen:
            block = slice((first + s) * members, (first + s + 1) * members)
            snapshots[s] = [v.numpy()[block] for v in trained.model.trainable_variables]

    def restore(trained, snapshots, first=0):
        """Groups `first` to `first + S` take the splits' snapshots."""
        block = slice(first * members, (first + len(splits)) * members)
        for k, variable in enumerate(trained.model.trainable_variables):
            value = variable.numpy()
            value[block] = np.concatenate([snapshots[s][k] for s in range(len(splits))])
            variable.assign(value)

    if epoch_choice == "none":
        rmses, nlls = evaluate(train(each_member(train_rows), epochs), test_rows)
        return rmses, nlls, np.full(len(splits), np.nan)
    every = max(1, epochs // ENSEMBLE_CHECKS)
    scores, snapshots = {}, {}
    best = np.full(len(splits), np.inf)
    num = len(splits)

    def score(trained, epoch):
        if epoch_choice == "joint":
            # The choosing members' validation NLL (groups 0..S-1); groups
            # S..2S-1, on all the training rows, are scored alongside.
            nlls = evaluate(trained, validation_rows * 2)[1][:num]
        else:
            nlls = evaluate(trained, validation_rows)[1]
        scores[epoch] = nlls
        if epoch_choice in ("best", "joint"):
            nlls = np.where(np.isfinite(nlls), nlls, np.inf)  # diverged: never
            improved = nlls < best
            # The first check keeps every split, so each has a snapshot.
            keep_splits(
                trained,
                np.flatnonzero(improved | ~np.isfinite(best)),
                snapshots,
                first=num if epoch_choice == "joint" else 0,
            )
            best[:] = np.where(improved, nlls, best)

    if epoch_choice == "joint":
        # One training of both: each split's members on 80% of its rows
        # choose the epoch, its members on all its rows are kept at it.
        trained = train(each_member(fit_rows) + each_member(train_rows), epochs, score)
        restore(trained, snapshots, first=num)
        rmses, nlls = (v[num:] for v in evaluate(trained, list(test_rows) * 2))
        return rmses, nlls, best
    trained = train(each_member(fit_rows), epochs, score)
    if epoch_choice == "best":
        restore(trained, snapshots)
        return (*evaluate(trained, test_rows), best)
    checked = np.array(sorted(scores))
    table = np.stack([scores[e] for e in checked])  # (checks, splits)
    table = np.where(np.isfinite(table), table, np.inf)
    chosen = checked[table.argmin(axis=0)]

    def keep(trained, epoch):
        keep_splits(trained, np.flatnonzero(chosen == epoch), snapshots)

    trained = train(each_member(train_rows), int(chosen.max()), keep)
    restore(trained, snapshots)
    return (*evaluate(trained, test_rows), table.min(axis=0))


def dropout_grid(splits, protocol, heteroscedastic):
    """MC dropout on every split at once; `(rmses, nlls)` per split.

    Each split's (dropout rate, tau) is chosen on its validation rows (the
    last 20% of its training rows) among the data folder's grid, then
    retrained on all its training rows. The heteroscedastic network learns
    its noise, so tau only sets its weight decay; it is held at 1."""
    x, y = data_table(splits)
    hidden = splits[0].n_hidden
    fit_rows, validation_rows = zip(*(_split_validation(s.train_rows) for s in splits))
    epochs = protocol.epochs(splits[0])
    seed, num_samples = protocol.seed, protocol.num_samples
    outputs = 2 if heteroscedastic else 1
    taus = (1.0,) if heteroscedastic else splits[0].tau_values
    grid = [(p, tau) for p in splits[0].dropout_rates for tau in taus]

    def fit_grid(member_rows, configs, epoch_seed):
        return train_members(
            x,
            y,
            member_rows,
            outputs,
            hidden,
            epochs,
            BATCH_SIZE,
            epoch_seed,
            rates=np.array([p for p, _ in configs]),
            decays=np.array(
                [_weight_decay(p, t, len(r)) for r, (p, t) in zip(member_rows, configs)]
            ),
            callbacks=protocol.callbacks,
            learning_rate=protocol.learning_rate,
            schedule=protocol.schedule,
            clip_value=protocol.clip_value,
            variance_objective=protocol.variance_objective,
        )

    def member_taus(configs):
        return None if heteroscedastic else np.array([t for _, t in configs])

    # Choose each split's (rate, tau) on the last 20% of its training rows...
    configs = grid * len(splits)
    trained = fit_grid([r for r in fit_rows for _ in grid], configs, seed)
    _, scores = evaluate_members(
        trained,
        x,
        y,
        [r for r in validation_rows for _ in grid],
        VALIDATION_SAMPLES,
        seed,
        member_taus(configs),
    )
    scores = np.where(np.isfinite(scores), scores, np.inf)  # diverged: never chosen
    chosen = [grid[i] for i in scores.reshape(len(splits), len(grid)).argmin(axis=1)]
    # ... then retrain with it on all of them.
    trained = fit_grid([s.train_rows for s in splits], chosen, seed + 1)
    return evaluate_members(
        trained,
        x,
        y,
        [s.test_rows for s in splits],
        num_samples,
        seed,
        member_taus(chosen),
    )


def result_of_splits(dataset, method, splits, rmses, nlls, seconds):
    """The `Result` of the splits that did not diverge.

    Raises:
        FloatingPointError: Every split diverged (non-finite predictions).
    """
    rmses, nlls = np.asarray(rmses, np.float64), np.asarray(nlls, np.float64)
    failed = [s.split for s, v in zip(splits, nlls) if not np.isfinite(v)]
    if failed:
        if len(failed) == len(splits):
            raise FloatingPointError(
                f"{method} diverged (non-finite predictions) on every split of "
                f"{dataset}"
            )
        warnings.warn(
            f"{dataset} {method}: training diverged (non-finite predictions) on "
            f"splits {failed}; the result averages the other "
            f"{len(splits) - len(failed)} splits.",
            RuntimeWarning,
            stacklevel=3,
        )
        keep = np.isfinite(nlls)
        rmses, nlls = rmses[keep], nlls[keep]
    return Result.from_splits(dataset, method, rmses, nlls, seconds)
