"""Invalid arguments and saved configs give one-line `ValueError`s naming
the argument, not tracebacks from inside Keras, numpy or TensorFlow."""

import gc
import warnings
import zipfile

import keras
import numpy as np
import pytest
from keras_files import layer_config, rewrite_config

import keras_uncertainty as ku
from keras_uncertainty.layers.packed import PackedDense


def _one_line(error, argument):
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Invalid value received for argument `{argument}`.")
    assert "Received:" in message
    return message


@pytest.fixture(scope="module")
def swag_parts():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    state = ku.swag.SWAGState(max_rank=3)
    for i in range(3):
        state.collect([w + 0.1 * i for w in model.trainable_weights])
    return model, state


# SWAG -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [2**70, 2**63, -3, 1.5, "7"])
def test_a_swag_seed_outside_int64_or_negative_is_refused(swag_parts, seed):
    model, state = swag_parts
    with pytest.raises(ValueError) as error:
        ku.swag.SWAG(model, state, seed=seed)
    message = _one_line(error, "seed")
    assert "at most 2**63 - 1" in message


def test_the_largest_int64_seed_draws_and_the_next_is_refused(swag_parts):
    model, state = swag_parts
    swag = ku.swag.SWAG(model, state, seed=2**63 - 1)
    assert swag.draw_weights(2).shape == (2, swag.num_params)
    with pytest.raises(ValueError) as error:
        ku.swag.SWAG(model, state, seed=2**63)
    _one_line(error, "seed")


def test_a_truncated_swag_state_file_is_refused_and_closed(swag_parts, tmp_path):
    _, state = swag_parts
    path = tmp_path / "state.npz"
    state.save(path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 40):
        truncated = tmp_path / f"cut{cut}.npz"
        truncated.write_bytes(data[:cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError) as error:
                ku.swag.SWAGState.load(truncated)
            gc.collect()
        message = _one_line(error, "path")
        assert str(truncated) in message
        leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert not leaked, [str(w.message) for w in leaked]


def test_a_swag_state_file_with_a_damaged_member_is_refused(swag_parts, tmp_path):
    _, state = swag_parts
    path = tmp_path / "state.npz"
    state.save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["mean.npy"] = files["mean.npy"][:-8]  # fewer values than declared
    with zipfile.ZipFile(path, "w") as archive:
        for name, member in files.items():
            archive.writestr(name, member)
    with pytest.raises(ValueError) as error:
        ku.swag.SWAGState.load(path)
    _one_line(error, "path")


def _good_state():
    return {
        "max_rank": 2,
        "num_snapshots": 3,
        "mean": [0.0, 1.0],
        "sq_mean": [1.0, 2.0],
        "deviations": [[0.1, 0.2], [0.0, -0.1]],
        "shapes": [[2]],
    }


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("max_rank", "x", "max_rank, an integer"),
        ("max_rank", 2.5, "max_rank, an integer"),
        ("max_rank", 10**7, "max_rank <= 10000"),
        ("num_snapshots", None, "num_snapshots, an integer"),
        ("num_snapshots", -1, "num_snapshots, an integer"),
        ("mean", "abc", "mean, an array of floats"),
        ("mean", [np.nan, 1.0], "finite values in mean"),
        ("mean", [object(), 1.0], "mean, an array of floats"),
        ("sq_mean", [-1.0, 2.0], "sq_mean >= 0"),
        ("shapes", "zz", "shapes, a list of shapes"),
        ("shapes", [[3]], "shapes of 2 weights"),
    ],
)
def test_a_swag_state_with_garbage_values_is_refused_naming_the_value(
    key, value, expected
):
    state = _good_state()
    state[key] = value
    with pytest.raises(ValueError) as error:
        ku.swag.SWAGState.from_state(state)
    message = _one_line(error, "state")
    assert expected in message


