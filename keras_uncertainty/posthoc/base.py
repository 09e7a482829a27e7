"""The bases of fitted methods, with scikit-learn's habits.

- `FittedMethod`: arguments stored by `__init__`, fitted attributes ending
  in `_`, a not-fitted error, `get_config` / `get_state`. What it is fitted
  on is the subclass's: `ku.laplace.Laplace` is fitted on a network's
  training inputs and predicts new inputs.
- `PostHocMethod`: a `FittedMethod` fitted on held-out *predictions* and
  their targets, which transforms new predictions (recalibration,
  conformal prediction).
"""

import copy
import inspect


class NotFittedError(ValueError):
    """A post-hoc method was used before `fit`.

    A subclass of `ValueError` (as scikit-learn's `NotFittedError` is), so
    code that catches `ValueError` keeps working.

    Example:

    >>> scaler = ku.calibration.TemperatureScaling()
    >>> try:
    ...     scaler.transform(prediction)
    ... except ku.posthoc.NotFittedError as error:
    ...     print(error)
    This TemperatureScaling instance is not fitted yet: call `fit` ...
    """


class FittedMethod:
    """The base of fitted methods: scikit-learn's estimator habits.

    - `__init__` only stores its arguments, under their own names (validated
      in `_check_params`, which `fit` calls again);
    - `fit(...)` stores what it learns in public attributes whose names end
      in `_` and returns `self`;
    - using the method before `fit` raises `ku.posthoc.NotFittedError`.

    `is_fitted`, `get_config`, `from_config`, `get_state`, `set_state` and
    `__repr__` come from this base: `get_config` reads the attributes named
    after `__init__`'s arguments, so an `__init__` may take neither `*args`
    nor `**kwargs`. What `fit` takes is the subclass's (`PostHocMethod`:
    held-out predictions; `ku.laplace.Laplace`: training inputs).

    Example:

    >>> class MeanShift(ku.posthoc.FittedMethod):
    ...     def fit(self, x, y):
    ...         self.shift_ = float(np.mean(y - x))
    ...         return self
    """

    # What `fit` takes, for the not-fitted error.
    _fitted_on = "its data"

    def _check_params(self):
        """Validates (and may normalise) the `__init__` arguments; `fit` calls
        it, so an argument changed after construction is checked too."""

    @property
    def is_fitted(self):
        """Whether the method holds fitted attributes (set by `fit`)."""
        return bool(self._fitted_names())

    def get_config(self):
        """The `__init__` arguments, by name: `from_config` rebuilds the
        method (unfitted) from it.

        Returns:
            A dict with one entry per `__init__` argument.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    @classmethod
    def from_config(cls, config):
        """A new, unfitted method from `get_config()`'s dict.

        Args:
            config: A dict of `__init__` arguments.

        Returns:
            A new instance of `cls`.
        """
        return cls(**config)

    def get_state(self):
        """The fitted attributes, by name (copies): `set_state` restores them.

        Returns:
            A dict such as `{"temperature_": 1.7}`.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("get_state")
        names = self._fitted_names()
        return {name: copy.deepcopy(getattr(self, name)) for name in names}

    def set_state(self, state):
        """Restores fitted attributes saved by `get_state`.

        `cls.from_config(config).set_state(state)` rebuilds a fitted method
        without refitting it.

        Args:
            state: A dict of fitted attributes; every name ends in `_`.

        Returns:
            self.
        """
        if not isinstance(state, dict) or not all(
            _is_fitted_name(name) for name in state
        ):
            raise ValueError(
                "Invalid value received for argument `state`. Expected a dict "
                "of fitted attributes, names ending in `_` (as `get_state` "
                f"returns). Received: state={state!r}"
            )
        for name, value in state.items():
            setattr(self, name, copy.deepcopy(value))
        return self

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"

    # Helpers -----------------------------------------------------------------

    def _check_is_fitted(self, method):
        if not self.is_fitted:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call "
                f"`fit` with {self._fitted_on} before `{method}`."
            )

    def _fitted_names(self):
        return sorted(name for name in vars(self) if _is_fitted_name(name))

    @classmethod
    def _param_names(cls):
        init = cls.__init__
        if init is object.__init__:
            return []
        names = []
        for name, parameter in inspect.signature(init).parameters.items():
            if name == "self":
                continue
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(
                    f"{cls.__name__}.__init__ takes *args or **kwargs, so "
                    "`get_config` cannot list its arguments: name each one."
                )
            names.append(name)
        return names


