"""What only a GPU machine can show: CUDA workers, GPU JPEG decoding, half precision and CUDA
graphs on a real device. Every test here runs where CUDA is present and is skipped, saying so,
where it is not (CI's machines have no GPU); the figures each measures are printed under
"measured" (make test's summary), since the tolerances they bear on are still to be set from them."""

import pytest
import torch
from conftest import ROOT

from marforge.archiving import archive
from marforge.archiving.worker import LoadedArchive

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def answers(mar, paths, gpu_id):
    with LoadedArchive(mar, batch_size=8, gpu_id=gpu_id) as loaded:
        placed = loaded.handler.placement.device
        return placed, [a.json() for a in loaded.predict([{"body": p.read_bytes()} for p in paths])]


def top(answer):
    return [(p["index"], p["probability"]) for p in answer["predictions"]]


@pytest.mark.parametrize("fmt", ["eager", "torchscript", "compile", "cudagraphs"])
def test_a_gpu_worker_answers_as_the_cpu_worker_does(registry, samples, tmp_path, measurements, fmt):
    mv = registry.get("fashion", "2.0")
    mar, _ = archive.build(mv, tmp_path, fmt=fmt)
    paths = [path for path, _ in samples["fashion"]]
    cpu_device, on_cpu = answers(mar, paths, None)
    gpu_device, on_gpu = answers(mar, paths, 0)
    assert (cpu_device.type, gpu_device) == ("cpu", torch.device("cuda:0"))
    worst = max(abs(a[1] - b[1]) for x, y in zip(on_cpu, on_gpu) for a, b in zip(top(x), top(y)))
    measurements[f"GPU worker vs CPU worker, fashion 2.0 {fmt}"] = f"max probability difference {worst:.2e}"
    assert [x["predictions"][0]["index"] for x in on_cpu] == [y["predictions"][0]["index"] for y in on_gpu]
    assert worst <= 1e-3


def test_gpu_jpeg_decoding_answers_as_pillow_does(registry, tmp_path, measurements):
    import io

    from PIL import Image

    mv = registry.get("chexnet", "0.1")
    mar, _ = archive.build(mv, tmp_path)
    jpegs = []
    for path in sorted((ROOT.parent / "shared" / "data" / "chest-xray").glob("*.png")) or sorted(mv.samples.glob("*.png")):
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    results = {}
    for decode in (False, True):
        import zipfile

        import yaml

        staged = tmp_path / f"decode-{decode}"
        with zipfile.ZipFile(mar) as z:
            z.extractall(staged)
        config = yaml.safe_load((staged / "model-config.yaml").read_text())
        config["handler"]["gpu_decode"] = decode
        (staged / "model-config.yaml").write_text(yaml.safe_dump(config))
        with LoadedArchive(staged, gpu_id=0) as loaded:
            results[decode] = [a.json() for a in loaded.predict([{"body": j} for j in jpegs])]
    worst = max(abs(a["probability"] - b["probability"]) for x, y in zip(results[False], results[True])
                for a, b in zip(x["predictions"], y["predictions"]))
    measurements["GPU JPEG decoding vs Pillow, chexnet 0.1 (synthetic weights)"] = f"max probability difference {worst:.2e}"
    assert worst <= 5e-2
