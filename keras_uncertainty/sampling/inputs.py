"""What sampling accepts as inputs, cut into the chunks one compiled call takes.

Everything `model.predict` takes is accepted: numpy arrays, tensors, Python
lists, strings (str, bytes or object arrays, `tf.string` tensors, lists of
str) for a model that reads text, structures (dicts, tuples) for multi-input
models, a batched `tf.data.Dataset`, a `keras.utils.PyDataset` and a Python
generator of batches. In-memory inputs are sliced; the others are streamed and re-cut
into chunks of the same size as the in-memory path uses, so the compiled
step sees the same shapes (no retracing per batch) and, with a seed, draws
the same samples. Memory is bounded by one chunk plus one batch.

Structures are matched to a Functional model's inputs as Keras matches them
(`match_inputs`, the one place that decides it): a dict by the keys of the
dict the model was built with (`model.input`), whatever the `keras.Input`
names and the order of the keys; a dict given to a model built on a list of
inputs by their `keras.Input` names; lists and tuples by position.
"""

import collections.abc

import keras
import numpy as np
import tensorflow as tf
from keras import tree


def is_streamed(x):
    """Whether `x` is read batch by batch (a `tf.data.Dataset`, a
    `keras.utils.PyDataset` or an iterator of batches) rather than held."""
    if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
        return True
    return isinstance(x, collections.abc.Iterator) and not isinstance(
        x, (np.ndarray, str, bytes)
    )


def _is_array(value):
    return tf.is_tensor(value) or isinstance(value, np.ndarray)


def _rows(x, name="x"):
    """A list or tuple of rows of one input as one array."""
    if not x:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at least "
            "one row. Received: an empty list"
        )
    try:
        return np.asarray(
            [keras.ops.convert_to_numpy(v) if tf.is_tensor(v) else v for v in x]
        )
    except ValueError as error:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a list of "
            "rows of the same shape (one input) or a list of arrays (one per "
            f"model input). Received: a list that is neither ({error})"
        ) from None


def _as_arrays(view, x):
    """Reads a list or tuple as `model.predict` does.

    For a multi-input model it is the list of inputs. For a single-input
    model it is the rows of the one input (`[[0.1, 0.2], [0.3, 0.4]]`), or
    a one-element list around that input's array.
    """
    if not isinstance(x, (list, tuple)) or (view is not None and len(view.inputs) > 1):
        return x
    if not x:
        return _rows(x)
    if view is not None and len(x) == 1 and _is_array(x[0]):
        if len(np.shape(x[0])) == len(view.inputs[0].shape):
            return x[0]
    if view is None and all(_is_array(v) for v in x):
        return x  # a subclassed model's list of inputs
    return _rows(x)


def _is_input(value):
    return isinstance(value, keras.KerasTensor)


def _sorted_keys(keys):
    try:
        return sorted(keys)
    except TypeError:  # keys of several types
        return sorted(keys, key=repr)


def _received(x):
    """What `x` is, for messages."""
    if isinstance(x, dict):
        return f"a dict with keys {list(x)}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} entries"
    if _is_array(x):
        return f"an array of shape {tuple(np.shape(x))}"
    return f"a {type(x).__name__}"


def _key_mismatch(name, expected, received, what, extra_allowed=False):
    missing = [key for key in expected if key not in received]
    unexpected = [] if extra_allowed else [k for k in received if k not in expected]
    if not missing and not unexpected:
        return
    details = "; ".join(
        f"{label}: {keys}"
        for label, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    )
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected a dict with "
        f"{what} {list(expected)}. Received: a dict with keys {list(received)} "
        f"({details})"
    )


def _leaf(x, name):
    """One model input's array, as given (tensors are converted later)."""
    if isinstance(x, dict):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an array "
            f"(one model input). Received: {_received(x)}"
        )
    if isinstance(x, (list, tuple)):
        return _rows(x, name)
    return x


