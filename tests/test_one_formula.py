"""Each formula in one place: the unified formulas and checks against
independent references (scipy, closed forms), in numpy and in-graph forms,
and every former call site giving the same numbers through the public APIs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import digamma, logsumexp
from scipy.special import log_softmax as scipy_log_softmax
from scipy.stats import entropy as scipy_entropy

import keras_uncertainty as ku
from keras_uncertainty import _validation
from keras_uncertainty.losses.gaussian_nll import align_targets
from keras_uncertainty.sampling import formulas


def _samples(seed, t=7, n=20, c=5, sharpness=3.0):
    """`(t, n, c)` probability vectors, with exact zeros in a few rows."""
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.normal(size=(t, n, c))
    samples = np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))
    samples[:, 0] = np.eye(c)[0]  # one-hot in every sample: 0 log 0 = 0
    samples[0, 1] = np.eye(c)[1]  # one sample one-hot, the others not
    return samples


def _reference_split(samples):
    """scipy's entropies: `(H[mean], mean H, max(H[mean] - mean H, 0))`."""
    total = scipy_entropy(samples.mean(0), axis=-1)
    expected = scipy_entropy(samples, axis=-1).mean(0)
    return total, expected, np.maximum(total - expected, 0.0)


# --------------------------------------------------------------------------
# The formulas against references


def test_entropy_numpy_and_graph_forms_equal_scipy():
    probs = _samples(0)[0]
    reference = scipy_entropy(probs, axis=-1)
    np.testing.assert_allclose(formulas.entropy(probs), reference, rtol=1e-12)
    graph = formulas.entropy(tf.constant(probs))
    assert isinstance(graph, tf.Tensor)
    np.testing.assert_allclose(graph.numpy(), reference, rtol=1e-12)
    assert formulas.entropy(probs)[0] == 0.0 == graph.numpy()[0]


def test_entropy_split_numpy_form_equals_scipy():
    samples = _samples(1)
    expected_entropy = scipy_entropy(samples, axis=-1).mean(0)
    got = formulas.entropy_split(samples.mean(0), expected_entropy)
    for value, reference in zip(got, _reference_split(samples)):
        assert isinstance(value, np.ndarray)
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-15)
    for value, reference in zip(
        formulas.entropy_split_of_samples(samples), _reference_split(samples)
    ):
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_entropy_split_graph_form_equals_the_numpy_form(dtype):
    samples = _samples(2)
    mean = samples.mean(0)
    expected_entropy = formulas.entropy(samples).mean(0)
    numpy_form = formulas.entropy_split(mean, expected_entropy)
    graph_form = tf.function(formulas.entropy_split_graph)(
        tf.constant(mean, dtype), tf.constant(expected_entropy, dtype)
    )
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for value, reference in zip(graph_form, numpy_form):
        assert isinstance(value, tf.Tensor)
        np.testing.assert_allclose(value.numpy(), reference, rtol=rtol, atol=1e-6)


def test_entropy_split_clips_rounding_below_zero_in_both_forms():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    total = scipy_entropy(probs, axis=-1)
    above = total + np.array([1e-15, 1e-15])  # a rounding error's excess
    for split in (formulas.entropy_split, formulas.entropy_split_graph):
        _, expected, mutual_information = split(probs, above)
        np.testing.assert_array_equal(np.asarray(expected), above)
        np.testing.assert_array_equal(np.asarray(mutual_information), [0.0, 0.0])


def test_log_softmax_numpy_and_graph_forms_equal_scipy():
    rng = np.random.default_rng(3)
    logits = 10 * rng.normal(size=(6, 4))
    logits[0] = [1000.0, -1000.0, 0.0, 1.0]  # no overflow, no log 0
    reference = scipy_log_softmax(logits, axis=-1)
    np.testing.assert_allclose(
        formulas.log_softmax(logits), reference, rtol=1e-12, atol=1e-15
    )
    graph = keras.ops.log_softmax(tf.constant(logits), axis=-1)
    np.testing.assert_allclose(np.asarray(graph), reference, rtol=1e-12, atol=1e-15)


