"""`to_mc_dropout` on the models users bring: every dropout converts, and
nothing else changes.

Two properties over a zoo of models: built with every dropout rate 0, the
converted model's samples equal `model.predict` (the conversion kept every
piece of state); with rates above 0, samples differ from one another and a
seed repeats them.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_uncertainty as ku

# Keras lists a layer's nested layers only through this (see its docstring).
from keras_uncertainty._keras_compat import flatten_layers

RNG = np.random.default_rng(0)


def _sequences(n=5, steps=6, features=3):
    return RNG.normal(size=(n, steps, features)).astype("float32")


def _lstm(rate):
    inputs = keras.Input((6, 3))
    x = keras.layers.LSTM(8, dropout=rate, recurrent_dropout=rate)(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(x)), _sequences()


def _gru(rate):
    inputs = keras.Input((6, 3))
    x = keras.layers.GRU(8, dropout=rate, return_sequences=True)(inputs)
    x = keras.layers.GRU(4, recurrent_dropout=rate)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x)), _sequences()


def _bidirectional(rate):
    inputs = keras.Input((6, 3))
    layer = keras.layers.GRU(4, dropout=rate, recurrent_dropout=rate)
    x = keras.layers.Bidirectional(layer)(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(x)), _sequences()


def _simple_rnn_cell(rate):
    inputs = keras.Input((6, 3))
    cell = keras.layers.SimpleRNNCell(4, dropout=rate, recurrent_dropout=rate)
    x = keras.layers.RNN(cell)(inputs)
    return keras.Model(inputs, x), _sequences()


def _conv_lstm(rate):
    inputs = keras.Input((4, 5, 5, 2))
    x = keras.layers.ConvLSTM2D(3, 3, dropout=rate, recurrent_dropout=rate)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, x), RNG.normal(size=(3, 4, 5, 5, 2)).astype("float32")


def _attention(rate):
    inputs = keras.Input((5, 8))
    x = keras.layers.MultiHeadAttention(2, 4, dropout=rate)(inputs, inputs)
    x = keras.layers.TimeDistributed(keras.layers.Dropout(rate))(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, x), RNG.normal(size=(4, 5, 8)).astype("float32")


def _batchnorm_cnn(rate):
    x = RNG.normal(2.0, 3.0, size=(16, 8, 8, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.SpatialDropout2D(rate),
            keras.layers.Flatten(),
            keras.layers.Dropout(rate),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    # Moving statistics away from their initial values.
    model.fit(x, np.arange(16) % 3, epochs=2, verbose=0)
    return model, x[:5]


def _adapted_preprocessing(rate):
    numbers = RNG.normal(50.0, 100.0, size=(64, 4)).astype("float32")
    normalization = keras.layers.Normalization()
    normalization.adapt(numbers)
    discretization = keras.layers.Discretization(num_bins=4)
    discretization.adapt(numbers[:, :1])
    numeric = keras.Input((4,), name="numeric")
    ids = keras.Input((1,), dtype="int64", name="ids")
    integer_lookup = keras.layers.IntegerLookup()
    integer_lookup.adapt(np.array([[3], [7], [7], [11]]))
    hashing = keras.layers.Hashing(num_bins=5)
    encoding = keras.layers.CategoryEncoding(num_tokens=5, output_mode="one_hot")
    parts = [
        normalization(numeric),
        keras.layers.Flatten()(
            encoding(discretization(keras.layers.Lambda(lambda t: t[:, :1])(numeric)))
        ),
        keras.layers.Flatten()(
            keras.layers.CategoryEncoding(6, output_mode="one_hot")(integer_lookup(ids))
        ),
        keras.layers.Flatten()(
            keras.layers.CategoryEncoding(5, output_mode="one_hot")(hashing(ids))
        ),
    ]
    x = keras.layers.Concatenate()(parts)
    x = keras.layers.Dense(8, activation="relu")(x)
    x = keras.layers.Dropout(rate)(x)
    model = keras.Model([numeric, ids], keras.layers.Dense(3, activation="softmax")(x))
    inputs = [numbers[:6], np.array([[3], [7], [11], [5], [7], [3]])]
    return model, inputs


def _text(rate):
    sentences = np.array(
        ["the cat sat", "a dog ran far", "the red car", "yellow sun shines"]
    )
    vectorize = keras.layers.TextVectorization(output_sequence_length=4)
    vectorize.adapt(sentences)
    lookup = keras.layers.StringLookup()
    lookup.adapt(np.array(["yellow", "red", "blue", "red"]))
    text = keras.Input((1,), dtype="string", name="text")
    colour = keras.Input((1,), dtype="string", name="colour")
    x = keras.layers.Embedding(vectorize.vocabulary_size(), 4)(vectorize(text))
    x = keras.layers.GlobalAveragePooling1D()(x)
    c = keras.layers.Flatten()(
        keras.layers.CategoryEncoding(lookup.vocabulary_size(), output_mode="one_hot")(
            lookup(colour)
        )
    )
    x = keras.layers.Concatenate()([x, c])
    x = keras.layers.Dropout(rate)(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model([text, colour], keras.layers.Dense(2, activation="softmax")(x))
    inputs = [
        tf.constant([["the cat ran"], ["a red sun"], ["dog"]]),
        tf.constant([["red"], ["yellow"], ["green"]]),
    ]
    return model, inputs


def _two_heads(rate):
    inputs = keras.Input((4,))
    trunk = keras.layers.Dropout(rate)(
        keras.layers.Dense(16, activation="relu")(inputs)
    )
    price = keras.layers.Dense(2, name="price")(trunk)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(trunk)
    model = keras.Model(inputs, {"price": price, "kind": kind})
    return model, RNG.normal(size=(6, 4)).astype("float32")


def _hub_inputs(n=3, length=8, vocabulary=50):
    return {
        "token_ids": RNG.integers(0, vocabulary, (n, length)).astype("int32"),
        "segment_ids": np.zeros((n, length), "int32"),
        "padding_mask": np.ones((n, length), "int32"),
    }


def _hub_backbone(rate):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
        dropout=rate,
    )
    return backbone, _hub_inputs()


def _hub_encoder(rate):
    keras_hub = pytest.importorskip("keras_hub")
    inputs = keras.Input((5, 8))
    x = keras_hub.layers.TransformerEncoder(16, 2, dropout=rate)(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x)), RNG.normal(
        size=(4, 5, 8)
    ).astype("float32")


ZOO = {
    "two_heads": _two_heads,
    "hub_backbone": _hub_backbone,
    "hub_encoder": _hub_encoder,
    "lstm": _lstm,
    "gru": _gru,
    "bidirectional": _bidirectional,
    "rnn_cell": _simple_rnn_cell,
    "conv_lstm": _conv_lstm,
    "attention": _attention,
    "batchnorm_cnn": _batchnorm_cnn,
    "adapted_preprocessing": _adapted_preprocessing,
    "text": _text,
}


def _convert(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return ku.layers.to_mc_dropout(model)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_model_at_rate_zero_samples_what_model_predict_returns(name):
    keras.utils.set_random_seed(0)
    model, x = ZOO[name](0.0)
    reference = keras.tree.flatten(model.predict(x, verbose=0))
    samples = keras.tree.flatten(
        ku.sample(_convert(model), x, num_samples=3, seed=0, verbose=0)
    )
    assert len(samples) == len(reference)
    for output, expected in zip(samples, reference):
        for sample in output:
            np.testing.assert_allclose(sample, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_dropout_inside_layers_samples_and_a_seed_repeats_it(name):
    keras.utils.set_random_seed(0)
    model, x = ZOO[name](0.4)
    if name == "conv_lstm" and np.array_equal(
        model(x, training=True), model(x, training=True)
    ):
        pytest.skip(f"Keras {keras.__version__}'s ConvLSTM ignores its dropout")
    mc_model = _convert(model)
    first, again, other = (
        keras.tree.flatten(ku.sample(mc_model, x, num_samples=16, seed=seed, verbose=0))
        for seed in (5, 5, 6)
    )
    for output, repeated, reseeded in zip(first, again, other):
        assert output.std(axis=0).mean() > 1e-3
        np.testing.assert_array_equal(output, repeated)
        assert not np.array_equal(output, reseeded)


def test_converted_keras_hub_backbone_keeps_its_class_and_every_dropout():
    keras_hub = pytest.importorskip("keras_hub")
    backbone, _ = _hub_backbone(0.1)
    plain = sum(
        type(layer) is keras.layers.Dropout for layer in flatten_layers(backbone)
    )
    mc_model, report = ku.layers.to_mc_dropout(backbone, return_report=True)
    assert isinstance(mc_model, keras_hub.models.BertBackbone)
    layers = flatten_layers(mc_model)
    assert not any(type(layer) is keras.layers.Dropout for layer in layers)
    mc_dropouts = [layer for layer in layers if isinstance(layer, ku.layers.MCDropout)]
    assert len(mc_dropouts) == plain > 2
    assert report.in_memory_only  # the encoders create their own dropouts


def test_conversion_keeps_adapted_state_and_vocabularies():
    model, _ = _adapted_preprocessing(0.2)
    mc_model = _convert(model)
    by_type = {type(layer).__name__: layer for layer in mc_model.layers}
    original = {type(layer).__name__: layer for layer in model.layers}
    np.testing.assert_allclose(
        np.asarray(by_type["Normalization"].mean),
        np.asarray(original["Normalization"].mean),
    )
    assert (
        by_type["IntegerLookup"].get_vocabulary()
        == original["IntegerLookup"].get_vocabulary()
    )
    text_model, _ = _text(0.2)
    mc_text = _convert(text_model)
    for kind in ("TextVectorization", "StringLookup"):
        (before,) = [
            layer for layer in text_model.layers if type(layer).__name__ == kind
        ]
        (after,) = [layer for layer in mc_text.layers if type(layer).__name__ == kind]
        assert after.get_vocabulary() == before.get_vocabulary()
        assert len(after.get_vocabulary()) > 2


def test_converted_lstm_spread_matches_keras_training_mode_dropout():
    """The plain-Keras way: the original LSTM called with training=True on
    the batch repeated T times (Keras draws each row's masks independently,
    so these are T independent runs). Both are variational dropout with the
    same rates, so the per-input mean and spread agree within Monte Carlo
    error."""
    keras.utils.set_random_seed(1)
    model, x = _lstm(0.3)
    runs = 400
    tiled = np.tile(x, (runs, 1, 1))
    keras_samples = np.asarray(model(tiled, training=True)).reshape(
        runs, *x.shape[:1], -1
    )
    ours = ku.sample(_convert(model), x, num_samples=runs, seed=2, verbose=0)
    keras_std, our_std = keras_samples.std(axis=0), ours.std(axis=0)
    np.testing.assert_allclose(our_std, keras_std, rtol=0.2, atol=0.01)
    np.testing.assert_allclose(
        ours.mean(axis=0),
        keras_samples.mean(axis=0),
        atol=4 * keras_std.max() / np.sqrt(runs) * np.sqrt(2) + 1e-3,
    )


def test_rnn_masks_are_drawn_once_per_sequence():
    cell = ku.layers.MCLSTMCell(4, dropout=0.5, recurrent_dropout=0.5)
    step = np.ones((3, 2), "float32")
    first = cell.get_dropout_mask(step)
    assert cell.get_dropout_mask(step) is first  # reused at every step
    cell.reset_dropout_mask()
    assert cell.get_dropout_mask(step) is not first
    # As many masks as Keras's LSTMCell draws (one per gate in Keras >= 3.5).
    recurrent = cell.get_recurrent_dropout_mask(np.ones((3, 4), "float32"))
    count = getattr(cell, "dropout_mask_count", None)
    if count is None:
        assert tuple(recurrent.shape) == (3, 4)
    else:
        assert len(recurrent) == count


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ku.layers.MCLSTM(4, dropout=0.3, recurrent_dropout=0.3, seed=2),
        lambda: ku.layers.MCGRU(4, dropout=0.3, seed=2),
        lambda: ku.layers.MCSimpleRNN(4, recurrent_dropout=0.3, seed=2),
    ],
    ids=["MCLSTM", "MCGRU", "MCSimpleRNN"],
)
def test_mc_recurrent_layers_meet_the_mc_layer_contract(layer):
    ku.testing.check_mc_layer(layer(), input_shape=(5, 3))


def test_mc_recurrent_layers_refuse_rates_outside_zero_one():
    with pytest.raises(ValueError, match="argument `recurrent_dropout`.*1.0"):
        ku.layers.MCLSTM(4, recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="argument `dropout`"):
        ku.layers.MCGRUCell(4, dropout=-0.1)


def test_converted_recurrent_model_stays_mc_after_a_keras_file(tmp_path):
    model, x = _bidirectional(0.3)
    mc_model = _convert(model)
    path = tmp_path / "mc.keras"
    mc_model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        ku.sample(loaded, x, num_samples=8, seed=1, verbose=0),
        ku.sample(mc_model, x, num_samples=8, seed=1, verbose=0),
    )


def test_to_mc_dropout_warns_naming_each_dropout_it_cannot_convert():
    class OwnDropout(keras.layers.Dropout):
        pass

    inputs = keras.Input((4,))
    x = keras.layers.Dropout(0.2, name="plain")(inputs)
    x = keras.layers.AlphaDropout(0.3, name="alpha")(x)
    x = OwnDropout(0.1, name="own")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(
        UserWarning, match=r"2 layer\(s\).*alpha.*rate=0.3.*own"
    ) as record:
        mc_model, report = ku.layers.to_mc_dropout(model, return_report=True)
    assert len(record) == 1
    assert [entry.split(" ")[0] for entry in report.converted] == [
        f"{model.name}/plain"
    ]
    assert len(report.not_converted) == 2
    assert isinstance(mc_model.get_layer("own"), OwnDropout)


def test_to_mc_dropout_reports_what_it_converted(capsys):
    model, _ = _bidirectional(0.2)
    _, report = ku.layers.to_mc_dropout(model, verbose=1, return_report=True)
    printed = capsys.readouterr().out
    assert "converted: 2" in printed and "GRU -> MCGRU" in printed
    assert str(report) in printed
    with pytest.raises(ValueError, match="argument `verbose`"):
        ku.layers.to_mc_dropout(model, verbose=3)


def test_to_mc_dropout_seed_repeats_direct_calls():
    model, x = _lstm(0.4)
    first = _convert_seeded(model, 3)
    second = _convert_seeded(model, 3)
    np.testing.assert_array_equal(first(x), second(x))
    assert not np.array_equal(first(x), _convert_seeded(model, 4)(x))


def _convert_seeded(model, seed):
    return ku.layers.to_mc_dropout(model, seed=seed)


def test_mc_dropout_noise_shape_with_batch_one_still_gives_each_sample_a_mask():
    inputs = keras.Input((4, 16))
    model = keras.Model(
        inputs, ku.layers.MCDropout(0.5, noise_shape=(1, 1, 16))(inputs)
    )
    x = np.ones((3, 4, 16), "float32")
    samples = ku.sample(model, x, num_samples=8, seed=0, verbose=0)
    assert samples.std(axis=0).mean() > 0.5  # samples differ
    assert not np.array_equal(samples[:, 0], samples[:, 1])  # inputs differ
    # The other broadcast dimension is honoured within each row.
    np.testing.assert_array_equal(samples[:, :, 0], samples[:, :, 3])


def test_converted_text_model_serves_strings_with_its_vocabulary(tmp_path):
    model, inputs = _text(0.2)
    mc_model = _convert(model)
    path = str(tmp_path / "served")
    ku.export(mc_model, path, task="classification", num_samples=20, verbose=False)
    served = tf.saved_model.load(path)
    out = served.serve_seeded(*inputs, tf.constant(0, tf.int64))
    expected = ku.predict_classification(mc_model, inputs, num_samples=20, seed=0)
    np.testing.assert_allclose(out["probs"].numpy(), expected.probs, atol=1e-5)


def test_converted_copy_keeps_the_compiled_loss_even_an_unregistered_one():
    def own_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred[:, :1]))

    def own_metric(y_true, y_pred):
        return keras.ops.mean(y_pred)

    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dropout(0.2), keras.layers.Dense(2)]
    )
    model.compile("adam", loss=own_loss, metrics=[own_metric])
    assert _convert(model).loss is own_loss
    model.compile("adam", loss=ku.losses.gaussian_nll)
    assert ku.has_variance_head(_convert(model))
