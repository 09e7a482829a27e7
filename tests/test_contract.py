"""The sampling contract: new methods, reducers and MC layers plug in without
touching the engine; randomness is per call, thread-safe and chunk-invariant."""

import ast
import concurrent.futures
import pathlib
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels

PACKAGE = pathlib.Path(ku.__file__).parent


def _mc_mlp(seed=0, outputs=2):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    x = ku.layers.MCDropout(0.3)(x)
    return keras.Model(inputs, keras.layers.Dense(outputs)(x))


@pytest.fixture(scope="module")
def mc_model():
    return _mc_mlp()


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(1).normal(size=(37, 3)).astype("float32")


def _imported_modules(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_engine_imports_no_method():
    for path in (PACKAGE / "sampling").glob("*.py"):
        for module in _imported_modules(path):
            for method in ("ensemble", "layers", "calibration", "posthoc", "serving"):
                assert not module.startswith(f"keras_uncertainty.{method}"), (
                    f"{path.name} imports {module}"
                )


class PerturbedLinear(keras.Model):
    """A toy method: its randomness is one weight perturbation per sample."""

    def __init__(self, scale=0.5, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)
        self.scale = scale

    def call(self, x):
        return self.dense(x)

    def as_sampled_model(self):
        return _PerturbedSampled(self)


class _PerturbedSampled(ku.sampling.SampledModel):
    def forward(self, inputs, num_samples):
        x = ku.sampling.tile_rows(inputs, num_samples)
        rows = keras.ops.shape(x)[0]
        # One draw per sample, shared by every input: a perturbed weight.
        noise = ku.sampling.random_normal((rows, 1), None, per_sample=True)
        return self.model(x) * (1.0 + self.model.scale * noise)


@pytest.fixture(scope="module")
def toy_method():
    model = PerturbedLinear()
    model(np.zeros((1, 3), "float32"))
    return model


def test_a_new_method_is_sampled_through_the_public_protocol(toy_method, inputs):
    samples = ku.sample(toy_method, inputs, num_samples=64, seed=0)
    assert samples.shape == (64, 37, 2)
    base = np.asarray(toy_method(inputs))
    ratio = samples / base  # one factor per sample, the same for every input
    np.testing.assert_allclose(ratio, ratio[:, :1, :1] * np.ones_like(ratio), rtol=1e-4)
    factors = ratio[:, 0, 0]
    assert 0.3 < factors.std() < 0.7  # 1 + 0.5 * N(0, 1)
    prediction = ku.predict_regression(
        toy_method, inputs, 64, seed=0, variance_head=False
    )
    np.testing.assert_allclose(prediction.mean, samples.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.epistemic_std, samples.std(0), rtol=1e-4)


def test_a_new_method_is_exported_through_the_public_protocol(toy_method, tmp_path):
    # The export needs symbolic inputs: the same method on a Functional body.
    inputs = keras.Input((3,))
    body = keras.Model(inputs, toy_method.dense(inputs))

    wrapped = keras.Model(inputs, body(inputs))
    wrapped.as_sampled_model = lambda: _PerturbedSampledOf(wrapped, toy_method.scale)
    path = ku.export(
        wrapped, str(tmp_path / "toy"), "regression", 32, variance_head=False
    )
    served = tf.saved_model.load(path)
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    out = served.serve_seeded(x, tf.constant(4, tf.int64))
    expected = ku.predict_regression(wrapped, x, 32, seed=4, variance_head=False)
    np.testing.assert_allclose(out["mean"], expected.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out["epistemic_std"], expected.epistemic_std, rtol=1e-4, atol=1e-6
    )
    assert float(np.min(expected.epistemic_std)) > 0


class _PerturbedSampledOf(ku.sampling.SampledModel):
    def __init__(self, model, scale):
        super().__init__(model)
        self.scale = scale

    def forward(self, inputs, num_samples):
        x = ku.sampling.tile_rows(inputs, num_samples)
        noise = ku.sampling.random_normal(
            (keras.ops.shape(x)[0], 1), None, per_sample=True
        )
        return self.model(x) * (1.0 + self.scale * noise)


class _Quantile(ku.sampling.Reducer):
    """A reducer with a parameter, kept in a public attribute."""

    def __init__(self, q):
        self.q = q

    def reduce(self, samples):
        # A different in-graph reduction for each q: scale the maximum.
        return (keras.ops.max(samples, axis=0) * self.q,)

    def merge(self, a, count_a, b, count_b):
        return (np.maximum(a[0], b[0]),)

    def finalize(self, state, num_samples):
        return state[0]


def test_reducers_with_other_parameters_get_their_own_graphs(mc_model, inputs):
    low = ku.sampling.reduce_samples(mc_model, inputs, _Quantile(0.0), 16, seed=1)
    high = ku.sampling.reduce_samples(mc_model, inputs, _Quantile(2.0), 16, seed=1)
    np.testing.assert_array_equal(low, np.zeros_like(low))
    raw = ku.sample(mc_model, inputs, 16, seed=1)
    np.testing.assert_allclose(high, 2.0 * raw.max(0), rtol=1e-6)


def _seeded(model, x, **kwargs):
    return ku.predict_regression(model, x, num_samples=50, seed=11, **kwargs)


_CHUNKINGS = [(1, None), (7, None), (None, 50), (7, 20), (None, 5000)]


def _draws_in_chunkings(layer, inputs):
    """Each chunking's samples of a model whose output is its input (ones)
    times the layer's draws: no sums whose rounding depends on the call."""
    x = keras.Input((3,))
    model = keras.Model(x, layer(x))
    ones = np.ones_like(inputs)
    reference = ku.sample(model, ones, num_samples=50, seed=11)
    assert not np.array_equal(reference, ku.sample(model, ones, 50, seed=12))
    chunked = [
        ku.sample(model, ones, 50, seed=11, batch_size=b, max_rows_per_call=rows)
        for b, rows in _CHUNKINGS
    ]
    part = ku.sample(model, ones[:4], num_samples=50, seed=11)
    return reference, chunked, part


def test_seeded_masks_are_bit_identical_across_chunkings_and_batch_sizes(inputs):
    reference, chunked, part = _draws_in_chunkings(ku.layers.MCDropout(0.3), inputs)
    for samples in chunked:
        np.testing.assert_array_equal(samples, reference)
    np.testing.assert_array_equal(part, reference[:, :4])


def test_seeded_normal_draws_agree_to_float32_rounding_across_chunkings(inputs):
    """Normal draws are the inverse normal CDF of bit-identical uniforms; the
    CPU kernels compute it with vector or scalar code by the position of an
    entry in the tensor, which can differ in the last bits."""
    reference, chunked, part = _draws_in_chunkings(
        ku.layers.MCGaussianDropout(0.2), inputs
    )
    tolerance = ku.sampling.SEEDED_TOLERANCE
    for samples in chunked:
        np.testing.assert_allclose(samples, reference, **tolerance)
    np.testing.assert_allclose(part, reference[:, :4], **tolerance)


def test_seeded_results_agree_to_float32_rounding_across_chunkings(mc_model, inputs):
    """The same draws through a network: the matrix kernels may block their
    sums by the rows of a call, so other call shapes round differently."""
    reference = ku.sample(mc_model, inputs, num_samples=50, seed=11)
    for batch_size, max_rows in _CHUNKINGS:
        np.testing.assert_allclose(
            ku.sample(
                mc_model,
                inputs,
                num_samples=50,
                seed=11,
                batch_size=batch_size,
                max_rows_per_call=max_rows,
            ),
            reference,
            **ku.sampling.SEEDED_TOLERANCE,
        )
    # Sample s of input i does not depend on what else is in the call.
    np.testing.assert_allclose(
        ku.sample(mc_model, inputs[:4], num_samples=50, seed=11),
        reference[:, :4],
        **ku.sampling.SEEDED_TOLERANCE,
    )


def test_a_stream_cut_into_the_same_calls_is_bit_identical(mc_model, inputs):
    reference = ku.sample(mc_model, inputs, num_samples=50, seed=11)
    streamed = tf.data.Dataset.from_tensor_slices(inputs).batch(5)
    np.testing.assert_array_equal(
        ku.sample(mc_model, streamed, num_samples=50, seed=11), reference
    )


def test_seeded_calls_from_eight_threads_equal_the_sequential_ones(mc_model, inputs):
    seeds = list(range(16))
    sequential = [
        ku.predict_regression(mc_model, inputs, 50, seed=s).mean for s in seeds
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        threaded = list(
            pool.map(
                lambda s: ku.predict_regression(mc_model, inputs, 50, seed=s).mean,
                seeds,
            )
        )
    for expected, actual in zip(sequential, threaded):
        np.testing.assert_array_equal(expected, actual)


def test_unseeded_calls_never_share_masks(mc_model, inputs):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ku.sample(mc_model, inputs, 20), range(8)))
    for i in range(len(results)):
        for j in range(i):
            assert not np.array_equal(results[i], results[j])


