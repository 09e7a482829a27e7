"""ku.laplace finds the last linear layer through trailing weightless layers.

A model ending `Dense(k, name="logits")` and a softmax layer (or a reshape)
is, for the Laplace approximation, the model ending in the Dense layer with
that activation: every test compares the Laplace of the same weights in the
two models, or against exact numpy (Bayesian linear regression, the
categorical GGN).
"""

import keras
import numpy as np
import pytest

import keras_uncertainty as ku

D, K = 4, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, K, size=40)
    x = (rng.normal(size=(40, D)) + labels[:, None]).astype("float32")
    y = (x @ rng.normal(size=(D, 1)) + 0.3 * rng.normal(size=(40, 1))).astype("float32")
    return x, labels, y


def _network(units, activation, tail, hidden=True, seed=0):
    """Functional model: [Dense(5, tanh)] -> Dense(units, name="logits")
    -> the layers of `tail`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    h = (
        keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
        if hidden
        else inputs
    )
    out = keras.layers.Dense(units, activation=activation, name="logits")(h)
    for layer in tail:
        out = layer(out)
    return keras.Model(inputs, out)


def _same_weights(model, reference):
    model.set_weights(reference.get_weights())
    return model


def _assert_same_laplace(la, ref, x, likelihood):
    np.testing.assert_allclose(la.posterior_mean_, ref.posterior_mean_, rtol=1e-12)
    np.testing.assert_allclose(
        la.posterior_covariance(), ref.posterior_covariance(), rtol=1e-9, atol=1e-14
    )
    np.testing.assert_allclose(la.prior_precision_, ref.prior_precision_, rtol=1e-9)
    np.testing.assert_allclose(
        la.log_marginal_likelihood_, ref.log_marginal_likelihood_, rtol=1e-9
    )
    for got, want in zip(la.predict_f(x), ref.predict_f(x)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    if likelihood == "classification":
        got, want = la.predict(x, seed=1), ref.predict(x, seed=1)
        for field in ("probs", "entropy", "expected_entropy", "mutual_information"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field), rtol=1e-9, atol=1e-12
            )
    else:
        got, want = la.predict(x), ref.predict(x)
        for field in ("mean", "std", "aleatoric_std", "epistemic_std"):
            np.testing.assert_allclose(
                getattr(got, field), getattr(want, field), rtol=1e-9
            )


TRAILING_SOFTMAX = {
    "Activation": lambda: [keras.layers.Activation("softmax")],
    "Softmax": lambda: [keras.layers.Softmax()],
    "linear-then-Softmax": lambda: [
        keras.layers.Activation("linear"),
        keras.layers.Softmax(),
    ],
    "Reshape-then-softmax": lambda: [
        keras.layers.Reshape((1, K)),
        keras.layers.Activation("softmax"),
        keras.layers.Flatten(),
    ],
}


@pytest.mark.parametrize("tail", sorted(TRAILING_SOFTMAX))
@pytest.mark.parametrize(
    "subset, hessian", [("last_layer", "kron"), ("last_layer", "full"), ("all", "diag")]
)
def test_trailing_softmax_is_read_as_the_dense_layers_softmax(
    data, tail, subset, hessian
):
    x, labels, _ = data
    reference = _network(K, "softmax", [])
    model = _same_weights(_network(K, None, TRAILING_SOFTMAX[tail]()), reference)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-6
    )
    kw = dict(subset=subset, hessian=hessian)
    ref = ku.laplace.Laplace(reference, "classification", **kw).fit(x, labels)
    la = ku.laplace.Laplace(model, "classification", **kw).fit(x, labels)
    _assert_same_laplace(la, ref, x[:6], "classification")
    assert la.last_layer is model.get_layer("logits")


def test_trailing_softmax_gives_the_categorical_ggn_of_the_logits(data):
    """Independent of the library: the full last-layer GGN is
    `sum_n kron(phi~ phi~^T, diag(p) - p p^T)` with `p` the softmax of the
    Dense layer's logits, and the posterior precision adds `delta I`."""
    x, labels, _ = data
    model = _network(K, None, [keras.layers.Softmax()], seed=3)
    delta = 2.0
    la = ku.laplace.Laplace(
        model,
        "classification",
        hessian="full",
        prior_precision=delta,
        fit_prior_precision=False,
    ).fit(x, labels)
    phi = keras.Model(model.inputs, model.get_layer("hidden").output).predict(
        x, verbose=0
    )
    phi = np.c_[phi.astype(np.float64), np.ones(len(x))]
    kernel, bias = (
        np.asarray(w, np.float64) for w in model.get_layer("logits").get_weights()
    )
    p = model.predict(x, verbose=0).astype(np.float64)
    np.testing.assert_allclose(
        p, ku.laplace._numerics.softmax(phi @ np.r_[kernel, bias[None]]), rtol=1e-5
    )
    lam = p[:, :, None] * np.eye(K)[None] - p[:, :, None] * p[:, None, :]
    ggn = np.einsum("ni,nj,nab->iajb", phi, phi, lam).reshape((D + 2) * K, -1)
    np.testing.assert_allclose(
        la.posterior_precision(), ggn + delta * np.eye(len(ggn)), rtol=1e-4, atol=1e-6
    )


