"""marforge's own KServe ServingRuntime: TorchServe alone in the pod, serving v1 and v2 on the port
KServe routes to, with probes and a termination that tell the truth.

KServe's stock `kserve-torchserve` runtime puts a Python proxy (pytorch/serve's kserve_wrapper) on
8080 in front of TorchServe; this runtime has none: TorchServe's inference API answers
`/v1/models/<name>:predict` and `/v2/models/<name>/infer` itself on 8080, and marforge's handler
reads both bodies per request, batching included. Only that port and the metrics port listen
beyond the pod's loopback (the config, marforge/deploy/kserve.py). The container's probes and its
preStop hook are small Python programs run with the image's python3 (exec probes, since the checks
need the management API, which only loopback reaches):

    readiness  the inference port answers /ping Healthy (every default version has all its workers)
               AND the management API lists at least one model, each with every worker READY
    liveness   the frontend answers /v2/health/live on the inference port
    preStop    wait while Kubernetes takes the pod out of the Service's endpoints, then until no
               request is queued, then stop TorchServe (`torchserve --stop`), which ends the container
"""

SERVING_RUNTIME = "marforge-torchserve"
MOUNT = "/mnt/models"
CONTAINER = "kserve-container"  # the name KServe merges the InferenceService's model spec into
SETTLE_S = 5  # preStop: how long endpoints take to drop the pod, while requests still arrive

READY = (
    "import json, sys, urllib.request as u\n"
    "try:\n"
    "    ping = u.urlopen('http://127.0.0.1:{inference}/ping', timeout=3)\n"
    "    names = [m['modelName'] for m in json.load(u.urlopen('http://127.0.0.1:{management}/models', timeout=3))['models']]\n"
    "    workers = [w for n in names for v in json.load(u.urlopen(f'http://127.0.0.1:{management}/models/{{n}}/all', timeout=3))"
    " for w in v.get('workers', [])]\n"
    "except Exception as e:\n"
    "    sys.exit(f'not ready: {{e}}')\n"
    "sys.exit(0 if ping.status == 200 and names and workers and all(w['status'] == 'READY' for w in workers)"
    " else 'not ready: a worker is not READY')\n"
)

DRAIN = (
    "import json, subprocess, time, urllib.request as u\n"
    "def pending():\n"
    "    names = [m['modelName'] for m in json.load(u.urlopen('http://127.0.0.1:{management}/models', timeout=3))['models']]\n"
    "    return sum(v['jobQueueStatus']['pendingRequests'] for n in names"
    " for v in json.load(u.urlopen(f'http://127.0.0.1:{management}/models/{{n}}/all', timeout=3)))\n"
    "time.sleep({settle})\n"
    "print('drain: endpoints settled, waiting for queued requests', flush=True)\n"
    "quiet, deadline = 0, time.monotonic() + {timeout}\n"
    "while quiet < 3 and time.monotonic() < deadline:\n"
    "    try:\n"
    "        quiet = quiet + 1 if pending() == 0 else 0\n"
    "    except Exception:\n"
    "        break\n"
    "    time.sleep(0.5)\n"
    "print('drain: nothing queued, stopping TorchServe', flush=True)\n"
    "subprocess.run(['torchserve', '--stop', '--foreground'], check=False)\n"
)


def command_and_args() -> tuple[list[str], list[str]]:
    """How the container starts TorchServe: in the foreground (it is the container's process), with
    no config snapshot (config.properties alone decides), from the storage location KServe mounts."""
    return ["torchserve"], ["--start", "--foreground", "--ncs", f"--model-store={MOUNT}/model-store",
                            f"--ts-config={MOUNT}/config/config.properties"]


def termination_grace_s(response_timeout_s: int) -> int:
    """The pod's terminationGracePeriodSeconds: the settle wait, a request's longest answer, a margin."""
    return SETTLE_S + int(response_timeout_s) + 10


def container(image: str, ports: dict, response_timeout_s: int = 30) -> dict:
    """The runtime's one container: TorchServe on `ports` (inference, management, metrics)."""
    command, args = command_and_args()
    script = {"inference": ports["inference"], "management": ports["management"]}
    return {
        "name": CONTAINER,
        "image": image,
        "command": command,
        "args": args,
        "ports": [{"name": "http1", "containerPort": ports["inference"], "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": ["python3", "-c", READY.format(**script)]},
                           "initialDelaySeconds": 2, "periodSeconds": 5, "timeoutSeconds": 8, "failureThreshold": 2},
        "startupProbe": {"tcpSocket": {"port": ports["inference"]}, "periodSeconds": 5, "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": ports["inference"]},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["python3", "-c", DRAIN.format(
            **script, settle=SETTLE_S, timeout=int(response_timeout_s) + 5)]}}},
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "privileged": False, "capabilities": {"drop": ["ALL"]}},
    }


def serving_runtime(image: str, ports: dict, metrics_port: int, kind: str = "ServingRuntime",
                    response_timeout_s: int = 30) -> dict:
    """The ServingRuntime (or, with `kind`, the ClusterServingRuntime) running marforge bundles."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": SERVING_RUNTIME, "annotations": {"serving.kserve.io/server-type": "torchserve"}},
        "spec": {
            "annotations": {"prometheus.kserve.io/port": str(metrics_port), "prometheus.kserve.io/path": "/metrics"},
            "supportedModelFormats": [{"name": "pytorch", "version": "2", "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [container(image, ports, response_timeout_s)],
        },
    }