def test_mc_dropout_at_rate_zero_takes_a_seed():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, ku.layers.MCDropout(0.0, seed=2)(inputs))
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(ku.sample(model, x, 3, seed=1)[0], x)


def test_builtin_mc_layers_meet_the_contract():
    for layer, shape in (
        (ku.layers.MCDropout(0.3), (6,)),
        (ku.layers.MCGaussianDropout(0.3), (6,)),
        (ku.layers.MCSpatialDropout1D(0.5), (4, 6)),
        (ku.layers.MCSpatialDropout2D(0.5), (4, 4, 6)),
    ):
        ku.testing.check_mc_layer(layer, input_shape=shape)


def test_check_mc_layer_names_the_broken_clause():
    @keras.saving.register_keras_serializable(package="test_contract")
    class Stateful(keras.layers.GaussianNoise):
        stochastic_at_inference = True

        def call(self, inputs, training=None):
            return super().call(inputs, training=True)

    with pytest.raises(AssertionError, match="clause 3"):
        ku.testing.check_mc_layer(Stateful(0.1))


@keras.saving.register_keras_serializable(package="test_contract")
class _MCGaussianNoise(ku.layers.MCLayer):
    def __init__(self, stddev, **kwargs):
        super().__init__(**kwargs)
        self.stddev = stddev

    def call(self, inputs, training=None):
        return inputs + self.stddev * self.random_normal(keras.ops.shape(inputs))

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


