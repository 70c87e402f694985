"""KServe v1 for a version served by the user's own handler (issue 19), integration tests.

debsections 1.0 (handlers/debsections_handler.py, archived as written) is bundled by `kserve.bundle`
as `make kserve` bundles it. Its pod is started as marforge's own ServingRuntime's container says
(deploy/pod.py), and reached through 127.0.0.2 as another pod reaches it. A v1 body,
{"instances": [...]}, reaches the handler as it is sent (no envelope: the bundle turns configuration
from the environment off). The answers are compared with the version's expected answers
(samples/debsections/expected-1.0.json). v2 tensors are refused when the bundle is written.
With MARFORGE_KSERVE_WRAPPER and MARFORGE_KSERVE_PYTHON set, the same v1 body goes through
pytorch/serve's kserve_wrapper, the proxy of KServe's stock runtime, in front of a stock bundle.
"""

import os
from pathlib import Path

import pytest
import requests
from conftest import ROOT

from marforge.archiving import expected
from marforge.deploy import kserve
from marforge.deploy import pod as deploy_pod
from marforge.errors import RegistryError
from marforge.serve import process

NAME, VERSION = "debsections", "1.0"
WRAPPER = {"folder": os.environ.get("MARFORGE_KSERVE_WRAPPER"), "python": os.environ.get("MARFORGE_KSERVE_PYTHON")}


@pytest.fixture(scope="module")
def project(store):
    from marforge.project import Project

    return Project.at(ROOT / "models.toml", model_store=store)


@pytest.fixture(scope="module")
def mv(registry):
    return registry.get(NAME, VERSION)


def texts_and_answers(mv):
    """([sample text], [its expected answer]) in the samples' order."""
    names = sorted(p.name for p in Path(mv.samples).glob("*.txt"))
    answers = expected.read(mv.samples, VERSION, names)
    return [(Path(mv.samples) / n).read_text() for n in names], [answers[n] for n in names]


def assert_v1_serves_the_expected_answers(base, mv):
    texts, answers = texts_and_answers(mv)
    body = {"instances": [texts[0], *({"text": t} for t in texts[1:])]}  # both forms an instance may take
    got = requests.post(f"{base}/v1/models/{NAME}:predict", json=body, timeout=60)
    assert got.status_code == 200, got.text
    predictions = got.json()["predictions"]
    assert len(predictions) == len(answers)
    expected.check({str(i): a for i, a in enumerate(answers)}, {str(i): p for i, p in enumerate(predictions)},
                   expected.comparison_of(mv))


@pytest.fixture(scope="module")
def own_pod(project, mv, tmp_path_factory):
    folder = kserve.bundle(project, mv, tmp_path_factory.mktemp("own-handler-pod"), "s3://b/m", kserve.Target(cpus=2),
                           protocol="v1", ports=process.free_listeners())
    with deploy_pod.started(folder) as running:
        running.wait_ready(240)
        yield running


@pytest.mark.integration
def test_v1_instances_reach_the_own_handler_and_come_back_as_its_answers(own_pod, mv):
    base = f"http://{own_pod.address}:{own_pod.ports['inference']}"
    assert_v1_serves_the_expected_answers(base, mv)


@pytest.mark.integration
def test_a_bad_instance_is_the_handlers_400_naming_it_and_the_pod_keeps_serving(own_pod, mv):
    base = f"http://{own_pod.address}:{own_pod.ports['inference']}"
    bad = requests.post(f"{base}/v1/models/{NAME}:predict", json={"instances": ["a Perl module", {"txt": "x"}]}, timeout=60)
    assert bad.status_code == 400
    assert bad.json() == {"error": 'instance 1: a JSON body needs a "text" string: {"text": "..."}', "code": 400}
    tensors = {"inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [1], "data": ["a Perl module"]}]}
    v2 = requests.post(f"{base}/v2/models/{NAME}/infer", json=tensors, timeout=60)  # the handler reads no v2
    assert v2.status_code == 400 and v2.json()["error"] == 'a JSON body needs a "text" string: {"text": "..."}'
    assert_v1_serves_the_expected_answers(base, mv)
    own_pod.check_alive()


def test_a_v2_bundle_is_refused_for_the_own_handler_saying_what_v1_sends_it(project, mv, tmp_path):
    with pytest.raises(RegistryError) as caught:
        kserve.bundle(project, mv, tmp_path, "s3://b/m", protocol="v2")
    assert caught.value.message.startswith(f"{NAME}-{VERSION} is served by its own handler (debsections_handler.py): "
                                           "KServe's v2 protocol sends tensors")
    assert caught.value.hint.startswith("make kserve PROTOCOL=v1") and '{"instances": [...]}' in caught.value.hint
    assert not (tmp_path / mv.key).exists()


@pytest.mark.integration
@pytest.mark.skipif(not all(WRAPPER.values()), reason="set MARFORGE_KSERVE_WRAPPER (pytorch/serve's kserve_wrapper folder, "
                    "with its inference_pb2 stubs) and MARFORGE_KSERVE_PYTHON (a venv with kserve[storage]==0.13.0)")
def test_kserve_wrappers_v1_reaches_the_own_handler_in_front_of_the_stock_runtime(project, mv, tmp_path):
    wrapper = deploy_pod.Wrapper(Path(WRAPPER["folder"]), Path(WRAPPER["python"]))
    folder = deploy_pod.local_bundle(project, mv, tmp_path, "stock")
    with deploy_pod.started(folder, "stock", wrapper) as running:
        running.wait_ready(300)
        assert_v1_serves_the_expected_answers(running.routes["kserve_wrapper"], mv)
        bad = requests.post(f"{running.routes['kserve_wrapper']}/v1/models/{NAME}:predict",
                            json={"instances": [" "]}, timeout=60)
        # the proxy's error, not the handler's: its 500, with the handler's message and TorchServe's 400 inside
        assert bad.status_code == 500 and "instance 0: the text is empty" in bad.json()["error"]
        assert "400" in bad.json()["error"]
        assert_v1_serves_the_expected_answers(running.routes["kserve_wrapper"], mv)
