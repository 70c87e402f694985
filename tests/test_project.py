"""Where a project's paths come from: flag > environment > models.toml [paths] > default, anchored at
the project root (not the current folder)."""

from pathlib import Path

import pytest

from marforge.errors import RegistryError
from marforge.project import Project

REGISTRY = '[models.a]\ndefault_version = "1.0"\n[models.a.versions."1.0"]\nmodel_def = "m.py"\n'


@pytest.fixture
def root(tmp_path):
    (tmp_path / "models.toml").write_text(REGISTRY)
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    return tmp_path


def test_defaults_are_anchored_at_the_project_root_from_any_folder_inside_it(root):
    project = Project.locate(environ={}, cwd=root / "sub" / "deeper")
    assert project.root == root and project.registry_file == root / "models.toml"
    assert (project.model_store, project.run_dir, project.config, project.bench_results) == (
        root / "model_store", root / ".run", root / "config.properties", root / "bench-results")
    assert (project.weights_dir, project.samples_dir, project.eval_root) == (root / "weights", root / "samples", root / "eval")
    assert project.registry.get("a").weights == root / "weights" / "a-1.0.pt"


def test_models_toml_then_environment_then_flags_win(root, tmp_path_factory):
    (root / "models.toml").write_text('[paths]\nmodel_store = "built"\nrun_dir = "state"\n' + REGISTRY)
    project = Project.locate(environ={}, cwd=root / "sub")
    assert (project.model_store, project.run_dir) == (root / "built", root / "state")
    env = {"MARFORGE_MODEL_STORE": "from-env", "MARFORGE_RUN_DIR": "/abs/run"}
    project = Project.locate(environ=env, cwd=root / "sub")
    assert (project.model_store, project.run_dir) == (root / "from-env", Path("/abs/run"))
    project = Project.locate(environ=env, cwd=root / "sub", model_store="flag-store")
    assert project.model_store == root / "sub" / "flag-store"  # a flag means what the shell means: from here
    assert project.run_dir == Path("/abs/run")


def test_the_registry_comes_from_a_flag_or_the_environment(root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert Project.locate(registry=root / "models.toml", environ={}, cwd=elsewhere).root == root
    assert Project.locate(environ={"MARFORGE_REGISTRY": str(root / "models.toml")}, cwd=elsewhere).root == root


def test_no_registry_anywhere_says_what_to_do(tmp_path):
    with pytest.raises(RegistryError) as caught:
        Project.locate(environ={}, cwd=tmp_path)
    assert caught.value.message == f"no models.toml in {tmp_path} or any folder above it"
    assert caught.value.hint == "run marforge inside a project, or pass --registry path/to/models.toml"


def test_unknown_paths_keys_and_broken_toml_are_errors(root):
    (root / "models.toml").write_text('[paths]\nmodel_stor = "x"\n' + REGISTRY)
    with pytest.raises(RegistryError) as caught:
        Project.at(root / "models.toml")
    assert caught.value.message == (f"{root / 'models.toml'}: unknown key(s) model_stor in [paths] "
                                    "(allowed: bench_results, config, model_store, run_dir)")
    (root / "models.toml").write_text("[models\n")
    with pytest.raises(RegistryError, match=r"models.toml: not valid TOML: "):
        Project.at(root / "models.toml")


def test_relative_names_paths_inside_the_project(root):
    project = Project.at(root / "models.toml")
    assert project.relative(root / "weights" / "a-1.0.pt") == "weights/a-1.0.pt"
    assert project.relative("/etc/hosts") == "/etc/hosts"


def test_an_unknown_key_names_the_known_ones_and_the_next_step():
    from conftest import ROOT

    registry = Project.at(ROOT / "models.toml").registry
    with pytest.raises(RegistryError) as caught:
        registry.by_key("nope-1.0")
    assert "no version is named 'nope-1.0' (known: fashion-1.0, fashion-2.0" in caught.value.message
    assert caught.value.hint == "use one of those keys (<name>-<version>), or add the version to models.toml"