def test_logsumexp_numpy_and_graph_forms_equal_scipy():
    rng = np.random.default_rng(8)
    values = 50 * rng.normal(size=(5, 6))
    values[0] = [800.0, 799.0, -np.inf, 0.0, 1.0, 2.0]  # exp(800) overflows
    reference = logsumexp(values, axis=-1)
    np.testing.assert_allclose(formulas.logsumexp(values), reference, rtol=1e-12)
    np.testing.assert_allclose(
        formulas.logsumexp(values.T, axis=0), reference, rtol=1e-12
    )
    graph = keras.ops.logsumexp(tf.constant(values), axis=-1)
    np.testing.assert_allclose(np.asarray(graph), reference, rtol=1e-12)
    # A slice of only -inf: -inf, not NaN (the Mahalanobis/density case).
    assert formulas.logsumexp(np.full((1, 3), -np.inf))[0] == -np.inf
    # The energy score is its negation at T = 1, -T logsumexp(z / T) else.
    logits = values[1:]
    np.testing.assert_allclose(ku.ood.energy(logits), -logsumexp(logits, axis=-1))
    np.testing.assert_allclose(
        ku.ood.energy(logits, temperature=2.0),
        -2.0 * logsumexp(logits / 2.0, axis=-1),
    )


# --------------------------------------------------------------------------
# Former call sites, through the public APIs


def _mc_classifier():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = ku.layers.MCDropout(0.5)(h)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(h))


def test_predict_classification_equals_scipy_on_its_samples():
    keras.utils.set_random_seed(0)
    model = _mc_classifier()
    x = np.random.default_rng(4).normal(size=(12, 3)).astype("float32")
    samples = np.asarray(ku.sample(model, x, num_samples=9, seed=5), np.float64)
    # float32 softmax rows sum to 1 within rounding; scipy's entropy would
    # renormalize them, so renormalize for every form alike.
    samples /= samples.sum(-1, keepdims=True)
    prediction = ku.predict_classification(model, x, num_samples=9, seed=5)
    total, expected, mutual_information = _reference_split(samples)
    np.testing.assert_allclose(prediction.probs, samples.mean(0), rtol=1e-6)
    np.testing.assert_allclose(prediction.entropy, total, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        prediction.expected_entropy, expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        prediction.mutual_information, mutual_information, rtol=1e-4, atol=1e-6
    )
    # The OOD scores read the same numbers off the prediction and off the
    # samples (the former copies of the split there and here agree).
    np.testing.assert_array_equal(ku.ood.entropy(prediction), prediction.entropy)
    np.testing.assert_array_equal(
        ku.ood.mutual_information(prediction), prediction.mutual_information
    )
    np.testing.assert_allclose(
        ku.ood.mutual_information(samples), mutual_information, rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(
        ku.ood.entropy(samples.mean(0)), total, rtol=1e-12, atol=0
    )


def test_classification_prediction_from_moments_is_the_numpy_split():
    samples = _samples(6)
    prediction = ku.ClassificationPrediction.from_moments(
        samples.sum(0), formulas.entropy(samples).sum(0), None, len(samples)
    )
    got = (
        prediction.entropy,
        prediction.expected_entropy,
        prediction.mutual_information,
    )
    for value, reference in zip(got, _reference_split(samples)):
        np.testing.assert_allclose(value, reference, rtol=1e-12, atol=1e-15)


def test_evidential_prediction_equals_the_dirichlet_closed_form():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, ku.evidential.DirichletHead(4)(h))
    x = np.random.default_rng(7).normal(size=(10, 3)).astype("float32")
    alpha = np.asarray(model.predict(x, verbose=0), np.float64)
    strength = alpha.sum(-1, keepdims=True)
    probs = alpha / strength
    total = scipy_entropy(probs, axis=-1)
    # E_{p ~ Dir(alpha)}[H(p)] = -sum_c (alpha_c / S)(psi(alpha_c + 1) - psi(S + 1))
    expected = -np.sum(probs * (digamma(alpha + 1) - digamma(strength + 1)), -1)
    prediction = ku.predict_classification(model, x)
    np.testing.assert_allclose(prediction.probs, probs, rtol=1e-6)
    np.testing.assert_allclose(prediction.entropy, total, rtol=1e-5)
    np.testing.assert_allclose(prediction.expected_entropy, expected, rtol=1e-5)
    np.testing.assert_allclose(
        prediction.mutual_information,
        np.maximum(total - expected, 0.0),
        rtol=1e-3,
        atol=1e-6,
    )
    np.testing.assert_allclose(prediction.vacuity, 4 / strength[:, 0], rtol=1e-6)