def _match(struct, x, name):
    """`x` in the structure `struct` (a structure of `keras.Input`s)."""
    if _is_input(struct):
        return _leaf(x, name)
    if isinstance(struct, dict):
        keys = list(struct)
        if isinstance(x, dict):
            _key_mismatch(name, keys, list(x), "the keys of the model's inputs")
            return {k: _match(struct[k], x[k], f"{name}[{k!r}]") for k in keys}
        # A list for a dict: by position in sorted key order (the order of
        # `model.inputs`), and only where that is the order the dict was
        # built in, as Keras allows it.
        if (
            isinstance(x, (list, tuple))
            and len(x) == len(keys)
            and keys == _sorted_keys(keys)
        ):
            return {
                k: _match(struct[k], v, f"{name}[{i}]")
                for i, (k, v) in enumerate(zip(keys, x))
            }
        if len(keys) == 1 and _is_input(struct[keys[0]]) and _is_array(x):
            return {keys[0]: x}  # the one input of a one-key dict, given bare
        hint = ""
        if isinstance(x, (list, tuple)):
            hint = (
                " (a list is read by position only when the model's dict of "
                "inputs was built with its keys in sorted order, as Keras "
                "reads it)"
            )
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a dict "
            f"with the keys of the model's inputs {keys}. Received: "
            f"{_received(x)}{hint}"
        )
    entries = list(struct)
    if isinstance(x, dict) and all(_is_input(t) for t in entries):
        # A dict for a list of inputs: by their `keras.Input` names, as
        # Keras reads it; other keys are left alone.
        names = [t.name for t in entries]
        _key_mismatch(
            name,
            names,
            list(x),
            "the names of the model's inputs (their `keras.Input(name=...)`)",
            extra_allowed=True,
        )
        return type(struct)(_leaf(x[n], f"{name}[{n!r}]") for n in names)
    if isinstance(x, (list, tuple)) and len(x) == len(entries):
        return type(struct)(
            _match(s, v, f"{name}[{i}]") for i, (s, v) in enumerate(zip(entries, x))
        )
    if len(entries) == 1 and _is_input(entries[0]) and not isinstance(x, dict):
        return type(struct)([_leaf(x, name)])  # a one-input list, given bare
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected "
        f"{len(entries)} model inputs (a {type(struct).__name__} in the order "
        f"of `model.inputs`). Received: {_received(x)}"
    )


def flatten_with_path(structure):
    """`(path, leaf)` pairs of a nested structure, in `keras.tree.flatten`'s
    order (dict keys sorted, lists and tuples by position): Keras's own
    `keras.tree.flatten_with_path` where it has one (3.4 and later), the same
    walk here for the Keras versions without it."""
    if hasattr(tree, "flatten_with_path"):
        return tree.flatten_with_path(structure)
    pairs = []

    def walk(node, path):
        if isinstance(node, collections.abc.Mapping):
            for key in sorted(node):
                walk(node[key], (*path, key))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, (*path, index))
        else:
            pairs.append((path, node))

    walk(structure, ())
    return pairs


def match_inputs(view, x, where="x"):
    """`x` in the structure of the model's inputs, matched as Keras matches it.

    The one place that decides which array feeds which model input, for
    sampling, the tiled twin and the exported signature. It follows
    `keras.Model`'s own rules (Functional `_standardize_inputs`):

    - a model built on a dict of inputs (`model.input` is a dict, as for a
      keras_hub backbone) takes a dict with exactly those keys, in any
      order, whatever the names of its `keras.Input`s (a list is read by
      position in sorted key order, only when the dict was built in that
      order);
    - a model built on a list of inputs takes a list or tuple by position,
      or a dict by the inputs' `keras.Input` names (other keys ignored);
    - a single-input model takes an array, a tensor, a list of rows, a
      one-element list around its array, or a dict holding its
      `keras.Input` name;
    - nested structures (a dict holding a list) are matched level by level,
      lists and tuples alike.

    Args:
        view: The model's Functional view (`sampling.graph.functional_view`),
            or None for a subclassed model, whose inputs are taken as they
            come (a list or tuple of rows becomes one array).
        x: One batch of inputs, anything `model.predict` takes in memory.
        where: The argument's name, for messages.

    Returns:
        `x` in the structure of `view.input` (its leaves arrays or tensors),
        so that `keras.tree.flatten` gives them in `view.inputs` order.

    Raises:
        ValueError: naming the argument, what the model expects and what
            was received (a missing or unexpected key, a wrong count).
    """
    if view is None:
        return _as_arrays(None, x)
    struct = view.input
    flat = tree.flatten(struct)
    if len(flat) == 1 and (
        _is_input(struct) or (isinstance(struct, (list, tuple)) and len(struct) == 1)
    ):
        # One input: a dict by its name; a list of rows or `[array]`.
        if isinstance(x, dict):
            _key_mismatch(
                where,
                [flat[0].name],
                list(x),
                "the name of the model's input (its `keras.Input(name=...)`)",
                extra_allowed=True,
            )
            x = x[flat[0].name]
        x = _leaf(_as_arrays(view, x), where)
        return x if _is_input(struct) else type(struct)([x])
    return _match(struct, x, where)


def _path_name(where, path):
    return where + "".join(
        f"[{key!r}]" if isinstance(key, str) else f"[{key}]" for key in path
    )


def _adjust_rank(spec, array):
    """A trailing axis of size 1 added where the input has one, as Keras
    adds it: a column `(n,)` (a data frame's, in a dict) feeds an input of
    shape `(1,)`. Keras also drops a trailing axis of size 1 that the input
    lacks; that is refused here, as a likely mistake."""
    expected = tuple(spec.shape)
    if array.ndim == len(expected) - 1 and expected and expected[-1] == 1:
        return array[..., None]
    return array


