"""The marforge command line: `python -m marforge COMMAND ...`. It parses, calls the library, formats.

    build    archive, verify, archives, formats, build-code, stamp,  marforge/cli/build.py
             demo, kserve, stubs
    import   import, expect                                          marforge/cli/imports.py
    train    train, samples                                          marforge/cli/build.py
    serve    serve, stop, status, predict, explain, token            marforge/cli/serve.py
    rollout  rollout, rollback                                       marforge/cli/serve.py
    measure  bench, bench-kserve, soak                               marforge/cli/measure.py

Paths come from flags, then the environment, then models.toml's [paths], then the defaults
(marforge/project.py). `--json` makes any command print its result as JSON. Errors print what
failed and the next command to run, and exit 1 (a usage or user error), 2 (infrastructure), 3 (a
rollout rejected its candidate) or 4 (a rollout rolled back); MARFORGE_DEBUG=1 adds tracebacks.
"""

import argparse
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from marforge.errors import INFRA_ERROR, USER_ERROR, MarforgeError


@dataclass
class Output:
    """What a command produced: text for a person, data for --json."""

    text: str = ""
    data: object = field(default=None)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1 (a user error), not 2 (marforge's infrastructure code)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"error: {message}\n  next: {self.prog} --help", file=sys.stderr)
        sys.exit(USER_ERROR)


def project_of(args):
    """The Project for the paths given as flags (and the environment, models.toml, defaults)."""
    from marforge.project import Project

    return Project.locate(registry=args.registry, device=args.device, model_store=getattr(args, "model_store", None),
                          run_dir=getattr(args, "run_dir", None), config=getattr(args, "config", None),
                          bench_results=getattr(args, "out", None))


def existing(path: str, what: str, hint: str, folder: bool = False) -> Path:
    """`path` as a Path when it is an existing file (a folder when `folder`), else a user error that
    names it, says `what` it was given as and the fix (`hint`)."""
    found = Path(path)
    if found.is_dir() if folder else found.is_file():
        return found
    kind = "folder" if folder else "file"
    problem = f"not a {kind}" if found.exists() else f"no such {kind}"
    raise MarforgeError(f"{path}: {problem} ({what})", hint)


def numbers(text: str, flag: str, example: str, kind: type = int) -> list:
    """A flag's comma-separated numbers (whole and above 0 when `kind` is int), else a user error
    naming the flag and an example of a good value."""
    try:
        values = [kind(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or (kind is int and min(values) < 1):
        noun = "whole numbers above 0" if kind is int else "numbers"
        raise MarforgeError(f"{flag} {text!r}: not a comma-separated list of {noun}", f"e.g. {flag} {example}")
    return values


def format_list(text: str | None) -> list | None:
    """The archive formats of a --formats flag (None when it is not given), every one a known format."""
    from marforge.archiving import variants

    if not text:
        return None
    formats = text.split(",")
    unknown = [f for f in formats if f not in variants.formats()]
    if unknown:
        raise MarforgeError(f"unknown archive format(s): {', '.join(unknown)}",
                            f"use some of: {', '.join(variants.formats())}")
    return formats


def add_paths(parser, *names):
    """The path flags a command uses (see marforge/project.py for what each defaults to)."""
    helps = {"model_store": "archives folder (default: model_store)",
             "run_dir": "the server's run dir: config, logs, keys, pid, state (default: .run)",
             "config": "base TorchServe config (default: config.properties)",
             "out": "results folder; each run writes a timestamped folder in it (default: bench-results)"}
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=helps[name])


def build_parser():
    from marforge.cli import build, imports, measure, serve

    parser = Parser(prog="marforge", description="Trained PyTorch models in, served TorchServe archives out.",
                    epilog=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="the project's models.toml (default: the nearest one at or above here)")
    parser.add_argument("--json", action="store_true", help="print the command's result as JSON")
    parser.add_argument("--device", choices=("cpu", "gpu"), help="resolve the registry's per-device settings for "
                        "this kind of machine (default: $MARFORGE_DEVICE, else whether a GPU is visible)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name, func, help_text, example):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    for module in (build, imports, serve, measure):
        module.add_commands(command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        output = args.func(args)
    except MarforgeError as exc:
        if os.environ.get("MARFORGE_DEBUG"):
            traceback.print_exc()
        if args.json:
            print(json.dumps({"error": exc.message, "next": exc.hint, "exit_code": exc.exit_code,
                              "report": exc.report.to_dict() if exc.report is not None else None}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: show it, but say so
        traceback.print_exc()
        print("error: unexpected failure (a bug in marforge); the traceback is above", file=sys.stderr)
        return INFRA_ERROR
    if args.json:
        print(json.dumps(output.data, indent=2, default=str))
    elif output.text:
        print(output.text)
    return 0
