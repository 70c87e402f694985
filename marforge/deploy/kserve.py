"""`make kserve`: a version's storage location for KServe, the ServingRuntime that serves it, and
its InferenceService.

By default the pod runs marforge's own ServingRuntime (marforge/deploy/runtime.py): TorchServe alone,
serving v1 and v2 on 8080, the port KServe routes to. `runtime="stock"` writes the bundle for KServe's
`kserve-torchserve` runtime instead, whose proxy (pytorch/serve's kserve_wrapper) listens on 8080
and forwards to TorchServe on 8085 in the same container. Either runtime starts TorchServe from
`/mnt/models` and serves the model `model_snapshot` names, at its default version only: one version
per storage location. `bundle` writes, for one registry version, into `<out>/<name>-<version>/`:

    config/config.properties    what the runtime starts TorchServe with
    model-store/<name>.mar      the verified archive (the stock proxy accepts no suffix but exactly `.mar`)
    servingruntime.yaml         the own runtime (namespaced) and clusterservingruntime.yaml, its
                                cluster-wide variant (own runtime only)
    inferenceservice.yaml       the InferenceService, CPU (and inferenceservice-gpu.yaml)
    canary-knative.yaml         the same service sending `canary_percent` of its traffic to this
    canary-standard.yaml        version's storage location: canaryTrafficPercent (Knative mode) or
                                spec.canary (Standard mode)

Nothing of marforge runs in the pod, so everything it would decide at start is written out for the
target machine: workers, batching and the workers' threads (the registry's numbers, or for "auto" as
`make tune` chose on as many cores as the pod has, else the rule: marforge/tuned.py), threads as OMP_NUM_THREADS in the
container's environment. Only inference and metrics listen beyond the pod's loopback; management,
gRPC and the stock proxy's upstream listen on 127.0.0.1, and the model API (register/unregister) is
off: a rollout there is KServe's canary. Token authorization is off, explicitly and with the reason
in the file: KServe's probes and the stock proxy send no token. What protects the server then is
said beside it.
"""

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from marforge import files, tuned
from marforge.deploy import defaults, runtime
from marforge.device import threads_per_worker
from marforge.errors import ArchiveError, RegistryError
from marforge.serve.config import model_snapshot, properties_text, read_properties

OWN_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082, "grpc_inference": 7070, "grpc_management": 7071}
STOCK_PORTS = {**OWN_PORTS, "inference": 8085, "management": 8085}  # the stock proxy owns 8080 (and 8081: its gRPC)
PORTS = {"own": OWN_PORTS, "stock": STOCK_PORTS}
PROXY_PORT = 8080  # the stock runtime's kserve_wrapper
MOUNT = runtime.MOUNT
KEEP = ("metrics_mode", "allowed_urls", "job_queue_size", "max_request_size",
        "max_response_size", "install_py_dep_per_model", "vmargs")  # taken from the project's config.properties
IMAGE = defaults.IMAGE
# The stock runtime: the proxy answers /v1/models/<name> ready (it listens only after its load())
# AND the management API has every worker READY (the proxy's own check settles for one).
READY = ("import json, sys, urllib.request as u; "
         "p = json.load(u.urlopen('http://127.0.0.1:{proxy}/v1/models/{name}', timeout=5)); "
         "d = json.load(u.urlopen('http://127.0.0.1:{port}/models/{name}', timeout=5)); w = d[0].get('workers', []); "
         "sys.exit(0 if p.get('ready') is True and w and all(x['status'] == 'READY' for x in w) else 1)")
TOKENS_OFF = [
    "TOKEN AUTHORIZATION IS OFF, by choice: KServe's readiness check and its proxy send no token, and",
    "TorchServe would answer them 400 (the model would never be ready). What protects the server",
    "instead: only the inference port (and metrics, which change nothing) listen beyond the pod's",
    "loopback; management and gRPC listen on 127.0.0.1, and the model API is off, so nobody outside",
    "the pod can scale, register or unregister; network policies and KServe's ingress decide who",
    "reaches inference. `make serve` keeps tokens on.",
]


