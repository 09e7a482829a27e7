"""Where a command's training stops on a signal: a Keras callback."""

import keras

from keras_uncertainty.cli.durable import check_stop


class StopCheck(keras.callbacks.Callback):
    """Ends a `fit` when SIGINT, SIGTERM or SIGHUP was received (see
    `keras_uncertainty.cli.durable.handle_signals`): at its start and after
    every batch (every compiled call, with `steps_per_execution`) and epoch
    it raises `KeyboardInterrupt` or `Terminated`, which the command turns
    into the status `interrupted` and exit status 130 (143, 129)."""

    def on_train_begin(self, logs=None):
        check_stop()

    def on_train_batch_end(self, batch, logs=None):
        check_stop()

    def on_epoch_end(self, epoch, logs=None):
        check_stop()
