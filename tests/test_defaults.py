"""Every default is written once: the code owns it (marforge/registry.py SERVING_DEFAULTS and
ROLLOUT_DEFAULTS, handlers/contract.py HandlerConfig), models.toml only overrides it."""

import tomllib
from pathlib import Path

from marforge import registry as reg
from marforge import shipped
from marforge.project import Project

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = '[models.a]\ndefault_version = "1.0"\n[models.a.versions."1.0"]\nmodel_def = "m.py"\n'


def code_defaults():
    return {"serving": reg.SERVING_DEFAULTS, "handler": reg.handler_defaults(), "rollout": reg.ROLLOUT_DEFAULTS}


def tables(data):
    """(where, section, table) for every serving/handler/rollout table of models.toml, per-device ones too."""
    layers = [("", data)] + [(f"models.{n}", m) for n, m in data.get("models", {}).items()]
    layers += [(f"models.{n}.versions.{v}", t) for n, m in data.get("models", {}).items()
               for v, t in m.get("versions", {}).items()]
    for where, layer in layers:
        for section in code_defaults():
            table = layer.get(section, {})
            yield where, section, {k: v for k, v in table.items() if not isinstance(v, dict)}
            for device, sub in ((k, v) for k, v in table.items() if isinstance(v, dict)):
                yield f"{where}.{device}", section, sub


def test_models_toml_never_repeats_a_default_the_code_owns():
    data = tomllib.loads((ROOT / "models.toml").read_text())
    repeats = [f"{where}[{section}].{key} = {value!r}" for where, section, table in tables(data)
               for key, value in table.items() if code_defaults()[section].get(key, object()) == value]
    assert repeats == [], f"written in the code already, remove from models.toml: {repeats}"


def test_the_handler_defaults_are_the_contracts_own():
    config = shipped.contract().HandlerConfig
    assert reg.handler_defaults() == {k: config.__dataclass_fields__[k].default for k in reg.HANDLER_DEFAULTED}
    assert set(reg.handler_defaults()) <= shipped.contract().option_keys()


def test_a_registry_with_no_tables_gets_every_default(tmp_path):
    (tmp_path / "models.toml").write_text(REGISTRY)
    model = Project.at(tmp_path / "models.toml").registry.models["a"]
    mv = model.versions["1.0"]
    assert {k: mv.serving[k] for k in ("batch_size", "max_batch_delay_ms", "response_timeout_s")} == {
        "batch_size": 16, "max_batch_delay_ms": 1, "response_timeout_s": 30}
    assert mv.auto_workers and mv.serving["workers"] >= 1
    assert (mv.handler["top_k"], mv.handler["max_pixels"], mv.handler["min_side"]) == (3, 4096 * 4096, 8)
    assert model.rollout == reg.ROLLOUT_DEFAULTS


def test_the_projects_registry_serves_what_it_served_before():
    registry = Project.at(ROOT / "models.toml").registry
    fashion = registry.get("fashion", "1.0")
    assert (fashion.serving["batch_size"], fashion.serving["max_batch_delay_ms"], fashion.handler["top_k"]) == (16, 1, 3)
    assert registry.models["fashion"].rollout["max_p99_ratio"] == 3.0
    assert registry.models["fashion"].rollout["min_accuracy"] == 0.85


def test_an_archives_handler_section_carries_the_contracts_defaults(tmp_path):
    from marforge.archiving import archive

    (tmp_path / "models.toml").write_text(REGISTRY.replace('model_def = "m.py"', 'model_def = "m.py"\nhandler = { top_k = 5 }'))
    mv = Project.at(tmp_path / "models.toml").registry.get("a")
    metadata = {"preprocess": {"image_size": [8, 8], "color": "grayscale", "mean": [0.5], "std": [0.5]}, "labels": ["x"]}
    section = archive.handler_section(mv, metadata)
    assert (section["top_k"], section["max_pixels"], section["min_side"]) == (5, 4096 * 4096, 8)
    assert mv.handler == {"top_k": 5}


def test_imagenet_statistics_are_written_once_in_the_package():
    written = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "marforge").rglob("*.py"))
               for literal in ("0.485, 0.456, 0.406", "0.229, 0.224, 0.225") if literal in p.read_text()]
    assert written == ["marforge/archiving/presets.py"] * 2