def test_trailing_softmax_samples_like_the_dense_softmax_through_the_engine(data):
    x, labels, _ = data
    reference = _network(K, "softmax", [])
    model = _same_weights(_network(K, None, [keras.layers.Softmax()]), reference)
    ref = ku.laplace.Laplace(reference, "classification").fit(x, labels).as_model()
    la = ku.laplace.Laplace(model, "classification").fit(x, labels).as_model()
    want = ku.predict_classification(ref, x[:5], num_samples=20, seed=2)
    got = ku.predict_classification(la, x[:5], num_samples=20, seed=2)
    np.testing.assert_allclose(got.probs, want.probs, rtol=1e-6)
    np.testing.assert_allclose(
        got.mutual_information, want.mutual_information, atol=1e-6
    )


@pytest.mark.parametrize(
    "tail",
    [
        lambda: [keras.layers.Reshape((K,))],
        lambda: [keras.layers.Identity()],
        lambda: [keras.layers.Flatten(), keras.layers.Activation("linear")],
    ],
    ids=["Reshape", "Identity", "Flatten-linear"],
)
def test_logits_output_classifier_is_read_through_reshape_and_identity(data, tail):
    x, labels, _ = data
    reference = _network(K, "softmax", [])
    model = _same_weights(_network(K, None, tail()), reference)
    ref = ku.laplace.Laplace(reference, "classification").fit(x, labels)
    la = ku.laplace.Laplace(model, "classification").fit(x, labels)
    _assert_same_laplace(la, ref, x[:6], "classification")


REGRESSION_TAILS = {
    "Reshape": lambda: [keras.layers.Reshape((1,))],
    "linear": lambda: [keras.layers.Activation("linear")],
    "Identity-Flatten": lambda: [keras.layers.Identity(), keras.layers.Flatten()],
    "Reshape-to-rows": lambda: [keras.layers.Reshape(())],  # output (N,)
}


@pytest.mark.parametrize("tail", sorted(REGRESSION_TAILS))
def test_regression_through_reshape_or_linear_matches_the_plain_dense(data, tail):
    x, _, y = data
    reference = _network(1, None, [])
    model = _same_weights(_network(1, None, REGRESSION_TAILS[tail]()), reference)
    ref = ku.laplace.Laplace(reference, "regression").fit(x, y)
    la = ku.laplace.Laplace(model, "regression").fit(x, y)
    np.testing.assert_allclose(la.sigma_noise_, ref.sigma_noise_, rtol=1e-9)
    _assert_same_laplace(la, ref, x[:6], "regression")
    want = ku.predict_regression(ref.as_model(), x[:5], num_samples=20, seed=2)
    got = ku.predict_regression(la.as_model(), x[:5], num_samples=20, seed=2)
    np.testing.assert_allclose(got.epistemic_std, want.epistemic_std, rtol=1e-5)


def test_linear_model_with_a_trailing_reshape_is_exact_bayesian_linear_regression(
    data,
):
    x, _, y = data
    delta, sigma = 2.0, 0.4
    model = _network(1, None, [keras.layers.Reshape((1,))], hidden=False)
    la = ku.laplace.Laplace(
        model,
        "regression",
        hessian="kron",
        prior_precision=delta,
        sigma_noise=sigma,
        fit_prior_precision=False,
    ).fit(x, y)
    phi = np.c_[x.astype(np.float64), np.ones(len(x))]
    cov = np.linalg.inv(phi.T @ phi / sigma**2 + delta * np.eye(D + 1))
    np.testing.assert_allclose(la.posterior_covariance(), cov, rtol=1e-6, atol=1e-12)
    pred = la.predict(x[:5])
    f_var = np.einsum("ni,ij,nj->n", phi[:5], cov, phi[:5])
    np.testing.assert_allclose(pred.epistemic_std[:, 0] ** 2, f_var, rtol=1e-6)


