"""The MNIST epistemic-uncertainty article, with referral and rotation shift.

LeNet-5 with whole-channel MC dropout, a Deep Ensemble of plain LeNet-5s,
and every other MNIST method of `keras_uncertainty.experiments.registry`.
With the training set (the article's protocol): trained on the 60,000
training images, evaluated on the 10,000 test images. Without it (offline):
trained on test images 2000-9999 and evaluated on 0-1999. Both evaluation
sets hold the article's two eights: 61, a typical one, and 591, one that
looks like a 3. Then the referral protocol of Filos et al. (2019) and the
rotation shift of Ovadia et al. (2019): the same evaluation on the digits
rotated by 30 and 60 degrees.
"""

import dataclasses
import math
import time

import keras
import numpy as np

from keras_uncertainty import metrics
from keras_uncertainty.conformal import ConformalClassifier
from keras_uncertainty.experiments import registry
from keras_uncertainty.sampling import ClassificationPrediction

# The `mnist` command's methods, in the order they run and are reported
# (the registry's); the deterministic baseline runs after them.
METHODS = registry.names(registry.MNIST)

TRAIN_IMAGES = slice(2000, 10000)
TEST_IMAGES = slice(0, 2000)
EXAMPLES = (61, 591)  # the article's typical and ambiguous eights
ROTATIONS = (0, 30, 60)  # degrees; Ovadia et al. (2019) rotate MNIST digits
# Every evaluation of a unit: the rotations, then uniform noise images (as
# many as the evaluated digits, seeded) as a far out-of-distribution set.
NOISE = "noise"
SHIFTS = (*ROTATIONS, NOISE)
OOD_ROTATION = 60  # the rotation scored as out-of-distribution
CONFORMAL_ALPHA = 0.05
# The article: 32x32 inputs normalized with mean 0.137 and std 0.3081,
# dropout 0.5, Adam 1e-3, batch 64, 10 epochs, T = 100.
IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD = 32, 0.137, 0.3081
LEARNING_RATE, BATCH_SIZE = 1e-3, 64  # every network's Adam step and batch
# The article's 10 epochs over 60,000 images are about 9,400 updates; the
# 8,000 images here give 1,250 per 10 epochs. The plain networks (ensemble
# members, the baseline) have converged by then; the dropout network, whose
# channel dropout slows learning, is still fitting (and uncertain about
# every digit, typical eights included), so it trains 30 epochs (each
# method's `mnist_epochs`; with the training set, `mnist_article_epochs`).
NUM_SAMPLES = 100
RETAINED = np.linspace(0.5, 1.0, 11)  # Filos et al.'s 50% to 100%
# The referral baseline: one plain network's softmax entropy.
DETERMINISTIC = registry.baseline(registry.MNIST)


def rotate(images, degrees):
    """Rotates `(N, H, W)` images in [0, 1] about their centre (bilinear,
    zero fill), counter-clockwise."""
    if degrees == 0:
        return images
    height, width = images.shape[1:3]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # The transform maps output pixel (x, y) to the input pixel it reads.
    transform = np.array(
        [
            cos,
            -sin,
            cx - cos * cx + sin * cy,
            sin,
            cos,
            cy - sin * cx - cos * cy,
            0.0,
            0.0,
        ],
        "float32",
    )
    rotated = keras.ops.image.affine_transform(
        images[..., None].astype("float32"),
        np.broadcast_to(transform, (len(images), 8)),
        interpolation="bilinear",
        fill_mode="constant",
        fill_value=0.0,
    )
    return keras.ops.convert_to_numpy(rotated)[..., 0]


def prepare(images, degrees=0):
    """uint8 `(N, 28, 28)` digits -> the article's normalized `(N, 32, 32, 1)`."""
    pixels = rotate(images.astype("float32") / 255.0, degrees)
    resized = keras.ops.image.resize(
        pixels[..., None], (IMAGE_SIZE, IMAGE_SIZE), interpolation="bilinear"
    )
    return ((keras.ops.convert_to_numpy(resized) - PIXEL_MEAN) / PIXEL_STD).astype(
        "float32"
    )


@dataclasses.dataclass(frozen=True)
class Scores:
    """One method on the test images rotated by `degrees`.

    Attributes:
        accuracy, nll, ece, brier: Of the predictive distribution (ECE with
            15 equal-width bins).
        error_auroc: AUROC of the predictive entropy for the misclassified
            digits.
        mean_entropy: Mean predictive entropy (nats).
        retention: `ku.metrics.RetentionCurve`, referral by predictive
            entropy at `RETAINED`.
    """

    method: str
    degrees: int
    accuracy: float
    nll: float
    ece: float
    brier: float
    error_auroc: float
    mean_entropy: float
    retention: metrics.RetentionCurve


