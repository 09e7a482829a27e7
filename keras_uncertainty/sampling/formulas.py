"""Per-chunk summaries of Monte Carlo samples, computed inside the compiled call.

Each function reduces samples of shape `(t, n, ...)` (t samples of n inputs)
to statistics that can be merged across chunks of samples, so that memory
stays bounded whatever `num_samples` is. The final formulas that turn the
merged statistics into predictions live in `predictions.py`.
"""

import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._precision import is_half
from keras_uncertainty.losses.gaussian_nll import split_mean_log_var

_LOG_2PI = float(np.log(2.0 * np.pi))


def plogp(probs):
    """`p log p` element-wise, with `0 log 0 = 0`: the terms of an entropy.

    A numpy array gives a numpy result (no round trip through TensorFlow for
    the final `(N, C)` summaries); anything else runs as TensorFlow ops.
    """
    if isinstance(probs, np.ndarray):
        return probs * np.log(np.where(probs > 0, probs, 1.0))
    probs = tf.convert_to_tensor(probs)
    return tf.math.xlogy(probs, probs)


def entropy(probs, axis=-1):
    """Shannon entropy `-sum_c p_c log p_c` in nats (see `plogp`)."""
    terms = plogp(probs)
    if isinstance(terms, np.ndarray):
        return -np.sum(terms, axis=axis)
    return -tf.reduce_sum(terms, axis=axis)


def regression_moments(samples, variance_head):
    """Summarises t regression samples for merging across chunks.

    Args:
        samples: `(t, n, ..., d)`; `d = 2k` (means then log-variances) when
            `variance_head`, else `d = k` means.
        variance_head: Whether the last axis carries log-variances.

    Returns:
        `(mean_mu, m2_mu, mean_var)`, each `(n, ..., k)` float64: the
        sample mean of mu, the sum of squared deviations of mu from it
        (two-pass on the deviations from the first sample, so that a large
        mean does not cancel a small spread), and the sample mean of
        `sigma^2 = exp(log_var)` (zeros without a variance head). Computed
        in float64: the sums and squares of samples near float32's largest
        values (1e38) overflow float32 (a served mean of -inf and NaN
        bounds for a finite row) but not float64.
    """
    samples = ops.cast(samples, "float64")
    if variance_head:
        mu, log_var = split_mean_log_var(samples)
        mean_var = ops.mean(ops.exp(log_var), axis=0)
    else:
        mu = samples
        mean_var = ops.zeros_like(mu[0])
    # Shifted by the first sample: the deviations from it are small (and
    # exact when close), so a large mean does not swamp the spread in the
    # float32 sums, whatever the number of samples in one call.
    shift = mu[0]
    centred = mu - shift
    mean_centred = ops.mean(centred, axis=0)
    m2_mu = ops.sum(ops.square(centred - mean_centred), axis=0)
    return shift + mean_centred, m2_mu, mean_var


def float32_samples(samples, from_logits):
    """Classifier samples `(t, n, ..., C)` in float32.

    Probabilities that arrive in float16 or bfloat16 (a mixed-precision
    model's softmax) sum to 1 only to within their rounding (about 1e-3 per
    row): they are renormalized over the classes after the cast, so the
    mean probabilities sum to 1 and the entropies are those of
    distributions.

    Args:
        samples: Probabilities (or logits when `from_logits`), any float
            dtype.
        from_logits: Whether `samples` are logits (never renormalized).

    Returns:
        The samples as a float32 tensor.
    """
    half = is_half(tf.convert_to_tensor(samples).dtype)
    samples = ops.cast(samples, "float32")
    if half and not from_logits and samples.shape[-1] != 1:
        samples = samples / ops.sum(samples, axis=-1, keepdims=True)
    return samples


def class_probabilities(samples, from_logits):
    """Class probabilities of each sample; one sigmoid unit becomes 2 classes."""
    samples = float32_samples(samples, from_logits)
    if samples.shape[-1] == 1:
        positive = ops.sigmoid(samples) if from_logits else samples
        return ops.concatenate([1.0 - positive, positive], axis=-1)
    return ops.softmax(samples, axis=-1) if from_logits else samples


