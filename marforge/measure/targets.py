"""What `make bench` must show, as data: each target names a row, a concurrency and a bound.

Rows are named by their label's prefix: "(a)" the in-process ceiling (it has no concurrency and
counts at each), "(b)" stock TorchServe on the same archive, "(b')" stock TorchServe on the eager
archive, "(c)" marforge, "(d)" Flask, "(e) ..." other formats.
"""

from dataclasses import dataclass

RATIO_PAIRS = ("(a)", "(b)", "(b')", "(d)")  # (c) is compared with each of these at each concurrency
PROTOCOLS = ("(f)", "(g)")  # (c)'s server over gRPC and over v2 JSON, each compared with (c) itself


@dataclass(frozen=True)
class Target:
    row: str  # the row whose figure is checked, e.g. "(c)"
    at: int  # the concurrency
    over: object = None  # a ratio target: row's throughput / this row's (or the best of these rows') ...
    minimum: float | None = None  # ... must be at least this
    field: str | None = None  # a value target: this field of the row ...
    maximum: float | None = None  # ... must be at most this

    @property
    def name(self):
        if isinstance(self.over, tuple):
            return f"{self.row}/best of {', '.join(self.over)} at {self.at} >= {self.minimum:g}"
        if self.over:
            return f"{self.row}/{self.over} at {self.at}"
        return f"{self.row} {self.field.removesuffix('_ms')} at {self.at} <= {self.maximum:g} ms"

    def check(self, rows):
        """{"value", "target", "met"}; a row that was not measured fails its target."""
        mine = find_row(rows, self.row, self.at)
        if self.over:
            found = [find_row(rows, r, self.at) for r in (self.over if isinstance(self.over, tuple) else (self.over,))]
            found = [r for r in found if r]
            theirs = max(found, key=lambda r: r["throughput"]) if found else None
            value = ratio(mine, theirs)
            return {"value": value, "target": self.minimum, "met": value is not None and value >= self.minimum}
        value = mine.get(self.field) if mine else None
        return {"value": value, "target": self.maximum, "met": value is not None and value <= self.maximum}


CPU_TARGETS = (
    Target("(c)", 16, over="(b)", minimum=10.0),
    Target("(c)", 16, over="(d)", minimum=4.0),
    Target("(c)", 64, over="(a)", minimum=0.6),
    Target("(c)", 16, field="p99_ms", maximum=50.0),
)


STOCK = ("(b)", "(b')")
# Issue 12's targets for a GPU machine, by model: marforge at least stock TorchServe at every
# concurrency (the better of its two rows) and 3x at 64 clients, p99 at 16 clients within 15 ms;
# for the CheXNet-sized DenseNet121, 50x stock TorchServe's own image classifier and half the
# in-process GPU ceiling at 64 clients, p99 there within 100 ms.
GPU_TARGETS = {
    "fashion": (*(Target("(c)", c, over=STOCK, minimum=1.0) for c in (1, 16, 64, 256)),
                Target("(c)", 64, over=STOCK, minimum=3.0), Target("(c)", 16, field="p99_ms", maximum=15.0)),
    "chexnet": (Target("(c)", 64, over="(b')", minimum=50.0), Target("(c)", 64, over="(a)", minimum=0.5),
                Target("(c)", 64, field="p99_ms", maximum=100.0)),
}


def targets_for(model, machine):
    """The targets a `bench` of `model` on `machine` (machine.describe) is held to."""
    if machine.get("gpu"):
        return GPU_TARGETS.get(model, ())
    return CPU_TARGETS if model == "fashion" else ()


def find_row(rows, label, concurrency):
    """The first row whose label starts with `label` at `concurrency` (the ceiling counts at any)."""
    for r in rows:
        if r["row"].startswith(label + " ") and r["concurrency"] in (concurrency, None):
            return r
    return None


def ratio(mine, theirs):
    if mine and theirs and theirs["throughput"]:
        return round(mine["throughput"] / theirs["throughput"], 2)
    return None


def ratios(rows, concurrencies):
    """{"(c)/(x) at N": ratio} for every row (x) in RATIO_PAIRS that was measured, at every concurrency,
    and {"(p)/(c) at N": ratio} for the protocol rows (p)."""
    out = {}
    for c in concurrencies:
        for other in RATIO_PAIRS:
            value = ratio(find_row(rows, "(c)", c), find_row(rows, other, c))
            if value is not None:
                out[f"(c)/{other} at {c}"] = value
    for c in concurrencies:
        for protocol in PROTOCOLS:
            value = ratio(find_row(rows, protocol, c), find_row(rows, "(c)", c))
            if value is not None:
                out[f"{protocol}/(c) at {c}"] = value
    return out


def check(rows, targets=CPU_TARGETS):
    """{target name: its check} for every target."""
    return {t.name: t.check(rows) for t in targets}
