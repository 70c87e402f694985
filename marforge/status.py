"""What is being served right now: every model and version, the default, workers and queue depth.

Readiness comes from the management API's describe (worker status READY), never from `/ping`,
which answers Healthy while workers crash.
"""

from marforge.client import version_ready


def collect(client, registry=None):
    """One row per registered version: name, version, default, worker states, pending requests."""
    names = [m["modelName"] for m in client.list_models()]
    rows = []
    for name in names:
        for d in client.describe(name):
            workers = d.get("workers", [])
            rows.append({
                "model": d["modelName"],
                "version": d["modelVersion"],
                "default": d["modelUrl"] and _is_default(client, d),
                "ready": version_ready([d]),
                "workers": [w.get("status") for w in workers],
                "min_workers": d.get("minWorkers"),
                "batch_size": d.get("batchSize"),
                "pending": d.get("jobQueueStatus", {}).get("pendingRequests"),
                "archive": d.get("modelUrl"),
            })
    return rows


def _is_default(client, description):
    return description.get("isDefault", False)


def format_table(rows):
    header = f"{'MODEL':<12} {'VERSION':<9} {'DEFAULT':<8} {'READY':<6} {'WORKERS':<24} {'QUEUE':>5}  ARCHIVE"
    lines = [header]
    for r in rows:
        workers = ",".join(r["workers"]) or "none"
        lines.append(f"{r['model']:<12} {r['version']:<9} {'yes' if r['default'] else '':<8} "
                     f"{'yes' if r['ready'] else 'NO':<6} {workers:<24} {r['pending'] if r['pending'] is not None else '-':>5}  {r['archive']}")
    return "\n".join(lines)
