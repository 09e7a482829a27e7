"""A malformed request to an exported `serve` never blocks later calls.

In TensorFlow 2.21 a loaded `tf.function` whose input binding fails (an
input of another shape than its signature's) keeps its lock: every later
call from another thread waited forever. The export's endpoints take any
shape and check it in-graph, so the bad request fails cleanly and the next
one is served. The calls run in a process that imports only TensorFlow,
under a timeout, so a hang cannot block the test run.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_uncertainty as ku

_CLIENT = textwrap.dedent(
    """
    import json, os, sys, threading
    import numpy as np
    import tensorflow as tf

    path, out_path = sys.argv[1:]
    served = tf.saved_model.load(path)
    good = np.zeros((2, 3), "float32")
    results = {}

    def call(name, endpoint, *args):
        try:
            out = endpoint(*args)
            results[name] = {"shape": list(out["mean"].shape)}
        except Exception as error:  # the error a client would see
            results[name] = {
                "error": type(error).__name__,
                "message": str(error),
            }

    def in_thread(name, endpoint, *args):
        thread = threading.Thread(
            target=call, args=(name, endpoint, *args), daemon=True
        )
        thread.start()
        thread.join(60)
        if thread.is_alive():  # report at once; the hung thread is a daemon
            results[name] = {"hung": True}
            with open(out_path, "w") as f:
                json.dump(results, f)
            os._exit(0)

    call("wide", served.serve, np.zeros((2, 5), "float32"))
    in_thread("after_wide", served.serve, good)
    call("one_row_1d", served.serve, np.zeros((3,), "float32"))
    in_thread("after_1d", served.serve, good)
    seed = tf.constant(1, tf.int64)
    call("seeded_wide", served.serve_seeded, np.zeros((4, 2), "float32"), seed)
    in_thread("seeded_after", served.serve_seeded, good, seed)
    in_thread("serve_again", served.serve, good)
    results["imported"] = "keras_uncertainty" in sys.modules
    with open(out_path, "w") as f:
        json.dump(results, f)
    """
)


@pytest.fixture(scope="module")
def served_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(8, activation="relu"),
            ku.layers.MCDropout(0.3),
            keras.layers.Dense(1),
        ]
    )
    path = tmp_path_factory.mktemp("hang") / "served"
    ku.export(model, path, task="regression", num_samples=4, variance_head=False)
    return path


# End to end (a subprocess or a UCI training): the slow tier (CI runs it).
@pytest.mark.slow
def test_a_malformed_serve_request_fails_cleanly_and_the_next_call_is_served(
    served_path, tmp_path
):
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    out_path = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, str(script), str(served_path), str(out_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out_path.read_text())
    hung = [name for name, r in results.items() if isinstance(r, dict) and "hung" in r]
    assert not hung, f"calls that never returned: {hung}"
    assert results["imported"] is False
    # The bad requests: a clean in-graph error naming the expected shape.
    for name, received in (
        ("wide", "[2,5]"),
        ("one_row_1d", "[3]"),
        ("seeded_wide", "[4,2]"),
    ):
        assert results[name]["error"] == "InvalidArgumentError", results[name]
        message = results[name]["message"]
        assert f"Shape of tensor inputs {received}" in message, message
        assert "expected shape [?,3]" in message, message
    # The next calls, from other threads, are served (none hangs).
    for name in ("after_wide", "after_1d", "seeded_after", "serve_again"):
        assert results[name] == {"shape": [2, 1]}, (name, results[name])


def test_the_serve_endpoint_still_checks_the_input_width_when_called_here(
    served_path,
):
    import tensorflow as tf

    served = tf.saved_model.load(str(served_path))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"expected shape \[\?,3\]"
    ):
        served.serve(np.zeros((1, 4), "float32"))
    out = served.serve(np.zeros((5, 3), "float32"))
    assert out["mean"].shape == (5, 1)
    assert np.all(np.isfinite(out["std"].numpy()))
