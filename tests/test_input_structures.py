"""Dict, list and nested inputs reach a model's inputs as `model.predict`
matches them: a dict by the keys the model was built with (whatever the
`keras.Input` names, as keras_hub backbones are wrapped), a list by
position, a dict for a list of inputs by their names; for sampling, the
subclassed path, `to_mc_dropout` and `ku.export` alike."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

N, L, V, C = 6, 5, 11, 3
T = 4


def _quietly(build):
    """Builds a model without Keras's warning about a dict of inputs not
    named after its keys (the keras_hub way, which these tests mean)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
        return build()


def _text_body(token_ids, padding_mask, rate):
    """Embedding of the tokens, masked: swapping the two inputs changes the
    result (and token ids out of the mask's range would index wrongly)."""
    embedded = keras.layers.Embedding(V, 4)(token_ids)
    mask = keras.ops.cast(keras.ops.expand_dims(padding_mask, -1), "float32")
    hidden = keras.layers.Flatten()(embedded * mask)
    hidden = keras.layers.Dense(8, activation="relu")(hidden)
    hidden = keras.layers.Dropout(rate)(hidden)
    return {
        "kind": keras.layers.Dense(C, activation="softmax")(hidden),
        "value": keras.layers.Dense(1)(hidden),
    }


def _keras_hub_style(rate=0.5, unsorted=False):
    """A model on a dict of inputs not named after its keys (`keras.Input`s
    named `input_layer_*` by Keras), as keras_hub backbones are wrapped."""

    def build():
        keras.utils.set_random_seed(1)
        token_ids = keras.Input((L,), dtype="int32")
        padding_mask = keras.Input((L,), dtype="int32")
        if unsorted:
            inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        else:
            inputs = {"padding_mask": padding_mask, "token_ids": token_ids}
        return keras.Model(inputs, _text_body(token_ids, padding_mask, rate))

    return _quietly(build)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return {
        "token_ids": rng.integers(0, V, (N, L)).astype("int32"),
        "padding_mask": (rng.random((N, L)) > 0.3).astype("int32"),
    }


@pytest.fixture(scope="module")
def hub_model():
    return _keras_hub_style(rate=0.5, unsorted=True)


@pytest.fixture(scope="module")
def hub_mc(hub_model):
    return _quietly(lambda: ku.layers.to_mc_dropout(hub_model))


def _reordered(x):
    return dict(reversed(list(x.items())))


