"""The package's shape: which layer may import which, and modules that stay readable.

    layer 0  errors, files, project, registry, tuned, labelled, shipped, scores, device   (the project and its facts)
    layer 1  archiving, tasks                                      (archives, and what each task checks in one)
    layer 2  serve, train                                          (siblings: neither imports the other)
    layer 3  measure, deploy                                       (siblings too)
    layer 4  cli, __main__
A module imports only from its own layer and those below (lazy imports inside functions count);
handlers/ (shipped inside archives) imports nothing of marforge.
"""

import ast

import pytest
from conftest import ROOT

LAYERS = {"errors": 0, "files": 0, "project": 0, "registry": 0, "labelled": 0, "shipped": 0, "scores": 0, "device": 0, "__init__": 0,
          "registry_text": 0, "export_kinds": 0, "tuned": 0,
          "archiving": 1, "tasks": 1, "serve": 2, "train": 2, "measure": 3, "deploy": 3, "cli": 4, "__main__": 4}
SIBLINGS = ({"serve", "train"}, {"measure", "deploy"})  # the same layer, and independent of each other
MAX_LINES = 300


def part(module):
    """The top-level part of marforge a dotted module name belongs to: marforge.serve.client -> serve."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path, package):
    """Every marforge module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("marforge")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marforge"):
            found |= {f"{node.module}.{alias.name}" if node.module == "marforge" else node.module for alias in node.names}
    return found


def modules():
    for path in sorted((ROOT / "marforge").rglob("*.py")):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        yield path, dotted


@pytest.mark.parametrize("path, dotted", list(modules()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_import_reaches_up_or_sideways(path, dotted):
    mine = part(dotted)
    for imported in imports_of(path, dotted):
        theirs = part(imported)
        allowed = LAYERS[theirs] < LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and {mine, theirs} not in SIBLINGS)
        assert allowed, f"{dotted} (layer {LAYERS[mine]}, {mine}) imports {imported} (layer {LAYERS[theirs]}, {theirs})"


def test_every_part_is_in_a_layer():
    assert {part(dotted) for _, dotted in modules()} == set(LAYERS)


def test_the_shipped_handler_code_imports_nothing_of_marforge():
    for path in (ROOT / "handlers").glob("*.py"):
        assert not imports_of(path, path.stem), path


def test_every_handler_file_is_marforges_or_a_versions_own():
    from marforge import shipped
    from marforge.project import Project

    own = {mv.handler_file.name for mv in Project.at(ROOT / "models.toml").registry.all_versions() if mv.own_handler}
    assert own  # the text example's
    theirs = {p.name for p in (ROOT / "handlers").glob("*.py")}
    assert theirs == {shipped.HANDLER_FILE, *shipped.MODULES} | own
    assert not own & {shipped.HANDLER_FILE, *shipped.MODULES}


def test_modules_stay_short_enough_to_read():
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.joinpath("marforge").rglob("*.py"), *ROOT.joinpath("handlers").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_subpackage_says_what_its_modules_are_for():
    for package in (ROOT / "marforge").iterdir():
        if (package / "__init__.py").is_file():
            doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
            for module in package.glob("*.py"):
                assert module.name == "__init__.py" or module.name in doc, f"{package.name}/__init__.py lacks {module.name}"


# Folders that GitHub's standard Python .gitignore ignores wherever they are: a module added in one is
# silently left out of a contributor's commits (black and pytest skip some of them too).
COMMONLY_IGNORED = {"build", "dist", "develop-eggs", "downloads", "eggs", "lib", "lib64", "parts", "sdist", "var",
                    "wheels", "env", "venv", "ENV", "htmlcov", "target", "instance", "site"}


def test_no_source_folder_has_a_name_that_common_gitignores_drop():
    folders = {part for path in ROOT.joinpath("marforge").rglob("*.py") for part in path.relative_to(ROOT).parts[:-1]}
    folders |= {p.name for top in ("handlers", "model_defs", "tests") for p in ROOT.joinpath(top).rglob("*") if p.is_dir()}
    assert folders & COMMONLY_IGNORED == set()
