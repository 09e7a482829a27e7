"""Adversarial training with the fast gradient sign method (Goodfellow et al.
2015), as the Deep Ensembles paper uses it: each network also trains on its
own worst-case nudge of the batch."""

import numpy as np
import tensorflow as tf
from keras import ops

from keras_uncertainty._validation import check_finite


def check_epsilon(value, name="adversarial_epsilon"):
    """None, or a positive finite float."""
    return check_finite(
        value,
        name,
        0,
        low_open=True,
        allow_none=True,
        hint=" (a fraction of each input feature's range)",
    )


def feature_range_step(x, epsilon, sample_weight=None, per_member_inputs=False):
    """`epsilon * (max - min)` of each input feature over the rows of `x`:
    the paper's step, 1% of each feature's range for epsilon = 0.01.

    Args:
        x: Training inputs `(N, ...)`, or with `per_member_inputs`
            `(N, M, ...)`, member m's inputs in column m.
        epsilon: The step as a fraction of the range.
        sample_weight: Optional `(N, M)` per-member weights when
            `per_member_inputs`: each member's range is taken over its rows
            of positive weight (its own rows under a row mask).
        per_member_inputs: Whether `x` has a member axis.

    Returns:
        float32 step broadcastable to the member-major inputs `(M, batch,
        ...)` of the fast gradient sign method: the feature shape, or with
        `per_member_inputs` `(M, 1, ...)`, each member's own.
    """
    x = np.asarray(x)
    if not per_member_inputs:
        return (epsilon * np.ptp(x, axis=0)).astype("float32")
    weight = None if sample_weight is None else np.asarray(sample_weight)
    if weight is not None and weight.shape != x.shape[:2]:
        weight = None  # a weight shared by the members leaves every row in
    ranges = []
    for m in range(x.shape[1]):
        rows = x[:, m] if weight is None else x[weight[:, m] > 0, m]
        ranges.append(np.ptp(rows, axis=0) if len(rows) else np.zeros(x.shape[2:]))
    return member_range_step(np.stack(ranges), epsilon)


def member_range_step(feature_range, epsilon):
    """`epsilon * feature_range` for a range `(M, ...)` with a member axis,
    as `(M, 1, ...)`, broadcastable to member-major inputs `(M, batch, ...)`."""
    step = epsilon * np.asarray(feature_range, "float64")
    return np.expand_dims(step, 1).astype("float32")


def fast_gradient_sign_losses(forward, member_losses, inputs, step):
    """Each member's loss on its own fast-gradient-sign perturbation.

    `x_adv = x + step * sign(grad_x loss(x))`, computed per member: `inputs`
    hold one copy of the batch per member (a member axis), and since a
    member's loss depends only on its own copy, one gradient of the summed
    losses gives every member its own direction.

    Args:
        forward: Callable mapping `inputs` to the members' predictions.
        member_losses: Callable mapping predictions to a `(M,)` tensor of
            the members' losses.
        inputs: Tensor with a member axis, one copy of the batch per member.
        step: Tensor broadcastable to `inputs`, the step of each feature.

    Returns:
        `(clean, perturbed)`: the members' losses on `inputs` and on their
        perturbed copies, both differentiable with respect to the weights.
    """
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        clean = member_losses(forward(inputs))
        total = ops.sum(clean)
    direction = ops.sign(tape.gradient(total, inputs))
    perturbed = tf.stop_gradient(inputs + ops.cast(step, inputs.dtype) * direction)
    return clean, member_losses(forward(perturbed))