@dataclasses.dataclass(frozen=True)
class Decisions:
    """What one method's uncertainty decides, on the upright digits.

    Attributes:
        ood_auroc_rotation: AUROC of the predictive entropy, the upright
            digits against the same digits rotated by `OOD_ROTATION`.
        ood_auroc_noise: The same against uniform noise images.
        set_size: Mean size of the split-conformal (LAC) sets at
            `CONFORMAL_ALPHA`, calibrated on the first half of the evaluated
            digits and measured on the second half.
        coverage: The fraction of those sets that hold the label.
    """

    method: str
    ood_auroc_rotation: float
    ood_auroc_noise: float
    set_size: float
    coverage: float


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the `mnist` command prints and plots.

    Attributes:
        protocol: What was trained and evaluated, in words.
        labels: Labels of the evaluation images (2,000 offline, 10,000 with
            the training set).
        predictions: `{(method, shift): ku.ClassificationPrediction}`,
            methods among `METHODS` and `DETERMINISTIC`, shifts among
            `SHIFTS`.
        scores: `{(method, degrees): Scores}`.
        decisions: `{method: Decisions}`.
        seconds: Wall time of training and evaluation.
    """

    labels: np.ndarray
    predictions: dict
    scores: dict
    seconds: float
    protocol: str = ""
    decisions: dict = dataclasses.field(default_factory=dict)


def _score(method, degrees, labels, prediction):
    report = metrics.classification_report(labels, prediction)
    return Scores(
        method=method,
        degrees=degrees,
        accuracy=report["accuracy"],
        nll=report["nll"],
        ece=report["ece"],
        brier=report["brier"],
        error_auroc=report["error_auroc"],
        mean_entropy=report["mean_entropy"],
        retention=metrics.retention_curve(
            labels, prediction.probs, prediction.entropy, RETAINED
        ),
    )


def decisions(method, labels, by_shift):
    """The `Decisions` of one method's `{shift: prediction}`."""
    upright = by_shift[0]
    half = len(labels) // 2
    conformal = ConformalClassifier(alpha=CONFORMAL_ALPHA, score="lac").fit(
        upright.probs[:half], labels[:half]
    )
    sets = conformal.predict_set(upright.probs[half:])
    return Decisions(
        method=method,
        ood_auroc_rotation=metrics.ood_report(
            upright.entropy, by_shift[OOD_ROTATION].entropy
        ).auroc,
        ood_auroc_noise=metrics.ood_report(
            upright.entropy, by_shift[NOISE].entropy
        ).auroc,
        set_size=metrics.mean_set_size(sets),
        coverage=metrics.set_coverage(labels[half:], sets),
    )


def noise_images(count, seed=0):
    """`count` uint8 `(28, 28)` images of uniform noise, as MNIST's."""
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28), np.uint8)


