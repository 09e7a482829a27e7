import logging
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku


def _numpy_regression(samples):
    """The formulas of the issue, on samples of (mu, log_var)."""
    mu, var = samples[..., :1].astype(np.float64), np.exp(samples[..., 1:])
    mean = mu.mean(0)
    total = (var + mu**2).mean(0) - mean**2
    return mean, np.sqrt(total), np.sqrt(var.mean(0)), np.sqrt(mu.var(0))


def _numpy_entropy(p):
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def test_sample_shape_and_spread(regression_model, regression_data):
    x, _ = regression_data
    samples = ku.sample(regression_model, x[:10], num_samples=7, seed=0)
    assert samples.shape == (7, 10, 2)
    assert samples.dtype == np.float32
    assert np.all(samples.std(axis=0) > 0)


@pytest.mark.parametrize(
    "batch_size,max_rows_per_call", [(None, None), (64, None), (3, 20)]
)
def test_regression_formulas_match_numpy_on_the_same_samples(
    regression_model, regression_data, batch_size, max_rows_per_call
):
    # 3 inputs x 25 samples > 20 rows per call also splits the samples of
    # each input over several calls, whose moments are merged.
    x, _ = regression_data
    args = dict(
        num_samples=25,
        batch_size=batch_size,
        max_rows_per_call=max_rows_per_call,
        seed=11,
    )
    samples = ku.sample(regression_model, x, **args)
    prediction = ku.predict_regression(regression_model, x, **args)
    mean, std, aleatoric, epistemic = _numpy_regression(samples)
    np.testing.assert_allclose(prediction.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.std, std, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prediction.aleatoric_std, aleatoric, rtol=1e-5)
    np.testing.assert_allclose(
        prediction.epistemic_std, epistemic, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        prediction.std**2,
        prediction.aleatoric_std**2 + prediction.epistemic_std**2,
        rtol=1e-10,
    )
    assert prediction.mean.shape == (len(x), 1)


def test_prediction_is_a_frozen_dataclass(regression_model, regression_data):
    prediction = ku.predict_regression(regression_model, regression_data[0][:5])
    with pytest.raises(AttributeError):
        prediction.mean = None
    assert "aleatoric_std^2 = mean_t sigma_t^2" in ku.RegressionPrediction.__doc__


@pytest.mark.parametrize("max_rows_per_call", [None, 100])
def test_epistemic_variance_survives_a_large_mean(max_rows_per_call):
    # A mean of 1e4 with a spread of 1e-2: the naive E[mu^2] - E[mu]^2 in
    # float32 loses the spread entirely; the two-pass moments keep it, in one
    # call of 400 samples or in chunks of them.
    inputs = keras.Input((1,))
    noisy = ku.layers.MCGaussianDropout(0.5, seed=0)(inputs)
    outputs = keras.layers.Dense(
        1, bias_initializer=keras.initializers.Constant(1e4), kernel_initializer="ones"
    )(noisy)
    model = keras.Model(inputs, outputs)
    x = np.full((4, 1), 0.01, "float32")
    prediction = ku.predict_regression(
        model, x, num_samples=400, seed=0, max_rows_per_call=max_rows_per_call
    )
    # noise std sqrt(0.5/0.5) = 1 on an input of 0.01
    np.testing.assert_allclose(prediction.epistemic_std, 0.01, rtol=0.15)


def test_model_without_variance_head_has_zero_aleatoric_std(regression_data):
    model = ku.models.mlp(1, 1, hidden_units=(8,), dropout_rate=0.2)
    model.compile("adam", "mse")
    x = regression_data[0][:20]
    prediction = ku.predict_regression(model, x, num_samples=10, seed=0)
    samples = ku.sample(model, x, num_samples=10, seed=0)
    np.testing.assert_array_equal(prediction.aleatoric_std, 0.0)
    np.testing.assert_allclose(prediction.mean, samples.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.std, samples.std(0), rtol=1e-4, atol=1e-6)


