"""The methods of the MNIST benchmark: one class per method, one contract.

Every method is an `MNISTMethod`: `build(num_train)` returns its compiled,
untrained LeNet-5 variant, `fit` trains it (and fits what a post-hoc method
adds), and `predict` returns a `ku.ClassificationPrediction`. `METHODS`
maps the command line's names to them; `keras_uncertainty.experiments.mnist`
runs any of them and knows none by name.

Every network is the article's LeNet-5 (`ku.models.lenet5`: Conv 6@5x5
tanh, average pool, Conv 16@5x5 tanh, average pool, Dense 120 and 84 tanh, a
softmax over the 10 digits) with each method's change, trained with Adam
1e-3 on batches of 64 (the article's settings).
"""

import keras

from keras_uncertainty.models import lenet5

LEARNING_RATE, BATCH_SIZE = 1e-3, 64  # the article's


def lenet_layers(conv=None, dense=None, wrap=lambda layer: layer):
    """The LeNet-5 trunk (without its output layer) as a list of layers:
    `conv(filters, size, activation)` and `dense(units, activation)` make
    its weighted layers (Keras's by default), `wrap` wraps each (SNGP's
    spectral normalization)."""
    conv = conv or (
        lambda f, k, activation: keras.layers.Conv2D(f, k, activation=activation)
    )
    dense = dense or (
        lambda u, activation: keras.layers.Dense(u, activation=activation)
    )
    return [
        keras.Input((32, 32, 1)),
        wrap(conv(6, 5, "tanh")),
        keras.layers.AveragePooling2D(2),
        wrap(conv(16, 5, "tanh")),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        wrap(dense(120, "tanh")),
        wrap(dense(84, "tanh")),
    ]


class MNISTMethod:
    """One method of the MNIST benchmark (see the module docstring).

    Attributes:
        name: The command line's `--method` name.
        label: Its name in tables and figures.
        family: The README's family.
        epochs: Training epochs on the test-only protocol's 8,000 images.
        article_epochs: With the 60,000 training images.
        votes: Whether `predict` counts each sample's vote (sampled methods).
        one_pass: Whether the model gives its own samples (one per member,
            or a closed form), so `predict` does not ask for T of them.
        settings: `(setting, value, source)` triples for the defaults table.
    """

    name = label = family = None
    epochs, article_epochs = 10, 10
    votes = True
    one_pass = False  # True: predict ignores num_samples (members or one pass)
    settings = ()

    def loss(self):
        return "sparse_categorical_crossentropy"

    def network(self, num_train):
        raise NotImplementedError

    def build(self, num_train):
        model = self.network(num_train)
        model.compile(keras.optimizers.Adam(LEARNING_RATE), loss=self.loss())
        return model

    def callbacks(self):
        return []

    def fit(self, model, x, y, epochs, callbacks=()):
        """Trains `model`; returns what `predict` takes."""
        model.fit(
            x,
            y,
            epochs=epochs,
            batch_size=BATCH_SIZE,
            verbose=0,
            callbacks=[*self.callbacks(), *callbacks],
        )
        return model

    def predict(self, model, x, num_samples, seed):
        from keras_uncertainty.sampling import predict_classification

        if self.one_pass:
            num_samples = None  # the model's own samples: one per member or pass
        return predict_classification(
            model, x, num_samples=num_samples, seed=seed, votes=self.votes, verbose=0
        )


class MCDropout(MNISTMethod):
    name, label, family = "mc-dropout", "MC dropout", "MC dropout"
    # 8,000 images give 1,250 updates per 10 epochs (the article: 9,400);
    # the channel dropout network is still fitting after 10.
    epochs = 30
    settings = (
        ("network", "LeNet-5, channel dropout 0.5 after each convolution", "[A]"),
        ("samples", "T = 100", "[A]"),
    )

    def network(self, num_train):
        return lenet5(dropout_rate=0.5)


class DeepEnsemble(MNISTMethod):
    name, label, family = "ensemble", "Deep Ensemble", "Ensembles"
    members = 5  # Lakshminarayanan et al. (2017)
    one_pass = True
    settings = (("members", "5 LeNet-5s, random initializations", "[L 2017]"),)

    def network(self, num_train):
        from keras_uncertainty.ensemble import Ensemble

        return Ensemble(lambda: lenet5(dropout_rate=0.0), self.members)


class Deterministic(MNISTMethod):
    name, label, family = "deterministic", "deterministic softmax", "baseline"
    votes = False
    settings = (("network", "LeNet-5, one pass, softmax entropy", "[A]"),)

    def network(self, num_train):
        return lenet5(dropout_rate=0.0)

    def predict(self, model, x, num_samples, seed):
        from keras_uncertainty.sampling import ClassificationPrediction, formulas

        # One pass: the moments of a single probability sample.
        probs = model.predict(x, batch_size=1024, verbose=0)[None]
        sums = [
            keras.ops.convert_to_numpy(v)
            for v in formulas.classification_moments(probs, False)
        ]
        return ClassificationPrediction.from_moments(*sums, 1)


class Flipout(MNISTMethod):
    name, label, family = "vi", "Flipout VI", "Bayesian weights"
    epochs = 30
    settings = (
        ("layers", "DenseFlipout for the three Dense layers", "ours"),
        ("prior, KL", "N(0, 1), KL weight 1 / N", "[B 2015]"),
        ("samples", "T = 100", "[A]"),
    )

    def network(self, num_train):
        from keras_uncertainty.layers import DenseFlipout

        def dense(units, activation):
            return DenseFlipout(units, activation=activation, kl_weight=1 / num_train)

        return keras.Sequential(
            [*lenet_layers(dense=dense), dense(10, "softmax")], name="lenet5_flipout"
        )