# --------------------------------------------------------------------------
# The checks


def test_align_targets_gives_one_column_per_target_or_names_the_layout():
    mean = tf.zeros((5, 1))
    np.testing.assert_array_equal(
        align_targets(np.arange(5.0), mean).numpy(), np.arange(5.0)[:, None]
    )
    assert align_targets(np.ones((5, 1), "int32"), mean).dtype == mean.dtype
    with pytest.raises(ValueError, match=r"2\*k .*y_pred with 1 means \(2\*1"):
        align_targets(np.ones((5, 2)), mean)
    with pytest.raises(ValueError, match=r"4\*k .*y_pred with 1 targets \(4\*1"):
        align_targets(np.ones((5, 2)), mean, columns=4, unit="targets")
    # Both losses use it: the same message from the NLL and the NIG losses.
    with pytest.raises(ValueError, match=r"last dimension 2\*k"):
        ku.losses.gaussian_nll(np.ones((4, 2)), np.zeros((4, 2), "float32"))
    with pytest.raises(ValueError, match=r"last dimension 4\*k"):
        ku.evidential.nig_nll(np.ones((4, 2)), np.ones((4, 4), "float32"))


@pytest.mark.parametrize(
    "value, expected",
    [(3, (3, 3)), ((1, 2), (1, 2)), ([2, 1], (2, 1)), (np.array([3, 3]), (3, 3))],
)
def test_int_tuple_accepts_an_integer_or_rank_of_them(value, expected):
    assert _validation.int_tuple(value, 2, "strides") == expected


@pytest.mark.parametrize("value", [0, (1,), (1, 0), True, 2.0, "22", None, (1, 2.0)])
def test_int_tuple_names_the_argument(value):
    with pytest.raises(
        ValueError,
        match=r"argument `strides`\. Expected a positive integer or a tuple of "
        r"2 positive integers\. Received: strides=",
    ):
        _validation.int_tuple(value, 2, "strides")


def test_check_choice_and_conv_arguments():
    assert _validation.check_choice("Same", "padding", ("valid", "same"), True) == (
        "same"
    )
    assert _validation.check_choice(None, "activation", ("softmax", None)) is None
    with pytest.raises(ValueError, match=r"`padding`. Expected one of \['valid'"):
        _validation.check_choice("causal", "padding", ("valid", "same"), lower=True)
    with pytest.raises(ValueError, match="Received: activation='Softmax'"):
        _validation.check_choice("Softmax", "activation", ("softmax", None))
    with pytest.raises(ValueError, match="Received: padding=None"):
        _validation.check_choice(None, "padding", ("valid", "same"), lower=True)
    assert _validation.check_conv_arguments(1, 3, 2, "VALID", 1) == (
        (3,),
        (2,),
        "valid",
        (1,),
    )
    with pytest.raises(ValueError, match="Expected at most one of them above 1"):
        _validation.check_conv_arguments(2, 3, 2, "same", 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: ku.layers.PackedConv2D(2, num_members=2, **kw),
        lambda **kw: ku.layers.BatchEnsembleConv2D(2, num_members=2, **kw),
        lambda **kw: ku.layers.Conv2DFlipout(2, **kw),
    ],
    ids=["packed", "batch_ensemble", "flipout"],
)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": (3,)}, r"`kernel_size`.*tuple of 2 positive integers"),
        ({"kernel_size": 3, "strides": 0}, r"`strides`.*Received: strides=0"),
        ({"kernel_size": 3, "padding": "causal"}, r"`padding`. Expected one of"),
        (
            {"kernel_size": 3, "strides": 2, "dilation_rate": 2},
            r"`strides` and `dilation_rate`. Expected at most one of them above 1",
        ),
    ],
)
def test_every_convolution_checks_its_arguments_alike(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)
    layer = make(kernel_size=[3, 1], padding="SAME")
    assert (layer.kernel_size, layer.padding) == ((3, 1), "same")