def _assert_means_equal_predict(model, x, expected):
    """`ku.sample`, `ku.predict_regression`, `ku.predict_classification` and
    `ku.predict` on `x` give `expected` (`model.predict`'s dict output) for
    a model whose samples are all equal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*stochastic at inference")
        samples = ku.sample(model, x, num_samples=T, seed=0, verbose=0)
        regression = ku.predict_regression(
            model, x, T, seed=0, output="value", variance_head=False, verbose=0
        )
        classification = ku.predict_classification(
            model, x, T, seed=0, output="kind", verbose=0
        )
        both = ku.predict(
            model,
            x,
            {"kind": "classification", "value": {"task": "regression",
                                                  "variance_head": False}},
            T,
            seed=0,
            verbose=0,
        )  # fmt: skip
    for name in ("kind", "value"):
        np.testing.assert_allclose(
            samples[name].mean(axis=0), expected[name], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(regression.mean, expected["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(classification.probs, expected["kind"], rtol=1e-5)
    np.testing.assert_allclose(both["kind"].probs, expected["kind"], rtol=1e-5)
    np.testing.assert_allclose(both["value"].mean, expected["value"], rtol=1e-5)


def test_keras_hub_style_dict_inputs_match_model_predict_without_conversion(tokens):
    # A deterministic model (Keras's Dropout is off at inference): the
    # sampled mean is the model's prediction on the same dict.
    model = _keras_hub_style(rate=0.5, unsorted=True)
    expected = model.predict(tokens, verbose=0)
    _assert_means_equal_predict(model, tokens, expected)


def test_keras_hub_style_dict_inputs_match_model_predict_after_to_mc_dropout(tokens):
    # Rate 0: converted to MCDropout(0), so every sample is the prediction.
    model = _keras_hub_style(rate=0.0, unsorted=True)
    converted = _quietly(lambda: ku.layers.to_mc_dropout(model))
    assert set(converted.input) == {"token_ids", "padding_mask"}
    _assert_means_equal_predict(converted, tokens, model.predict(tokens, verbose=0))


def test_keras_hub_style_mc_dropout_samples_are_finite_and_differ(hub_mc, tokens):
    samples = ku.sample(hub_mc, tokens, num_samples=T, seed=0, verbose=0)
    assert samples["kind"].shape == (T, N, C)
    assert samples["value"].shape == (T, N, 1)
    assert np.isfinite(samples["kind"]).all() and np.isfinite(samples["value"]).all()
    assert samples["value"].std(axis=0).mean() > 1e-4  # the samples differ
    np.testing.assert_allclose(samples["kind"].sum(-1), 1.0, rtol=1e-5)
    prediction = ku.predict_classification(
        hub_mc, tokens, T, seed=0, output="kind", verbose=0
    )
    assert prediction.probs.shape == (N, C)
    assert (prediction.mutual_information > 0).any()


def test_rebuilding_the_graph_does_not_repeat_keras_input_name_warning(tokens):
    model = _keras_hub_style(rate=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = ku.layers.to_mc_dropout(model)
        ku.sample(converted, tokens, num_samples=2, seed=0, verbose=0)
    assert not [w for w in caught if "When providing `inputs`" in str(w.message)]


def test_dict_key_order_does_not_matter(hub_mc, tokens):
    # The model was built {"token_ids", "padding_mask"}; sorted, reversed
    # and insertion order all give the same samples for the same seed.
    expected = ku.sample(hub_mc, tokens, num_samples=T, seed=3, verbose=0)
    for x in (_reordered(tokens), dict(sorted(tokens.items()))):
        got = ku.sample(hub_mc, x, num_samples=T, seed=3, verbose=0)
        np.testing.assert_array_equal(got["kind"], expected["kind"])
        np.testing.assert_array_equal(got["value"], expected["value"])


def test_dict_built_in_any_key_order_matches_model_predict(tokens):
    model = _keras_hub_style(rate=0.5, unsorted=False)
    expected = model.predict(_reordered(tokens), verbose=0)
    _assert_means_equal_predict(model, tokens, expected)


def test_dict_inputs_named_after_their_keys_match_model_predict(tokens):
    def build():
        token_ids = keras.Input((L,), dtype="int32", name="token_ids")
        padding_mask = keras.Input((L,), dtype="int32", name="padding_mask")
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        return keras.Model(inputs, _text_body(token_ids, padding_mask, 0.5))

    keras.utils.set_random_seed(2)
    model = build()
    _assert_means_equal_predict(model, tokens, model.predict(tokens, verbose=0))


def test_streamed_dicts_give_the_in_memory_samples(hub_mc, tokens):
    expected = ku.sample(hub_mc, tokens, num_samples=T, seed=5, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(_reordered(tokens)).batch(4)
    got = ku.sample(hub_mc, dataset, num_samples=T, seed=5, verbose=0)
    np.testing.assert_allclose(got["kind"], expected["kind"], rtol=1e-6)


@pytest.fixture(scope="module")
def list_model():
    """Two inputs of different widths, in a list, named."""
    keras.utils.set_random_seed(3)
    wide = keras.Input((4,), name="wide")
    narrow = keras.Input((2,), name="narrow")
    hidden = keras.layers.Concatenate()(
        [keras.layers.Dense(3)(wide), keras.layers.Dense(3)(narrow)]
    )
    hidden = keras.layers.Dropout(0.5)(hidden)
    outputs = {
        "kind": keras.layers.Dense(C, activation="softmax")(hidden),
        "value": keras.layers.Dense(1)(hidden),
    }
    return keras.Model([wide, narrow], outputs)


@pytest.fixture(scope="module")
def wide_narrow():
    rng = np.random.default_rng(1)
    return (
        rng.normal(size=(N, 4)).astype("float32"),
        rng.normal(size=(N, 2)).astype("float32"),
    )


def test_list_inputs_match_model_predict_by_position(list_model, wide_narrow):
    expected = list_model.predict(list(wide_narrow), verbose=0)
    _assert_means_equal_predict(list_model, list(wide_narrow), expected)
    _assert_means_equal_predict(list_model, tuple(wide_narrow), expected)


def test_a_dict_feeds_a_list_of_inputs_by_their_names(list_model, wide_narrow):
    wide, narrow = wide_narrow
    x = {"narrow": narrow, "wide": wide, "unused": np.zeros((N, 1), "float32")}
    expected = list_model.predict([wide, narrow], verbose=0)
    np.testing.assert_allclose(
        list_model.predict(x, verbose=0)["kind"], expected["kind"]
    )
    _assert_means_equal_predict(list_model, x, expected)


@pytest.mark.parametrize("pair", [list, tuple], ids=["list", "tuple"])
def test_nested_dict_holding_a_list_matches_model_predict(pair):
    keras.utils.set_random_seed(4)
    first, second = keras.Input((3,)), keras.Input((2,))
    single = keras.Input((1,))
    merged = keras.layers.Concatenate()(
        [keras.layers.Dense(2)(first), keras.layers.Dense(2)(second), single]
    )
    hidden = keras.layers.Dropout(0.5)(merged)
    try:
        model = _quietly(
            lambda: keras.Model(
                {"pair": [first, second], "single": single},
                {
                    "kind": keras.layers.Dense(C, activation="softmax")(hidden),
                    "value": keras.layers.Dense(1)(hidden),
                },
            )
        )
    except ValueError as error:  # Keras before 3.4 builds flat dicts only
        if "must be KerasTensors" not in str(error):
            raise
        pytest.skip(f"Keras {keras.__version__} builds no nested input dicts")
    rng = np.random.default_rng(2)
    a = rng.normal(size=(N, 3)).astype("float32")
    b = rng.normal(size=(N, 2)).astype("float32")
    c = rng.normal(size=(N, 1)).astype("float32")
    x = {"single": c, "pair": pair([a, b])}
    expected = model.predict(x, verbose=0)
    _assert_means_equal_predict(model, x, expected)


def test_columns_without_a_trailing_axis_feed_inputs_of_width_one():
    # Keras adds (or drops) a trailing axis of size 1, as for a dict of
    # data-frame columns; sampling reads them the same way.
    keras.utils.set_random_seed(5)
    inputs = {
        "age": keras.Input((1,), name="age"),
        "size": keras.Input((1,), name="size"),
    }
    hidden = keras.layers.Concatenate()([inputs["age"], 2 * inputs["size"]])
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    x = {"age": np.arange(N, dtype="float32"), "size": np.ones(N, "float32")}
    expected = model.predict(x, verbose=0)
    with pytest.warns(UserWarning, match="stochastic at inference"):
        samples = ku.sample(model, x, num_samples=2, seed=0, verbose=0)
    np.testing.assert_allclose(samples[0], expected, rtol=1e-6)


def test_sngp_regression_head_reads_a_dict_of_inputs_by_key():
    # SNGP's regression head runs a feature model of its own: it takes the
    # model's input structure too.
    keras.utils.set_random_seed(7)
    wide, narrow = keras.Input((2,)), keras.Input((1,))
    hidden = keras.layers.Concatenate()([wide, 3 * narrow])
    head = ku.layers.RandomFeatureGaussianProcess(
        1, num_inducing=8, task="regression", seed=1
    )
    model = _quietly(
        lambda: ku.sngp.SNGPModel({"wide": wide, "narrow": narrow}, head(hidden))
    )
    model.compile("sgd", ku.losses.gaussian_nll)
    rng = np.random.default_rng(3)
    x = {
        "narrow": rng.normal(size=(N, 1)).astype("float32"),
        "wide": rng.normal(size=(N, 2)).astype("float32"),
    }
    expected = model.predict(x, verbose=0)[:, :1]
    for given in (x, _reordered(x)):
        prediction = ku.predict_regression(model, given, verbose=0)
        np.testing.assert_allclose(prediction.mean, expected, rtol=1e-5, atol=1e-6)
        assert np.all(prediction.epistemic_std > 0)


class DictReader(keras.Model):
    """A subclassed model that reads its inputs by key."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(V, 4)
        self.flatten = keras.layers.Flatten()
        self.dropout = ku.layers.MCDropout(rate)
        self.head = keras.layers.Dense(C, activation="softmax")

    def call(self, inputs):
        mask = keras.ops.cast(
            keras.ops.expand_dims(inputs["padding_mask"], -1), "float32"
        )
        hidden = self.flatten(self.embed(inputs["token_ids"]) * mask)
        return self.head(self.dropout(hidden))


