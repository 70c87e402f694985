"""TorchServe's config.properties as marforge writes it: the base file, the model snapshot, the ports.

A server starts from the project's base config.properties (addresses, metrics, tokens, limits)
plus what marforge sets from the registry: the model store and a `model_snapshot` that loads every
version with its workers and batching and fixes each model's default version (TorchServe ignores
`defaultVersion` in `models=`, and `load_models` makes the first version it finds the default).
"""

import json
from pathlib import Path

from marforge.errors import ServerError
from marforge.serve.client import Endpoints

ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address", "metrics": "metrics_address"}
GRPC_PORT_KEYS = {"grpc_inference": "grpc_inference_port", "grpc_management": "grpc_management_port"}
PORT_NAMES = (*ADDRESS_KEYS, *GRPC_PORT_KEYS)  # every listener a second server on one host must move
SET_BY_MARFORGE = ("model_store", "load_models", "model_snapshot", "models")


def read_properties(path):
    """Parse a Java .properties file of simple `key=value` lines; comments and blanks are skipped."""
    if not Path(path).is_file():
        raise ServerError(f"{path}: no such file (the base TorchServe config every server starts from)",
                          "a project keeps config.properties beside models.toml: restore it (git checkout -- "
                          "config.properties) or name another with MARFORGE_CONFIG=path (serve: --config)")
    props = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        if "=" not in line:
            raise ServerError(f"{path}:{number}: expected key=value, got {line!r}")
        key, value = line.split("=", 1)
        props[key.strip()] = value.strip()
    return props


def properties_text(props: dict, comments: dict | None = None) -> str:
    """`props` as read_properties reads them: a `key=value` line each (a None value leaves the key out).

    `comments` maps a key to the comment lines written above it (the key "" to the file's header).
    """
    comments = comments or {}
    out = [f"# {line}".rstrip() + "\n" for line in comments.get("", [])]
    for key, value in props.items():
        if value is None:
            continue
        if key in comments:
            out += ["\n"] + [f"# {line}".rstrip() + "\n" for line in comments[key]]
        out.append(f"{key}={value}\n")
    return "".join(out)


def write_properties(path, props: dict, comments: dict | None = None) -> None:
    """Write `props` (and `comments`) as properties_text renders them."""
    Path(path).write_text(properties_text(props, comments))


def model_snapshot(versions, model_store, defaults):
    """The `model_snapshot` JSON that loads `versions`, with each model's default version fixed.

    `defaults` maps every model name among `versions` to the version that takes unversioned traffic.
    """
    models = {}
    for mv in versions:
        models.setdefault(mv.name, {})[mv.version] = {
            "defaultVersion": mv.version == defaults[mv.name],
            "marName": mv.archive_path(model_store).name,
            "minWorkers": mv.serving["workers"],
            "maxWorkers": mv.serving["workers"],
            "batchSize": mv.serving["batch_size"],
            "maxBatchDelay": mv.serving["max_batch_delay_ms"],
            "responseTimeout": mv.serving["response_timeout_s"],
        }
    return {"name": "marforge.cfg", "modelCount": len(versions), "models": models}


def render(base, versions, model_store, defaults, ports=None, source="the base config"):
    """The properties a server starts with: `base` (a dict), the model store, the snapshot, the ports.

    `ports` (keys PORT_NAMES) moves every listener, for a second server on the same host (tests,
    benchmarks). An empty `base` gives TorchServe's own defaults for everything else.
    """
    props = dict(base)
    for key in SET_BY_MARFORGE:
        if key in props:
            raise ServerError(f"{source}: {key} is set by marforge from models.toml; remove it")
    if ports:
        for api, key in ADDRESS_KEYS.items():
            scheme_host = props.get(key, "http://127.0.0.1:0").rsplit(":", 1)[0]
            props[key] = f"{scheme_host}:{ports[api]}"
        for name, key in GRPC_PORT_KEYS.items():
            props[key] = str(ports[name])
    props["model_store"] = str(Path(model_store).resolve())
    props["model_snapshot"] = json.dumps(model_snapshot(versions, model_store, defaults))
    return props


def endpoints_of(props):
    """The Endpoints (inference, management, metrics URLs) a server started with `props` listens on."""
    grpc = f"{props.get('grpc_inference_address', '127.0.0.1')}:{props.get('grpc_inference_port', '7070')}"
    return Endpoints(**{api: props[key] for api, key in ADDRESS_KEYS.items()}, grpc=grpc)
