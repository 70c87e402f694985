"""The benchmark's reports: one writer, a plot, and the docs' generated blocks (the tables
themselves are tables.py's).

Every experiment's results are written to `<bench_results>/<kind>-<time>/` (`<kind>.json`,
`<kind>.md`, and for `bench` a plot), and the markdown also replaces the block of its page in docs/
(DOCS; docs/performance.md unless named) between `<!-- generated: <block> -->` and `<!-- end: <block>
-->`, and for a soak a summary in the README's, so the figures there are always a run's own output,
never typed by hand.
"""

import json
import re
import time
from pathlib import Path

from marforge import files
from marforge.errors import DataError
from marforge.measure import against, first, lone, machine, tables, tune

DOC = "performance.md"
DOCS = {"soak": "operations.md", "jvm": "operations.md", "protocols": "kserve.md",  # each kind's page (the rest: DOC)
        "kserve": "kserve-performance.md", "tune": "tuning.md"}
APPENDED = {"tune"}  # kinds whose block, for a version of any name, is added at the page's end the first time
# Kinds whose main block (the block named as the kind) also goes, shorter, into the README's block
# of that name, beside docs/ (the README's endurance section is the latest long soak's own output).
README_SUMMARIES = {"soak": tables.soak_summary_markdown}
MARKDOWN = {"bench": tables.bench_markdown, "formats": tables.formats_markdown, "sweep": tables.sweep_markdown,
            "queue": tables.queue_markdown, "jvm": tables.jvm_markdown, "protocols": tables.protocols_markdown,
            "soak": tables.soak_markdown, "kserve": tables.kserve_markdown, "first": first.markdown,
            "lone": lone.markdown, "tune": tune.markdown, "against": against.markdown}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    labels = dict.fromkeys(r["row"] for r in results["rows"] if r["concurrency"] is not None)
    for label in labels:
        points = [(r["p99_ms"], r["throughput"], r["concurrency"]) for r in results["rows"] if r["row"] == label]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        for x, y, c in points:
            axes.annotate(str(c), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in results["rows"]:
        if r["concurrency"] is None:
            axes.axhline(r["throughput"], linestyle="--", color="grey", label=r["row"])
    axes.set_xscale("log")
    axes.set_xlabel("p99 latency (ms, log scale); labels: concurrency")
    axes.set_ylabel("throughput (requests/s)")
    axes.set_title(f"{results['model']}: {machine.headline(results['machine'])}", fontsize=8)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write(kind, results, out_root, doc_dir=None, block=None):
    """Write results of `kind` (a MARKDOWN key) to a timestamped folder under `out_root` and, when
    `doc_dir` is given, into the block `block` (default: `kind`) of `doc` there; returns (the folder,
    the markdown)."""
    table = MARKDOWN[kind](results)
    out_dir = Path(out_root) / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{kind}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{kind}.md").write_text(table)
    if kind == "bench":
        plot(results, out_dir / "plot.png")
    if doc_dir is not None:
        update_block(Path(doc_dir) / DOCS.get(kind, DOC), block or kind, table, append=kind in APPENDED)
        if kind in README_SUMMARIES and (block or kind) == kind:
            update_block(Path(doc_dir).parent / "README.md", kind, README_SUMMARIES[kind](results))
    return out_dir, table


def update_block(path, name, text, append=False):
    """Replace the generated block `name` of a markdown file with `text` (`append`: add the block at
    the end when the file has none of that name yet)."""
    begin, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
    try:
        doc = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: not found; the benchmark writes its tables into it",
                        "git checkout docs/") from None
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc) and append:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    if not pattern.search(doc):
        raise DataError(f"{path}: no block {begin} ... {end} to write the {name} table into",
                        f"add those two lines to {path.name} where the table belongs")
    files.write_atomic(path, pattern.sub(lambda _: f"{begin}\n{text}{end}", doc))