@dataclass(frozen=True)
class Target:
    """What one pod has: CPU cores, GPUs (0: CPU only), memory (a Kubernetes quantity)."""

    cpus: int = defaults.CPUS
    gpus: int = defaults.GPUS
    memory: str = defaults.MEMORY

    def serving(self, mv) -> dict:
        """`mv`'s serving settings in this pod: its "auto" ones resolved for the pod's cores and GPUs (as
        tuned when `make tune` ran on as many cores, else the rule: marforge/tuned.py)."""
        return {**mv.serving, **{key: tuned.meaning(key, mv.tuned, self.cpus, self.gpus) for key in mv.auto}}

    def workers(self, mv) -> int:
        """The registry's explicit number of workers, or for "auto" as tuned or one per core (GPU) of the pod."""
        return int(self.serving(mv)["workers"])

    def threads(self, mv) -> int:
        """Each worker's threads: as tuned, else its share of the pod's cores (device.threads_per_worker)."""
        return self.serving(mv)["threads"] or threads_per_worker(self.workers(mv), self.cpus)


def config_props(project, mv, target, ports=OWN_PORTS, runtime_name="own"):
    """(props, comments) of config.properties for the runtime: every choice marforge made commented."""
    base = read_properties(project.config)
    sized = dataclasses.replace(mv, serving=target.serving(mv))
    workers = sized.serving["workers"]
    snapshot = model_snapshot([sized], Path(MOUNT) / "model-store", {mv.name: mv.version})
    snapshot["models"][mv.name][mv.version]["marName"] = f"{mv.name}.mar"
    inference_host = "0.0.0.0" if runtime_name == "own" else "127.0.0.1"
    props = {
        "inference_address": f"http://{inference_host}:{ports['inference']}",
        "management_address": f"http://127.0.0.1:{ports['management']}",
        "metrics_address": f"http://0.0.0.0:{ports['metrics']}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
        "grpc_inference_port": ports["grpc_inference"],
        "grpc_management_port": ports["grpc_management"],
        "ts_open_inference_protocol": "true" if runtime_name == "own" else None,
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "enable_envvars_config": "false",
        **{key: base[key] for key in KEEP if key in base},
        "default_workers_per_model": workers,
        "model_store": f"{MOUNT}/model-store",
        "model_snapshot": json.dumps(snapshot),
    }
    gpus = f" and {target.gpus} GPU(s)" if target.gpus else ""
    where = ("marforge's own ServingRuntime: TorchServe serves v1 and v2 itself on inference_address, the port "
             "KServe routes to" if runtime_name == "own" else
             "KServe's kserve-torchserve runtime: its proxy on 8080 forwards to inference_address and asks "
             "management_address, both on loopback in the same container")
    comments = {
        "": [f"{mv.name} {mv.version} for KServe, written by `make kserve` (marforge/deploy/kserve.py).",
             f"Sized for {target.cpus} core(s){gpus}: {workers} worker(s) of batches of {sized.serving['batch_size']} "
             f"within {sized.serving['max_batch_delay_ms']} ms, each worker with OMP_NUM_THREADS={target.threads(mv)} (set in the",
             "InferenceService's environment, since marforge's launcher does not run in the pod)."],
        "inference_address": [f"The runtime: {where}.", "Nothing but inference and metrics listens beyond the pod's loopback."],
        "disable_token_authorization": TOKENS_OFF,
        "enable_model_api": ["Register and unregister are off in the pod: a rollout there is KServe's canary."],
        "enable_envvars_config": [
            "The stock runtime sets TS_SERVICE_ENVELOPE from the protocol, and TorchServe's envelopes read only the",
            "first request of a server-side batch. With configuration from the environment off, no envelope",
            "is applied: marforge's handler reads v1 and v2 bodies itself, per request, and batching works."],
    }
    return props, comments


def config_text(project, mv, target, ports=OWN_PORTS, runtime_name="own"):
    """config.properties for the runtime, as serve/config.properties_text writes it."""
    return properties_text(*config_props(project, mv, target, ports, runtime_name))


def service_name(name):
    """A DNS-1123 label for the InferenceService (KServe names its hosts after it)."""
    label = "".join(c if c.isalnum() and c.isascii() else "-" for c in name.lower()).strip("-")[:63]
    if not label:
        raise RegistryError(f"model name {name!r} makes no DNS name for an InferenceService")
    return label


