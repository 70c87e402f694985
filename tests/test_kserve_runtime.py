"""marforge's own KServe ServingRuntime (issue 22): TorchServe alone on the port KServe routes to.

No-server tests check the generated runtime, config and InferenceService (against KServe's
ServingRuntime, ClusterServingRuntime and InferenceService CRDs in ../shared/data/kserve/, skipped
with the reason where absent) and the readiness program against stand-in servers. The runtime
run as a pod runs it, against a real TorchServe: tests/test_kserve_pod.py.
"""

import http.server
import json
import subprocess
import threading
import typing

import pytest
import yaml
from conftest import ROOT

from marforge import device
from marforge.deploy import defaults, kserve, runtime, schema
from marforge.serve.config import read_properties

KSERVE = ROOT.parent / "shared" / "data" / "kserve"
CRDS = {"ServingRuntime": KSERVE / "serving.kserve.io_servingruntimes.yaml",
        "ClusterServingRuntime": KSERVE / "serving.kserve.io_clusterservingruntimes.yaml",
        "InferenceService": KSERVE / "serving.kserve.io_inferenceservices.yaml"}
needs_kserve = pytest.mark.skipif(not KSERVE.is_dir(), reason=f"{KSERVE} is absent: KServe's CRDs are not here")


@pytest.fixture(scope="module")
def project(store):
    from marforge.project import Project

    return Project.at(ROOT / "models.toml", model_store=store)


@pytest.fixture(scope="module")
def own(registry, project, tmp_path_factory):
    return kserve.bundle(project, registry.get("fashion", "2.0"), tmp_path_factory.mktemp("own"), "s3://b/m",
                         kserve.Target(cpus=4, memory="6Gi"))


def documents(folder):
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))}


