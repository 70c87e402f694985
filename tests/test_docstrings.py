"""Docstrings that state a fact the code also states (a list of commands, a count of formats, a
return value) say what the code does, and dead code stays removed."""

import re

import pytest
from conftest import ROOT

from marforge import shipped

NUMBERS = {4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


@pytest.mark.parametrize("module", ["build", "serve"])
def test_a_cli_modules_docstring_lists_its_commands(module):
    text = (ROOT / "marforge" / "cli" / f"{module}.py").read_text()
    listed = text.splitlines()[0].split(":", 1)[1].strip(' ."').split(", ")
    defined = re.findall(r'command\("([a-z-]+)"', text)
    assert sorted(listed) == sorted(defined)


def test_variants_docstring_counts_the_contracts_formats():
    from marforge.archiving import variants

    count = NUMBERS[len(shipped.contract().FORMATS)]
    assert f"archived in {count} formats" in variants.__doc__


def test_sniff_returns_the_kind_its_docstring_names(tmp_path):
    import torch

    from marforge.archiving import checkpoints

    torch.save({"w": torch.zeros(1)}, tmp_path / "c.pt")
    assert checkpoints.sniff(tmp_path / "c.pt") == "zip"
    assert '"zip", "legacy" or "safetensors"' in checkpoints.sniff.__doc__ and "(kind, detail)" not in checkpoints.sniff.__doc__


def test_verify_docstring_names_every_compiled_format():
    from marforge.archiving import variants, verify

    assert all(f"`{fmt}`" in verify.__doc__ for fmt in variants.COMPILED)


def test_dead_code_stays_removed():
    from marforge.serve.rollout import RolloutReport

    assert not hasattr(RolloutReport, "to_json")
