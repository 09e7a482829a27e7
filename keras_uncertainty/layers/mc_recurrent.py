"""Recurrent layers whose dropout stays on at inference (variational MC dropout).

Keras's RNN layers implement the dropout of Gal & Ghahramani (2016), "A
theoretically grounded application of dropout in recurrent neural networks":
one mask on the inputs (`dropout`) and one on the recurrent state
(`recurrent_dropout`), drawn once per sequence and reused at every time step.
These layers keep that dropout on at inference, so that T forward passes are
T samples of the approximate posterior, each with its own pair of masks per
sequence. The masks are drawn from the sampling call's key (see
`ku.layers.MCLayer`), so seeded samples do not depend on `batch_size`.

`ku.layers.to_mc_dropout` turns the Keras layers of a trained model into
these; they can also be used directly in a new model.
"""

import keras

from keras_uncertainty._validation import check_rate, value_errors_from_config
from keras_uncertainty.layers import _masks
from keras_uncertainty.layers._twins import become
from keras_uncertainty.layers.mc_layer import MCLayer

_PACKAGE = "keras_uncertainty"


@value_errors_from_config
class _MCRecurrentMasks:
    """Mixin for Keras's dropout RNN cells: always-on masks from the call key.

    Replaces the cell's mask methods (the public `get_dropout_mask`,
    `get_recurrent_dropout_mask` and their resets, which the RNN layer calls
    once per sequence before its loop) and calls the cell in training mode,
    which in Keras's cells switches on the dropout and nothing else.
    """

    stochastic_at_inference = True
    draws_from_call_key = True
    # This sequence's masks (None until drawn; the RNN layer resets them).
    _mc_dropout_mask = None
    _mc_recurrent_mask = None

    def _mc_mask(self, step_input, rate):
        ones = keras.ops.ones_like(step_input)

        def one_mask():
            return _masks.dropout(ones, rate, None, self.seed_generator)

        count = getattr(self, "dropout_mask_count", None)
        return one_mask() if count is None else [one_mask() for _ in range(count)]

    def get_dropout_mask(self, step_input):
        if self._mc_dropout_mask is None and self.dropout > 0:
            self._mc_dropout_mask = self._mc_mask(step_input, self.dropout)
        return self._mc_dropout_mask

    def get_recurrent_dropout_mask(self, step_input):
        if self._mc_recurrent_mask is None and self.recurrent_dropout > 0:
            self._mc_recurrent_mask = self._mc_mask(step_input, self.recurrent_dropout)
        return self._mc_recurrent_mask

    def reset_dropout_mask(self):
        self._mc_dropout_mask = None

    def reset_recurrent_dropout_mask(self):
        self._mc_recurrent_mask = None

    def call(self, inputs, states, training=None):
        return super().call(inputs, states, training=True)


def _check_rates(kwargs):
    for name in ("dropout", "recurrent_dropout"):
        if name in kwargs:
            kwargs[name] = check_rate(kwargs[name], name)
    return kwargs


_CELL_DOC = """`keras.layers.{name}` whose dropout stays on at inference.

    The masks of `dropout` (inputs) and `recurrent_dropout` (state) are drawn
    once per sequence and per Monte Carlo sample (the RNN layer asks for them
    before its loop), whatever `training` says.

    Args:
        units: Positive integer, dimensionality of the output space.
        **kwargs: The arguments of `keras.layers.{name}`; `dropout` and
            `recurrent_dropout` in [0, 1), `seed` for the cell's generator.

    Call arguments:
        inputs: A 2D tensor `(batch, features)`, one time step.
        states: The previous state.
        training: Ignored; the dropout is always on.

    Example:

    >>> rnn = keras.layers.RNN(ku.layers.MC{name}(8, dropout=0.2))
    """


def _mc_cell(keras_class):
    def __init__(self, units, **kwargs):
        super(cls, self).__init__(units, **_check_rates(kwargs))

    cls = type(
        f"MC{keras_class.__name__}",
        (_MCRecurrentMasks, MCLayer, keras_class),
        {
            "__init__": __init__,
            "__doc__": _CELL_DOC.format(name=keras_class.__name__),
            "__module__": __name__,
        },
    )
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


MCSimpleRNNCell = _mc_cell(keras.layers.SimpleRNNCell)
MCLSTMCell = _mc_cell(keras.layers.LSTMCell)
MCGRUCell = _mc_cell(keras.layers.GRUCell)

