"""Attention whose dropout stays on at inference."""

import keras

from keras_uncertainty import _keras_compat
from keras_uncertainty._validation import value_errors_from_config
from keras_uncertainty.layers._twins import become
from keras_uncertainty.layers.mc_dropout import MCDropout

_PACKAGE = "keras_uncertainty"


def convert_nested_dropouts(layer):
    """Makes every plain `keras.layers.Dropout` nested in `layer` an
    `MCDropout`, in place; returns the layers converted."""
    converted = []
    for nested in _keras_compat.flatten_layers(layer)[1:]:
        if type(nested) is keras.layers.Dropout:
            converted.append(become(nested, MCDropout))
    return converted


@keras.saving.register_keras_serializable(package=_PACKAGE)
@value_errors_from_config
class MCMultiHeadAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` whose attention dropout stays on.

    The dropout on the attention probabilities (`dropout=`) is an
    `ku.layers.MCDropout`: random at inference as in training, drawn from the
    sampling call's key, one mask per Monte Carlo sample and input.
    Everything else is `keras.layers.MultiHeadAttention`.

    Args:
        num_heads: Number of attention heads.
        key_dim: Size of each attention head for query and key.
        **kwargs: The other arguments of `keras.layers.MultiHeadAttention`
            (`dropout` in [0, 1), `seed`, ...).

    Call arguments:
        query: Query tensor `(batch, target_len, dim)`.
        value: Value tensor `(batch, source_len, dim)`.
        **kwargs: The other call arguments of
            `keras.layers.MultiHeadAttention` (`key`, `attention_mask`, ...);
            `training` is ignored for the dropout.

    Example:

    >>> attention = ku.layers.MCMultiHeadAttention(2, 8, dropout=0.1)
    >>> x = np.ones((3, 5, 16), "float32")
    >>> y = attention(x, x)
    """

    stochastic_at_inference = True
    draws_from_call_key = True

    def __init__(self, num_heads, key_dim, **kwargs):
        super().__init__(num_heads, key_dim, **kwargs)

    def build(self, *args, **kwargs):
        super().build(*args, **kwargs)
        self.adopt_children()

    def adopt_children(self):
        """Makes the attention dropout an `MCDropout` (run when built)."""
        # Keras creates the attention dropout itself (when it builds the
        # attention), so it is converted where it is.
        convert_nested_dropouts(self)
