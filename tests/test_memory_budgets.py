"""Sizes a user or a file can set are checked against the memory budget
(`keras_uncertainty._budget`) before anything is allocated.

Each refusal is a one-line `ValueError` naming the size and what to do
instead, raised within a second, with no numpy allocation of note
(`tracemalloc` sees numpy's arrays) and no growth of the process's resident
memory by anything like the refused amount.
"""

import os
import time
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest
from keras_files import layer_config, rewrite_config

import keras_uncertainty as ku
from keras_uncertainty import _budget

MIB = 2**20
# The lazily imported parts, loaded here: no refusal below times an import.
HistogramBinning = ku.calibration.HistogramBinning
Laplace = ku.laplace.Laplace
RandomFeatureGaussianProcess = ku.layers.RandomFeatureGaussianProcess
SWAGState = ku.swag.SWAGState


def _rss():
    """The process's resident memory in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def refused(call, match, refused_bytes=None):
    """Runs `call`, which must raise the budget's `ValueError` (matching
    `match`) within a second, allocating at most 32 MiB of numpy memory and
    growing the resident memory by far less than `refused_bytes`."""
    before = _rss()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match) as info:
            call()
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0, f"refused after {elapsed:.2f} s"
    assert peak < 32 * MIB, f"{peak / MIB:.0f} MiB allocated before the refusal"
    after = _rss()
    if refused_bytes is not None and before is not None:
        assert after - before < min(refused_bytes // 4, 256 * MIB)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Invalid value received for argument `")
    return message


# The budget -----------------------------------------------------------


def test_the_budgets_are_documented_constants_in_one_module():
    assert _budget.MAX_WORKING_BYTES == 16 * 2**30
    assert _budget.MAX_RESULT_BYTES == 16 * 2**30
    # ku.sample's bound is the same constant, not a second number.
    from keras_uncertainty.sampling import sampler

    assert sampler.MAX_RESULT_BYTES is _budget.MAX_RESULT_BYTES
    for name in ("MAX_WORKING_BYTES", "MAX_RESULT_BYTES", "MAX_SWAG_RANK"):
        assert name in _budget.__doc__


def test_the_working_budget_is_read_at_each_check_so_it_can_be_raised(monkeypatch):
    message = refused(lambda: HistogramBinning(num_bins=10**9), r"`num_bins`")
    assert "16 GiB" in message and "keras_uncertainty._budget" in message
    monkeypatch.setattr(_budget, "MAX_WORKING_BYTES", 2**40)
    assert HistogramBinning(num_bins=10**9).num_bins == 10**9
    monkeypatch.setattr(_budget, "MAX_WORKING_BYTES", 2**20)
    refused(lambda: HistogramBinning(num_bins=10**5), r"1 MiB")


# Laplace --------------------------------------------------------------


def _dense_classifier(features, classes):
    inputs = keras.Input((features,))
    outputs = keras.layers.Dense(classes, activation="softmax")(inputs)
    return keras.Model(inputs, outputs)


def test_a_full_last_layer_hessian_of_2000_features_by_50_classes_is_refused():
    model = _dense_classifier(2000, 50)
    x = np.zeros((8, 2000), "float32")
    y = np.arange(8)
    laplace = Laplace(model, "classification", hessian="full")
    message = refused(lambda: laplace.fit(x, y), r"`hessian`", 80 * 10**9)
    assert "hessian='full'" in message and "100050" in message
    assert "hessian='kron' (KFAC)" in message and "fewer features" in message


def test_an_all_layer_full_hessian_of_33k_weights_is_refused():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    h = keras.layers.Dense(180, activation="relu")(inputs)
    h = keras.layers.Dense(170, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    assert model.count_params() > 33_000
    laplace = Laplace(model, "regression", subset="all", hessian="full")
    x, y = np.zeros((16, 10), "float32"), np.zeros((16, 3), "float32")
    message = refused(lambda: laplace.fit(x, y), r"`hessian`", 8 * 10**9)
    assert "KFAC" in message and "subset='last_layer'" in message


def test_an_all_layer_jacobian_batch_above_the_budget_names_the_batch_size():
    inputs = keras.Input((10,))
    h = keras.layers.Dense(180, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    laplace = Laplace(
        model, "regression", subset="all", hessian="diag", batch_size=10**6
    )
    x = np.zeros((10**5, 10), "float32")
    y = np.zeros((10**5, 3), "float32")
    message = refused(lambda: laplace.fit(x, y), r"`batch_size`", 10**9)
    assert "per-example Jacobians" in message
    assert "smaller batch_size (at most" in message


def test_all_layer_jacobians_are_held_one_batch_at_a_time():
    # 2000 rows x 1 output x 2065 weights: 33 MB of Jacobians in float64 if
    # held at once (and twice that while concatenated); one batch of 50 rows
    # is 0.8 MB.
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(64, activation="tanh")(inputs)
    h = keras.layers.Dense(24, activation="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4)).astype("float32")
    y = rng.normal(size=(2000, 1)).astype("float32")
    laplace = Laplace(model, "regression", subset="all", hessian="diag", batch_size=50)
    laplace.fit(x[:50], y[:50])  # compiles the Jacobian step
    tracemalloc.start()
    try:
        laplace.fit(x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * MIB, f"{peak / MIB:.1f} MiB"
    assert laplace.posterior_mean_.shape == (model.count_params(),)
    assert np.all(np.isfinite(laplace.hessian_["eigenvalues"]))


def test_a_dense_posterior_matrix_above_the_budget_is_refused(monkeypatch):
    model = _dense_classifier(30, 4)
    x = np.random.default_rng(0).normal(size=(20, 30)).astype("float32")
    laplace = Laplace(model, "classification", hessian="kron")
    laplace.fit(x, np.arange(20) % 4)
    assert laplace.posterior_covariance().shape == (124, 124)
    monkeypatch.setattr(_budget, "MAX_WORKING_BYTES", 64 * 1024)
    message = refused(laplace.posterior_covariance, r"`hessian`")
    assert "predict" in message
    # The predictive never forms it.
    assert laplace.predict(x[:3]).probs.shape == (3, 4)


def test_a_laplace_file_whose_config_asks_for_huge_weights_is_refused(tmp_path):
    model = _dense_classifier(6, 3)
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    sampled = Laplace(model, "classification").fit(x, np.arange(20) % 3)
    path = tmp_path / "laplace.keras"
    sampled.as_model().save(path)

    def huge(config):
        layer = layer_config(config, "LastLayerPosterior")
        layer.update(
            weights_shape=[10**5, 10**5],
            num_means=10**5,
            factor_shapes=[[10**5, 10**5], [10**5, 10**5], [10**5, 10**5]],
        )

    crafted = rewrite_config(path, huge, tmp_path / "huge.keras")
    assert os.path.getsize(crafted) < 64 * 1024
    message = refused(
        lambda: keras.models.load_model(crafted), r"`weights_shape`", 37 * 2**30
    )
    assert "16 GiB" in message

    def other_width(config):
        layer_config(config, "LastLayerPosterior").update(
            weights_shape=[9, 3], factor_shapes=[[9, 9], [3, 3], [9, 3]]
        )

    crafted = rewrite_config(path, other_width, tmp_path / "width.keras")
    message = refused(lambda: keras.models.load_model(crafted), r"`weights_shape`")
    assert "7 rows: the 6 features" in message


# SNGP and histogram binning -------------------------------------------


def test_a_million_inducing_points_are_refused_before_any_weight():
    message = refused(
        lambda: RandomFeatureGaussianProcess(3, num_inducing=10**6),
        r"`num_inducing`",
        10**12,
    )
    assert "fewer random features (at most about" in message


def test_a_file_asking_for_a_million_inducing_points_is_refused(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), RandomFeatureGaussianProcess(3, num_inducing=8)]
    )
    path = tmp_path / "gp.keras"
    model.save(path)
    crafted = rewrite_config(
        path,
        lambda c: layer_config(c, "RandomFeatureGaussianProcess").update(
            num_inducing=10**6
        ),
        tmp_path / "crafted.keras",
    )
    refused(lambda: keras.models.load_model(crafted), r"`num_inducing`", 10**12)


def test_a_billion_histogram_bins_are_refused_and_fit_counts_the_classes():
    message = refused(
        lambda: HistogramBinning(num_bins=10**9),
        r"`num_bins`",
        23 * 10**9,
    )
    assert "fewer bins" in message
    binning = HistogramBinning(num_bins=10**8)
    probs = np.full((4, 10), 0.1)
    message = refused(
        lambda: binning.fit(probs, np.arange(4), from_logits=False),
        r"`num_bins`",
        10**10,
    )
    assert "10 mapped class(es)" in message


# SWAG -----------------------------------------------------------------


@pytest.fixture(scope="module")
def swag_file(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(1),
        ]
    )
    state = SWAGState(max_rank=3)
    for i in range(3):
        state.collect([w + 0.1 * i for w in model.trainable_weights])
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    swag = ku.swag.SWAG(model, state, bn_update_data=x, bn_batches=2, bn_batch_size=8)
    path = tmp_path_factory.mktemp("swag") / "swag.keras"
    swag.save(path)
    back = keras.models.load_model(path)
    np.testing.assert_allclose(back(x), swag(x), rtol=1e-6)
    return path


@pytest.mark.parametrize(
    "change, argument",
    [
        ({"stored_rank": 10**6, "max_rank": 10**6, "num_snapshots": 10**6}, "max_rank"),
        ({"stored_rank": 10**9}, "stored_rank"),
        (
            {"bn_update_rows": {"shape": [10**5, 10**5], "dtype": "float32"}},
            "bn_update_rows",
        ),
        (
            {"bn_update_rows": {"shape": [16, 10**5], "dtype": "float32"}},
            "bn_update_rows",
        ),
    ],
    ids=["rank-1e6", "stored-rank-1e9", "bn-rows-1e5x1e5", "bn-rows-wider"],
)
def test_a_crafted_swag_file_is_refused_before_its_moments_are_allocated(
    swag_file, tmp_path, change, argument
):
    crafted = rewrite_config(
        swag_file, lambda c: c["config"].update(change), tmp_path / "crafted.keras"
    )
    assert os.path.getsize(crafted) < 64 * 1024
    refused(lambda: keras.models.load_model(crafted), rf"`{argument}`", 3 * 10**9)


def test_swag_ranks_and_moments_are_bounded_before_collection(monkeypatch):
    message = refused(lambda: SWAGState(max_rank=10**6), r"`max_rank`")
    assert "MAX_SWAG_RANK" in message
    monkeypatch.setattr(_budget, "MAX_WORKING_BYTES", MIB)
    state = SWAGState(max_rank=100)
    message = refused(lambda: state.collect(np.zeros(10_000)), r"`max_rank`", 8 * 10**6)
    assert "max_rank <= 10 fits" in message
    assert state.num_snapshots == 0 and state.mean is None


def test_a_swag_state_file_declaring_arrays_larger_than_it_holds_is_refused(
    tmp_path,
):
    state = SWAGState(max_rank=2)
    for w in ([0.0, 1.0], [1.0, 1.0], [2.0, 4.0]):
        state.collect(np.array(w))
    path = tmp_path / "state.npz"
    state.save(path)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    # The deviations' header claims (10**5, 10**5) float64: 80 GB.
    header = files["deviations.npy"]
    text = header[10 : 10 + int.from_bytes(header[8:10], "little")].decode()
    claimed = text.replace("(2, 2)", "(100000, 100000)")
    assert claimed != text
    padded = claimed.rstrip().ljust(len(text) - 1) + "\n"
    files["deviations.npy"] = header[:10] + padded.encode() + header[10 + len(text) :]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    message = refused(lambda: SWAGState.load(path), r"`path`", 8 * 10**10)
    assert "declares shape (100000, 100000)" in message
