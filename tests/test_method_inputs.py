"""Every method's model refuses, through `ku.predict_*`, the bad inputs the
MC dropout models refuse, and gives finite results on good ones."""

import keras
import numpy as np
import pytest

import keras_uncertainty as ku

D, K = 4, 3


def _classifier_layers():
    return [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(K, "softmax")]


def _flipout():
    return keras.Sequential(
        [keras.Input((D,)), ku.layers.DenseFlipout(8, activation="relu"),
         ku.layers.DenseFlipout(K, activation="softmax")]
    )  # fmt: skip


def _laplace(x, y):
    net = keras.Sequential([keras.Input((D,)), *_classifier_layers()])
    return ku.laplace.Laplace(net, "classification").fit(x, y).as_model("weights")


def _swag(x, y):
    net = keras.Sequential([keras.Input((D,)), *_classifier_layers()])
    net.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    callback = ku.swag.SWAGCallback(start_epoch=0, max_rank=3)
    net.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    return ku.swag.SWAG(net, callback)


def _batch_ensemble():
    network = keras.Sequential(
        [keras.Input((D,)), ku.layers.BatchEnsembleDense(8, 3, activation="relu"),
         ku.layers.BatchEnsembleDense(K, 3, activation="softmax")]
    )  # fmt: skip
    return ku.BatchEnsemble(network, num_members=3)


def _mimo():
    def backbone(shape):
        inputs = keras.Input(shape)
        return keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))

    return ku.MIMO(backbone, (D,), num_outputs=K, output_activation="softmax")


def _sngp():
    inputs = keras.Input((D,))
    hidden = ku.layers.SNGPSpectralNormalization(
        keras.layers.Dense(8, activation="relu")
    )(inputs)
    outputs = ku.layers.RandomFeatureGaussianProcess(K, num_inducing=16)(hidden)
    return ku.sngp.SNGPModel(inputs, outputs)


BUILDERS = {
    "flipout": lambda x, y: _flipout(),
    "laplace": _laplace,
    "swag": _swag,
    "batch_ensemble": lambda x, y: _batch_ensemble(),
    "mimo": lambda x, y: _mimo(),
    "sngp": lambda x, y: _sngp(),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, D)).astype("float32")
    return x, rng.integers(0, K, size=64)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request, data):
    keras.utils.set_random_seed(0)
    return BUILDERS[request.param](*data)


def test_good_inputs_give_finite_checked_results(model, data):
    x, _ = data
    # One-pass mixtures (BatchEnsemble, MIMO) and SNGP take no num_samples.
    sampled = isinstance(
        model, (keras.Sequential, ku.laplace.LaplaceModel, ku.swag.SWAG)
    )
    kwargs = {"num_samples": 5} if sampled else {}
    pred = ku.predict_classification(model, x[:10], seed=0, **kwargs)
    assert pred.probs.shape == (10, K)
    for field in ("probs", "entropy", "expected_entropy", "mutual_information"):
        assert np.all(np.isfinite(getattr(pred, field))), field
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((2, D), np.nan, "float32"), "finite"),
        (np.full((2, D), np.inf, "float32"), "finite"),
        ([], "at least one row"),
        ([[1.0, 2.0, 3.0, 4.0], [1.0]], "same shape"),
        (np.array([["a"] * D]), "Expected numbers"),
    ],
    ids=["nan", "inf", "empty", "ragged", "strings"],
)
def test_bad_inputs_are_refused_with_the_reason(model, bad, message):
    with pytest.raises(ValueError, match=message):
        ku.predict_classification(model, bad, num_samples=2)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_samples": 0}, "num_samples"), ({"batch_size": 0}, "batch_size"),
     ({"seed": -1}, "seed"), ({"verbose": 3}, "verbose")],
)  # fmt: skip
def test_bad_arguments_name_the_argument(model, data, kwargs, name):
    x, _ = data
    args = {"num_samples": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        ku.predict_classification(model, x[:3], **args)


@pytest.mark.parametrize("name", ["flipout", "laplace", "swag"])
def test_weight_draws_bound_the_samples_per_call(name, data, monkeypatch):
    # A model that draws weights per sample says how many floats a sample
    # holds; the engine fits the samples of one call in its byte budget
    # (shrunk here to about 3 samples), and the seeded samples do not depend
    # on that chunking.
    from keras_uncertainty.sampling import engine, sampled_model

    x, y = data
    keras.utils.set_random_seed(0)
    model = BUILDERS[name](x, y)
    per_sample = engine.sample_floats(sampled_model(model))
    assert per_sample > 0
    expected = np.asarray(ku.sample(model, x[:4], 10, seed=3))
    calls = []
    runner_call = engine._Runner.__call__

    def counted(self, *args, **kwargs):
        calls.append(args[2])  # the samples of this call
        return runner_call(self, *args, **kwargs)

    monkeypatch.setattr(engine._Runner, "__call__", counted)
    monkeypatch.setattr(engine, "_ROW_BUDGET_BYTES", 4 * per_sample * 3)
    chunked = np.asarray(ku.sample(model, x[:4], 10, seed=3))
    assert calls == [3, 3, 3, 1]
    np.testing.assert_allclose(chunked, expected, rtol=1e-6, atol=1e-7)