def test_repr_names_the_last_linear_layer():
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(K, name="logits"),
            keras.layers.Activation("softmax"),
        ]
    )
    la = ku.laplace.Laplace(model, "classification")
    assert la.last_layer is model.get_layer("logits")
    assert repr(la).startswith("Laplace(model=")
    assert repr(la).endswith("last_layer='logits')")
    # An unusable model: the repr still works, and says it found none.
    bad = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(K), keras.layers.Lambda(lambda t: t)]
    )
    assert repr(ku.laplace.Laplace(bad)).endswith("last_layer=None)")
    # get_config stays the constructor's arguments.
    assert "last_layer" not in la.get_config()


class _Doubles(keras.layers.Layer):
    """A custom weightless layer: not an activation the Laplace can read."""

    def call(self, inputs):
        return 2.0 * inputs


class _CustomSoftmax(keras.layers.Activation):
    """A subclass of Activation may compute anything in `call`."""

    def call(self, inputs):
        return keras.ops.softmax(inputs * 3.0)


def _normalization(x_logits):
    layer = keras.layers.Normalization()
    layer.adapt(x_logits)
    return layer


REFUSED = {
    "Lambda": (lambda: [keras.layers.Lambda(lambda t: t * 2.0)], "Lambda"),
    "custom layer": (lambda: [_Doubles(name="doubles")], "_Doubles 'doubles'"),
    "Activation subclass": (lambda: [_CustomSoftmax("softmax")], "_CustomSoftmax"),
    "Normalization": (
        lambda: [_normalization(np.random.default_rng(0).normal(size=(8, K)))],
        "Normalization",
    ),
    "two softmaxes": (
        lambda: [keras.layers.Activation("softmax"), keras.layers.Softmax()],
        "and then softmax",
    ),
    "softmax over one value": (
        lambda: [keras.layers.Reshape((K, 1)), keras.layers.Activation("softmax")],
        "on shape",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_trailing_layer_that_changes_the_formulas_is_refused(data, case):
    x, labels, _ = data
    tail, received = REFUSED[case]
    model = _network(K, None, tail())
    with pytest.raises(ValueError) as error:
        ku.laplace.Laplace(model, "classification").fit(x, labels)
    message = str(error.value)
    assert message.startswith("Invalid value received for argument `model`. Expected ")
    assert "keras.layers.Dense" in message
    assert "Received: model=" in message and received in message


def test_keras_ops_output_and_sequence_dense_are_refused(data):
    x, labels, _ = data
    inputs = keras.Input((D,))
    probs = keras.ops.softmax(keras.layers.Dense(K)(inputs))
    with pytest.raises(ValueError, match="Received: model=.*keras.ops operation"):
        ku.laplace.Laplace(keras.Model(inputs, probs), "classification").fit(x, labels)
    # A Dense on sequences, flattened: not one linear map of (batch, d) rows.
    sequences = keras.Input((2, D))
    out = keras.layers.Flatten()(keras.layers.Dense(1)(sequences))
    with pytest.raises(ValueError, match=r"Received: model=.*shape \(None, 2, 4\)"):
        ku.laplace.Laplace(keras.Model(sequences, out), "regression").fit(
            np.stack([x, x], axis=1), np.zeros((40, 2))
        )


@pytest.mark.parametrize(
    "likelihood, activation",
    [
        ("classification", "sigmoid"),
        ("regression", "softmax"),
        ("regression", "relu"),
    ],
)
def test_trailing_activation_is_checked_as_the_dense_layers_own(
    data, likelihood, activation
):
    """What a Dense with that activation gets, a trailing one gets: refused
    with the activation named."""
    x, labels, y = data
    targets = labels if likelihood == "classification" else y
    units = K if likelihood == "classification" else 1
    layer = (
        keras.layers.ReLU()
        if activation == "relu"
        else keras.layers.Activation(activation)
    )
    for model in (_network(units, activation, []), _network(units, None, [layer])):
        with pytest.raises(
            ValueError, match=f"activation in .*Received: model=.*{activation}"
        ):
            ku.laplace.Laplace(model, likelihood).fit(x, targets)
