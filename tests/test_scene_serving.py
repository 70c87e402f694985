"""A detector and a segmenter served by a real TorchServe through marforge's one handler: images of
several sizes and orientations in one request and across a server-side batch, each answered as
torchvision's interface gives it for that image alone (marforge/tasks/ run the source model
directly), bad input per request, and a clear 4xx for explanations, which these tasks do not have."""

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import task_of

from marforge import shipped, tasks
from marforge.archiving.archive import handler_section
from marforge.archiving.weights import read_metadata
from marforge.errors import ApiError

pytestmark = pytest.mark.integration


def scene_versions(registry, task):
    return [mv for mv in registry.all_versions() if task_of(mv) == task]


def config_of(mv):
    return shipped.contract().HandlerConfig.from_dict(handler_section(mv, read_metadata(mv)))


@pytest.fixture(scope="module", params=["detection", "segmentation"])
def scene_model(request, registry):
    found = scene_versions(registry, request.param)
    if not found:
        pytest.skip(f"no {request.param} version in the registry")
    return found[0]


def test_one_request_of_images_of_several_sizes_is_answered_image_by_image(live_server, scene_model, samples):
    mv, config = scene_model, config_of(scene_model)
    paths = [path for path, _ in samples[mv.name]]
    body = {"instances": [{"data": base64.b64encode(p.read_bytes()).decode()} for p in paths]}
    answer = live_server.client.predict(mv.name, json.dumps(body).encode(), version=mv.version,
                                        content_type="application/json")
    task = tasks.of(config.task)
    agreement, _ = task.compare(mv.key, "eager", config, paths, answer["predictions"], task.reference(mv, config, paths))
    assert agreement == 1.0 and len(answer["predictions"]) == len(paths)
    sizes = {tuple(shipped.module("image_io").decode_image(p.read_bytes(), config).size) for p in paths}
    assert len(sizes) >= 3  # square, landscape and portrait
    if config.task == "segmentation":
        for path, one in zip(paths, answer["predictions"]):
            size = shipped.module("image_io").decode_image(path.read_bytes(), config).size
            assert (one["mask"]["width"], one["mask"]["height"]) == size
    else:
        for path, one in zip(paths, answer["predictions"]):
            width, height = shipped.module("image_io").decode_image(path.read_bytes(), config).size
            assert one["detections"], path.name
            for d in one["detections"]:
                x1, y1, x2, y2 = d["box"]
                # inside the image as sent (torchvision clips a box to it, which can leave one of no width at an edge)
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height and d["score"] >= config.score_threshold


def test_concurrent_requests_of_mixed_sizes_and_bad_ones_are_answered_each_on_its_own(live_server, scene_model, samples):
    mv, config = scene_model, config_of(scene_model)
    paths = [path for path, _ in samples[mv.name]]
    task = tasks.of(config.task)

    def send(i):
        if i % 4 == 3:
            with pytest.raises(ApiError) as caught:
                live_server.client.predict(mv.name, b"not an image", version=mv.version)
            return caught.value.status
        return live_server.client.predict(mv.name, paths[i % len(paths)].read_bytes(), version=mv.version)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(24)))
    assert [a for i, a in enumerate(answers) if i % 4 == 3] == [400] * 6
    good = [(paths[i % len(paths)], a) for i, a in enumerate(answers) if i % 4 != 3]
    agreement, _ = task.compare(mv.key, "eager", config, [p for p, _ in good], [a for _, a in good],
                                task.reference(mv, config, [p for p, _ in good]))
    assert agreement == 1.0


def test_explanations_are_refused_with_a_4xx_that_says_where_to_go(live_server, scene_model, samples):
    path, _ = samples[scene_model.name][0]
    with pytest.raises(ApiError) as caught:
        live_server.client.explain(scene_model.name, path.read_bytes(), version=scene_model.version)
    body = json.loads(caught.value.body)
    assert caught.value.status == 400 and body["type"] == "ExplanationUnavailable"
    assert body["message"] == f"a {task_of(scene_model)} model has no explanations: send the image to /predictions instead"
    assert live_server.client.predict(scene_model.name, path.read_bytes(), version=scene_model.version)


def test_status_shows_each_versions_task(live_server, registry):
    from marforge.serve import status

    rows = status.annotate(status.collect(live_server.client), registry)
    assert {r["task"] for r in rows if r["model"] == "fashiondet"} == {"detection"}
    assert {r["task"] for r in rows if r["model"] == "fashion"} == {"multiclass"}
    table = status.format_table(rows).splitlines()
    assert table[0].split()[:3] == ["MODEL", "VERSION", "TASK"]
    assert any(line.split()[:3] == ["fashiondet", "1.0", "detection"] for line in table)