def test_variance_head_follows_the_compiled_loss(regression_data):
    x = regression_data[0][:5]
    model = ku.models.mlp(1, 2, hidden_units=(4,), dropout_rate=0.2)
    model.compile("adam", "mse")  # two targets, no variance head
    assert ku.predict_regression(model, x, num_samples=3).mean.shape == (5, 2)
    model.compile("adam", ku.losses.GaussianNLL())
    assert ku.predict_regression(model, x, num_samples=3).mean.shape == (5, 1)
    assert ku.predict_regression(
        model, x, num_samples=3, variance_head=False
    ).mean.shape == (5, 2)
    odd = ku.models.mlp(1, 3, hidden_units=(4,), dropout_rate=0.2)
    with pytest.raises(ValueError, match="last dimension 3"):
        ku.predict_regression(odd, x, variance_head=True)


def test_classification_formulas_match_numpy_on_the_same_samples(
    classifier, class_inputs
):
    args = dict(num_samples=30, seed=5)
    samples = ku.sample(classifier, class_inputs, **args).astype(np.float64)
    prediction = ku.predict_classification(classifier, class_inputs, votes=True, **args)
    probs = samples.mean(0)
    total = _numpy_entropy(probs)
    expected = _numpy_entropy(samples).mean(0)
    np.testing.assert_allclose(prediction.probs, probs, rtol=1e-5)
    np.testing.assert_array_equal(prediction.label, probs.argmax(-1))
    np.testing.assert_allclose(prediction.entropy, total, rtol=1e-5)
    np.testing.assert_allclose(prediction.expected_entropy, expected, rtol=1e-5)
    np.testing.assert_allclose(
        prediction.mutual_information, total - expected, atol=1e-6
    )
    assert prediction.mutual_information.min() >= 0
    votes = np.stack(
        [np.bincount(s.argmax(-1), minlength=3) for s in samples.transpose(1, 0, 2)]
    )
    np.testing.assert_array_equal(prediction.votes, votes)
    assert np.all(prediction.votes.sum(-1) == 30)


def test_logits_and_sigmoid_outputs(class_inputs):
    inputs = keras.Input((8,))
    hidden = ku.layers.MCDropout(0.3)(keras.layers.Dense(8)(inputs))
    logits_model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    from_logits = ku.predict_classification(
        logits_model, class_inputs, num_samples=9, seed=1, from_logits=True
    )
    samples = ku.sample(logits_model, class_inputs, num_samples=9, seed=1)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(samples)).mean(0)
    np.testing.assert_allclose(from_logits.probs, probs, rtol=1e-5)

    sigmoid_model = keras.Model(
        inputs, keras.layers.Dense(1, activation="sigmoid")(hidden)
    )
    binary = ku.predict_classification(sigmoid_model, class_inputs, num_samples=9)
    assert binary.probs.shape == (len(class_inputs), 2)
    np.testing.assert_allclose(binary.probs.sum(-1), 1.0, rtol=1e-6)


def test_seed_makes_sampling_reproducible(classifier, class_inputs):
    first = ku.sample(classifier, class_inputs, num_samples=5, seed=3)
    second = ku.sample(classifier, class_inputs, num_samples=5, seed=3)
    other = ku.sample(classifier, class_inputs, num_samples=5, seed=4)
    unseeded = ku.sample(classifier, class_inputs, num_samples=5)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    assert not np.allclose(first, unseeded)


