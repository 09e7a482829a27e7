"""A progress bar over compiled calls, with Keras's meaning of `verbose`."""

import sys
import time

import keras

VERBOSE_VALUES = ("auto", 0, 1, 2)

# "auto" shows a bar only for work that lasts longer than this.
_AUTO_DELAY_SECONDS = 1.0


def check_verbose(verbose):
    """Checks `verbose`: "auto", 0 (silent), 1 (a bar) or 2 (one line)."""
    if isinstance(verbose, bool) or verbose not in VERBOSE_VALUES:
        raise ValueError(
            "Invalid value received for argument `verbose`. Expected one of "
            f"{VERBOSE_VALUES}. Received: verbose={verbose!r}"
        )
    return verbose


def _interactive():
    """A terminal, or a notebook (whose stdout is not a tty)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


class Progress:
    """A `keras.utils.Progbar` over `target` steps (None: unknown).

    With `verbose="auto"` the bar appears only on an interactive display and
    only once the work has lasted a second, so short calls and logs stay
    quiet; 1 shows it from the start, 2 prints one line at the end and 0
    nothing.
    """

    def __init__(self, verbose, target, unit_name="call"):
        self.verbose = check_verbose(verbose)
        self.target = target
        self.unit_name = unit_name
        self.started = time.perf_counter()
        self.bar = None
        if verbose in (1, 2):
            self.bar = self._new_bar(verbose)

    def _new_bar(self, verbose):
        return keras.utils.Progbar(
            self.target, verbose=verbose, unit_name=self.unit_name
        )

    def update(self, done):
        if (
            self.bar is None
            and self.verbose == "auto"
            and time.perf_counter() - self.started > _AUTO_DELAY_SECONDS
            and _interactive()
        ):
            self.bar = self._new_bar(1)
        if self.bar is not None:
            self.bar.update(done, finalize=False)

    def finish(self, done):
        if self.bar is not None:
            if self.target is None:
                self.bar.target = done
            self.bar.update(done, finalize=True)
