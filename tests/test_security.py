"""Token expiry and rotation on a real TorchServe whose keys expire after 3 seconds."""

import json
import time

import pytest
import requests
from conftest import ROOT, project_at, start_server

from marforge.serve import process
from marforge.serve.rundir import RunDir

pytestmark = pytest.mark.integration
EXPIRY_MIN = 0.05  # 3 s


@pytest.fixture(scope="module")
def short_lived(registry, store, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "config.properties"
    config.write_text((ROOT / "config.properties").read_text() + f"\ntoken_expiration_min={EXPIRY_MIN}\n")
    run_dir = tmp_path_factory.mktemp("security_run")
    started = start_server(project_at(store, run_dir, config=config), versions=[registry.get("digits", "1.0")])
    yield started
    process.stop(RunDir(run_dir))


def raw_predict(srv, key, body):
    return requests.post(f"{srv.client.endpoints.inference}/predictions/digits", data=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})


def test_expired_keys_are_renewed_by_the_client(short_lived, samples):
    path, label = samples["digits"][0]
    assert short_lived.client.refresh_key("inference")  # start from a fresh key
    old_key = short_lived.client.key("inference")
    assert raw_predict(short_lived, old_key, path.read_bytes()).status_code == 200
    time.sleep(EXPIRY_MIN * 60 + 1)
    expired = raw_predict(short_lived, old_key, path.read_bytes())
    assert expired.status_code == 400 and "InvalidKeyException" in expired.text
    assert short_lived.client.predict("digits", path.read_bytes())["predictions"][0]["label"] == label
    assert short_lived.client.key("inference") != old_key
    assert short_lived.client.describe("digits")  # the management key had expired too


def test_a_rotated_key_replaces_the_old_one(short_lived, samples):
    path, _ = samples["digits"][0]
    old_key = short_lived.client.key("inference")
    assert short_lived.client.refresh_key("inference")
    assert short_lived.client.key("inference") != old_key
    assert raw_predict(short_lived, old_key, path.read_bytes()).status_code == 400
    assert short_lived.client.predict("digits", path.read_bytes())["model"] == "digits"


def test_keys_are_not_in_the_logs_we_write(short_lived):
    run_dir = short_lived.run_dir
    keys = json.loads(run_dir.key_file.read_text())
    secrets = [keys[k]["key"] for k in ("inference", "management", "API")]
    ours = [run_dir.config, run_dir.endpoints_file, run_dir.state_file, run_dir.log("launcher")]
    for path in ours:
        text = path.read_text()
        assert not any(secret in text for secret in secrets), path
