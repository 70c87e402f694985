"""The code marforge ships inside every archive (`handlers/`), and its use in marforge's own process.

An archive holds the handler and its modules flat at its root, and a worker imports them as
top-level modules (`import contract`). marforge imports the same files the same way, so that the
registry, the archive builder, its verification, training and the benchmarks read the build<->serve
contract (handlers/contract.py) and preprocess images with exactly the code a worker runs:

    contract = shipped.module("contract")     # handlers/contract.py
    image_io = shipped.module("image_io")     # handlers/image_io.py
"""

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

HANDLERS_DIR = Path(__file__).resolve().parent.parent / "handlers"
HANDLER_FILE = "image_handler.py"  # the BaseHandler subclass
# The modules shipped beside it. handlers/ also holds users' own handlers (a version's handler_file),
# which are archived alone, as they are written (tests/test_layout.py: every file there is one or the other).
MODULES = ("classification.py", "contract.py", "detection.py", "explain.py", "geometry.py", "image_io.py",
           "placement.py", "programs.py", "protocols.py", "segmentation.py")


def files(handlers_dir: Path | str = HANDLERS_DIR) -> tuple[Path, list[Path]]:
    """(the handler file, the modules shipped beside it) of a handlers folder."""
    handlers_dir = Path(handlers_dir)
    return handlers_dir / HANDLER_FILE, [handlers_dir / name for name in MODULES]


def module(name: str) -> ModuleType:
    """handlers/<name>.py as a worker imports it (a top-level module, from the handlers folder), loaded
    once into marforge's own copy: an archive that a LoadedArchive holds open, whose modules have the
    same names, neither replaces it nor is replaced by it."""
    if name not in _loaded:
        _loaded.update(_import_isolated(name))
    return _loaded[name]


_loaded: dict[str, ModuleType] = {}  # name -> marforge's copy of handlers/<name>.py (and of the modules it imported)


@contextmanager
def isolated(folder: Path) -> Iterator[None]:
    """Import from `folder` as a worker does: first on sys.path, with none of its module names taken
    (modules already loaded under those names are set aside); on leaving, the modules loaded from it
    are dropped and sys.path and sys.modules are as they were. The one way marforge imports shipped
    code: its own copy of handlers/ (`module`) and an archive a LoadedArchive holds open."""
    where = str(folder)
    aside = {p.stem: sys.modules.pop(p.stem) for p in Path(folder).glob("*.py") if p.stem in sys.modules}
    before = set(sys.modules)
    sys.path.insert(0, where)
    try:
        yield
    finally:
        if where in sys.path:
            sys.path.remove(where)
        for name in set(sys.modules) - before:
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(where):
                del sys.modules[name]
        sys.modules.update(aside)


def _import_isolated(name: str) -> dict[str, ModuleType]:
    """Import handlers/<name>.py isolated; the handlers' modules it loaded (shared with those loaded before)."""
    with isolated(HANDLERS_DIR):
        sys.modules.update(_loaded)  # modules loaded before are shared, not loaded twice
        importlib.import_module(name)
        names = {Path(n).stem for n in (HANDLER_FILE, *MODULES)}
        return {n: m for n, m in sys.modules.items()
                if n in names and Path(getattr(m, "__file__", None) or "/").resolve().parent == HANDLERS_DIR}


def contract() -> ModuleType:
    """handlers/contract.py: the handler config schema, the format stamp and the preprocessing."""
    return module("contract")
