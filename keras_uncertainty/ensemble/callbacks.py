"""A callback that stops an ensemble's training when a member diverges."""

import math
import re
import warnings

import keras

_MEMBER_LOSS = re.compile(r"member_(\d+)_loss")


class TerminateOnNonFiniteMember(keras.callbacks.Callback):
    """Stops training, naming the member, when a member's loss is not finite.

    Reads the `member_<i>_loss` entries that `ku.Ensemble` writes into the
    batch logs. `Ensemble.fit` adds one to the callbacks unless the list
    already holds one; pass `terminate_on_nan=False` to `fit` to train
    without it.

    Example:

    >>> ens.fit(x, y, callbacks=[ku.ensemble.TerminateOnNonFiniteMember()])
    """

    def on_train_batch_end(self, batch, logs=None):
        bad = []
        for key, value in (logs or {}).items():
            match = _MEMBER_LOSS.fullmatch(key)
            if match and not math.isfinite(float(value)):
                bad.append(int(match.group(1)))
        if not bad:
            return
        names = getattr(self.model, "member_names", None)
        described = [
            f"member {i}" + (f" ('{names[i]}')" if names else "") for i in sorted(bad)
        ]
        warnings.warn(
            f"Ensemble '{self.model.name}': the loss of {', '.join(described)} "
            f"became NaN or infinite at batch {batch}; training stopped. "
            "The other members' losses are finite.",
            RuntimeWarning,
            stacklevel=2,
        )
        self.model.stop_training = True
