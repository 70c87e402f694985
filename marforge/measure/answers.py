"""What each benchmarked server answers: every image sent once before its rows, the bytes of each
answer's body and its status, and for a server that answers none the reason, from its worker's own
log; `markdown_lines` is the report's part on them and on the rows that were left out.

    answer_sizes(label, target, paths, bodies)   one server's answers
    markdown_lines(results)                      the rows left out and why, the notes, the answer sizes
"""

import json
import re
import time
import urllib.error
import urllib.request

ANSWER_IMAGES = 20  # answer sizes are measured on at most this many of the bench's images
CONTENT_TYPE = "image/png"  # what the bench's bodies are sent as (loadgen's default)


def answer_sizes(label, target, paths, bodies, content_type=CONTENT_TYPE):
    """Each of the first ANSWER_IMAGES images sent once to `target`: {"row", "sizes": {image: bytes
    of its answer's body}, "statuses": {status: count}, "error": None or the first failed answer's
    status and body, with the exception `target`'s worker logged for it}."""
    sizes, statuses, error = {}, {}, None
    logged = _size(target.logs)
    for path, body in list(zip(paths, bodies))[:ANSWER_IMAGES]:
        request = urllib.request.Request(target.url, data=body, method="POST",
                                         headers={"Content-Type": content_type, **(target.headers() or {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as answered:
                status, text = answered.status, answered.read()
        except urllib.error.HTTPError as failed:
            status, text = failed.code, failed.read()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            sizes[path.name] = len(text)
        elif error is None:
            error = f"HTTP {status} {_brief(text)}"
            if target.logs:
                error += f"; the worker logged: {worker_error(target, logged)}"
    return {"row": label, "sizes": sizes, "statuses": statuses, "error": error}


def _size(path):
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def _brief(text):
    try:
        answer = json.loads(text)
        return answer.get("message", str(answer))[:200] if isinstance(answer, dict) else str(answer)[:200]
    except ValueError:
        return text[:200].decode(errors="replace")


EXCEPTION_LINE = re.compile(r"(?:^|\W)([A-Za-z_.]*(?:Error|Exception)): (.+)$")


def worker_error(target, since=0, wait_s=5.0):
    """The first exception (type: message) in `target`'s worker log after byte `since`, waiting up to
    `wait_s` for the frontend to write it there, or a note that there was none."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(target.logs, "rb") as log:
                log.seek(since)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return f"nothing ({target.logs} not readable)"
        for line in lines:
            found = EXCEPTION_LINE.search(line)
            if found:
                return f"{found.group(1)}: {found.group(2).strip()[:300]}"
        if time.monotonic() > deadline:
            return "no exception"
        time.sleep(0.2)


def markdown_lines(results):
    """The report's lines on the rows left out (and why), the notes on what a row measured, and the
    bytes of each server's answer to each image: [] for results without them."""
    lines = []
    if results.get("left_out"):
        lines += ["", f"Rows left out for this {results.get('task', 'multiclass')} model, and why:", ""]
        lines += [f"- {r['row']}: {r['reason']}" for r in results["left_out"]]
    if results.get("notes"):
        lines += ["", *(f"- {note}" for note in results["notes"])]
    answered = [a for a in results.get("answers", []) if a["sizes"]]
    if not answered:
        return lines
    images = list(dict.fromkeys(name for a in answered for name in a["sizes"]))
    lines += ["", f"Answer size per image: bytes of the HTTP body each server answered to each image, sent once "
              f"(the first {len(images)} of the bench's images):", "",
              "| image | " + " | ".join(a["row"] for a in answered) + " |", "| --- |" + " ---: |" * len(answered)]
    lines += [f"| {name} | " + " | ".join(str(a["sizes"].get(name, "-")) for a in answered) + " |" for name in images]
    lines.append("| mean | " + " | ".join(str(round(sum(a["sizes"].values()) / len(a["sizes"]))) for a in answered) + " |")
    lines.append("| statuses | " + " | ".join(", ".join(f"{n} x {s}" for s, n in sorted(a["statuses"].items()))
                                              for a in answered) + " |")
    return lines
