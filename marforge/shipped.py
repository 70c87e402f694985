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
from pathlib import Path

HANDLERS_DIR = Path(__file__).resolve().parent.parent / "handlers"
HANDLER_FILE = "image_handler.py"  # the BaseHandler subclass; every other .py beside it ships too


def files(handlers_dir=HANDLERS_DIR):
    """(the handler file, the modules shipped beside it) of a handlers folder."""
    handlers_dir = Path(handlers_dir)
    return handlers_dir / HANDLER_FILE, sorted(p for p in handlers_dir.glob("*.py") if p.name != HANDLER_FILE)


def module(name):
    """handlers/<name>.py as a worker imports it (a top-level module, from the handlers folder), loaded
    once into marforge's own copy: an archive that a LoadedArchive holds open, whose modules have the
    same names, neither replaces it nor is replaced by it."""
    if name not in _loaded:
        _loaded.update(_import_isolated(name))
    return _loaded[name]


_loaded = {}  # name -> marforge's copy of handlers/<name>.py (and of the modules it imported)


def _import_isolated(name):
    """Import handlers/<name>.py with the handlers folder first on sys.path and none of its module
    names taken, then put sys.modules and sys.path back as they were."""
    names = [p.stem for p in HANDLERS_DIR.glob("*.py")]
    aside = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.modules.update(_loaded)  # modules loaded before are shared, not loaded twice
    sys.path.insert(0, str(HANDLERS_DIR))
    try:
        importlib.import_module(name)
        return {n: sys.modules[n] for n in names
                if n in sys.modules and Path(sys.modules[n].__file__).resolve().parent == HANDLERS_DIR}
    finally:
        sys.path.remove(str(HANDLERS_DIR))
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(aside)


def contract():
    """handlers/contract.py: the handler config schema, the format stamp and the preprocessing."""
    return module("contract")