def test_a_custom_mc_layer_on_the_base_meets_the_contract():
    ku.testing.check_mc_layer(_MCGaussianNoise(0.2), input_shape=(5,))
    draws = ku.sample(
        keras.Sequential([keras.Input((1,)), _MCGaussianNoise(1.0)]),
        np.zeros((1, 1), "float32"),
        num_samples=4000,
        seed=0,
    ).ravel()
    assert abs(draws.mean()) < 0.06 and abs(draws.std() - 1.0) < 0.05


def test_mixture_nll_reducer_equals_the_metric_on_the_same_samples(mc_model, inputs):
    y = np.random.default_rng(3).normal(size=(37, 1))
    score = ku.sampling.reduce_samples(
        mc_model,
        inputs,
        ku.sampling.MixtureNLL(True),
        300,
        seed=5,
        max_rows_per_call=400,
        y=y,
    )
    samples = ku.sample(mc_model, inputs, 300, seed=5).astype(np.float64)
    means, stds = samples[..., :1], np.exp(0.5 * samples[..., 1:])
    expected = ku.metrics.mixture_log_density(y, means, stds)
    np.testing.assert_allclose(score.log_likelihood, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        score.nll, ku.metrics.mixture_nll(y, means, stds), rtol=1e-5
    )
    prediction = ku.predict_regression(mc_model, inputs, 300, seed=5)
    np.testing.assert_allclose(
        score.prediction.mean, prediction.mean, **ku.sampling.SEEDED_TOLERANCE
    )


def test_mixture_nll_of_a_homoscedastic_model_uses_the_noise_std(inputs):
    model = _mc_mlp(outputs=1)
    y = np.random.default_rng(4).normal(size=(37,))
    score = ku.sampling.reduce_samples(
        model, inputs, ku.sampling.MixtureNLL(False, noise_std=0.7), 40, seed=2, y=y
    )
    samples = ku.sample(model, inputs, 40, seed=2).astype(np.float64)
    expected = ku.metrics.mixture_nll(y, samples[..., 0], 0.7)
    np.testing.assert_allclose(score.nll, expected, rtol=1e-5)


def test_mixture_nll_refuses_missing_targets(mc_model, inputs):
    with pytest.raises(ValueError, match="`y`"):
        ku.sampling.reduce_samples(mc_model, inputs, ku.sampling.MixtureNLL(True), 4)
    with pytest.raises(ValueError, match="`y`"):
        ku.sampling.reduce_samples(
            mc_model, inputs, ku.sampling.MixtureNLL(True), 4, y=np.zeros(3)
        )
    with pytest.raises(ValueError, match="`noise_std`"):
        ku.sampling.MixtureNLL(False, noise_std=-1.0)