class PostHocMethod(FittedMethod):
    """The base of post-hoc methods: recalibration now, conformal prediction later.

    A post-hoc method is fitted on held-out predictions of a trained model and
    their targets, then transforms new predictions. It works on the result
    dataclasses of `ku.predict_regression` and `ku.predict_classification`,
    and follows scikit-learn's habits:

    - `__init__` only stores its arguments, under their own names (validated
      in `_check_params`, which `fit` calls again);
    - `fit(prediction, y)` stores what it learns in public attributes whose
      names end in `_` (`temperature_`, `scale_`) and returns `self`;
    - `transform(prediction)` returns a new prediction and never modifies its
      input (the dataclasses are frozen; build the new one with
      `dataclasses.replace` and new arrays);
    - `transform` before `fit` raises `ku.posthoc.NotFittedError`.

    A subclass implements `_fit(prediction, y)` (set the fitted attributes)
    and `_transform(prediction)` (return the new prediction), and, if it
    takes arguments, `__init__` and `_check_params`. `fit`, `transform` and
    `fit_transform` come from this base, the rest from `FittedMethod`.

    Example:

    >>> class ShiftMean(ku.posthoc.PostHocMethod):
    ...     def _fit(self, prediction, y):
    ...         self.shift_ = float(np.mean(y - prediction.mean))
    ...
    ...     def _transform(self, prediction):
    ...         shifted = prediction.mean + self.shift_
    ...         return dataclasses.replace(prediction, mean=shifted)
    >>> shifted = ShiftMean().fit(val_pred, y_val).transform(test_pred)
    """

    _fitted_on = "held-out predictions and their targets"

    # Subclass hooks ----------------------------------------------------------

    def _fit(self, prediction, y):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `_fit(prediction, y)`, which "
            "sets the fitted attributes (names ending in `_`)."
        )

    def _transform(self, prediction):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `_transform(prediction)`, "
            "which returns a new prediction."
        )

    # The public contract -----------------------------------------------------

    def fit(self, prediction, y):
        """Fits the method on held-out predictions and their targets.

        Args:
            prediction: The model's predictions on held-out data, as the
                subclass reads them (a `ku.RegressionPrediction` or
                `ku.ClassificationPrediction`).
            y: The held-out targets (labels for a classifier).

        Returns:
            self, fitted.
        """
        self._check_params()
        self._fit(prediction, y)
        return self

    def transform(self, prediction):
        """Applies the fitted method to new predictions.

        Args:
            prediction: A prediction of the kind `fit` was given.

        Returns:
            A new prediction of the same type; the input is left unchanged.

        Raises:
            NotFittedError: `fit` has not been called.
        """
        self._check_is_fitted("transform")
        return self._transform(prediction)

    def fit_transform(self, prediction, y, **options):
        """`fit(prediction, y, **options).transform(prediction, **options)`.

        Args:
            prediction: The held-out predictions.
            y: Their targets.
            **options: What the subclass's `fit` and `transform` both take
                (the calibrators' `from_logits`).

        Returns:
            The transformed `prediction`.
        """
        return self.fit(prediction, y, **options).transform(prediction, **options)


def _is_fitted_name(name):
    return (
        isinstance(name, str)
        and name.isidentifier()
        and name.endswith("_")
        and not name.startswith("_")
    )
