"""Timing and reporting shared by the benchmarks."""

import os
import platform
import random
import statistics
import time

import keras
import tensorflow as tf

from keras_uncertainty.cli.results import write_json_atomic


def timed_rounds(repeats, warmup=True, **fns):
    """Median seconds of each function, timed in rounds so drift hits all.

    The order within a round is shuffled (seeded), so no function always runs
    right after one that leaves the caches cold.
    """
    if warmup:
        for fn in fns.values():
            fn()  # tracing and first-call costs
    times = {name: [] for name in fns}
    order = random.Random(0)
    names = list(fns)
    for _ in range(repeats):
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def write_report(path, repeats, **results):
    """Writes the results with the machine and library versions as JSON."""
    report = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": [d.device_type for d in tf.config.list_physical_devices()],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "repeats": repeats,
        **results,
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json_atomic(path, report)  # an interrupted run keeps the old report


def benchmark_main(doc, name, run, markdown):
    """The command line every benchmark shares: `--repeats`, `--output`
    (default `benchmarks/results/<name>.json`); prints the markdown table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--output", default=os.path.join("benchmarks", "results", f"{name}.json")
    )
    args = parser.parse_args()
    rows = run(args.repeats)
    write_report(args.output, args.repeats, rows=rows)
    print(markdown(rows))
