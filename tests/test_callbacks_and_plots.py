import warnings

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_uncertainty as ku  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_regression_callback_keys_reach_history_and_early_stopping(regression_data):
    x, y = regression_data
    keras.utils.set_random_seed(7)
    model = ku.models.article_regression_mlp()
    model.compile("adam", loss=ku.losses.gaussian_nll)
    callback = ku.callbacks.UncertaintyMetrics((x[:64], y[:64]), num_samples=8)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_mc_nll", mode="min", patience=5
    )
    history = model.fit(
        x, y, epochs=3, batch_size=64, verbose=0, callbacks=[callback, stopper]
    )
    for key in ("val_mc_nll", "val_mc_rmse", "val_mc_coverage95"):
        assert len(history.history[key]) == 3
        assert np.isfinite(history.history[key]).all()
    assert 0 <= history.history["val_mc_coverage95"][-1] <= 1


def test_classification_callback_every_other_epoch(classifier, class_inputs):
    labels = (class_inputs[:, 0] > 0).astype("int64") + (class_inputs[:, 1] > 1)
    model = keras.models.clone_model(classifier)
    model.compile("adam", loss="sparse_categorical_crossentropy")
    callback = ku.callbacks.UncertaintyMetrics(
        (class_inputs, labels), num_samples=5, every=2
    )
    history = model.fit(class_inputs, labels, epochs=4, verbose=0, callbacks=[callback])
    keys = (
        "val_mc_nll",
        "val_mc_accuracy",
        "val_mc_ece",
        "val_mc_brier",
        "val_mc_mutual_information",
    )
    for key in keys:
        assert len(history.history[key]) == 2  # epochs 2 and 4


def _small_regression_fit(callbacks, x, y, **fit_args):
    keras.utils.set_random_seed(7)
    model = ku.models.article_regression_mlp()
    model.compile("adam", loss=ku.losses.gaussian_nll)
    return model.fit(x, y, epochs=2, verbose=0, callbacks=callbacks, **fit_args)


def _tensorboard_tags(log_dir):
    tags = set()
    for event_file in log_dir.rglob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(event_file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_values_reach_csv_logger_and_tensorboard_listed_before_the_callback(
    regression_data, tmp_path
):
    x, y = regression_data
    csv_path = tmp_path / "log.csv"
    callbacks = [
        keras.callbacks.CSVLogger(str(csv_path)),
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        ku.callbacks.UncertaintyMetrics((x[:64], y[:64]), num_samples=4),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = _small_regression_fit(callbacks, x, y, batch_size=64)
    assert [type(c) for c in callbacks][0] is keras.callbacks.CSVLogger
    header, *rows = csv_path.read_text().splitlines()
    assert "val_mc_nll" in header.split(",") and len(rows) == 2
    column = header.split(",").index("val_mc_nll")
    np.testing.assert_allclose(
        [float(row.split(",")[column]) for row in rows],
        history.history["val_mc_nll"],
        rtol=1e-6,
    )
    # TensorBoard writes "val_" keys to its validation run, without the prefix.
    assert "epoch_mc_nll" in _tensorboard_tags(tmp_path / "tb" / "validation")


def test_outside_a_callback_list_it_warns_that_order_matters(regression_data):
    x, y = regression_data
    callback = ku.callbacks.UncertaintyMetrics((x[:64], y[:64]), num_samples=4)
    with pytest.warns(UserWarning, match="List it first"):
        callback.on_train_begin()


def test_dataset_validation_data_gives_the_array_figures(regression_data):
    x, y = regression_data
    model = ku.models.article_regression_mlp()
    model.compile("adam", loss=ku.losses.gaussian_nll)
    figures = []

    class Rows(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            part = slice(30 * index, min(30 * (index + 1), 100))
            return x[part], y[part]

    for data in (
        (x[:100], y[:100]),
        tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).batch(30),
        Rows(),
    ):
        callback = ku.callbacks.UncertaintyMetrics(data, num_samples=6, seed=3)
        callback.set_model(model)
        logs = {}
        callback.on_epoch_end(0, logs)
        figures.append(logs)
    for streamed in figures[1:]:
        assert streamed.keys() == figures[0].keys()
        for key in figures[0]:
            np.testing.assert_allclose(streamed[key], figures[0][key], rtol=1e-6)


def test_callback_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`validation_data`"):
        ku.callbacks.UncertaintyMetrics(np.zeros(3))
    with pytest.raises(ValueError, match="`validation_data`"):
        ku.callbacks.UncertaintyMetrics(iter([(np.zeros(3), np.zeros(3))]))
    with pytest.warns(UserWarning, match="ignores the sample weights"):
        ku.callbacks.UncertaintyMetrics((np.zeros(3), np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="`task`"):
        ku.callbacks.UncertaintyMetrics((np.zeros(3), np.zeros(3)), task="x")
    with pytest.raises(ValueError, match="`every`"):
        ku.callbacks.UncertaintyMetrics((np.zeros(3), np.zeros(3)), every=0)


def _classification():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(300, 4))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, size=300)
    return labels, probs


def test_reliability_diagram_draws_bins_histogram_and_diagonal(tmp_path):
    labels, probs = _classification()
    ax = ku.plots.reliability_diagram(labels, probs, num_bins=10)
    filled = len(ku.metrics.reliability_bins(labels, probs, 10)[0])
    assert len(ax.patches) == 2 * filled  # accuracy bars and share bars
    assert len(ax.lines) == 1
    assert "ECE" in ax.get_title() and ax.get_xlabel() == "confidence"
    assert ax.get_legend() is not None
    ax.figure.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_retention_plot_draws_baselines_and_each_method(tmp_path):
    labels, probs = _classification()
    entropy = -(probs * np.log(probs)).sum(-1)
    curves = {
        "entropy": ku.metrics.retention_curve(labels, probs, entropy),
        "random": ku.metrics.retention_curve(labels, probs, np.arange(300.0)),
    }
    ax = ku.plots.retention_curve(curves)
    assert len(ax.lines) == 4  # oracle, random referral, two methods
    labels_drawn = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("entropy") for t in labels_drawn)
    ax.figure.savefig(tmp_path / "retention.png")
    with pytest.raises(ValueError, match="RetentionCurve"):
        ku.plots.retention_curve([1, 2])