def test_a_state_of_numpy_scalars_is_accepted_and_one_of_booleans_refused():
    state = _good_state()
    state["max_rank"] = np.array(2)  # as an .npz file holds it
    state["num_snapshots"] = np.int64(3)
    restored = ku.swag.SWAGState.from_state(state)
    np.testing.assert_allclose(restored.deviations, [[0.1, 0.2], [0.0, -0.1]])
    assert restored.shapes == [(2,)] and restored.max_rank == 2
    state["num_snapshots"] = True
    with pytest.raises(ValueError) as error:
        ku.swag.SWAGState.from_state(state)
    assert "num_snapshots" in _one_line(error, "state")


# MIMO -----------------------------------------------------------------


@pytest.mark.parametrize(
    "build_fn, expected",
    [
        (lambda shape: 3, "returned int 3"),
        (lambda shape: lambda t: [t, t], "a backbone returning list"),
    ],
    ids=["not-callable", "not-a-tensor"],
)
def test_a_mimo_builder_that_returns_no_model_is_refused(build_fn, expected):
    with pytest.raises(ValueError) as error:
        ku.MIMO(build_fn, (4,), num_outputs=2)
    assert expected in _one_line(error, "build_fn")


# Saved configs --------------------------------------------------------


def test_a_last_layer_posterior_with_a_bogus_structure_is_refused_at_load(tmp_path):
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    x = np.random.default_rng(0).normal(size=(12, 5)).astype("float32")
    laplace = ku.laplace.Laplace(model, "classification").fit(x, np.arange(12) % 3)
    path = tmp_path / "laplace.keras"
    laplace.as_model().save(path)
    crafted = rewrite_config(
        path,
        lambda c: layer_config(c, "LastLayerPosterior").update(structure="bogus"),
        tmp_path / "bogus.keras",
    )
    with pytest.raises(ValueError) as error:
        keras.models.load_model(crafted)
    assert "structure='bogus'" in _one_line(error, "structure")
    config = laplace.as_model().posterior.get_config()
    config["likelihood"] = "poisson"
    with pytest.raises(ValueError) as error:
        ku.laplace.LastLayerPosterior.from_config(config)
    _one_line(error, "likelihood")


def _save(model, path):
    model.save(path)
    return path


@pytest.mark.parametrize(
    "build, class_name, change, argument",
    [
        (
            lambda: keras.Sequential([keras.Input((4,)), ku.layers.MCDropout(0.5)]),
            "MCDropout",
            {"rate": 5},
            "rate",
        ),
        (
            lambda: keras.Sequential([keras.Input((4,)), ku.layers.MCDropout(0.5)]),
            "MCDropout",
            {"rate": -0.5},
            "rate",
        ),
        (
            lambda: keras.Sequential([keras.Input((3, 4)), PackedDense(2, 3)]),
            "PackedDense",
            {"num_members": -2},
            "num_members",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((4,)), ku.layers.BatchEnsembleDense(2, 2)]
            ),
            "BatchEnsembleDense",
            {"num_members": -1},
            "num_members",
        ),
    ],
    ids=["dropout-5", "dropout-negative", "packed-members", "batch-ensemble"],
)
def test_an_invalid_value_in_a_keras_file_is_our_value_error_not_a_type_error(
    tmp_path, build, class_name, change, argument
):
    path = _save(build(), tmp_path / "model.keras")
    crafted = rewrite_config(
        path,
        lambda c: layer_config(c, class_name).update(change),
        tmp_path / "crafted.keras",
    )
    with pytest.raises(ValueError) as error:
        keras.models.load_model(crafted)
    assert not isinstance(error.value, TypeError)
    _one_line(error, argument)


def test_a_layer_from_config_raises_the_value_error_of_init():
    config = ku.layers.MCDropout(0.5).get_config()
    config["rate"] = 5
    with pytest.raises(ValueError) as error:
        ku.layers.MCDropout.from_config(config)
    _one_line(error, "rate")
    # Keras's own ValueError (an unknown keyword) is not wrapped either.
    config = ku.layers.MCDropout(0.5).get_config()
    config["no_such_argument"] = 1
    with pytest.raises(ValueError, match="no_such_argument"):
        ku.layers.MCDropout.from_config(config)
