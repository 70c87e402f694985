"""A version's requirements (marforge/archiving/requirements.py), checked against this very venv: the
installed versions are read with importlib.metadata, so the tests hold whatever is pinned."""

from importlib import metadata

import pytest

from marforge.archiving import requirements
from marforge.errors import ArchiveError, RegistryError

TORCH = metadata.version("torch")
ABSENT = "marforge-surely-absent-package-7f3a9c"  # a name no index holds


def file_with(tmp_path, text, name="requirements.txt"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_installed_requirements_are_met_whatever_the_spelling_of_their_name(tmp_path):
    path = file_with(tmp_path, f"torch=={TORCH}\nPyYAML>=1.0\nTorch >= 1.0, < 1000\n")
    assert requirements.unmet(path) == []
    requirements.check(path, "mine-1.0")


def test_an_unsatisfied_specifier_names_the_installed_version(tmp_path):
    path = file_with(tmp_path, "torch<1.0\ntorch[nosuchextra]>=1.0,<2.0\n")
    assert requirements.unmet(path) == [f"torch<1.0: installed {TORCH} does not satisfy <1.0",
                                        f"torch[nosuchextra]<2.0,>=1.0: installed {TORCH} does not satisfy <2.0,>=1.0"]


def test_a_package_that_is_not_installed_is_named(tmp_path):
    path = file_with(tmp_path, f"{ABSENT}\n{ABSENT}-two>=2.0\n")
    assert requirements.unmet(path) == [f"{ABSENT}: not installed", f"{ABSENT}-two>=2.0: not installed"]


def test_a_marker_that_does_not_hold_here_excludes_its_line(tmp_path):
    path = file_with(tmp_path, f'{ABSENT}==1.0; python_version < "3.0"\n{ABSENT}-here; python_version >= "3.0"\n'
                               f'{ABSENT}-elsewhere; sys_platform == "no-such-platform"\n')
    assert requirements.unmet(path) == [f"{ABSENT}-here: not installed"]


def test_blank_lines_and_comments_are_ignored_as_pip_ignores_them(tmp_path):
    path = file_with(tmp_path, f"# a comment\n\n   \n{ABSENT}==1.0  # why we need it\n\t# indented comment\ntorch<1.0 #tight\n")
    assert requirements.unmet(path) == [f"{ABSENT}==1.0: not installed", f"torch<1.0: installed {TORCH} does not satisfy <1.0"]


def test_a_trailing_backslash_continues_a_requirement_on_the_next_line(tmp_path):
    path = file_with(tmp_path, f"{ABSENT}\\\n>=2.0\nbad line!\n")
    with pytest.raises(RegistryError, match=r"requirements.txt:3: not a requirement: 'bad line!'"):
        requirements.unmet(path)
    path.write_text(f"{ABSENT}\\\n>=2.0\n")
    assert requirements.unmet(path) == [f"{ABSENT}>=2.0: not installed"]


def test_included_files_are_read_relative_to_the_file_that_includes_them(tmp_path):
    file_with(tmp_path, f"-r ../shared/base.txt\n{ABSENT}-sub\n", "deep/sub.txt")
    file_with(tmp_path, f"{ABSENT}-base  # from the shared file\n", "shared/base.txt")
    file_with(tmp_path, f"{ABSENT}-glued\n", "deep/glued.txt")
    file_with(tmp_path, f"{ABSENT}-long\n", "deep/long.txt")
    path = file_with(tmp_path, f"{ABSENT}-top\n-r sub.txt\n-rglued.txt\n--requirement=long.txt\n", "deep/requirements.txt")
    assert requirements.unmet(path) == [f"{ABSENT}-{which}: not installed" for which in ("top", "base", "sub", "glued", "long")]


def test_a_line_that_does_not_parse_is_named_by_file_and_number(tmp_path):
    path = file_with(tmp_path, f"# fine\n{ABSENT}\ntorch = 2.0\n")
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(path)
    assert caught.value.message.startswith(f"{path}:3: not a requirement: 'torch = 2.0' (")
    assert caught.value.hint == f"fix line 3 of {path}"


def test_a_bad_line_in_an_included_file_names_that_file(tmp_path):
    other = file_with(tmp_path, "ok-package\n\nnot valid!\n", "other.txt")
    path = file_with(tmp_path, "-r other.txt\n")
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(path)
    assert caught.value.message.startswith(f"{other}:3: not a requirement: 'not valid!' (")


@pytest.mark.parametrize("line", ["--index-url https://example.org/simple", "-e .", "-c constraints.txt",
                                  f"{ABSENT}==1.0 --hash=sha256:00", "--no-binary :all:"])
def test_options_other_than_an_include_are_refused(tmp_path, line):
    path = file_with(tmp_path, f"torch\n{line}\n")
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(path)
    assert caught.value.message == (f"{path}:2: {line!r}: options other than -r are not supported (the serving environment "
                                    "is installed ahead, so marforge only checks what it holds)")
    assert caught.value.hint == f"fix line 2 of {path}"


def test_a_missing_file_or_include_and_an_include_cycle_are_refused(tmp_path):
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(tmp_path / "none.txt")
    assert caught.value.message == f"{tmp_path}/none.txt: cannot read the requirements file (No such file or directory)"
    path = file_with(tmp_path, "torch\n-r gone.txt\n")
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(path)
    assert caught.value.message == f"{path}:2: includes {tmp_path}/gone.txt, which does not exist"
    file_with(tmp_path, "-r requirements.txt\n", "b.txt")
    path.write_text("-r b.txt\n")
    with pytest.raises(RegistryError) as caught:
        requirements.unmet(path)
    assert caught.value.message == f"{path}: included by itself ({path} -> {tmp_path}/b.txt -> {path})"


def test_check_names_the_version_the_file_and_every_unmet_requirement(tmp_path):
    path = file_with(tmp_path, f"torch<1.0\n{ABSENT}\n")
    with pytest.raises(ArchiveError) as caught:
        requirements.check(path, "mine-2.0")
    assert caught.value.message == (f"mine-2.0: requirements in {path} are not met by the serving environment: "
                                    f"torch<1.0: installed {TORCH} does not satisfy <1.0; {ABSENT}: not installed")
    assert caught.value.hint == (f"install them into the serving environment: .venv/bin/pip install -r {path}, and add them to "
                                 "requirements-serve.txt so that the KServe image gets them too "
                                 "(TorchServe will not install them at model load)")