def test_regression_plots(tmp_path, regression_model, regression_data):
    x, y = regression_data
    grid = np.linspace(-4, 4, 50)[:, None].astype("float32")
    prediction = ku.predict_regression(regression_model, grid, num_samples=10)
    ax = ku.plots.regression_uncertainty(x, y, (grid, prediction))
    assert len(ax.collections) == 3  # two bands and the data points
    assert len(ax.lines) == 1  # the mean
    ax.figure.savefig(tmp_path / "bands.png")

    train = ku.predict_regression(regression_model, x, num_samples=10)
    ax = ku.plots.regression_calibration(y, train.mean, train.std, num_levels=10)
    curve = [line for line in ax.lines if len(line.get_xdata()) == 10]
    assert len(curve) == 1 and len(ax.lines) == 2
    ax.figure.savefig(tmp_path / "calibration.png")


def test_vote_histogram(tmp_path, classifier, class_inputs):
    prediction = ku.predict_classification(
        classifier, class_inputs, num_samples=30, votes=True
    )
    ax = ku.plots.vote_histogram(prediction, 3)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 3 and sum(heights) == 30
    assert "30 samples" in ax.get_title()
    ax.figure.savefig(tmp_path / "votes.png")
    with pytest.raises(ValueError, match="`index`"):
        ku.plots.vote_histogram(prediction, 999)


def test_regression_callback_figures_equal_the_metrics_on_the_same_samples(
    regression_data,
):
    x, y = regression_data
    model = ku.models.article_regression_mlp()
    model.compile("adam", loss=ku.losses.gaussian_nll)
    callback = ku.callbacks.UncertaintyMetrics((x[:80], y[:80]), num_samples=12, seed=4)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    samples = ku.sample(model, x[:80], 12, seed=4).astype(np.float64)
    means, stds = samples[..., :1], np.exp(0.5 * samples[..., 1:])
    target = np.asarray(y[:80], np.float64).reshape(-1, 1)
    np.testing.assert_allclose(
        logs["val_mc_nll"], ku.metrics.mixture_nll(target, means, stds), rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["val_mc_rmse"], ku.metrics.rmse(target, means.mean(0)), rtol=1e-5
    )
