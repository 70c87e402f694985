"""`make kserve`: bundles for KServe's TorchServe runtime, checked without a cluster.

The InferenceService YAML is validated against KServe's CRD (closed to unknown fields) and
Kubernetes' ObjectMeta schema; a real TorchServe is started exactly as the runtime starts it, from a
generated bundle, and answers v1 requests and v2 requests that Triton's client builds, concurrently,
with server-side batching on. The CRD and the runtime are read from ../shared/data/kserve/ (the
tests that need them skip, saying why, where that folder is absent).
"""

import base64
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from conftest import ROOT, assert_triton_gets_400_for_a_bad_image

from marforge.deploy import kserve, schema
from marforge.serve import process
from marforge.serve.rundir import RunDir

KSERVE = ROOT.parent / "shared" / "data" / "kserve"
CRD = KSERVE / "serving.kserve.io_inferenceservices.yaml"
RUNTIME = KSERVE / "kserve-torchserve.yaml"
needs_kserve = pytest.mark.skipif(not KSERVE.is_dir(), reason=f"{KSERVE} is absent: KServe's CRD and runtime are not here")


@pytest.fixture(scope="module")
def bundles(registry, store, tmp_path_factory):
    from marforge.project import Project

    project = Project.at(ROOT / "models.toml", model_store=store)
    out = tmp_path_factory.mktemp("kserve")
    return {mv.key: kserve.bundle(project, mv, out, "s3://bucket/marforge", kserve.Target(cpus=4, memory="6Gi"),
                                  runtime_name="stock")
            for mv in registry.all_versions()}


@pytest.fixture(scope="module")
def own_bundles(registry, store, tmp_path_factory):
    """The default bundles: marforge's own ServingRuntime."""
    from marforge.project import Project

    project = Project.at(ROOT / "models.toml", model_store=store)
    out = tmp_path_factory.mktemp("kserve_own")
    return {mv.key: kserve.bundle(project, mv, out, "s3://bucket/marforge", kserve.Target(cpus=4, memory="6Gi"))
            for mv in registry.all_versions()}


def documents(folder):
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def test_a_bundle_is_what_the_runtime_mounts(bundles):
    folder = bundles["fashion-2.0"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "canary-knative.yaml", "canary-standard.yaml", "config/config.properties", "inferenceservice-gpu.yaml",
        "inferenceservice.yaml", "model-store/fashion.mar"]
    from marforge.serve.config import read_properties

    props = read_properties(folder / "config" / "config.properties")
    assert props["disable_token_authorization"] == "true" and props["enable_envvars_config"] == "false"
    # the stock proxy runs in the same container: TorchServe's both APIs on loopback (issue 22: not 0.0.0.0)
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:8085"
    assert props["metrics_mode"] == "prometheus" and props["grpc_inference_address"] == "127.0.0.1"
    snapshot = json.loads(props["model_snapshot"])
    assert snapshot["models"] == {"fashion": {"2.0": {"defaultVersion": True, "marName": "fashion.mar", "minWorkers": 4,
                                                      "maxWorkers": 4, "batchSize": 16, "maxBatchDelay": 1,
                                                      "responseTimeout": 30}}}
    text = (folder / "config" / "config.properties").read_text()
    assert "# TOKEN AUTHORIZATION IS OFF, by choice: KServe's readiness check and its proxy send no token" in text