class LastLayerLaplace(Deterministic):
    name, label, family = "laplace", "Laplace", "Bayesian weights"
    votes = False
    settings = (
        ("posterior", "last layer, KFAC GGN, prior by marginal likelihood", "[D 2021]"),
        ("predictive", "probit (GLM)", "[D 2021]"),
    )

    def fit(self, model, x, y, epochs, callbacks=()):
        from keras_uncertainty.laplace import Laplace

        super().fit(model, x, y, epochs, callbacks)
        return Laplace(model, "classification").fit(x, y)

    def predict(self, model, x, num_samples, seed):
        return model.predict(x)


class SWAG(Deterministic):
    name, label, family = "swag", "SWAG", "Bayesian weights"
    votes = True
    collect_epochs = 5
    settings = (
        ("collection", "5 more epochs, Adam 1e-4, 4 snapshots per epoch", "ours"),
        ("rank", "20 deviations, scale 0.5", "[M 2019]"),
        ("samples", "T = 100", "[A]"),
    )

    def fit(self, model, x, y, epochs, callbacks=()):
        from keras_uncertainty.swag import SWAG as SWAGModel
        from keras_uncertainty.swag import SWAGCallback

        MNISTMethod.fit(self, model, x, y, epochs, callbacks)
        model.compile(keras.optimizers.Adam(LEARNING_RATE / 10), loss=self.loss())
        steps = -(-len(x) // BATCH_SIZE)
        collect = SWAGCallback(collect_every=max(1, steps // 4), unit="batch")
        MNISTMethod.fit(self, model, x, y, self.collect_epochs, [collect, *callbacks])
        return SWAGModel(model, collect)

    def predict(self, model, x, num_samples, seed):
        return MNISTMethod.predict(self, model, x, num_samples, seed)


class BatchEnsemble(MNISTMethod):
    name, label, family = "batch-ensemble", "BatchEnsemble", "Ensembles"
    members = 4
    one_pass = True
    settings = (("members", "4, rank-1 factors on every layer", "[W 2020]"),)

    def network(self, num_train):
        from keras_uncertainty.ensemble.batch_ensemble import BatchEnsemble as BE
        from keras_uncertainty.layers import BatchEnsembleConv2D, BatchEnsembleDense

        def network(m):
            def conv(filters, size, activation):
                return BatchEnsembleConv2D(filters, size, m, activation=activation)

            def dense(units, activation):
                return BatchEnsembleDense(units, m, activation=activation)

            return keras.Sequential([*lenet_layers(conv, dense), dense(10, "softmax")])

        return BE(network, num_members=self.members)


class MIMO(MNISTMethod):
    name, label, family = "mimo", "MIMO", "Ensembles"
    members = 3
    one_pass = True
    settings = (("members", "3 heads, no input repetition", "[H 2021]"),)

    def network(self, num_train):
        from keras_uncertainty.ensemble.mimo import MIMO as MIMOModel

        def backbone(shape):
            inputs = keras.Input(shape)
            hidden = inputs
            for layer in lenet_layers()[1:]:
                hidden = layer(hidden)
            return keras.Model(inputs, hidden)

        return MIMOModel(
            backbone,
            (32, 32, 1),
            num_outputs=10,
            num_members=self.members,
            output_activation="softmax",
        )


class SNGP(MNISTMethod):
    name, label, family = "sngp", "SNGP", "One pass"
    votes = False
    one_pass = True
    settings = (
        (
            "normalization",
            "spectral, norm bound 0.95, every weighted layer",
            "[L 2020]",
        ),
        ("output", "random-feature GP, 1024 features, mean-field", "[L 2020]"),
    )

    def network(self, num_train):
        from keras_uncertainty.layers import (
            RandomFeatureGaussianProcess,
            SNGPModel,
            SNGPSpectralNormalization,
        )

        def normalize(layer):
            return SNGPSpectralNormalization(layer, norm_multiplier=0.95)

        trunk = keras.Sequential(lenet_layers(wrap=normalize))
        inputs = keras.Input((32, 32, 1))
        outputs = RandomFeatureGaussianProcess(10)(trunk(inputs))
        return SNGPModel(inputs, outputs)

    def callbacks(self):
        from keras_uncertainty.callbacks import SNGPCovarianceReset

        return [SNGPCovarianceReset()]


class Evidential(MNISTMethod):
    name, label, family = "evidential", "Evidential", "One pass"
    votes = False
    settings = (
        ("head", "Dirichlet (evidence by softplus)", "[S 2018]"),
        ("loss", "expected MSE + annealed KL to the uniform Dirichlet", "[S 2018]"),
    )

    def network(self, num_train):
        from keras_uncertainty.evidential import DirichletHead

        return keras.Sequential([*lenet_layers(), DirichletHead(10)])

    def loss(self):
        from keras_uncertainty.evidential import EvidentialClassificationLoss

        return EvidentialClassificationLoss()

    def callbacks(self):
        from keras_uncertainty.evidential import KLAnnealing

        return [KLAnnealing()]

    def predict(self, model, x, num_samples, seed):
        from keras_uncertainty.evidential import predict_classification

        return predict_classification(model, x, verbose=0)


METHODS = {
    method.name: method
    for method in (
        MCDropout(),
        DeepEnsemble(),
        Flipout(),
        LastLayerLaplace(),
        SWAG(),
        BatchEnsemble(),
        MIMO(),
        SNGP(),
        Evidential(),
        Deterministic(),
    )
}
