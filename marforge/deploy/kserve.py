"""`make kserve`: a version's storage location for KServe's TorchServe runtime, and its InferenceService.

KServe's `kserve-torchserve` runtime starts
`torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`
in a pod, behind a proxy that forwards to `inference_address` and serves the model `model_snapshot`
names, at its default version only: one version per storage location. `bundle` writes, for one
registry version, into `<out>/<name>-<version>/`:

    config/config.properties    what the runtime starts TorchServe with
    model-store/<name>.mar      the verified archive (the proxy accepts no suffix but exactly `.mar`)
    inferenceservice.yaml       the InferenceService, CPU (and inferenceservice-gpu.yaml)
    canary-knative.yaml         the same service sending `canary_percent` of its traffic to this
    canary-standard.yaml        version's storage location: canaryTrafficPercent (Knative mode) or
                                spec.canary (Standard mode)

Nothing of marforge runs in the pod, so everything it would decide at start is written out for the
target machine: workers (the registry's number, or for "auto" one per core, or per GPU), batching,
and the workers' threads, as OMP_NUM_THREADS in the container's environment. Token authorization
is turned off there, explicitly and with the reason in the file: KServe's readiness check and
proxy send no token. What protects the server then is said beside it.
"""

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from marforge import files
from marforge.errors import ArchiveError, RegistryError
from marforge.serve.config import model_snapshot, read_properties

RUNTIME_PORTS = {"inference": 8085, "management": 8085, "metrics": 8082, "grpc_inference": 7070,
                 "grpc_management": 7071}
MOUNT = "/mnt/models"
KEEP = ("metrics_mode", "enable_model_api", "allowed_urls", "job_queue_size", "max_request_size",
        "max_response_size", "install_py_dep_per_model", "vmargs")  # taken from the project's config.properties
IMAGE = "marforge-torchserve:0.12.0"  # docker/Dockerfile.kserve (not built or pushed by marforge)
# Every worker READY, asked of the management API: the proxy's own check settles for one READY worker.
READY = ("import json, sys, urllib.request; d = json.load(urllib.request.urlopen("
         "'http://127.0.0.1:{port}/models/{name}', timeout=5)); w = d[0].get('workers', []); "
         "sys.exit(0 if w and all(x['status'] == 'READY' for x in w) else 1)")