def classification_moments(samples, from_logits, votes=True):
    """Summarises t classification samples for merging across chunks.

    Args:
        samples: `(t, n, ..., C)` probabilities (or logits when
            `from_logits`).
        from_logits: Whether `samples` are logits.
        votes: Whether to count the argmax votes too.

    Returns:
        `(sum_probs, sum_entropy[, votes])`: the sums over the t samples of
        the probability vectors `(n, ..., C)`, of their entropies `(n, ...)`,
        and (when `votes`) of the one-hot argmax of each sample
        `(n, ..., C)`, int32.
    """
    probs = class_probabilities(samples, from_logits)
    shape = tf.shape(probs)
    # Sums over the samples of a (t, cells * C) view reduce contiguous rows,
    # a quarter faster on CPU than reducing axes 0 and -1 of (t, n, ..., C).
    flat = tf.reshape(probs, [shape[0], -1])
    sum_probs = tf.reshape(tf.reduce_sum(flat, axis=0), shape[1:])
    sum_plogp = tf.reshape(tf.reduce_sum(plogp(flat), axis=0), shape[1:])
    sums = (sum_probs, -tf.reduce_sum(sum_plogp, axis=-1))
    if not votes:
        return sums
    num_classes = probs.shape[-1]
    cells = tf.reduce_prod(shape[1:-1])
    # Votes by counting (cell, winning class) pairs: cheaper than summing a
    # one-hot tensor of the samples' shape.
    winners = tf.argmax(
        tf.reshape(probs, [shape[0], cells, num_classes]), -1, output_type=tf.int32
    )
    pairs = tf.reshape(winners + num_classes * tf.range(cells)[None, :], [-1])
    counts = tf.math.bincount(
        pairs, minlength=cells * num_classes, maxlength=cells * num_classes
    )
    return (*sums, tf.reshape(counts, shape[1:]))


def gaussian_log_density(y, mu, log_var):
    """In-graph `log N(y | mu, exp(log_var))`, elementwise:
    `-0.5 * (log(2 pi) + log_var + (y - mu)^2 * exp(-log_var))`."""
    return -0.5 * (_LOG_2PI + log_var + tf.square(y - mu) * tf.exp(-log_var))


def log_softmax(logits, axis=-1):
    """numpy `log softmax(z)_c = z_c - log sum_j exp(z_j)`, stable: computed
    as `(z - max z) - log sum_j exp(z_j - max z)`, so no `exp` overflows and
    a very negative logit keeps its log-probability instead of `log 0`.
    (In a graph, `keras.ops.log_softmax`.)

    Args:
        logits: A float numpy array of logits.
        axis: The class axis.

    Returns:
        A float numpy array of log-probabilities, shaped like `logits`.
    """
    logits = np.asarray(logits)
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# The split of the predictive entropy of T samples (or of a second-order
# distribution) into its aleatoric and epistemic parts, with `p_bar` the mean
# probabilities and `E[H]` the expected entropy of the samples:
#
#     total               = H[p_bar] = -sum_c p_bar_c log p_bar_c   (0 log 0 = 0)
#     expected            = E[H] = mean_t H[p_t]
#     mutual_information  = max(total - expected, 0)
#
# `total >= expected` by Jensen's inequality (the entropy is concave); float
# rounding below 0 is clipped to 0. One numpy form (the final summaries of
# `ku.predict_classification`, `ku.evidential`, `ku.ood`, Laplace) and one
# graph form (`ku.export`, in-graph summaries), side by side.


def entropy_split(mean_probs, expected_entropy):
    """numpy split of the predictive entropy: `(total, expected, mutual
    information)` with `total = H[mean_probs] = -sum_c p_c log p_c` (nats,
    `0 log 0 = 0`), `expected = expected_entropy` and
    `mutual_information = max(total - expected, 0)` (>= 0 by Jensen's
    inequality; float rounding below 0 clipped).

    Args:
        mean_probs: `(..., C)` mean probabilities `p_bar = mean_t p_t`
            (anything `np.asarray` takes).
        expected_entropy: `(...)` the mean entropy of the samples,
            `mean_t H[p_t]` (or a closed form, such as a Dirichlet's).

    Returns:
        `(total, expected, mutual_information)`, numpy arrays of shape
        `(...)`.
    """
    total = entropy(np.asarray(mean_probs))
    expected = np.asarray(expected_entropy)
    return total, expected, np.maximum(total - expected, 0.0)


