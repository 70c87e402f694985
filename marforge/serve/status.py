"""What is being served right now: every model and version, its task, the default, workers and queue depth.

Readiness comes from the management API's describe (worker status READY), never from `/ping`,
which answers Healthy while workers crash.
"""

from marforge.archiving.weights import read_metadata
from marforge.errors import MarforgeError
from marforge.serve.client import version_ready


def collect(client):
    """One dict per registered version: model, version, default, ready, workers, queue, archive."""
    rows = []
    for name in sorted(m["modelName"] for m in client.list_models()):
        default = client.default_version(name)
        for d in client.describe(name):
            rows.append({
                "model": name,
                "version": d["modelVersion"],
                "default": d["modelVersion"] == default,
                "ready": version_ready([d]),
                "workers": [w.get("status") for w in d.get("workers", [])],
                "batch_size": d.get("batchSize"),
                "pending": d.get("jobQueueStatus", {}).get("pendingRequests"),
                "archive": d.get("modelUrl"),
            })
    return rows


def source_of(mv):
    """What a version is built from and served by, in a few words: `model_def` (a model definition and
    its state_dict) or `<kind> file`, and `+ own handler <file>` when it brings its own handler."""
    built = f"{mv.exported} file" if mv.exported else "model_def"
    return f"{built} + own {mv.handler_file.name}" if mv.own_handler else built


def annotate(rows, registry):
    """Add each row's `task`, `source` and `note` from the registry and its weights' metadata (synthetic
    weights say so), when the registry knows the version (None when it does not)."""
    for row in rows:
        row["task"], row["source"], row["note"] = None, None, None
        try:
            mv = registry.get(row["model"], row["version"])
            metadata = read_metadata(mv)
        except MarforgeError:  # a version registered by hand, or files not here: nothing to add
            continue
        row["task"], row["source"], row["note"] = metadata.get("task") or "multiclass", source_of(mv), metadata.get("synthetic")
    return rows


def format_table(rows):
    lines = [f"{'MODEL':<12} {'VERSION':<9} {'TASK':<13} {'SOURCE':<34} {'DEFAULT':<8} {'READY':<6} {'WORKERS':<24} "
             f"{'QUEUE':>5}  ARCHIVE"]
    for r in rows:
        pending = "-" if r["pending"] is None else r["pending"]
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{r['model']:<12} {r['version']:<9} {r.get('task') or '?':<13} {r.get('source') or '?':<34} "
                     f"{'yes' if r['default'] else '':<8} "
                     f"{'yes' if r['ready'] else 'NO':<6} {','.join(r['workers']) or 'none':<24} {pending:>5}  "
                     f"{r['archive']}{note}")
    return "\n".join(lines)
