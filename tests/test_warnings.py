"""pytest.ini names the deprecations it accepts; DeprecationWarnings of marforge and of the shipped
handlers are errors."""

import configparser
import re
import warnings

import pytest
from conftest import ROOT


def filters():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "pytest.ini")
    return [line.strip() for line in parser["pytest"]["filterwarnings"].splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_no_deprecation_is_ignored_wholesale():
    assert not [f for f in filters() if f.startswith("ignore") and f.split(":")[1] == ""]


def test_the_error_filter_names_every_shipped_handler_module():
    [line] = [f for f in filters() if f.startswith("error::DeprecationWarning:(")]
    named = set(re.fullmatch(r"error::DeprecationWarning:\((.*)\)\$", line).group(1).split("|"))
    assert named == {p.stem for p in (ROOT / "handlers").glob("*.py")}


def test_a_deprecation_raised_in_marforge_code_fails_the_test():
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "marforge/x.py", 1, module="marforge.archiving.x")
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "image_io.py", 1, module="image_io")
    with warnings.catch_warnings(record=True) as caught:  # third-party code's is shown, not raised
        warnings.warn_explicit("old", DeprecationWarning, "other.py", 1, module="some_library")
    assert [str(w.message) for w in caught] == ["old"]