def entropy_split_graph(mean_probs, expected_entropy):
    """In-graph (TensorFlow) form of `entropy_split`, the same formula:
    `total = -sum_c xlogy(p_c, p_c)`, `mutual_information =
    max(total - expected, 0)`.

    Args:
        mean_probs: `(..., C)` mean probabilities, a tensor.
        expected_entropy: `(...)` the mean entropy of the samples, a tensor.

    Returns:
        `(total, expected, mutual_information)`, tensors of shape `(...)`
        (`expected` is `expected_entropy` as given).
    """
    total = entropy(tf.convert_to_tensor(mean_probs))
    return total, expected_entropy, tf.maximum(total - expected_entropy, 0.0)


def entropy_split_of_samples(samples):
    """numpy `entropy_split` of T sampled probability vectors: the mean
    `p_bar = mean_t p_t` and the expected entropy `mean_t H[p_t]` over the
    first axis.

    Args:
        samples: `(T, ..., C)` probabilities.

    Returns:
        `(total, expected, mutual_information)`, each `(...)`.
    """
    samples = np.asarray(samples)
    return entropy_split(samples.mean(axis=0), entropy(samples).mean(axis=0))


def logsumexp(values, axis=-1):
    """numpy `log sum_c exp(v_c)` over `axis`, stable: computed as
    `m + log sum_c exp(v_c - m)` with `m = max_c v_c`, so no `exp`
    overflows; a slice of only `-inf` gives `-inf` (not the NaN of
    `-inf - (-inf)`). (In a graph, `keras.ops.logsumexp`.)

    Args:
        values: A float numpy array (anything `np.asarray` takes).
        axis: The axis to reduce.

    Returns:
        A float numpy array, `values`' shape without `axis`.
    """
    values = np.asarray(values)
    top = np.max(values, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        rest = np.log(np.sum(np.exp(values - top), axis=axis, keepdims=True))
    return np.squeeze(top + rest, axis=axis)


def sigma_points(mean, std, log_var, num_samples, first):
    """In-graph regression samples whose mixture is exactly a Gaussian's
    mean, epistemic and aleatoric parts: sample s (global index `first + s`,
    the same whatever the chunking) is `(mean - std, log_var)` for even s and
    `(mean + std, log_var)` for odd s. Over an even number of samples, their
    mean is `mean`, the spread of their means (population variance)
    `std^2` and their noise `exp(log_var)`, so `RegressionMoments` splits
    the variance exactly (the one-pass methods with a closed-form epistemic
    variance: SNGP's GP head, the Laplace GLM predictive).

    Args:
        mean: `(n, k)` means.
        std: The epistemic standard deviations, broadcastable to `mean`.
        log_var: The noise's log-variances, broadcastable to `mean`.
        num_samples: t, the samples of this call (an int or a scalar).
        first: The global index of the call's first sample.

    Returns:
        `(t * n, 2k)` rows, sample-major: the means, then the log-variances.
    """
    index = tf.range(num_samples) + tf.cast(first, tf.int32)
    sign = tf.cast(2 * (index % 2) - 1, mean.dtype)  # -, +, -, ...
    std = tf.broadcast_to(tf.cast(std, mean.dtype), tf.shape(mean))
    means = mean[None] + sign[:, None, None] * std[None]
    log_var = tf.broadcast_to(tf.cast(log_var, mean.dtype), tf.shape(mean))
    noise = tf.broadcast_to(log_var[None], tf.shape(means))
    width = mean.shape[-1]
    width = 2 * width if width is not None else 2 * tf.shape(mean)[-1]
    return tf.reshape(tf.concat([means, noise], axis=-1), (-1, width))