def test_subclassed_model_gets_the_dict_as_model_predict_does(tokens):
    keras.utils.set_random_seed(6)
    model = DictReader(0.0)
    expected = model.predict(tokens, verbose=0)
    for x in (tokens, _reordered(tokens)):
        prediction = ku.predict_classification(model, x, T, seed=0, verbose=0)
        np.testing.assert_allclose(prediction.probs, expected, rtol=1e-5)
    model.dropout.rate = 0.5
    samples = ku.sample(model, tokens, num_samples=T, seed=0, verbose=0)
    assert samples.shape == (T, N, C) and np.isfinite(samples).all()
    assert samples.std(axis=0).mean() > 1e-4


def test_export_serves_the_dict_by_key_as_predict_classification(
    hub_mc, tokens, tmp_path
):
    path = ku.export(
        hub_mc,
        str(tmp_path / "hub"),
        task={"kind": "classification"},
        num_samples=T,
    )
    served = tf.saved_model.load(path)
    expected = ku.predict_classification(
        hub_mc, tokens, T, seed=7, output="kind", verbose=0
    )
    for x in (tokens, _reordered(tokens)):
        out = served.serve_seeded(x, tf.constant(7, tf.int64))
        np.testing.assert_allclose(out["kind_probs"].numpy(), expected.probs, rtol=1e-5)
    assert served.serve(tokens)["kind_probs"].shape == (N, C)
    # TensorFlow Serving names each input by its key.
    _, named = served.signatures["serve"].structured_input_signature
    assert set(named) == {"token_ids", "padding_mask"}


