"""Helpers of the tests that craft `.keras` files (configs changed by hand,
as a hostile or damaged file would have them)."""

import json
import zipfile


def rewrite_config(path, change, out):
    """Copies a `.keras` file with its config.json changed by `change`."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    change(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out


def layer_config(config, class_name):
    """The config of the first layer of `class_name` in a model's config."""
    return next(
        layer["config"]
        for layer in config["config"]["layers"]
        if layer["class_name"] == class_name
    )
