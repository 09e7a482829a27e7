"""The GLM predictive's in-graph pieces (float64 after the features).

`last_layer_variance` (the covariance `f_var = J Sigma J^T` of a last-layer
posterior), `draw_logits` (draws of `f ~ N(f_mean, f_var)`), both used by
the engine's `GLMSampledModel`, and `last_layer_step`, `predict_f`'s
compiled step.
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


def last_layer_step(features, structure, use_bias, k):
    """The compiled step of a last-layer posterior: `step(inputs, weights,
    factors)` -> `(f_mean, f_var)` of a batch (`Laplace.predict_f`)."""

    @tf.function(reduce_retracing=True, autograph=False)
    def step(inputs, weights, factors):
        phi = features(inputs, training=False)
        phi = tf.cast(tf.reshape(phi, (tf.shape(phi)[0], -1)), tf.float64)
        if use_bias:
            phi = tf.concat([phi, tf.ones_like(phi[:, :1])], axis=1)
        f_mean = tf.matmul(phi, weights[:, :k])
        return f_mean, last_layer_variance(structure, phi, factors, k)

    return step