def _bn_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = ku.layers.MCDropout(0.2)(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_batch_normalization_stays_in_inference_mode():
    model = _bn_model()
    bn = model.layers[2]
    bn.moving_mean.assign(np.full(16, 3.0, "float32"))
    bn.moving_variance.assign(np.full(16, 4.0, "float32"))
    before = [w.copy() for w in bn.get_weights()]
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    api = ku.sample(model, x, num_samples=400, seed=0).mean(0)
    # The article's loop: training=True also normalises with batch statistics.
    loop = np.mean([model(x, training=True).numpy() for _ in range(50)], axis=0)
    assert np.abs(api - loop).mean() > 0.5
    # The loop moves the moving statistics (Keras updates them in training
    # mode); reset them and check the API leaves them exactly as they were.
    bn.set_weights(before)
    ku.predict_regression(model, x, num_samples=50)
    for expected, actual in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    # The API's mean is the inference-mode network's output up to dropout
    # noise (inverted dropout is unbiased).
    dense_in, _, _, dense_out = model.layers[1:]
    inference = dense_out(bn(dense_in(x), training=False)).numpy()
    np.testing.assert_allclose(api, inference, atol=0.6)
    assert np.abs(loop - inference).mean() > 0.5


class _CallCounter(keras.layers.Layer):
    """Counts how often its Python `call` runs: once per trace (and once per
    symbolic call), never per compiled execution."""

    calls = 0

    def call(self, x):
        self.calls += 1
        return x


def test_tracing_is_bounded_and_never_repeats_for_a_seen_signature():
    keras.utils.set_random_seed(4)
    counter = _CallCounter()
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    hidden = counter(ku.layers.MCDropout(0.3)(hidden))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    rng = np.random.default_rng(0)

    def predict(n, t):
        x = rng.normal(size=(n, 8)).astype("float32")
        ku.predict_classification(model, x, num_samples=t, max_rows_per_call=64)

    predict(10, 5)
    first = counter.calls
    for _ in range(3):
        predict(10, 5)
    assert counter.calls == first
    # Many batch sizes and sample counts (with chunks of samples and of
    # inputs) trace a bounded number of times (the first 4 sample counts
    # static, then one relaxed trace), then never again.
    for n, t in [(33, 7), (5, 20), (100, 3), (7, 11), (64, 2), (1, 9), (50, 13)]:
        predict(n, t)
    settled = counter.calls
    assert settled - first <= 2 * 4 + 2
    for n, t in [(21, 17), (3, 40), (90, 6), (11, 100), (33, 7), (64, 2)]:
        predict(n, t)
    assert counter.calls == settled


def test_deterministic_prefix_runs_once_per_input():
    class RowCounter(keras.layers.Layer):
        """Counts the rows it processes, to see where tiling starts."""

        def build(self, input_shape):
            self.rows = self.add_weight(
                shape=(), initializer="zeros", trainable=False, dtype="int32"
            )

        def call(self, x):
            self.rows.assign_add(keras.ops.shape(x)[0])
            return x

    inputs = keras.Input((3,))
    before = RowCounter()
    after = RowCounter()
    hidden = before(keras.layers.Dense(4)(inputs))
    dropped = ku.layers.MCDropout(0.5)(hidden)
    # A skip connection from before the dropout is tiled where it is needed.
    merged = keras.layers.Concatenate()([after(dropped), hidden])
    model = keras.Model(inputs, keras.layers.Dense(2)(merged))
    x = np.ones((10, 3), "float32")
    samples = ku.sample(model, x, num_samples=6, seed=0)
    assert samples.shape == (6, 10, 2)
    assert int(before.rows.numpy()) == 10
    assert int(after.rows.numpy()) == 60


def test_split_graph_draws_the_same_samples_as_tiling_the_input():
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(6, activation="relu")(inputs)
    outputs = keras.layers.Dense(2)(ku.layers.MCDropout(0.4)(hidden))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(7, 5)).astype("float32")

    class Wrapper(keras.Model):  # subclassed: sampled by tiling its input
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x)

    split = ku.sample(model, x, num_samples=4, seed=9)
    tiled = ku.sample(Wrapper(model), x, num_samples=4, seed=9)
    np.testing.assert_allclose(split, tiled, rtol=1e-6)


def test_subclassed_model_is_sampled_by_tiling_its_inputs(class_inputs):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8)
            self.dropout = ku.layers.MCDropout(0.5)
            self.out = keras.layers.Dense(3, activation="softmax")

        def call(self, x, training=False):
            return self.out(self.dropout(self.hidden(x)))

    prediction = ku.predict_classification(Net(), class_inputs, num_samples=10)
    assert prediction.probs.shape == (len(class_inputs), 3)
    assert prediction.mutual_information.max() > 0


