"""The GLM predictive computed in-graph (float64 after the features).

One compiled step per fitted `Laplace` computes, for a batch of inputs, the
features, the mean outputs `f_mean`, their covariance `f_var = J Sigma J^T`
and, for classification, the sums over `num_samples` draws of the logits
`f ~ N(f_mean, f_var)` of their softmax and its entropy: the whole
predictive runs on the batches of one forward pass.
"""

import tensorflow as tf


def last_layer_variance(structure, phi, factors, k):
    """`f_var (n, k, k)` of augmented features `phi (n, d1)`: the graph
    version of `_numerics.last_layer_variance`."""
    if structure == "diag":
        (scale,) = factors
        return tf.linalg.diag(tf.matmul(tf.square(phi), scale))
    if structure == "kron":
        u_a, u_g, scale = factors
        weights = tf.matmul(tf.square(tf.matmul(phi, u_a)), scale)  # (n, k)
        return tf.einsum("aj,nj,bj->nab", u_g, weights, u_g)
    q, scale = factors  # (d1, k, P), (P,)
    jq = tf.einsum("ni,iap->nap", phi, q)
    return tf.einsum("nap,p,nbp->nab", jq, scale, jq)


def draw_logits(f_mean, f_var, eps):
    """Draws `f ~ N(f_mean, f_var)` `(t, n, k)` from standard normals `eps
    (t, n, k)`, through the Cholesky root of each `f_var (n, k, k)`."""
    k = tf.shape(f_mean)[1]
    eye = tf.eye(k, dtype=f_var.dtype)
    # A tiny jitter factorizes the rank-deficient directions (the softmax's
    # shift invariance makes f_var singular along the ones vector).
    jitter = 1e-10 * tf.linalg.trace(f_var) / tf.cast(k, f_var.dtype) + 1e-30
    root = tf.linalg.cholesky(f_var + jitter[:, None, None] * eye)
    return f_mean[None] + tf.einsum("nab,tnb->tna", root, eps)


def mc_sums(f_mean, f_var, num_samples, seed):
    """Sums over `num_samples` draws of the logits of `softmax(f)` `(n, k)`
    and of its entropy `(n,)`."""
    n, k = tf.shape(f_mean)[0], tf.shape(f_mean)[1]
    eps = tf.random.stateless_normal(
        tf.stack([num_samples, n, k]), seed, dtype=f_mean.dtype
    )
    logits = draw_logits(f_mean, f_var, eps)
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    probs = tf.exp(log_probs)
    entropy = -tf.reduce_sum(probs * log_probs, axis=-1)
    return tf.reduce_sum(probs, axis=0), tf.reduce_sum(entropy, axis=0)


def last_layer_step(features, structure, use_bias, k):
    """The compiled step of a last-layer posterior: `step(inputs, weights,
    factors, num_samples, seed)` -> `(f_mean, f_var, rest, sum_probs,
    sum_entropy)`, with `rest` the output columns the posterior does not
    cover (a variance head's log-variances)."""

    @tf.function(reduce_retracing=True, autograph=False)
    def step(inputs, weights, factors, num_samples, seed):
        phi = features(inputs, training=False)
        phi = tf.cast(tf.reshape(phi, (tf.shape(phi)[0], -1)), tf.float64)
        if use_bias:
            phi = tf.concat([phi, tf.ones_like(phi[:, :1])], axis=1)
        z = tf.matmul(phi, weights)
        f_mean = z[:, :k]
        f_var = last_layer_variance(structure, phi, factors, k)
        sum_probs, sum_entropy = mc_sums(f_mean, f_var, num_samples, seed)
        return f_mean, f_var, z[:, k:], sum_probs, sum_entropy

    return step


@tf.function(reduce_retracing=True, autograph=False)
def mc_step(f_mean, f_var, num_samples, seed):
    """`mc_sums` compiled, for moments computed elsewhere (all-layer)."""
    return mc_sums(f_mean, f_var, num_samples, seed)