def test_exported_deterministic_dict_model_serves_model_predict(tokens, tmp_path):
    model = _keras_hub_style(rate=0.0, unsorted=True)
    converted = _quietly(lambda: ku.layers.to_mc_dropout(model))
    path = ku.export(converted, str(tmp_path / "det"), task={"value": "regression"},
                     num_samples=2, variance_head=False)  # fmt: skip
    served = tf.saved_model.load(path)  # kept: its variables live with it
    out = served.serve(_reordered(tokens))
    expected = model.predict(tokens, verbose=0)["value"]
    np.testing.assert_allclose(
        out["value_mean"].numpy(), expected, rtol=1e-5, atol=1e-6
    )


_BAD_DICT_INPUTS = [
    (
        lambda x: {"token_ids": x["token_ids"]},
        r"Expected a dict with the keys of the model's inputs .*token_ids.*"
        r"padding_mask.*Received: a dict with keys \['token_ids'\] "
        r"\(missing: \['padding_mask'\]\)",
    ),
    (
        lambda x: {"tokens": x["token_ids"], "padding_mask": x["padding_mask"]},
        r"Received: a dict with keys \['tokens', 'padding_mask'\] \(missing: "
        r"\['token_ids'\]; unexpected: \['tokens'\]\)",
    ),
    (
        lambda x: {**x, "segment_ids": x["token_ids"]},
        r"\(unexpected: \['segment_ids'\]\)",
    ),
    (
        lambda x: [x["token_ids"], x["padding_mask"]],
        r"Received: a list of 2 entries \(a list is read by position only when",
    ),
    (lambda x: x["token_ids"], r"Received: an array of shape \(6, 5\)"),
    (
        lambda x: {"token_ids": x["token_ids"], "padding_mask": {"m": 1}},
        r"argument `x\['padding_mask'\]`. Expected an array \(one model input\)",
    ),
]


@pytest.mark.parametrize(
    "make, message",
    _BAD_DICT_INPUTS,
    ids=["missing", "wrong", "extra", "list", "array", "dict-leaf"],
)
def test_wrong_or_missing_keys_are_refused_naming_what_was_expected(
    hub_mc, tokens, make, message
):
    with pytest.raises(ValueError, match=r"Invalid value received for argument `x"):
        ku.sample(hub_mc, make(tokens), num_samples=2, verbose=0)
    with pytest.raises(ValueError, match=message):
        ku.predict_classification(hub_mc, make(tokens), 2, output="kind", verbose=0)


def test_a_dict_missing_a_named_input_of_a_list_is_refused(list_model, wide_narrow):
    with pytest.raises(
        ValueError,
        match=r"argument `x`. Expected a dict with the names of the model's "
        r"inputs .*\['wide', 'narrow'\]. Received: a dict with keys \['wide'\] "
        r"\(missing: \['narrow'\]\)",
    ):
        ku.sample(list_model, {"wide": wide_narrow[0]}, 2, verbose=0)
    with pytest.raises(
        ValueError, match=r"Expected 2 model inputs .*Received: a list of 3"
    ):
        ku.sample(list_model, [*wide_narrow, wide_narrow[0]], 2, verbose=0)


def test_a_dataset_batch_with_a_wrong_key_names_the_batch(hub_mc, tokens):
    bad = {"tokens": tokens["token_ids"], "padding_mask": tokens["padding_mask"]}
    dataset = tf.data.Dataset.from_tensor_slices(bad).batch(3)
    with pytest.raises(ValueError, match=r"argument `x \(batch 0\)`.*missing"):
        ku.sample(hub_mc, dataset, 2, verbose=0)