def _is_text(array, expected_dtype):
    """Whether `array` holds strings: a str/bytes array, or an object array
    fed to a string input."""
    if array.dtype.kind in "US":
        return True
    return array.dtype == object and (
        expected_dtype == "string"
        or (array.size > 0 and isinstance(array.flat[0], (str, bytes)))
    )


def _text_array(array, name, expected_dtype):
    """A str/bytes array as an object array (one dtype whatever the string
    lengths, so the compiled step is not retraced per length)."""
    if expected_dtype is not None and expected_dtype != "string":
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            f"numbers of dtype {expected_dtype} (the model input's). Received: "
            f"strings (an array of dtype {array.dtype})"
        )
    if array.dtype == object:
        for value in array.flat:
            if not isinstance(value, (str, bytes)):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected "
                    "an array of strings (str or bytes) for a string input. "
                    f"Received: an entry of type {type(value).__name__}"
                )
        return array
    return array.astype(object)


def _check_shape(spec, array, name, where):
    expected = tuple(spec.shape)
    if len(expected) != array.ndim or any(
        e is not None and e != r for e, r in zip(expected, array.shape)
    ):
        hint = (
            " (a tf.data.Dataset must be batched: `dataset.batch(n)`)"
            if where != "x" and array.ndim == len(expected) - 1
            else ""
        )
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected "
            f"an array of rank {len(expected)} with shape {expected} "
            f"(None: any size). Received: shape {array.shape}{hint}"
        )


def flatten_inputs(view, x, where="x"):
    """Flattens `x` to numpy arrays of the model's input dtypes and checks it.

    Returns:
        `(flat, n)`: a list of arrays and their common number of rows.
    """
    flat, n, _ = _flatten(view, x, where)
    return flat, n


def _flatten(view, x, where):
    """`flatten_inputs`, and `x` matched to the model's input structure."""
    if x is None:
        raise ValueError(
            f"Invalid value received for argument `{where}`. Expected an "
            "array, a structure of arrays or a dataset. Received: "
            f"{where}=None"
        )
    matched = match_inputs(view, x, where)
    paths, leaves = [], []
    for path, value in flatten_with_path(matched):
        paths.append(path)
        leaves.append(value)
    flat = [
        np.asarray(keras.ops.convert_to_numpy(v) if tf.is_tensor(v) else v)
        for v in leaves
    ]
    specs = None if view is None else tree.flatten(view.input)
    for i, array in enumerate(flat):
        if len(flat) == 1:
            name = where
        elif specs is None:
            name = f"{where}[{i}]"
        else:
            name = _path_name(where, paths[i])
        if array.ndim == 0:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected an "
                f"array with a batch dimension. Received: a scalar {array!r}"
            )
        if specs is not None:
            array = flat[i] = _adjust_rank(specs[i], array)
        expected_dtype = None if specs is None else specs[i].dtype
        if _is_text(array, expected_dtype):
            flat[i] = _text_array(array, name, expected_dtype)
            if specs is not None:
                _check_shape(specs[i], flat[i], name, where)
            continue
        if array.dtype == object or array.dtype.kind in "USV":
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                "numbers (or strings, for a model input of dtype string). "
                f"Received: an array of dtype {array.dtype}"
            )
        if specs is not None:
            _check_shape(specs[i], array, name, where)
            dtype = specs[i].dtype
        else:
            floating = np.issubdtype(array.dtype, np.floating)
            dtype = keras.config.floatx() if floating else array.dtype
        flat[i] = array.astype(dtype, copy=False)
        if np.issubdtype(flat[i].dtype, np.inexact) and not np.all(
            np.isfinite(flat[i])
        ):
            bad = int(np.size(flat[i]) - np.count_nonzero(np.isfinite(flat[i])))
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                f"finite values. Received: {bad} NaN or infinite entries"
            )
    num_rows = {array.shape[0] for array in flat}
    if len(num_rows) != 1:
        raise ValueError(
            f"Invalid value received for argument `{where}`. Expected every "
            f"input to have the same number of rows. Received: {sorted(num_rows)}"
        )
    n = num_rows.pop()
    if n == 0 and where == "x":
        raise ValueError(
            "Invalid value received for argument `x`. Expected at least one "
            "row. Received: 0 rows"
        )
    return flat, n, matched


def _dataset_batches(dataset):
    cardinality = int(dataset.cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            "Invalid value received for argument `x`. Expected a finite "
            "tf.data.Dataset. Received: an infinite one (`repeat()` without "
            "a count); use `dataset.take(num_batches)`"
        )
    # Prefetching reads the next batches while the compiled step runs.
    return dataset.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _py_dataset_batches(dataset):
    count = dataset.num_batches
    if count is None:
        raise ValueError(
            "Invalid value received for argument `x`. Expected a "
            "keras.utils.PyDataset with a finite `num_batches`. Received: "
            f"{type(dataset).__name__} with num_batches=None"
        )
    return (dataset[i] for i in range(count))