_TWO_DEVICES = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_uncertainty as ku
    x = np.random.default_rng(1).normal(size=(37, 3)).astype("float32")
    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        h = keras.layers.Dense(16, activation="relu")(inputs)
        h = ku.layers.MCDropout(0.3)(h)
        return keras.Model(inputs, keras.layers.Dense(2)(h))
    single = build()
    reference = ku.predict_regression(single, x, 50, seed=11)
    raw = ku.sample(single, x, 50, seed=11)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
    model.set_weights(single.get_weights())
    with strategy.scope():
        split = ku.predict_regression(model, x, 50, seed=11)
        split_raw = ku.sample(model, x, 50, seed=11, max_rows_per_call=500)
    tolerance = ku.sampling.SEEDED_TOLERANCE
    np.testing.assert_allclose(split_raw, raw, **tolerance)
    np.testing.assert_allclose(split.mean, reference.mean, **tolerance)
    np.testing.assert_allclose(split.std, reference.std, **tolerance)
    print("replicas", strategy.num_replicas_in_sync)
    """
)


@pytest.fixture(scope="module", autouse=True)
def two_devices_run(start_in_background):
    """The two-device script, started with the module: it runs in its own
    process beside the module's other tests; its test waits for it."""
    return start_in_background(
        "test_sampling_across_two_devices_equals_one_device", _TWO_DEVICES
    )


def test_sampling_across_two_devices_equals_one_device(two_devices_run):
    result = two_devices_run.result(timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout


def test_concurrent_requests_on_an_export_never_share_masks(mc_model, inputs, tmp_path):
    path = ku.export(mc_model, str(tmp_path / "mc"), "regression", num_samples=20)
    served = tf.saved_model.load(path)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: served.serve(inputs)["mean"].numpy(), range(8))
        )
    for i in range(len(results)):
        for j in range(i):
            assert not np.array_equal(results[i], results[j])
    # A seed served is the seed of ku.predict_regression: the same samples.
    seeded = served.serve_seeded(inputs, tf.constant(9, tf.int64))
    expected = ku.predict_regression(mc_model, inputs, 20, seed=9)
    np.testing.assert_allclose(seeded["mean"], expected.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seeded["std"], expected.std, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pack", [True, False])
def test_seeded_ensemble_samples_are_chunk_invariant_and_members_differ(pack, inputs):
    keras.utils.set_random_seed(0)

    def build():
        return ku.models.mlp(3, 2, hidden_units=(8,), dropout_rate=0.2)

    ensemble = ku.Ensemble(build, num_members=3, pack=pack)
    ensemble(inputs[:1])
    reference = ku.sample(ensemble, inputs, num_samples=6, seed=4)
    assert reference.shape == (18, 37, 2)
    for max_rows in (5, 40):
        np.testing.assert_allclose(
            ku.sample(ensemble, inputs, 6, seed=4, max_rows_per_call=max_rows),
            reference,
            **ku.sampling.SEEDED_TOLERANCE,
        )
    by_member = reference.reshape(3, 6, 37, 2)
    assert not np.array_equal(by_member[0], by_member[1])
    assert not np.array_equal(by_member[0, 0], by_member[0, 1])


def test_unseeded_calls_follow_the_global_seed(mc_model, inputs):
    keras.utils.set_random_seed(5)
    first = [ku.sample(mc_model, inputs, 4) for _ in range(2)]
    keras.utils.set_random_seed(5)
    again = [ku.sample(mc_model, inputs, 4) for _ in range(2)]
    assert not np.array_equal(first[0], first[1])  # a new key every call
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_bad_sampled_models_and_targets_are_refused(mc_model, inputs):
    class Wrong(keras.Model):
        def call(self, x):
            return x

        def as_sampled_model(self):
            return object()

    with pytest.raises(ValueError, match="as_sampled_model"):
        ku.sample(Wrong(), inputs, 2)
    with pytest.raises(ValueError, match="`y`.*does not use targets"):
        ku.sampling.reduce_samples(
            mc_model, inputs, ku.sampling.RawSamples(), 2, y=np.zeros(37)
        )
    y = np.zeros((37, 1))
    y[3] = np.nan
    with pytest.raises(ValueError, match="`y`.*finite"):
        ku.sampling.reduce_samples(
            mc_model, inputs, ku.sampling.MixtureNLL(True), 2, y=y
        )
