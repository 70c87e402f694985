"""gRPC against the session's real TorchServe (its inference.proto on the gRPC inference port): the
same answers as over HTTP, the same 4xx meaning for bad input, and the token in the metadata."""

import json

import pytest

from marforge.cli import main
from marforge.errors import ApiError
from marforge.serve.grpc_client import GrpcClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grpc(live_server):
    client = GrpcClient(live_server.client.endpoints.grpc, key_file=live_server.run_dir.key_file)
    yield client
    client.close()


def test_grpc_and_http_answer_alike(live_server, grpc, registry, samples):
    for mv in registry.all_versions():
        for path, _ in samples[mv.name]:
            over_grpc = grpc.predict(mv.name, path.read_bytes(), version=mv.version)
            over_http = live_server.client.predict(mv.name, path.read_bytes(), version=mv.version)
            assert over_grpc == over_http, f"{mv.key} {path.name}"


def test_a_bad_image_over_grpc_is_the_same_4xx_as_over_http(live_server, grpc):
    with pytest.raises(ApiError) as over_grpc:
        grpc.predict("fashion", b"definitely not an image", version="2.0")
    with pytest.raises(ApiError) as over_http:
        live_server.client.predict("fashion", b"definitely not an image", version="2.0")
    assert over_grpc.value.status == over_http.value.status == 400
    assert json.loads(over_grpc.value.body) == json.loads(over_http.value.body)
    assert over_grpc.value.url == f"grpc://{live_server.client.endpoints.grpc}/fashion/2.0"


def test_a_wrong_token_is_refused_and_a_missing_model_named(live_server, grpc, tmp_path):
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps({"inference": {"key": "not-the-key"}}))
    stranger = GrpcClient(live_server.client.endpoints.grpc, key_file=wrong)
    try:
        with pytest.raises(ApiError) as caught:
            stranger.predict("fashion", b"x")
        assert caught.value.status == 403 and caught.value.body.startswith("PERMISSION_DENIED: ")
    finally:
        stranger.close()
    with pytest.raises(ApiError) as missing:
        grpc.predict("shoes", b"x")
    assert missing.value.status == 500 and "shoes" in missing.value.body


def test_make_predict_with_protocol_grpc(live_server, samples, capsys):
    path, label = samples["digits"][0]
    assert main(["predict", "digits", str(path), "--protocol", "grpc", "--run-dir", str(live_server.run_dir.path)]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == label