def units(methods):
    """The methods `run` trains for `methods`, in order: each of `methods`
    (among `METHODS`), then the deterministic baseline."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"Invalid value received for argument `methods`. Expected names "
            f"among {METHODS}. Received: {unknown}"
        )
    return [m for m in METHODS if m in methods] + [DETERMINISTIC]


def run(
    mnist,
    methods=METHODS,
    epochs=None,
    num_samples=NUM_SAMPLES,
    seed=0,
    callbacks=(),
    train=None,
    finished=None,
    on_finished=None,
    on_started=None,
):
    """Trains and evaluates `methods` and the baseline; returns a `Report`.

    Each method (a unit) is trained and predicted on its own, seeded with
    `seed` alone, so its result does not depend on which other methods run
    or on whether it ran in an earlier, interrupted run (`finished`).

    Args:
        mnist: The test set, a `ku.datasets.MNIST`.
        methods: Among `METHODS`.
        epochs: Overrides the methods' epochs (each method's
            `mnist_epochs` offline, `mnist_article_epochs` with the
            training set).
        num_samples: T.
        seed: Seeds training and sampling.
        callbacks: Keras callbacks for every `fit`.
        train: The training set (`load_mnist(split="train")`): the article's
            protocol, evaluated on every test image. None: the offline
            protocol on the test set alone (`TRAIN_IMAGES`, `TEST_IMAGES`).
        finished: `{method: {degrees: ClassificationPrediction}}` of units
            an earlier run finished with the same settings and data (see
            `prediction_arrays`): they are scored, not trained again.
        on_finished: Called as `on_finished(method, predictions, scores,
            seconds, decisions, timing)` as soon as a unit's predictions
            (`{shift: ...}`), scores (`{degrees: ...}`) and `Decisions` are
            made, before the next unit trains (the command writes them);
            `timing` holds `train_seconds` and `predict_ms` (per upright
            image).
        on_started: Called as `on_started(method, index, count)` before a
            unit trains (`index` of the `count` units of this run, finished
            ones included).

    The deterministic baseline is a plain LeNet-5 trained like one member
    of the ensemble. Each method is `registry.METHODS[name]`, built by its
    `mnist_build`, trained by its `mnist_fit` and predicted by its
    `mnist_predict`.
    """
    start = time.perf_counter()
    finished = dict(finished or {})
    x_train, y_train, evaluated, per_method, protocol = _protocol(mnist, train)
    labels = mnist.labels[evaluated]
    tests = {d: prepare(mnist.images[evaluated], d) for d in ROTATIONS}

    tests[NOISE] = prepare(noise_images(len(labels), seed))

    predictions, scores, decided = {}, {}, {}
    run_units = units(methods)
    for index, name in enumerate(run_units):
        unit_start = time.perf_counter()
        by_shift = finished.get(name)
        timing = {}
        if by_shift is None:
            if on_started is not None:
                on_started(name, index, len(run_units))
            method = registry.METHODS[name]
            keras.utils.set_random_seed(seed)
            model = method.mnist_build(len(x_train))
            predictor = method.mnist_fit(
                model,
                x_train,
                y_train,
                epochs or getattr(method, per_method),
                callbacks=list(callbacks),
            )
            timing["train_seconds"] = time.perf_counter() - unit_start
            by_shift = {}
            for shift, x in tests.items():
                began = time.perf_counter()
                by_shift[shift] = method.mnist_predict(predictor, x, num_samples, seed)
                if shift == 0:
                    timing["predict_ms"] = 1000 * (time.perf_counter() - began) / len(x)
        unit_scores = {}
        for shift in SHIFTS:
            prediction = by_shift[shift]
            if len(prediction.probs) != len(labels):
                raise ValueError(
                    f"The earlier {name} predictions hold "
                    f"{len(prediction.probs)} images; this protocol evaluates "
                    f"{len(labels)}"
                )
            predictions[name, shift] = prediction
            if shift in ROTATIONS:
                unit_scores[shift] = _score(name, shift, labels, prediction)
                scores[name, shift] = unit_scores[shift]
        decided[name] = decisions(name, labels, by_shift)
        if name not in finished and on_finished is not None:
            seconds = time.perf_counter() - unit_start
            on_finished(name, by_shift, unit_scores, seconds, decided[name], timing)
    return Report(
        labels,
        predictions,
        scores,
        time.perf_counter() - start,
        protocol,
        decided,
    )


def _protocol(mnist, train):
    """(x_train, y_train, evaluated slice, the methods' epochs attribute,
    description)."""
    if train is None:
        protocol = (
            f"test-only protocol: trained on test images {TRAIN_IMAGES.start}-"
            f"{TRAIN_IMAGES.stop - 1}, evaluated on {TEST_IMAGES.start}-"
            f"{TEST_IMAGES.stop - 1}"
        )
        return (
            prepare(mnist.images[TRAIN_IMAGES]),
            mnist.labels[TRAIN_IMAGES],
            TEST_IMAGES,
            "mnist_epochs",
            protocol,
        )
    protocol = (
        f"article protocol: trained on the {len(train.labels):,} training "
        f"images, evaluated on the {len(mnist.labels):,} test images"
    )
    evaluated = slice(0, len(mnist.labels))
    return (
        prepare(train.images),
        train.labels,
        evaluated,
        "mnist_article_epochs",
        protocol,
    )


_FIELDS = ("probs", "entropy", "expected_entropy", "mutual_information", "votes")


def prediction_arrays(predictions):
    """`{degrees: ClassificationPrediction}` as flat arrays, e.g. for
    `numpy.savez`: `"30/probs"`, ... (`votes` only where present)."""
    arrays = {}
    for degrees, prediction in predictions.items():
        for field in _FIELDS:
            value = getattr(prediction, field)
            if value is not None:
                arrays[f"{degrees}/{field}"] = np.asarray(value)
    return arrays


def predictions_from_arrays(arrays):
    """The inverse of `prediction_arrays`.

    Raises:
        ValueError: A rotation or field is missing, or the shapes disagree.
    """
    predictions = {}
    for degrees in SHIFTS:
        try:
            fields = {f: arrays[f"{degrees}/{f}"] for f in _FIELDS[:4]}
        except KeyError as missing:
            raise ValueError(f"the predictions lack {missing}") from None
        votes = arrays.get(f"{degrees}/votes")
        probs = np.asarray(fields["probs"], np.float64)
        if probs.ndim != 2 or any(
            np.shape(fields[f]) != probs.shape[:1] for f in _FIELDS[1:4]
        ):
            raise ValueError(f"the {degrees} predictions have other shapes")
        if votes is not None and np.shape(votes) != probs.shape:
            raise ValueError(f"the {degrees} votes have another shape")
        predictions[degrees] = ClassificationPrediction(
            probs=probs,
            label=np.argmax(probs, axis=-1),
            entropy=np.asarray(fields["entropy"], np.float64),
            expected_entropy=np.asarray(fields["expected_entropy"], np.float64),
            mutual_information=np.asarray(fields["mutual_information"], np.float64),
            votes=None if votes is None else np.asarray(votes, np.int64),
        )
    return predictions
