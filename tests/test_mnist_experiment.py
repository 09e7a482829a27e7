import gzip
import re

import numpy as np
import pytest

import keras_uncertainty as ku
from keras_uncertainty.cli.main import main
from keras_uncertainty.experiments import mnist, mnist_methods, protocols, registry
from keras_uncertainty.sampling.graph import stochastic_layers

# Runs again with TF_ENABLE_ONEDNN_OPTS=0 in .ci/run (see pyproject's markers).
pytestmark = pytest.mark.kernels


def test_rotation_by_90_degrees_is_numpys_counter_clockwise_turn():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 9, 9)).astype("float32")
    np.testing.assert_allclose(
        mnist.rotate(images, 90), np.rot90(images, axes=(1, 2)), atol=1e-5
    )
    assert mnist.rotate(images, 0) is images


def test_prepare_gives_the_articles_normalized_32x32_inputs():
    images = np.zeros((2, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    x = mnist.prepare(images)
    assert x.shape == (2, 32, 32, 1) and x.dtype == np.float32
    background = (0.0 - mnist.PIXEL_MEAN) / mnist.PIXEL_STD
    assert x[0, 0, 0, 0] == pytest.approx(background)
    assert x.max() == pytest.approx((1.0 - mnist.PIXEL_MEAN) / mnist.PIXEL_STD)


def test_lenet5_without_dropout_is_deterministic():
    model = ku.models.lenet5(dropout_rate=0.0)
    assert not stochastic_layers(model)
    assert len(stochastic_layers(ku.models.lenet5())) == 2


@pytest.fixture(scope="module")
def small_report():
    """Every method trained briefly on 1000 images (the protocol's code path
    with a smaller training slice)."""
    data = ku.datasets.load_mnist()
    original = mnist.TRAIN_IMAGES
    mnist.TRAIN_IMAGES = slice(2000, 3000)
    try:
        return mnist.run(data, epochs=2, num_samples=8, seed=0)
    finally:
        mnist.TRAIN_IMAGES = original


@pytest.mark.slow
def test_report_scores_every_method_at_every_rotation(small_report):
    expected = {
        (m, d) for m in (*mnist.METHODS, mnist.DETERMINISTIC) for d in mnist.ROTATIONS
    }
    assert set(small_report.scores) == expected
    assert small_report.labels.shape == (2000,)
    for (method, degrees), scores in small_report.scores.items():
        assert 0.0 <= scores.accuracy <= 1.0 and np.isfinite(scores.nll)
        np.testing.assert_allclose(scores.retention.retained_fraction, mnist.RETAINED)
        assert 0.0 <= scores.brier <= 2.0 and 0.0 <= scores.error_auroc <= 1.0
        votes = small_report.predictions[method, degrees].votes
        # A vote per sample: T for the sampled methods, one per member for
        # the ensembles, none for the closed-form predictives.
        samples = {"mc-dropout": 8, "vi": 8, "swag": 8, "ensemble": 5}
        samples.update({"batch-ensemble": 4, "mimo": 3})
        if method in samples:
            assert np.all(votes.sum(axis=1) == samples[method])
    # Trained at all: far better than chance on upright digits.
    assert small_report.scores["ensemble", 0].accuracy > 0.5
    # Rotating the digits by 60 degrees costs accuracy.
    for method in ("mc-dropout", "ensemble"):
        upright = small_report.scores[method, 0].accuracy
        assert small_report.scores[method, 60].accuracy < upright


@pytest.mark.slow
def test_report_decides_with_every_methods_uncertainty(small_report):
    assert set(small_report.decisions) == {*mnist.METHODS, mnist.DETERMINISTIC}
    for method, decided in small_report.decisions.items():
        assert 0.0 <= decided.ood_auroc_rotation <= 1.0
        assert 0.0 <= decided.ood_auroc_noise <= 1.0
        assert 0.0 <= decided.set_size <= 10.0
        # Split conformal: coverage at least 1 - alpha, up to the finite
        # sample's slack on 1,000 test digits.
        assert decided.coverage >= 1 - mnist.CONFORMAL_ALPHA - 0.03
        assert small_report.predictions[method, mnist.NOISE].probs.shape == (2000, 10)


def test_every_mnist_method_is_one_registry_entry_on_the_contract():
    assert tuple(mnist_methods.METHODS) == (
        *protocols.MNIST_METHODS,
        protocols.MNIST_BASELINE,
    )
    for name, method in mnist_methods.METHODS.items():
        assert isinstance(method, registry.Method) and method.name == name
        assert method is registry.METHODS[name]
        assert method.label and method.family and method.settings["mnist"]


@pytest.mark.slow
def test_report_text_and_figures(small_report, tmp_path):
    from keras_uncertainty.cli.mnist import _label, report_text, write_figures

    text = report_text(small_report, 8)
    assert "image  61 (label 8)" in text and "image 591 (label 8)" in text
    assert "random, mc-dropout" in text and "rotated by 60 degrees" in text
    for method in mnist.METHODS:  # one row of the benchmark table each
        assert text.count(_label(method)) >= 1
    paths = write_figures(small_report, str(tmp_path))
    assert sorted(p.split("/")[-1] for p in paths) == [
        "reliability.png",
        "retention.png",
        "votes.png",
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_mnist_command_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mnist, "TRAIN_IMAGES", slice(2000, 2500))
    code = main(
        [
            "mnist",
            "--method",
            "mc-dropout",
            "--epochs",
            "1",
            "--num-samples",
            "4",
            "--output-dir",
            str(tmp_path / "figures"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "test-only protocol runs" in captured.err  # no training set here
    # A line as each unit starts and ends, with elapsed and remaining time.
    assert "[1/2] mnist mc-dropout: elapsed" in captured.err
    assert re.search(
        r"\[2/2\] mnist deterministic: elapsed .*, about .* left", captured.err
    )
    assert re.search(r"mnist mc-dropout: accuracy [0-9.]+%, NLL", captured.err)
    assert "MNIST, test-only protocol: trained on test images 2000-2499" in out
    assert "MC dropout" in out and "Deep Ensemble" not in out
    assert "deterministic softmax" in out  # trained on its own without one
    assert (tmp_path / "figures" / "retention.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["mnist", "--epochs", "0"], "expected a positive integer"),
        (["mnist", "--method", "bayes"], "invalid choice"),
    ],
)
def test_mnist_bad_flags_exit_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_mnist_corrupt_file_exits_2_naming_it(tmp_path, capsys):
    import shutil

    source = ku.datasets.load_mnist().folder
    for name in mnist_files():
        shutil.copy(f"{source}/{name}", tmp_path / name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.open(images).read()
    with gzip.open(images, "wb") as f:
        f.write(raw[: len(raw) // 2])  # truncated
    with pytest.raises(SystemExit) as exit_info:
        main(["mnist", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t10k-images-idx3-ubyte.gz" in err[0], err


def test_mnist_missing_folder_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["mnist", "--data-dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def mnist_files():
    return ku.datasets.mnist.TEST_FILES


def _write_idx(folder, prefix, images, labels):
    for kind, magic, array in (
        ("images-idx3", 2051, np.asarray(images, np.uint8)),
        ("labels-idx1", 2049, np.asarray(labels, np.uint8)),
    ):
        header = magic.to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in array.shape
        )
        with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
            f.write(header + array.tobytes())


@pytest.mark.slow
def test_with_a_training_set_the_command_runs_the_articles_protocol(tmp_path, capsys):
    # Small IDX files stand in for the 60,000 training and 10,000 test
    # images; the test set holds images 61 and 591, like the real one.
    rng = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    _write_idx(
        data, "train", rng.integers(0, 256, (96, 28, 28)), rng.integers(0, 10, 96)
    )
    test_labels = rng.integers(0, 10, 600)
    test_labels[[61, 591]] = 8
    _write_idx(data, "t10k", rng.integers(0, 256, (600, 28, 28)), test_labels)
    code = main(
        [
            "mnist",
            "--data-dir",
            str(data),
            "--method",
            "mc-dropout",
            "--epochs",
            "1",
            "--num-samples",
            "2",
            "--output-dir",
            str(tmp_path / "figures"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "test-only" not in captured.err
    expected = (
        "article protocol: trained on the 96 training images, evaluated on the 600"
    )
    assert expected in captured.out
    assert "image 591 (label 8)" in captured.out