_CELL_TWINS = {
    keras.layers.SimpleRNNCell: MCSimpleRNNCell,
    keras.layers.LSTMCell: MCLSTMCell,
    keras.layers.GRUCell: MCGRUCell,
}


def cell_twin(cell_class):
    """The MC twin of a Keras dropout RNN cell class, or None.

    The public cells have registered twins (an `RNN(cell)` config names
    them); the cell of `ConvLSTM1D/2D/3D` is not public, and its twin is
    made here (the MC ConvLSTM layers recreate it from their own config).
    """
    twin = _CELL_TWINS.get(cell_class)
    if twin is None and cell_class.__name__ == "ConvLSTMCell":
        twin = _CELL_TWINS[cell_class] = type(
            "MCConvLSTMCell",
            (_MCRecurrentMasks, cell_class),
            {"__module__": __name__, "__doc__": "A ConvLSTM cell with MC dropout."},
        )
    return twin


@value_errors_from_config
class _MCRecurrentLayer:
    """Mixin for Keras's RNN layers: the cell becomes its MC twin and the
    layer runs its dropout path (Keras's fused LSTM / GRU kernels apply the
    input mask only in training mode) at inference too."""

    stochastic_at_inference = True
    draws_from_call_key = True

    def adopt_children(self):
        """Makes the cell its MC twin (run at construction and conversion)."""
        twin = cell_twin(type(self.cell))
        if twin is not None:
            become(self.cell, twin)

    @property
    def seed_generator(self):
        """The cell's generator (used outside sampling calls)."""
        return self.cell.seed_generator

    def call(self, sequences, initial_state=None, mask=None, training=None):
        return super().call(
            sequences, initial_state=initial_state, mask=mask, training=True
        )


def _mc_rnn_layer(keras_class, doc):
    def __init__(self, *args, **kwargs):
        keras_class.__init__(self, *args, **_check_rates(kwargs))
        self.adopt_children()

    cls = type(
        f"MC{keras_class.__name__}",
        (_MCRecurrentLayer, keras_class),
        {"__init__": __init__, "__doc__": doc, "__module__": __name__},
    )
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


_LAYER_DOC = """`keras.layers.{name}` whose dropout stays on at inference.

    Variational MC dropout (Gal & Ghahramani 2016): the input mask
    (`dropout`) and the recurrent mask (`recurrent_dropout`) are drawn once
    per sequence and per Monte Carlo sample and reused at every time step,
    whatever `training` says. Everything else is `keras.layers.{name}`.

    Args:
        *args: The arguments of `keras.layers.{name}` (`units` or
            `filters`, ...).
        **kwargs: Its keyword arguments; `dropout` and `recurrent_dropout`
            in [0, 1), `seed` for the cell's generator.

    Call arguments:
        sequences: The input sequences.
        initial_state: Optional initial state.
        mask: Optional mask of the time steps.
        training: Ignored; the dropout is always on.

    Example:

    >>> layer = ku.layers.MC{name}(16, dropout=0.2, recurrent_dropout=0.2)
    """

MCSimpleRNN = _mc_rnn_layer(keras.layers.SimpleRNN, _LAYER_DOC.format(name="SimpleRNN"))
MCLSTM = _mc_rnn_layer(keras.layers.LSTM, _LAYER_DOC.format(name="LSTM"))
MCGRU = _mc_rnn_layer(keras.layers.GRU, _LAYER_DOC.format(name="GRU"))
MCConvLSTM1D = _mc_rnn_layer(
    keras.layers.ConvLSTM1D, _LAYER_DOC.format(name="ConvLSTM1D")
)
MCConvLSTM2D = _mc_rnn_layer(
    keras.layers.ConvLSTM2D, _LAYER_DOC.format(name="ConvLSTM2D")
)
MCConvLSTM3D = _mc_rnn_layer(
    keras.layers.ConvLSTM3D, _LAYER_DOC.format(name="ConvLSTM3D")
)

LAYER_TWINS = {
    keras.layers.SimpleRNN: MCSimpleRNN,
    keras.layers.LSTM: MCLSTM,
    keras.layers.GRU: MCGRU,
    keras.layers.ConvLSTM1D: MCConvLSTM1D,
    keras.layers.ConvLSTM2D: MCConvLSTM2D,
    keras.layers.ConvLSTM3D: MCConvLSTM3D,
}
