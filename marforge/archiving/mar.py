"""Reading a built `.mar`: its manifest, its model-config.yaml and the format stamp in it."""

import json
import zipfile

import yaml

from marforge import shipped


def manifest_of(mar_path):
    """The `model` entry of an archive's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(mar_path) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]


def model_config_of(mar_path):
    """An archive's model-config.yaml, parsed ({} when it has none)."""
    config_file = manifest_of(mar_path).get("configFile")
    if not config_file:
        return {}
    with zipfile.ZipFile(mar_path) as archive:
        return yaml.safe_load(archive.read(config_file)) or {}


def archive_format(mar_path):
    """The format an archive was built in, as its format stamp records it."""
    return shipped.contract().archive_format(model_config_of(mar_path))
