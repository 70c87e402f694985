"""marforge's own KServe ServingRuntime run as a pod runs it (issue 22), integration tests.

TorchServe is started exactly as the ServingRuntime's container says: its command and args (the
storage location KServe mounts at /mnt/models is the bundle's folder here), the pod's environment
and the readiness command as written; only the ports are moved to free ones (the bundle is written
with them), and the process gets its own TMPDIR as a pod has its own /tmp. It is reached through 127.0.0.2
(deploy/pod.py's OUTSIDE), not the address management binds (127.0.0.1), as another pod reaches a pod's IP:
a socket bound to 127.0.0.1 (management, gRPC) refuses it, one bound to 0.0.0.0 (inference, metrics)
answers it, and no packet leaves this machine. marforge/deploy/pod.py starts it (bench-kserve does too).
"""

import base64
import json
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from conftest import ROOT, assert_triton_gets_400_for_a_bad_image

from marforge.deploy import kserve, runtime
from marforge.deploy import pod as deploy_pod
from marforge.serve.config import read_properties


@pytest.fixture(scope="module")
def project(store):
    from marforge.project import Project

    return Project.at(ROOT / "models.toml", model_store=store)


def documents(folder):
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


@pytest.fixture(scope="module")
def pod(registry, project, tmp_path_factory):
    """TorchServe started exactly as the ServingRuntime's container says, from an own bundle of fashion 2.0."""
    from marforge.serve import process

    ports = process.free_listeners()
    folder = kserve.bundle(project, registry.get("fashion", "2.0"), tmp_path_factory.mktemp("pod"), "s3://b/m",
                           kserve.Target(cpus=2), ports=ports)
    with deploy_pod.started(folder) as running:
        ready = running.spec["readinessProbe"]["exec"]["command"]
        early = subprocess.run(ready, env=running.env, capture_output=True, timeout=30, check=False)  # at once
        assert running.spec == documents(folder)["servingruntime.yaml"]["spec"]["containers"][0]
        assert running.server.args == running.spec["command"] + [a.replace(runtime.MOUNT, str(folder))
                                                                  for a in running.spec["args"]]
        running.wait_ready(240)
        yield {"address": running.address, "ports": ports, "env": running.env, "spec": running.spec,
               "server": running.server, "early": early, "folder": folder}


def _v1(base, path):
    body = {"instances": [{"data": base64.b64encode(path.read_bytes()).decode()}]}
    return requests.post(f"{base}/v1/models/fashion:predict", json=body, timeout=60)


@pytest.mark.integration
def test_readiness_failed_until_the_port_answered_and_then_it_serves(pod, samples):
    assert pod["early"].returncode != 0  # run right after the start: nothing listened yet
    base = f"http://{pod['address']}:{pod['ports']['inference']}"
    path, label = samples["fashion"][0]
    answer = _v1(base, path)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["predictions"][0]["label"] == label
    assert requests.get(f"{base}/v2/health/live", timeout=10).status_code == 200  # the liveness probe's route


@pytest.mark.integration
def test_from_outside_the_pod_only_inference_and_metrics_answer(pod, samples):
    outside, ports = pod["address"], pod["ports"]
    local = f"http://127.0.0.1:{ports['management']}"
    before = requests.get(f"{local}/models/fashion", timeout=10).json()[0]["workers"]
    for method, url in (("PUT", "/models/fashion?min_worker=6"), ("POST", "/models?url=fashion.mar&model_name=evil"),
                        ("DELETE", "/models/fashion")):
        with pytest.raises(requests.ConnectionError):
            requests.request(method, f"http://{outside}:{ports['management']}{url}", timeout=10)
        on_inference = requests.request(method, f"http://{outside}:{ports['inference']}{url}", timeout=10)
        assert on_inference.status_code >= 400, (method, url, on_inference.status_code)
    for name in ("grpc_management", "grpc_inference"):
        with socket.socket() as s:
            assert s.connect_ex((outside, ports[name])) != 0, name
    assert requests.post(f"{local}/models?url=fashion.mar&model_name=evil", timeout=30).status_code == 405  # model API off
    assert [w["id"] for w in requests.get(f"{local}/models/fashion", timeout=10).json()[0]["workers"]] == [
        w["id"] for w in before]
    path, _ = samples["fashion"][0]
    assert _v1(f"http://{outside}:{ports['inference']}", path).status_code == 200
    metrics = requests.get(f"http://{outside}:{ports['metrics']}/metrics", timeout=10)
    assert metrics.status_code == 200 and "ts_inference_requests_total" in metrics.text


@pytest.mark.integration
def test_v1_and_v2_from_clients_with_batching_on_and_bad_images_get_their_400(pod, samples):
    import numpy as np

    triton = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed here (requirements.txt)")

    props = read_properties(pod["folder"] / "config" / "config.properties")
    assert json.loads(props["model_snapshot"])["models"]["fashion"]["2.0"]["batchSize"] > 1
    base = f"http://{pod['address']}:{pod['ports']['inference']}"
    cases = list(samples["fashion"]) * 6
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda case: _v1(base, case[0]), cases))
    assert [a.status_code for a in answers] == [200] * len(cases)
    assert [a.json()["predictions"][0]["predictions"][0]["label"] for a in answers] == [label for _, label in cases]
    bad = requests.post(f"{base}/v1/models/fashion:predict",
                        json={"instances": [{"data": base64.b64encode(b"not an image").decode()}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"].startswith("InvalidImage: ")
    client = triton.InferenceServerClient(url=f"{pod['address']}:{pod['ports']['inference']}", concurrency=8)
    pending = []
    for i, (path, _) in enumerate(cases):
        data = triton.InferInput("data", [1], "BYTES")
        data.set_data_from_numpy(np.array([base64.b64encode(path.read_bytes())], dtype=object), binary_data=False)
        pending.append(client.async_infer("fashion", [data], request_id=str(i),
                                          outputs=[triton.InferRequestedOutput("top_labels", binary_data=False)]))
    for request, (_, label) in zip(pending, cases, strict=True):
        assert request.get_result().as_numpy("top_labels")[0][0] in (label, label.encode())
    assert_triton_gets_400_for_a_bad_image(client)
    client.close()


@pytest.mark.integration
def test_the_pre_stop_hook_answers_what_arrives_then_stops_the_server(pod, samples):
    """Last in the module: it ends the pod's server, as Kubernetes' termination would."""
    base = f"http://{pod['address']}:{pod['ports']['inference']}"
    path, _ = samples["fashion"][0]
    settled = threading.Event()

    def client():
        codes = []
        while not settled.is_set():  # the endpoints still send traffic until they settle
            codes.append(_v1(base, path).status_code)
        return codes

    with ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(client) for _ in range(8)]
        hook = subprocess.Popen(pod["spec"]["lifecycle"]["preStop"]["exec"]["command"], env=pod["env"],
                                stdout=subprocess.PIPE, text=True)
        lines = [hook.stdout.readline()]
        settled.set()
        codes = [code for c in clients for code in c.result(timeout=120)]
    lines += hook.stdout.readlines()
    assert hook.wait(timeout=120) == 0 and lines[0].startswith("drain: endpoints settled")
    assert codes and set(codes) == {200}, codes
    assert pod["server"].wait(timeout=90) is not None  # the container's process ended