def test_multi_input_model(class_inputs):
    a, b = keras.Input((8,)), keras.Input((2,))
    merged = keras.layers.Concatenate()([a, ku.layers.MCDropout(0.5)(b)])
    model = keras.Model([a, b], keras.layers.Dense(2)(merged))
    x = [class_inputs, np.ones((len(class_inputs), 2), "float32")]
    samples = ku.sample(model, x, num_samples=3, seed=0)
    assert samples.shape == (3, len(class_inputs), 2)


def test_model_without_stochastic_layers_warns_once(class_inputs):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.warns(UserWarning, match="every sample is identical"):
        samples = ku.sample(model, class_inputs, num_samples=4)
    assert np.all(samples == samples[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ku.sample(model, class_inputs, num_samples=4)


def test_tensor_inputs_are_accepted(classifier, class_inputs):
    from_tensor = ku.sample(classifier, tf.constant(class_inputs), 3, seed=1)
    from_numpy = ku.sample(classifier, class_inputs, 3, seed=1)
    np.testing.assert_array_equal(from_tensor, from_numpy)


@pytest.mark.parametrize("value", [0, -3, 2.5, "10", True])
def test_bad_num_samples_is_rejected(classifier, class_inputs, value):
    with pytest.raises(ValueError, match=r"`num_samples`.*positive integer.*Received"):
        ku.predict_classification(classifier, class_inputs, num_samples=value)


def test_bad_batch_size_and_seed_are_rejected(classifier, class_inputs):
    with pytest.raises(ValueError, match="`batch_size`"):
        ku.sample(classifier, class_inputs, batch_size=0)
    with pytest.raises(ValueError, match="`seed`"):
        ku.sample(classifier, class_inputs, seed=-2)
    with pytest.raises(ValueError, match="`from_logits`"):
        ku.predict_classification(classifier, class_inputs, from_logits="yes")


def test_wrong_rank_is_rejected(classifier, class_inputs):
    with pytest.raises(
        ValueError, match=r"rank 2 with shape \(None, 8\).*\(40, 8, 1\)"
    ):
        ku.sample(classifier, class_inputs[..., None])
    with pytest.raises(ValueError, match=r"Received: shape \(40, 4\)"):
        ku.sample(classifier, class_inputs[:, :4])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs_are_rejected(
    classifier, regression_model, class_inputs, bad
):
    x = class_inputs.copy()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="finite values. Received: 1 NaN"):
        ku.predict_classification(classifier, x)
    with pytest.raises(ValueError, match="finite"):
        ku.predict_regression(regression_model, np.array([[bad]], "float32"))


def test_empty_and_missing_inputs_are_rejected(classifier):
    with pytest.raises(ValueError, match="at least one row"):
        ku.sample(classifier, np.zeros((0, 8), "float32"))
    with pytest.raises(ValueError, match="x=None"):
        ku.sample(classifier, None)
    with pytest.raises(ValueError, match="Expected a keras.Model"):
        ku.sample(lambda x: x, np.zeros((2, 8)))


def test_non_finite_outputs_are_reported_not_hidden():
    # A log-variance of 2000: exp overflows float64, where the moments are
    # taken (200 no longer overflows, as it did in float32).
    inputs = keras.Input((1,))
    head = keras.layers.Dense(
        2,
        kernel_initializer="ones",
        bias_initializer=keras.initializers.Constant(2000.0),
    )
    model = keras.Model(inputs, head(ku.layers.MCDropout(0.1)(inputs)))
    with pytest.warns(RuntimeWarning, match="NaN or infinite"):
        ku.predict_regression(model, np.ones((2, 1), "float32"), num_samples=2)


def test_has_variance_head_reads_the_compiled_loss():
    model = ku.models.mlp(3, 2, hidden_units=(4,))
    assert ku.has_variance_head(model) is None  # not compiled: caller decides
    model.compile("adam", loss=ku.losses.gaussian_nll)
    assert ku.has_variance_head(model) is True
    model.compile("adam", loss=ku.losses.GaussianNLL(beta=0.5))
    assert ku.has_variance_head(model) is True
    model.compile("adam", loss="keras_uncertainty>gaussian_nll")
    assert ku.has_variance_head(model) is True
    model.compile("adam", loss="mse")
    assert ku.has_variance_head(model) is False

    def my_heteroscedastic_loss(y_true, y_pred):
        return ku.losses.gaussian_nll(y_true, y_pred)

    my_heteroscedastic_loss.variance_head = True  # a custom loss opts in
    model.compile("adam", loss=my_heteroscedastic_loss)
    assert ku.has_variance_head(model) is True


def test_a_custom_reducer_runs_on_the_same_engine(classifier, class_inputs):
    class MaxProbability(ku.sampling.Reducer):
        """The largest probability any sample gives each class."""

        def reduce(self, samples):
            return (keras.ops.max(samples, axis=0),)

        def merge(self, a, count_a, b, count_b):
            return (np.maximum(a[0], b[0]),)

        def finalize(self, state, num_samples):
            return state[0]

    args = dict(num_samples=12, seed=5, batch_size=16)  # chunks of both kinds
    samples = ku.sample(classifier, class_inputs, **args)
    result = ku.sampling.reduce_samples(
        classifier, class_inputs, MaxProbability(), **args
    )
    np.testing.assert_allclose(result, samples.max(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="reducer"):
        ku.sampling.reduce_samples(classifier, class_inputs, "mean")


def test_seed_is_refused_for_a_stochastic_layer_it_cannot_reach(class_inputs):
    class Noise(keras.layers.Layer):
        stochastic_at_inference = True

        def call(self, x):
            return x + keras.random.normal(keras.ops.shape(x))

    inputs = keras.Input((8,))
    model = keras.Model(inputs, Noise()(inputs))
    assert ku.sample(model, class_inputs, num_samples=2).shape == (2, 40, 8)
    with pytest.raises(ValueError, match="seed_generator"):
        ku.sample(model, class_inputs, num_samples=2, seed=1)


def test_votes_are_computed_only_when_asked_for(classifier, class_inputs):
    plain = ku.predict_classification(classifier, class_inputs, num_samples=5)
    assert plain.votes is None
    with pytest.raises(ValueError, match="votes"):
        ku.predict_classification(classifier, class_inputs, votes="yes")


def test_a_sequential_model_that_gains_a_layer_is_sampled_as_it_is_now():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), ku.layers.MCDropout(0.2)]
    )
    x = np.ones((5, 4), "float32")
    assert ku.sample(model, x, num_samples=2).shape == (2, 5, 3)
    model.add(keras.layers.Dense(6))
    assert ku.sample(model, x, num_samples=2).shape == (2, 5, 6)


def test_a_custom_mc_layer_with_a_seed_generator_samples_reproducibly():
    # The "new MC layer" recipe of docs/guide/internals.md.
    class MCGaussianNoise(keras.layers.GaussianNoise):
        stochastic_at_inference = True

        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(MCGaussianNoise(0.5)(inputs)))
    x = np.ones((4, 3), "float32")
    first = ku.sample(model, x, num_samples=5, seed=3)
    again = ku.sample(model, x, num_samples=5, seed=3)
    np.testing.assert_array_equal(first, again)
    assert first.std(axis=0).min() > 0


def test_sampling_many_models_in_a_row_logs_no_retracing_warning(class_inputs, caplog):
    # TensorFlow counts traces per code object, so a compiled step per model
    # looks to it like retracing in a loop; the engine silences that (each
    # model's own traces stay bounded, see the test above).
    caplog.set_level(logging.WARNING, logger="tensorflow")
    for seed in range(8):
        keras.utils.set_random_seed(seed)
        model = ku.models.mlp(8, 2, hidden_units=(4,), dropout_rate=0.2)
        ku.predict_regression(model, class_inputs[: 5 + seed], num_samples=3 + seed)
    retracing = [r for r in caplog.records if "retracing" in r.getMessage()]
    assert retracing == []
