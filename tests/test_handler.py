"""The image-classifier handler, loaded by TorchServe's own model loader from a staged model dir.

No server and no archiver: requests go through `Service.predict` with a real Context, so
per-request status codes are what a worker would send to the frontend.
"""

import base64
import json

import pytest
import torch
from conftest import stage_model_dir

from marforge.archiving import verify
from marforge.archiving.worker import LoadedArchive
from marforge.tasks import classification as classification_task


@pytest.fixture(scope="module", params=["fashion-1.0", "fashion-2.0", "digits-1.0"])
def loaded(request, registry, tmp_path_factory):
    mv = registry.by_key(request.param)
    with LoadedArchive(stage_model_dir(mv, tmp_path_factory.mktemp(mv.key))) as handler:
        yield mv, handler


def test_samples_get_the_true_label_with_model_and_version(loaded):
    mv, handler = loaded
    samples = verify.sample_files(mv)
    answers = handler.predict([{"body": path.read_bytes()} for path, _ in samples])
    assert [a.status for a in answers] == [200] * len(samples)
    for (path, label), answer in zip(samples, answers):
        body = answer.json()
        assert (body["model"], body["version"]) == (mv.name, mv.version)
        assert body["predictions"][0]["label"] == label, path.name
        assert len(body["predictions"]) == mv.handler["top_k"]
        assert answer.content_type == "application/json"


def test_answers_are_compact_json_encoded_by_the_handler(loaded):
    mv, handler = loaded
    (path, _), *_ = verify.sample_files(mv)
    good, bad = handler.predict([{"body": path.read_bytes()}, {"body": b"not an image"}])
    for answer in (good, bad):  # TorchServe would have encoded a dict with indent=2 (slow, multi-line)
        assert b"\n" not in answer.body and answer.body.startswith(b'{"')
        assert answer.content_type == "application/json"
    assert bad.status == 400 and bad.json()["type"] == "InvalidImage"


def test_answers_match_the_source_model(loaded):
    mv, handler = loaded
    paths = [path for path, _ in verify.sample_files(mv)]
    expected = classification_task.reference(mv, handler.handler.config, paths)
    for probs, answer in zip(expected, handler.predict([{"body": p.read_bytes()} for p in paths])):
        for p in answer.json()["predictions"]:
            assert p["probability"] == pytest.approx(float(probs[p["index"]]), abs=1e-5)
        assert answer.json()["predictions"][0]["index"] == int(torch.argmax(probs))


def test_one_bad_request_fails_alone_in_its_batch(loaded):
    mv, handler = loaded
    (good_path, label), *_ = verify.sample_files(mv)
    good = good_path.read_bytes()
    batch = [{"body": good}, {"body": b""}, {"body": {"data": base64.b64encode(good).decode()}},
             {"body": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, {"data": good}]
    answers = handler.predict(batch)
    assert [a.status for a in answers] == [200, 400, 200, 400, 200]
    assert answers[1].json()["type"] == "EmptyInput"
    assert answers[3].json()["type"] == "InvalidImage"
    assert answers[3].json()["model"] == mv.name
    alone = handler.predict([{"body": good}])[0].json()["predictions"]
    for idx in (0, 2, 4):  # the same answer as alone, up to float rounding between batch sizes
        batched = answers[idx].json()["predictions"]
        assert [p["label"] for p in batched] == [p["label"] for p in alone] and batched[0]["label"] == label
        assert [p["probability"] for p in batched] == pytest.approx([p["probability"] for p in alone], abs=1e-6)


def test_an_all_bad_batch_leaves_the_worker_serving(loaded):
    mv, handler = loaded
    answers = handler.predict([{"body": b"not an image"}, {"body": b""}])
    assert [a.status for a in answers] == [400, 400]
    (path, label), *_ = verify.sample_files(mv)
    assert handler.predict([{"body": path.read_bytes()}])[0].json()["predictions"][0]["label"] == label


def test_torchserves_per_batch_log_line_is_dropped_from_the_workers_output_only(loaded, capsys):
    """A worker logs through a root StreamHandler on stdout (logging.basicConfig in TorchServe's
    model_service_worker.py): the handler filters that handler, and nothing in a process without one."""
    import logging
    import sys

    import image_handler

    root = logging.getLogger()
    assert image_handler.drop_per_batch_line not in root.filters  # loading the handler here changed nothing
    assert not any(image_handler.drop_per_batch_line in h.filters for h in root.handlers)
    worker_output = logging.StreamHandler(sys.stdout)
    root.addHandler(worker_output)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        image_handler.quiet_worker_log()
        image_handler.quiet_worker_log()  # idempotent: one filter, however many workers' handlers load
        assert worker_output.filters == [image_handler.drop_per_batch_line]
        logging.info("Backend received inference at: %d", 1795471046)
        logging.info("a worker line that matters: %s", "kept")
    finally:
        root.removeHandler(worker_output)
        root.setLevel(level)
    assert capsys.readouterr().out == "a worker line that matters: kept\n"


def test_missing_handler_section_fails_loading_with_a_clear_error(registry, tmp_path):
    model_dir = stage_model_dir(registry.by_key("digits-1.0"), tmp_path)
    (model_dir / "model-config.yaml").write_text("minWorkers: 1\n")
    with pytest.raises(ValueError, match="needs a 'handler:' section"), LoadedArchive(model_dir):
        pass


def test_a_worker_warms_up_on_every_batch_size_before_it_is_ready(registry, tmp_path, caplog):
    """Loading runs every batch size 1..batch_size through the model (reported in the worker's log),
    unless the handler section says warm_up: false; the shapes are those a batch of images gets."""
    import logging

    mv = registry.get("fashion", "2.0")
    with caplog.at_level(logging.INFO):
        with LoadedArchive(stage_model_dir(mv, tmp_path / "on"), batch_size=4):
            pass
        assert [r.getMessage()[:35] for r in caplog.records if "warmed up" in r.getMessage()] == [
            "warmed up on batch sizes 1 to 4 in "]
        caplog.clear()
        with LoadedArchive(stage_model_dir(mv, tmp_path / "off", {"warm_up": False}), batch_size=4) as loaded:
            assert not [r for r in caplog.records if "warmed up" in r.getMessage()]
            seen, answered = [], []
            loaded.handler.model.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
            encode = loaded.handler.postprocess
            loaded.handler.postprocess = lambda data: answered.append(encode(data)) or answered[-1]
            loaded.handler._warm_up(3)
    assert seen == [(1, 1, 28, 28), (2, 1, 28, 28), (3, 1, 28, 28)]
    # the whole request path: encoded images decoded, and every answer made as a request's is
    assert [len(batch) for batch in answered] == [1, 2, 3]
    assert all(json.loads(a)["version"] == "2.0" and "label" in json.loads(a)["predictions"][0]
               for batch in answered for a in batch), answered
