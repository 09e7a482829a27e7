"""One `keras-uncertainty uci --output` file from several runs of one protocol.

A table can be run in parts (a method whose code changed is rerun alone into
its own file). This writes one results file: every (data set, method) unit
of the inputs, a later input's unit replacing an earlier one's, in data set
order of first appearance. The inputs must share `format` and `settings`
(refused otherwise: the units would not be comparable) and agree on the data
files' checksums. The status is "complete" when every input's is and every
data set has every method of the `uci` command; the output is written
atomically.

Usage: python benchmarks/merge_uci_results.py OUTPUT INPUT [INPUT ...]
"""

import json
import os
import sys


def merge(records):
    first = records[0]
    merged = {"format": first["format"], "settings": first["settings"], "data": {}}
    units, failures = {}, []
    for path, record in zip(sys.argv[2:], records):
        for key in ("format", "settings"):
            if record[key] != first[key]:
                raise SystemExit(
                    f"error: {path}: its {key!r} differs from the first input's"
                )
        for name, digest in record["data"].items():
            if merged["data"].setdefault(name, digest) != digest:
                raise SystemExit(
                    f"error: {path}: data set {name!r} has another checksum"
                )
        for unit in record["results"]:
            units[(unit["dataset"], unit["method"])] = unit
        failures += record.get("failures", [])
    order = list(dict.fromkeys(d for d, _ in units))
    merged["results"] = [
        units[k] for k in sorted(units, key=lambda k: order.index(k[0]))
    ]
    merged["failures"] = failures
    from keras_uncertainty.experiments.protocols import METHODS

    complete = all(r["status"] == "complete" for r in records) and all(
        (d, m) in units for d in order for m in METHODS
    )
    merged["status"] = "complete" if complete else "running"
    return merged


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    records = []
    for path in sys.argv[2:]:
        with open(path) as f:
            records.append(json.load(f))
    merged = merge(records)
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(tmp, sys.argv[1])
    print(f"{len(merged['results'])} units, status {merged['status']}: {sys.argv[1]}")


if __name__ == "__main__":
    main()