class InputStream:
    """Inputs as chunks of rows, from memory or streamed.

    Args:
        view: The model's Functional view (`sampling.graph.functional_view`),
            or None; its input specs check shapes and set dtypes.
        x: Anything `model.predict` takes (see the module docstring). The
            elements of a dataset or generator may be `x`, `(x,)`, `(x, y)`
            or `(x, y, sample_weight)`; targets and weights are not used
            for prediction.
        keep_targets: Whether to collect the targets of a streamed input as
            it goes (`targets()`, for callbacks that score predictions).

    Attributes:
        structure: The structure of one batch of inputs (a tree of 0s):
            the model's (`model.input`) when its view is known, `x`'s
            otherwise.
        first: The flat arrays of the first batch (their shapes and dtypes
            name the compiled step).
        num_rows: N for in-memory inputs; None for streamed ones.
    """

    def __init__(self, view, x, keep_targets=False):
        self._view = view
        self._keep_targets = keep_targets
        self._targets = []
        if is_streamed(x):
            if isinstance(x, tf.data.Dataset):
                batches = _dataset_batches(x)
            elif isinstance(x, keras.utils.PyDataset):
                batches = _py_dataset_batches(x)
            else:
                batches = iter(x)
            self._batches = self._checked(batches)
            try:
                first = next(self._batches)
            except StopIteration:
                raise ValueError(
                    "Invalid value received for argument `x`. Expected at "
                    "least one batch. Received: an empty "
                    f"{type(x).__name__}"
                ) from None
            self._pending = [first]
            self.num_rows = None
        else:
            first, _, self._structure_source = _flatten(view, x, "x")
            self._batches = None
            self._pending = [first]
            self.num_rows = first[0].shape[0]
        self.first = tuple(first)
        self.structure = tree.map_structure(lambda _: 0, self._structure_source)

    def _checked(self, batches):
        for index, element in enumerate(batches):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(element)
            flat, n, x = _flatten(self._view, x, where=f"x (batch {index})")
            if index == 0:
                self._structure_source = x
                self._trailing = [(a.shape[1:], a.dtype) for a in flat]
            elif [(a.shape[1:], a.dtype) for a in flat] != self._trailing:
                raise ValueError(
                    f"Invalid value received for argument `x`. Expected every "
                    "batch to have the shapes (after the batch axis) and "
                    f"dtypes of the first, {self._trailing}. Received: batch "
                    f"{index} with {[(a.shape[1:], a.dtype) for a in flat]}"
                )
            if self._keep_targets:
                if y is None:
                    raise ValueError(
                        "Invalid value received for argument "
                        "`validation_data`. Expected batches `(x, y)` or "
                        f"`(x, y, sample_weight)`. Received: batch {index} "
                        "without targets"
                    )
                self._targets.append(np.asarray(y))
            if n:
                yield flat

    def chunks(self, rows):
        """Yields flat tuples of `rows` rows each (the last may be shorter)."""
        if self._batches is None:
            flat = self._pending[0]
            for start in range(0, self.num_rows, rows):
                yield tuple(a[start : start + rows] for a in flat)
            return
        buffered, count = list(self._pending), self._pending[0][0].shape[0]
        self._pending = []
        for batch in self._batches:
            buffered.append(batch)
            count += batch[0].shape[0]
            if count < rows:
                continue
            # One join per batch that completes chunks, however many it does.
            joined = [np.concatenate(parts) for parts in zip(*buffered)]
            full = count - count % rows
            for start in range(0, full, rows):
                yield tuple(a[start : start + rows] for a in joined)
            count -= full
            buffered = [tuple(a[full:] for a in joined)] if count else []
        if count:
            yield tuple(np.concatenate(parts) for parts in zip(*buffered))

    def targets(self):
        """The targets of every streamed batch, concatenated (after `chunks`)."""
        return np.concatenate(self._targets) if self._targets else None

    def target_rows(self, start, stop):
        """Targets `start:stop` of a streamed input, read so far (the rows of
        a chunk, once `chunks` has yielded it)."""
        parts, position = [], 0
        for part in self._targets:
            end = position + len(part)
            if end > start and position < stop:
                parts.append(part[max(start - position, 0) : stop - position])
            position = end
            if position >= stop:
                break
        rows = np.concatenate(parts) if parts else np.zeros((0,))
        if len(rows) != stop - start:
            raise ValueError(
                "Invalid value received for argument `x`. Expected every "
                "batch to carry targets `(x, y)`. Received: batches without "
                "them"
            )
        return rows
