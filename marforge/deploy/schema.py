"""Check an InferenceService, ServingRuntime or ClusterServingRuntime without a cluster: its spec
against KServe's CRD, its metadata against Kubernetes' own ObjectMeta schema, both strict about
unknown fields.

The CRD's `openAPIV3Schema` is what the API server validates an InferenceService against; it leaves
objects open where it does not say otherwise (the server prunes unknown fields silently), so every
object schema that lists its properties is closed here (`additionalProperties: false`), as
`kubectl --validate=strict` would refuse them. The CRD says nothing about `metadata`: that part is
checked against ObjectMeta from the JSON Schemas kubernetes-validate bundles (the strict ones), by
the standalone schema and its `_definitions.json`.
"""

import json
from pathlib import Path

import yaml

from marforge.errors import DataError

KUBERNETES = "1.37.0"


def crd_schema(crd_path, version="v1beta1"):
    """The CRD's openAPIV3Schema for `version`, closed wherever it lists properties."""
    try:
        crd = yaml.safe_load(Path(crd_path).read_text())
    except FileNotFoundError:
        raise DataError(f"{crd_path}: no KServe CRD to validate against") from None
    [schema] = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    return _closed(schema)


def _closed(node):
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [_closed(v) for v in node]
    return node


def object_meta_validator():
    """A validator for ObjectMeta, from kubernetes-validate's bundled strict schemas."""
    import kubernetes_validate
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    schema = json.loads((folder / "objectmeta-meta-v1.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return Draft202012Validator(schema, registry=registry)


def problems(document, crd_path):
    """Every schema error of a KServe document (a dict) against the CRD at `crd_path`, at the version
    its apiVersion names, as 'path: message' lines; [] when it is valid."""
    from jsonschema import Draft7Validator

    version = str(document.get("apiVersion", "serving.kserve.io/v1beta1")).rsplit("/", 1)[-1]
    found = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
             for e in Draft7Validator(crd_schema(crd_path, version)).iter_errors(document)]
    found += [f"{'.'.join(['metadata', *map(str, e.absolute_path)])}: {e.message}"
              for e in object_meta_validator().iter_errors(document.get("metadata", {}))]
    return sorted(found)