def test_the_own_runtime_is_the_default_and_ships_in_the_bundle(own):
    assert sorted(str(p.relative_to(own)) for p in own.rglob("*") if p.is_file()) == [
        "canary-knative.yaml", "canary-standard.yaml", "clusterservingruntime.yaml", "config/config.properties",
        "inferenceservice-gpu.yaml", "inferenceservice.yaml", "model-store/fashion.mar", "servingruntime.yaml"]
    docs = documents(own)
    model = docs["inferenceservice.yaml"]["spec"]["predictor"]["model"]
    assert model["runtime"] == "marforge-torchserve" and "image" not in model and "readinessProbe" not in model
    assert docs["inferenceservice.yaml"]["spec"]["predictor"]["terminationGracePeriodSeconds"] == 5 + 30 + 10
    for kind in ("ServingRuntime", "ClusterServingRuntime"):
        spec = docs[f"{kind.lower()}.yaml"]["spec"]
        assert docs[f"{kind.lower()}.yaml"]["kind"] == kind and spec["protocolVersions"] == ["v1", "v2"]
        assert spec["supportedModelFormats"] == [{"name": "pytorch", "version": "2", "autoSelect": False}]
        [container] = spec["containers"]
        assert container["image"] == defaults.IMAGE and container["ports"][0]["containerPort"] == 8080
        assert container["command"] == ["torchserve"] and "--foreground" in container["args"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert "torchserve', '--stop'" in container["lifecycle"]["preStop"]["exec"]["command"][2]
        assert spec["annotations"]["prometheus.kserve.io/port"] == "8082"


def test_nothing_but_inference_and_metrics_listens_beyond_loopback(own):
    props = read_properties(own / "config" / "config.properties")
    assert props["inference_address"] == "http://0.0.0.0:8080" and props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["enable_model_api"] == "false" and props["disable_token_authorization"] == "true"
    text = (own / "config" / "config.properties").read_text()
    assert "# TOKEN AUTHORIZATION IS OFF, by choice: KServe's readiness check and its proxy send no token" in text
    assert "where only the pod reaches" not in text  # the old comment's false claim


def test_config_properties_is_written_by_the_one_writer(registry, project):
    from marforge.serve.config import properties_text

    mv, target = registry.get("fashion", "2.0"), kserve.Target()
    props, comments = kserve.config_props(project, mv, target)
    assert kserve.config_text(project, mv, target) == properties_text(props, comments)


def test_the_stock_runtime_waits_for_its_proxy(registry, project, tmp_path):
    folder = kserve.bundle(project, registry.get("fashion", "2.0"), tmp_path, "s3://b/m", runtime_name="stock")
    model = documents(folder)["inferenceservice.yaml"]["spec"]["predictor"]["model"]
    probe = model["readinessProbe"]["exec"]["command"][2]
    assert "'http://127.0.0.1:8080/v1/models/fashion'" in probe and "p.get('ready') is True" in probe
    assert model["runtime"] == "kserve-torchserve" and not (folder / "servingruntime.yaml").exists()


def test_workers_and_threads_come_from_the_one_arithmetic(registry, monkeypatch):
    mv = registry.get("fashion", "2.0")
    auto = next(v for v in registry.all_versions() if v.auto_workers)
    target = kserve.Target(cpus=8, gpus=0)
    assert target.workers(auto) == device.auto_workers(8, 0) == 8 and device.auto_workers(8, 2) == 2
    assert target.threads(mv) == device.threads_per_worker(target.workers(mv), 8)
    from marforge import tuned

    monkeypatch.setattr(tuned, "auto_workers", lambda cpus, gpus: 3)
    assert target.workers(auto) == 3
    from marforge.serve import launch

    assert launch.threads_per_worker is device.threads_per_worker


def test_the_cli_takes_its_kserve_defaults_from_one_place():
    from marforge.cli import build_parser

    args = build_parser().parse_args(["kserve", "--storage-uri", "s3://b"])
    assert (args.image, args.cpus, args.gpus, args.memory, args.protocol, args.canary_percent, args.runtime) == (
        defaults.IMAGE, defaults.CPUS, defaults.GPUS, defaults.MEMORY, defaults.PROTOCOL, defaults.CANARY_PERCENT, "own")
    assert (kserve.Target(), kserve.IMAGE) == (kserve.Target(defaults.CPUS, defaults.GPUS, defaults.MEMORY), defaults.IMAGE)


@needs_kserve
def test_the_runtimes_and_services_validate_against_kserves_crds(own, registry, project, tmp_path):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed here (requirements.txt)")
    for name, document in documents(own).items():
        assert schema.problems(document, CRDS[document["kind"]]) == [], name
    broken = documents(own)["servingruntime.yaml"]
    broken["spec"]["protocolVersion"] = ["v1"]  # a typo
    assert any("protocolVersion" in p for p in schema.problems(broken, CRDS["ServingRuntime"]))


class _Fake(http.server.BaseHTTPRequestHandler):
    routes: typing.ClassVar[dict] = {}

    def do_GET(self):
        status, body = self.routes.get(self.path, (404, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _serve(routes):
    handler = type("Fake", (_Fake,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ready(ports):
    script = runtime.container("x", ports)["readinessProbe"]["exec"]["command"][2]
    return subprocess.run([str(ROOT / ".venv" / "bin" / "python3"), "-c", script], capture_output=True, timeout=30,
                          check=False)


def test_readiness_needs_the_inference_port_and_every_worker():
    from marforge.serve.process import free_ports

    workers = {"/models": (200, {"models": [{"modelName": "fashion"}]}),
               "/models/fashion/all": (200, [{"workers": [{"status": "READY"}, {"status": "READY"}]}])}
    management = _serve(workers)
    [closed] = free_ports(1)
    try:  # the stock runtime's lie: management says READY while the routed port refuses connections
        assert _ready({"inference": closed, "management": management.server_port}).returncode != 0
        inference = _serve({"/ping": (200, {"status": "Healthy"})})
        assert _ready({"inference": inference.server_port, "management": management.server_port}).returncode == 0
        workers["/models/fashion/all"] = (200, [{"workers": [{"status": "READY"}, {"status": "UNLOADING"}]}])
        assert _ready({"inference": inference.server_port, "management": management.server_port}).returncode != 0
        workers["/models"] = (200, {"models": []})
        assert _ready({"inference": inference.server_port, "management": management.server_port}).returncode != 0
        unhealthy = _serve({"/ping": (500, {"status": "Unhealthy"})})
        workers["/models"] = (200, {"models": [{"modelName": "fashion"}]})
        workers["/models/fashion/all"] = (200, [{"workers": [{"status": "READY"}]}])
        assert _ready({"inference": unhealthy.server_port, "management": management.server_port}).returncode != 0
    finally:
        management.shutdown()

