"""Names that moved, kept one release at their old place with a warning.

A package whose public name moved keeps it importable from the old place
for one release (see the CHANGELOG, "Deprecated"): its module-level
`__getattr__` (PEP 562) is `moved_names(...)`, which imports the name from
its new module and warns once per use with a `DeprecationWarning` that says
where it lives now.
"""

import importlib
import warnings

REMOVED_IN = "0.4"


def moved_names(old_module, moves):
    """A module `__getattr__` resolving names that moved elsewhere.

    Args:
        old_module: The module's name (`__name__`), for the messages.
        moves: `{name: "new.module"}`: where each moved name is defined now
            (under the same name).

    Returns:
        A function to assign to the old module's `__getattr__`.
    """

    def __getattr__(name):
        new_module = moves.get(name)
        if new_module is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        public = new_module.replace("keras_uncertainty", "ku", 1)
        warnings.warn(
            f"{old_module.replace('keras_uncertainty', 'ku', 1)}.{name} moved to "
            f"{public}.{name}; the old name is removed in {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
