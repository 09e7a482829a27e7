"""The uniform mixture of M members' outputs, in one member's format.

One place for the formulas `ku.Ensemble`, `ku.BatchEnsemble` and `ku.MIMO`
use for `predict` and their compiled metrics.
"""

import math

from keras import ops

from keras_uncertainty.losses.gaussian_nll import split_mean_log_var
from keras_uncertainty.sampling.outputs import declared_layout


def declared_mixture(model, outputs, num_members):
    """`member_mixture` of a model's `(B, M, ...)` outputs, in the layout its
    compiled loss declares (`outputs.declared_layout`: a variance head,
    logits, or neither)."""
    variance_head, from_logits = declared_layout(model)
    return member_mixture(
        outputs, num_members, variance_head=variance_head, from_logits=from_logits
    )


def member_mixture(outputs, num_members, variance_head=False, from_logits=False):
    """`(B, M, ...)` member outputs -> `(B, ...)`, their uniform mixture.

    - `variance_head` (`(mean, log-variance)` outputs): the mixture's mean
      `mean_m mu_m` and the log of its variance, `log(mean_m sigma_m^2 +
      var_m mu_m)` (Lakshminarayanan et al. 2017, section 2.4), with
      logsumexp over the members' log-variances;
    - `from_logits`: logits of the mean probabilities, `log mean_m
      softmax(z_m)` (for one sigmoid unit, the logit of `mean_m
      sigmoid(z_m)`), so a softmax (sigmoid) of them is the mixture;
    - otherwise the mean of the outputs (probabilities or means).

    Args:
        outputs: `(B, M, ...)` tensor.
        num_members: M.
        variance_head: Whether the outputs are `(mean, log-variance)`.
        from_logits: Whether the outputs are logits.

    Returns:
        A `(B, ...)` tensor.
    """
    outputs = ops.convert_to_tensor(outputs)
    log_members = math.log(num_members)
    if variance_head:
        mu, log_var = split_mean_log_var(outputs)
        mean = ops.mean(mu, axis=1)
        spread = ops.mean(ops.square(mu - ops.expand_dims(mean, 1)), axis=1)
        log_mean_var = ops.logsumexp(log_var, axis=1) - log_members
        log_total = ops.logaddexp(log_mean_var, ops.log(spread))
        return ops.concatenate([mean, log_total], axis=-1)
    if from_logits:
        if outputs.shape[-1] == 1:
            log_p = ops.logsumexp(ops.log_sigmoid(outputs), axis=1)
            log_q = ops.logsumexp(ops.log_sigmoid(-outputs), axis=1)
            return log_p - log_q
        log_probs = ops.log_softmax(outputs, axis=-1)
        return ops.logsumexp(log_probs, axis=1) - log_members
    return ops.mean(outputs, axis=1)
