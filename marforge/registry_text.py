"""Edits of models.toml as text, keeping every comment: a version added (`marforge import`), a model's
default changed (`marforge import` of a version over a default with synthetic weights), a version's
measured serving settings written (`make tune`). Reading and validating the registry is
marforge/registry.py's.
Standard library only, as the registry.
"""

from pathlib import Path

from marforge.errors import RegistryError

Table = dict[str, object]


def add_version(path: Path, name: str, version: str, entries: Table) -> None:
    """Add `name` `version` to the models.toml at `path` as text, keeping every comment: the version's
    table goes after the model's last table (a new model's tables at the end, with the version as its
    default). `entries` are the version's keys (strings, numbers, booleans and flat tables)."""
    lines = path.read_text().splitlines()
    block = [f'[models.{name}.versions."{version}"]'] + [f"{k} = {_toml(v)}" for k, v in entries.items()]
    mine = [i for i, line in enumerate(lines) if line.startswith((f"[models.{name}]", f"[models.{name}."))]
    if not mine:
        lines += ["", f"[models.{name}]", f'default_version = "{version}"', "", *block]
    else:
        end = next((i for i in range(mine[-1] + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        while end > mine[-1] + 1 and not lines[end - 1].strip():
            end -= 1
        lines[end:end] = ["", *block]
    path.write_text("\n".join(lines) + "\n")


def set_default_version(path: Path, name: str, version: str) -> None:
    """Make `version` the default of `name` in the models.toml at `path`, changing only that line."""
    lines = path.read_text().splitlines()
    start = lines.index(f"[models.{name}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=", 1)[0].strip() == "default_version":
            comment = lines[i].split("#", 1)[1] if "#" in lines[i] else None
            lines[i] = f'default_version = "{version}"' + (f"  #{comment}" if comment else "")
            path.write_text("\n".join(lines) + "\n")
            return
    raise RegistryError(f"{path}: [models.{name}] has no default_version line to change")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to models.toml")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml(key)


def set_tuned(path: Path, name: str, version: str, device: str, settings: Table, comment: str) -> None:
    """Write `make tune`'s `settings` for `device` into the `tuned` line of `name` `version`'s table in
    the models.toml at `path` (replacing that device's, keeping the other's), as one inline table
    with `comment` after it; the line goes right after the table's header when there is none yet."""
    import tomllib

    lines = path.read_text().splitlines()
    header = f'[models.{name}.versions."{version}"]'
    if header not in lines:
        raise RegistryError(f"{path}: no {header} table to write the tuned settings into",
                            f"give {name} {version} a table of its own, {header}")
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    at = next((i for i in range(start + 1, end) if lines[i].split("=", 1)[0].strip() == "tuned"), None)
    tuned = dict(tomllib.loads(lines[at]).get("tuned", {})) if at is not None else {}
    line = f"tuned = {_toml({**tuned, device: settings})}  # {comment}"
    if at is None:
        lines.insert(start + 1, line)
    else:
        lines[at] = line
    path.write_text("\n".join(lines) + "\n")
