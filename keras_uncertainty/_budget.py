"""The package's memory budgets, in one place.

Every size that a user or a file can set (a Laplace Hessian, the rows of a
Jacobian batch, SNGP's `num_inducing`, `HistogramBinning`'s `num_bins`,
SWAG's ranks and saved BatchNormalization rows, the weight shapes in a
`.keras` config) is turned into the bytes it would take and checked here
before anything is allocated: a larger request is refused with a
`ValueError` that names the argument, the size and what to do instead.

The budgets are module constants, read at every check, so a program with
more memory may raise them (or a test lower them):

    import keras_uncertainty._budget as budget
    budget.MAX_WORKING_BYTES = 64 * 2**30

Constants:
    MAX_RESULT_BYTES: 16 GiB, the most bytes `ku.sample` returns, and one
        `ku.export` serve call may hold in activations for a single input
        row (read from `keras_uncertainty.sampling.sampler`, which imports
        it).
    MAX_WORKING_BYTES: 16 GiB, the most bytes one structure that a fit, a
        prediction, a layer or a loaded config allocates may take: the
        Hessian of `ku.laplace.Laplace` with its eigendecomposition, one
        batch of per-example Jacobians, SNGP's precision and covariance
        matrices, the bins of `HistogramBinning`, the SWAG moments, the
        placeholders a `.keras` config asks for.
    MAX_SWAG_RANK: 10000, the most deviations a SWAG state keeps (the
        paper keeps 20): a crafted file cannot ask for millions.
"""

MAX_RESULT_BYTES = 16 * 2**30
MAX_WORKING_BYTES = 16 * 2**30
MAX_SWAG_RANK = 10_000

FLOAT32 = 4
FLOAT64 = 8


def format_bytes(count):
    """`count` bytes in GB (10**9) or MB, for messages."""
    if count >= 10**9:
        return f"{count / 10**9:.3g} GB"
    return f"{count / 10**6:.3g} MB"


def format_budget(count):
    """A budget in GiB or MiB when it is a whole number of them."""
    for unit, name in ((2**30, "GiB"), (2**20, "MiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return format_bytes(count)


def working_budget():
    """The current `MAX_WORKING_BYTES` (read at call time: overridable)."""
    return int(MAX_WORKING_BYTES)


def check_bytes(name, value, size, needs, instead):
    """Refuses, before any allocation, a structure of `size` bytes above
    `MAX_WORKING_BYTES`.

    Args:
        name: The argument that sets the size (named in the message).
        value: Its value (shown as `name=value`).
        size: The bytes the structure would take (a Python int: no overflow).
        needs: What takes them, e.g. "a (P, P) float64 Hessian for P=100050
            weights".
        instead: What to do instead (the alternatives), a sentence.

    Raises:
        ValueError: `size` exceeds the budget.
    """
    limit = working_budget()
    if int(size) <= limit:
        return
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected a size whose "
        f"memory fits in {format_budget(limit)} "
        "(keras_uncertainty._budget.MAX_WORKING_BYTES). Received: "
        f"{name}={value!r}, which needs {format_bytes(int(size))} for {needs}. "
        f"{instead}"
    )


def most_within(per_unit, fixed=0):
    """The most units of `per_unit` bytes that fit in the budget beside
    `fixed` bytes (0 when none fit)."""
    room = working_budget() - int(fixed)
    return max(0, room // max(1, int(per_unit)))
