"""One way to import shipped code isolated (shipped.isolated): marforge's own copy of handlers/ and
an archive a LoadedArchive holds open both leave sys.path and sys.modules as they found them."""

import importlib
import inspect
import sys
import types

from marforge import shipped


def test_isolated_imports_the_folders_module_and_puts_everything_back(tmp_path):
    (tmp_path / "mf_probe.py").write_text("WHERE = 'folder'\nimport mf_helper\n")
    (tmp_path / "mf_helper.py").write_text("")
    theirs = types.ModuleType("mf_probe")
    theirs.WHERE = "elsewhere"
    sys.modules["mf_probe"] = theirs
    path_before = list(sys.path)
    try:
        with shipped.isolated(tmp_path):
            assert importlib.import_module("mf_probe").WHERE == "folder"
            assert "mf_helper" in sys.modules
        assert sys.modules["mf_probe"] is theirs and "mf_helper" not in sys.modules
        assert sys.path == path_before
    finally:
        sys.modules.pop("mf_probe", None)


def test_marforges_copy_of_the_contract_is_not_left_in_sys_modules():
    contract = shipped.contract()
    assert contract.__file__.startswith(str(shipped.HANDLERS_DIR)) and sys.modules.get("contract") is not contract
    assert shipped.module("contract") is contract  # loaded once


def test_the_worker_uses_the_same_isolation():
    from marforge.archiving import worker

    source = inspect.getsource(worker)
    assert "shipped.isolated" in source and "sys.modules" not in source.replace("sys.modules as it found them", "")