def test_the_inferenceservice_carries_what_the_pod_needs(bundles):
    isvc = documents(bundles["fashion-2.0"])["inferenceservice.yaml"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://bucket/marforge/fashion-2.0" and model["protocolVersion"] == "v1"
    assert model["env"] == [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MALLOC_ARENA_MAX", "value": "2"}]
    assert model["resources"]["limits"] == {"cpu": "4", "memory": "6Gi"}
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    gpu = documents(bundles["fashion-2.0"])["inferenceservice-gpu.yaml"]["spec"]["predictor"]["model"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["env"][0] == {"name": "OMP_NUM_THREADS", "value": "4"}  # one worker per GPU gets the pod's cores
    knative = documents(bundles["fashion-2.0"])["canary-knative.yaml"]["spec"]["predictor"]
    assert knative["canaryTrafficPercent"] == 10 and knative["model"]["storageUri"] == model["storageUri"]


def test_every_readiness_probe_asks_for_every_worker(bundles, tmp_path):
    model = documents(bundles["digits-1.0"])["inferenceservice.yaml"]["spec"]["predictor"]["model"]
    command = model["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and "all(x['status'] == 'READY'" in command[2]
    assert "'http://127.0.0.1:8085/models/digits'" in command[2]


@needs_kserve
def test_every_generated_document_validates_against_the_crd_and_objectmeta(bundles):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed here (requirements.txt)")
    for key, folder in bundles.items():
        for name, document in documents(folder).items():
            assert schema.problems(document, CRD) == [], f"{key}/{name}"


@needs_kserve
def test_the_validation_refuses_what_the_api_server_would(bundles):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed here (requirements.txt)")
    isvc = documents(bundles["fashion-2.0"])["inferenceservice.yaml"]
    isvc["spec"]["predictor"]["model"]["protocolVersions"] = "v2"  # a typo
    isvc["spec"]["predictor"]["model"]["canaryTrafficPercent"] = 10  # on the wrong level
    isvc["metadata"]["labells"] = {}
    found = schema.problems(isvc, CRD)
    assert any(p.startswith("spec.predictor.model: Additional properties are not allowed") and "protocolVersions" in p
               and "canaryTrafficPercent" in p for p in found)
    assert "metadata: Additional properties are not allowed ('labells' was unexpected)" in found


@pytest.fixture(scope="module")
def runtime_server(registry, store, tmp_path_factory):
    """TorchServe started exactly as KServe's runtime starts it, from a bundle of fashion 2.0 (ports moved)."""
    from marforge.project import Project

    if not RUNTIME.is_file():
        pytest.skip(f"{RUNTIME} is absent: KServe's TorchServe runtime is not here")
    ports = process.free_listeners()
    ports["management"] = ports["inference"]  # the runtime's layout: management on the inference port
    project = Project.at(ROOT / "models.toml", model_store=store)
    folder = kserve.bundle(project, registry.get("fashion", "2.0"), tmp_path_factory.mktemp("bundle"), "s3://b/m",
                           kserve.Target(cpus=2), ports=ports, runtime_name="stock")
    args = yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]["args"]
    command = [str(ROOT / ".venv" / "bin" / args[0])] + [a.replace(kserve.MOUNT, str(folder)) for a in args[1:]]
    env_of_pod = {e["name"]: e["value"] for e in documents(folder)["inferenceservice.yaml"]["spec"]["predictor"]["model"]["env"]}
    run_dir = RunDir(tmp_path_factory.mktemp("runtime_run"))
    run_dir.tmp.mkdir()
    env = {**os.environ, **env_of_pod, "TMPDIR": str(run_dir.tmp), "TEMP": str(run_dir.tmp), "LOG_LOCATION": str(run_dir.logs)}
    run_dir.logs.mkdir()
    with open(run_dir.log("launcher"), "wb") as out:  # the frontend inherits it: a pipe would never close
        subprocess.run(command, cwd=run_dir.path, env=env, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=60)
    run_dir.record_pid(int(run_dir.torchserve_pid_file.read_text()))
    base = f"http://127.0.0.1:{ports['inference']}"
    deadline = time.monotonic() + 180
    while True:
        try:
            [d] = requests.get(f"{base}/models/fashion", timeout=5).json()
            if d["workers"] and all(w["status"] == "READY" for w in d["workers"]):
                break
        except (requests.RequestException, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, "the runtime's TorchServe never had every worker READY"
        time.sleep(0.5)
    yield base, ports
    process.stop(run_dir)


@pytest.mark.integration
def test_v1_requests_are_answered_with_batching_on(runtime_server, samples):
    base, _ = runtime_server
    cases = [(path, label) for path, label in samples["fashion"]] * 6

    def send(case):
        path, _ = case
        body = {"instances": [{"data": base64.b64encode(path.read_bytes()).decode()}]}
        return requests.post(f"{base}/v1/models/fashion:predict", json=body, timeout=30)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, cases))
    assert [a.status_code for a in answers] == [200] * len(cases)
    assert [a.json()["predictions"][0]["predictions"][0]["label"] for a in answers] == [label for _, label in cases]
    bad = requests.post(f"{base}/v1/models/fashion:predict", json={"instances": ["@@"]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"].startswith("InvalidBase64: instance 0 is not valid base64")


@pytest.mark.integration
def test_v2_requests_built_by_tritons_client_are_answered_concurrently(runtime_server, samples):
    import numpy as np

    triton = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed here (requirements.txt)")

    _, ports = runtime_server
    client = triton.InferenceServerClient(url=f"127.0.0.1:{ports['inference']}", concurrency=8)
    cases = [(path, label) for path, label in samples["fashion"]] * 8
    pending = []
    for i, (path, _) in enumerate(cases):
        data = triton.InferInput("data", [1], "BYTES")
        data.set_data_from_numpy(np.array([base64.b64encode(path.read_bytes())], dtype=object), binary_data=False)
        pending.append(client.async_infer("fashion", [data], request_id=str(i),
                                          outputs=[triton.InferRequestedOutput("top_labels", binary_data=False),
                                                   triton.InferRequestedOutput("probabilities", binary_data=False)]))
    for i, (request, (_, label)) in enumerate(zip(pending, cases)):
        result = request.get_result()
        assert result.get_response()["id"] == str(i)
        assert result.as_numpy("top_labels")[0][0] in (label, label.encode())
        assert result.as_numpy("probabilities").shape == (1, 10)
    assert_triton_gets_400_for_a_bad_image(client)
    client.close()