@dataclass(frozen=True)
class Target:
    """What one pod has: CPU cores, GPUs (0: CPU only), memory (a Kubernetes quantity)."""

    cpus: int = 2
    gpus: int = 0
    memory: str = "4Gi"

    def workers(self, mv):
        """The registry's explicit number of workers, or for "auto" one per GPU, else one per core."""
        return (self.gpus or self.cpus) if mv.auto_workers else mv.serving["workers"]

    def threads(self, mv):
        return max(1, self.cpus // self.workers(mv))


def config_text(project, mv, target, ports=RUNTIME_PORTS):
    """config.properties for the runtime, every choice marforge made commented."""
    base = read_properties(project.config)
    workers = target.workers(mv)
    sized = dataclasses.replace(mv, serving={**mv.serving, "workers": workers})
    snapshot = model_snapshot([sized], Path(MOUNT) / "model-store", {mv.name: mv.version})
    snapshot["models"][mv.name][mv.version]["marName"] = f"{mv.name}.mar"
    gpus = f" and {target.gpus} GPU(s)" if target.gpus else ""
    lines = [
        f"# {mv.name} {mv.version} for KServe's TorchServe runtime, written by `make kserve` (marforge/deploy/kserve.py).",
        f"# Sized for {target.cpus} core(s){gpus}: {workers} worker(s) of batches of {mv.serving['batch_size']} "
        f"within {mv.serving['max_batch_delay_ms']} ms, each worker with OMP_NUM_THREADS={target.threads(mv)} (set in the",
        "# InferenceService's environment, since marforge's launcher does not run in the pod).",
        "",
        "# The runtime's proxy forwards to inference_address and checks readiness on management_address.",
        f"inference_address=http://0.0.0.0:{ports['inference']}",
        f"management_address=http://0.0.0.0:{ports['management']}",
        f"metrics_address=http://0.0.0.0:{ports['metrics']}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_port={ports['grpc_management']}",
        "",
        "# TOKEN AUTHORIZATION IS OFF, by choice: KServe's readiness check and its proxy send no token, and",
        "# TorchServe would answer them 400 (the model would never be ready). What protects the server",
        "# instead: the pod's Service exposes the proxy only; management (which can register and delete",
        "# models, if enable_model_api is on) and gRPC listen where only the pod reaches them; network",
        "# policies and KServe's ingress decide who reaches the proxy. `make serve` keeps tokens on.",
        "disable_token_authorization=true",
        "# The runtime sets TS_SERVICE_ENVELOPE from the protocol, and TorchServe's envelopes read only the",
        "# first request of a server-side batch. With configuration from the environment off, no envelope",
        "# is applied: marforge's handler reads v1 and v2 bodies itself, per request, and batching works.",
        "enable_envvars_config=false",
        "",
        *[f"{key}={base[key]}" for key in KEEP if key in base],
        f"default_workers_per_model={workers}",
        f"model_store={MOUNT}/model-store",
        f"model_snapshot={json.dumps(snapshot)}",
    ]
    return "\n".join(lines) + "\n"


def service_name(name):
    """A DNS-1123 label for the InferenceService (KServe names its hosts after it)."""
    label = "".join(c if c.isalnum() and c.isascii() else "-" for c in name.lower()).strip("-")[:63]
    if not label:
        raise RegistryError(f"model name {name!r} makes no DNS name for an InferenceService")
    return label


def inference_service(mv, target, storage_uri, protocol="v1", image=IMAGE, mode="Standard"):
    """The InferenceService (a dict) serving `mv` from `storage_uri` on pods of `target`."""
    resources = {"cpu": str(target.cpus), "memory": target.memory}
    if target.gpus:
        resources["nvidia.com/gpu"] = str(target.gpus)
    model = {
        "modelFormat": {"name": "pytorch"},
        "protocolVersion": protocol,
        "runtime": "kserve-torchserve",
        "storageUri": storage_uri,
        "image": image,
        "env": [{"name": "OMP_NUM_THREADS", "value": str(target.threads(mv))},
                {"name": "MALLOC_ARENA_MAX", "value": "2"}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "readinessProbe": {"exec": {"command": ["python3", "-c", READY.format(port=RUNTIME_PORTS["management"],
                                                                              name=mv.name)]},
                           "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 8},
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(mv.name),
            "labels": {"marforge/model": service_name(mv.name), "marforge/version": mv.version.replace("+", "-")},
            "annotations": {"serving.kserve.io/deploymentMode": mode,
                            "serving.kserve.io/enable-prometheus-scraping": "true",
                            "prometheus.kserve.io/port": str(RUNTIME_PORTS["metrics"]),
                            "prometheus.kserve.io/path": "/metrics"},
        },
        "spec": {"predictor": {"minReplicas": 1, "model": model}},
    }


def canary(service, percent, mode):
    """The step that sends `percent` of `service`'s traffic to its storage location: Knative mode
    keeps the old revision and takes canaryTrafficPercent; Standard mode lists the canary in spec.canary."""
    service = json.loads(json.dumps(service))  # a deep copy
    service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    if mode == "Knative":
        service["spec"]["predictor"]["canaryTrafficPercent"] = percent
        return service
    model = {**service["spec"]["predictor"]["model"], "name": "kserve-container"}
    service["spec"]["canary"] = [{"trafficPercent": percent, "predictor": {"model": model}}]
    return service


def bundle(project, mv, out, storage_uri, target=Target(), protocol="v1", image=IMAGE, canary_percent=10,
           ports=RUNTIME_PORTS):
    """Write the storage location and the InferenceService files for `mv` into `out`/<key>; returns that folder."""
    archive = mv.archive_path(project.model_store)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not built", f"make archive (or python -m marforge archive {mv.name} {mv.version})")
    folder = Path(out) / mv.key
    if folder.exists():
        shutil.rmtree(folder)
    files.copy_atomic(archive, folder / "model-store" / f"{mv.name}.mar")
    files.write_atomic(folder / "config" / "config.properties", config_text(project, mv, target, ports))
    uri = storage_uri.rstrip("/") + "/" + mv.key
    documents = {
        "inferenceservice.yaml": inference_service(mv, target, uri, protocol, image),
        "inferenceservice-gpu.yaml": inference_service(mv, dataclasses.replace(target, gpus=target.gpus or 1), uri,
                                                       protocol, image),
    }
    documents["canary-knative.yaml"] = canary(documents["inferenceservice.yaml"], canary_percent, "Knative")
    documents["canary-standard.yaml"] = canary(documents["inferenceservice.yaml"], canary_percent, "Standard")
    for name, document in documents.items():
        files.write_atomic(folder / name, f"# {name} for {mv.name} {mv.version}: written by `make kserve`\n"
                           + yaml.safe_dump(document, sort_keys=False))
    return folder