def test_the_two_unfoldings_say_their_layout():
    from keras_uncertainty.layers.batch_ensemble import unfold_members_to_rows
    from keras_uncertainty.layers.packed import fold_members, unfold_members_to_axis

    members = np.arange(2 * 3 * 4 * 4 * 5, dtype="float32").reshape(2, 3, 4, 4, 5)
    folded = fold_members(tf.constant(members))  # (3, 4, 4, 2 * 5)
    np.testing.assert_array_equal(unfold_members_to_axis(folded, 2).numpy(), members)
    np.testing.assert_array_equal(
        unfold_members_to_rows(folded, 2).numpy(), members.reshape(6, 4, 4, 5)
    )


def test_ood_array_checks_are_the_shared_ones():
    with pytest.raises(ValueError, match=r"`logits`. Expected shape \(N, C\)"):
        ku.ood.max_logit(np.zeros(3))
    with pytest.raises(ValueError, match=r"`samples`. Expected shape \(T, N, C\)"):
        ku.ood.mutual_information(np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"`samples`. Expected non-negative rows"):
        ku.ood.mutual_information(np.full((2, 2, 3), 0.5))
    with pytest.raises(ValueError, match=r"`probs`. Expected finite values"):
        ku.ood.msp(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"`features`. Expected shape \(N, D\): one"):
        ku.ood.Mahalanobis().fit(np.zeros((4, 2, 2)), np.zeros(4, int))


@pytest.mark.parametrize(
    "make, name",
    [
        (
            lambda v: ku.evidential.EvidentialClassificationLoss(kl_weight=v),
            "kl_weight",
        ),
        (lambda v: ku.evidential.EvidentialRegressionLoss(coeff=v), "coeff"),
        (lambda v: ku.ood.Mahalanobis(ridge=v), "ridge"),
        (lambda v: ku.layers.DenseFlipout(2, kl_weight=v), "kl_weight"),
    ],
)
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "1"])
def test_every_non_negative_number_is_checked_alike(make, name, value):
    with pytest.raises(
        ValueError,
        match=rf"argument `{name}`\. Expected a finite number >= 0(\.0)?\. "
        rf"Received: {name}=",
    ):
        make(value)


def test_check_finite_bounds_and_none():
    check = _validation.check_finite
    assert check(None, "m", allow_none=True) is None
    assert check(3, "m", 0) == 3.0 and isinstance(check(3, "m", 0), float)
    with pytest.raises(ValueError, match=r"Expected None or a finite number\. "):
        check(float("nan"), "m", allow_none=True)
    with pytest.raises(ValueError, match=r"Expected a finite number > 0 and < 1\."):
        check(1, "p", 0, True, 1, True)
    with pytest.raises(ValueError, match=r">= 0 \(pi / 8\)\. Received: f=-1"):
        check(-1, "f", 0, hint=" (pi / 8)")
    assert _validation.check_positive_finite(0.5, "s") == 0.5
    with pytest.raises(ValueError, match=r"`s`\. Expected a finite number > 0\."):
        _validation.check_positive_finite(0, "s")