def inference_service(mv, target, storage_uri, protocol=defaults.PROTOCOL, image=IMAGE, mode="Standard",
                      runtime_name="own"):
    """The InferenceService (a dict) serving `mv` from `storage_uri` on pods of `target`, naming
    marforge's own ServingRuntime (`runtime_name` "own") or KServe's kserve-torchserve ("stock")."""
    resources = {"cpu": str(target.cpus), "memory": target.memory}
    if target.gpus:
        resources["nvidia.com/gpu"] = str(target.gpus)
    model = {
        "modelFormat": {"name": "pytorch"},
        "protocolVersion": protocol,
        "runtime": runtime.SERVING_RUNTIME if runtime_name == "own" else "kserve-torchserve",
        "storageUri": storage_uri,
        "env": [{"name": "OMP_NUM_THREADS", "value": str(target.threads(mv))},
                {"name": "MALLOC_ARENA_MAX", "value": "2"}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
    }
    predictor = {"minReplicas": 1, "model": model}
    if runtime_name == "own":  # the image, probes and preStop come from the ServingRuntime
        predictor["terminationGracePeriodSeconds"] = runtime.termination_grace_s(mv.serving["response_timeout_s"])
    else:
        model["image"] = image
        model["readinessProbe"] = {
            "exec": {"command": ["python3", "-c", READY.format(proxy=PROXY_PORT, port=STOCK_PORTS["management"],
                                                                name=mv.name)]},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 8}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": service_name(mv.name),
            "labels": {"marforge/model": service_name(mv.name), "marforge/version": mv.version.replace("+", "-")},
            "annotations": {"serving.kserve.io/deploymentMode": mode,
                            "serving.kserve.io/enable-prometheus-scraping": "true",
                            "prometheus.kserve.io/port": str(OWN_PORTS["metrics"]),
                            "prometheus.kserve.io/path": "/metrics"},
        },
        "spec": {"predictor": predictor},
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


def bundle(project, mv, out, storage_uri, target=Target(), protocol=defaults.PROTOCOL, image=IMAGE,
           canary_percent=defaults.CANARY_PERCENT, ports=None, runtime_name="own"):
    """Write the storage location, the runtime and the InferenceService files for `mv` into
    `out`/<key>; returns that folder. `ports` moves TorchServe's listeners (tests)."""
    if runtime_name not in defaults.RUNTIMES:
        raise RegistryError(f"unknown KServe runtime {runtime_name!r}", f"use one of: {', '.join(defaults.RUNTIMES)}")
    ports = ports or PORTS[runtime_name]
    if mv.own_handler and protocol != "v1":
        raise RegistryError(f"{mv.key} is served by its own handler ({mv.handler_file.name}): KServe's {protocol} protocol "
                            "sends tensors (named inputs with a datatype and a shape), which marforge's handler decodes "
                            "and yours would be handed as they are: marforge cannot serve them through it",
                            "make kserve PROTOCOL=v1 (your handler receives each v1 request's JSON body, "
                            '{"instances": [...]}, as it is sent)')
    archive = mv.archive_path(project.model_store)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not built",
                           f"make archive (or python -m marforge archive {mv.name} {mv.version})")
    folder = Path(out) / mv.key
    if folder.exists():
        shutil.rmtree(folder)
    files.copy_atomic(archive, folder / "model-store" / f"{mv.name}.mar")
    files.write_atomic(folder / "config" / "config.properties", config_text(project, mv, target, ports, runtime_name))
    uri = storage_uri.rstrip("/") + "/" + mv.key
    documents = {}
    if runtime_name == "own":
        for kind in ("ServingRuntime", "ClusterServingRuntime"):
            documents[f"{kind.lower()}.yaml"] = runtime.serving_runtime(
                image, ports, ports["metrics"], kind, mv.serving["response_timeout_s"])
    documents["inferenceservice.yaml"] = inference_service(mv, target, uri, protocol, image, runtime_name=runtime_name)
    documents["inferenceservice-gpu.yaml"] = inference_service(
        mv, dataclasses.replace(target, gpus=target.gpus or 1), uri, protocol, image, runtime_name=runtime_name)
    documents["canary-knative.yaml"] = canary(documents["inferenceservice.yaml"], canary_percent, "Knative")
    documents["canary-standard.yaml"] = canary(documents["inferenceservice.yaml"], canary_percent, "Standard")
    for name, document in documents.items():
        files.write_atomic(folder / name, f"# {name} for {mv.name} {mv.version}: written by `make kserve`\n"
                           + yaml.safe_dump(document, sort_keys=False))
    return folder
