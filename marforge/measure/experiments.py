"""The benchmark's experiments: the same images, load generator and durations against each server.

`bench` runs the rows that apply to the version's task (by_task.py: the others are left out with
the reason), each at every concurrency (default 1, 16 and 64), after each server's answer to each
image once (the answer sizes):
  (a) ceiling   the archive's own handler run in-process (decode + preprocess + model, in batches of
                the version's batch size), one single-threaded process per core: what the machine
                can do with no server
  (b) stock     TorchServe with its defaults (fixtures.py) on the same archive as (c)
  (b')          stock TorchServe with its own handler for the task (image_classifier when the model
                fits it, object_detector, image_segmenter), or the (b) server on the eager archive when
                the version is served in another format
  (c) marforge  TorchServe as `make serve` runs it
  (d) flask     the Flask app of flask_app.py (classifiers only)
  (e) ...       each extra archive format the task can be archived in, served with (c)'s settings
  (f) gRPC      (c)'s server through TorchServe's gRPC inference API (inference.proto)
  (g) v2 JSON   (c)'s server through KServe's v2 protocol: JSON with the image as base64 BYTES

`compare_formats` serves every version in every format and names the fastest (the experiments
that vary the server's own settings are in tuning.py). Every server first gets unrecorded load at
the highest concurrency (`warm_up_seconds`).
"""

import asyncio
import contextlib
import multiprocessing
import os
import time
from pathlib import Path

from marforge import labelled
from marforge.archiving import variants
from marforge.archiving.verify import eval_files, sample_files
from marforge.archiving.weights import read_metadata, task_of
from marforge.errors import DataError, ServerError
from marforge.measure import answers, by_task, fixtures, machine, targets
from marforge.measure.sampling import measure, warm_up

WARM_UP_S = 5.0  # unrecorded load on each server before its rows (less when the rows are shorter)
SHORT_ROW_S = 3.0  # `--short`: a quick look, which understates a warm server

def warm_up_seconds(row_seconds):
    return min(WARM_UP_S, row_seconds)


def bench_formats(mv, asked=None, device="cpu"):
    """The (e) rows' formats: those asked for, else every benchmark format of the machine but the
    version's own; only those its task can be archived in (by_task.formats_for says why not the rest)."""
    return by_task.formats_for(mv, all_formats(mv, asked, device))[0]


def all_formats(mv, asked=None, device="cpu"):
    """The (e) rows' formats before the task is asked which apply."""
    return list(asked) if asked else [f for f in variants.BENCH_FORMATS[device] if f != mv.format]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def images_of(mv, folder=None):
    """The images every row sends, as ([path], [bytes]): every image file in `folder` when given,
    else the version's samples for a detector or a segmenter (scenes of several sizes), else the
    model's eval set, else the version's samples."""
    if folder is not None:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"{folder}: no images to send (looked for {', '.join(IMAGE_SUFFIXES)})")
    else:
        evals = labelled.exists(mv.eval_dir) and task_of(mv) not in by_task.SCENE_TASKS
        paths = [path for path, _ in (eval_files(mv) if evals else sample_files(mv))]
    return paths, [p.read_bytes() for p in paths]


# -- (a) the in-process ceiling --------------------------------------------------------------------
def _ceiling_process(args):
    mar_path, paths, seconds, batch_size = args
    import torch

    from marforge.archiving.worker import LoadedArchive

    torch.set_num_threads(1)
    rows = [{"body": Path(p).read_bytes()} for p in paths]
    with LoadedArchive(mar_path, batch_size=batch_size, gpu_id=0 if torch.cuda.is_available() else None) as loaded:
        handler = loaded.handler
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = [rows[(done + j) % len(rows)] for j in range(batch_size)]
            handler.inference(handler.preprocess(batch))
            done += batch_size
    return done / seconds


def ceiling(mar_path, paths, seconds, batch_size, processes=None):
    """Images per second of the archive's own handler (decode, preprocess, model, the task's results;
    batches of `batch_size`: a classifier's N x C x H x W and its activation, a detector's list of
    C x H x W images in [0, 1] in one call per image size, a segmenter's normalised N x C x H x W and
    each image's mask) run in-process, in `processes` single-threaded processes (default: one per core),
    each with the model on GPU 0 when there is one (its decoding, on the CPU or as the handler is
    configured, included)."""
    processes = processes or len(os.sched_getaffinity(0))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rates = pool.map(_ceiling_process, [(str(mar_path), [str(p) for p in paths], seconds, batch_size)] * processes)
    return {"row": "(a) ceiling", "concurrency": None, "throughput": round(sum(rates), 1), "processes": processes}


# -- rows against servers ----------------------------------------------------------------------------
def rows_of(label, target, bodies, concurrencies, seconds, mv=None):
    """Warm `target` up, then one row per concurrency (over HTTP, the images as request bodies)."""
    warm_up(target.url, bodies, max(concurrencies), warm_up_seconds(seconds), headers=target.headers())
    return [measure(label, target.url, bodies, c, seconds, target.pid, target.roles, headers=target.headers())
            for c in concurrencies]


def grpc_rows_of(label, target, bodies, concurrencies, seconds, mv):
    """The rows of `target` (a TorchServe) over its gRPC inference API, the same images as bytes."""
    from marforge.measure.loadgen import run_grpc_load

    def load(concurrency, duration):
        return run_grpc_load(target.endpoints.grpc, mv.name, mv.version, bodies, concurrency, duration, key=target.token())

    asyncio.run(load(max(concurrencies), warm_up_seconds(seconds)))  # the frontend's gRPC path is warmed on its own
    return [measure(label, None, bodies, c, seconds, target.pid, target.roles, load=load) for c in concurrencies]


# KServe's two REST protocols as TorchServe serves them on its inference port: the route and the
# body that carries one image (base64).
def v1_url(base, name):
    return f"{base}/v1/models/{name}:predict"


def v2_url(base, name):
    return f"{base}/v2/models/{name}/infer"


def v1_bodies(images):
    import base64
    import json

    return [json.dumps({"instances": [{"data": base64.b64encode(b).decode()}]}).encode() for b in images]


def v2_bodies(images):
    import base64
    import json

    return [json.dumps({"inputs": [{"name": "data", "shape": [1], "datatype": "BYTES",
                                    "data": [base64.b64encode(b).decode()]}]}).encode() for b in images]


def v2_rows_of(label, target, bodies, concurrencies, seconds, mv):
    """The rows of `target` (a TorchServe) over KServe's v2 protocol: JSON with one base64 BYTES image."""
    from marforge.measure.loadgen import run_load

    url, v2 = v2_url(target.endpoints.inference, mv.name), v2_bodies(bodies)

    def load(concurrency, duration):
        return run_load(url, v2, concurrency, duration, headers=target.headers(), content_type="application/json")

    asyncio.run(load(max(concurrencies), warm_up_seconds(seconds)))
    return [measure(label, url, v2, c, seconds, target.pid, target.roles, load=load) for c in concurrencies]


# The three ways `make bench` sends marforge's server the same images: (c) the bytes as the body,
# (f) gRPC (inference.proto), (g) KServe v2 JSON with the image in base64.
PROTOCOL_ROWS = (("(c) marforge", rows_of), ("(f) marforge gRPC", grpc_rows_of), ("(g) marforge v2 JSON", v2_rows_of))


def protocols(project, mv, rounds=3, concurrencies=(1, 16, 64), seconds=6.0, log=print):
    """One marforge server sent the same images each way of PROTOCOL_ROWS in turn, at each concurrency,
    for `rounds` rounds, so that a drift of the machine, which separate rows of `bench` pick up,
    falls on all three alike; a row per protocol, round and concurrency."""
    _, bodies = images_of(mv)
    rows = []
    with fixtures.torchserve(project, mv) as target:
        for round_ in range(1, rounds + 1):
            for concurrency in concurrencies:
                for label, rows_fn in PROTOCOL_ROWS:
                    [row] = rows_fn(label, target, bodies, [concurrency], seconds, mv)
                    rows.append({**row, "round": round_})
                    log(f"{rows[-1]}")
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "rows": rows}


def bench(project, mv, seconds=10.0, concurrencies=(1, 16, 64), formats=None, images=None, log=print):
    """Every row that applies to the version's task at every concurrency, and each server's answer
    sizes; returns the results (machine, rows, the rows left out and why, answers, ratios, targets).
    `images`: a folder of images to send instead of the model's own (see images_of)."""
    paths, bodies = images_of(mv, images)
    store = project.model_store
    rows, left_out, said = [ceiling(mv.archive_path(store), paths, seconds, mv.serving["batch_size"])], [], []
    log(f"{rows[-1]}")

    def served(context, row_sets, feeds=("as sent",), required=False):
        """The rows of each (label, rows function) of `row_sets` from one server, in turn, after its
        answers to each image (the first of `feeds` answered); none when it answers no image, or when
        it does not start and is not `required` (the rows left out say why)."""
        label = row_sets[0][0]
        with contextlib.ExitStack() as stack:
            try:
                target = stack.enter_context(context)
            except ServerError as exc:
                if required:
                    raise
                left_out.append({"row": label, "reason": f"its server did not start: {exc.message.splitlines()[0]}"})
                log(f"{left_out[-1]}")
                return False
            for feed in feeds:
                sent = by_task.fed(feed, bodies)
                said.append({**answers.answer_sizes(label, target, paths, sent), "feed": feed})
                log(f"{said[-1]}")
                if said[-1]["sizes"]:
                    break
            else:
                left_out.append({"row": label, "reason": "; ".join(f"fed {a['feed']}: {a['error']}" for a in said
                                                                    if a["row"] == label)})
                log(f"{left_out[-1]}")
                return False
            for label, rows_fn in row_sets:
                for row in rows_fn(label, target, sent, concurrencies, seconds, mv):
                    rows.append(row)
                    log(f"{row}")
        return True

    served(fixtures.torchserve(project, mv, stock=True), [("(b) torchserve stock", rows_of)], required=True)
    skipped = by_task.protocols_left_out(mv)
    left_out += [{"row": row, "reason": why} for row, why in skipped.items()]
    served(fixtures.torchserve(project, mv), [r for r in PROTOCOL_ROWS if r[0] not in skipped], required=True)  # (c), gRPC, v2
    notes = stock_b_prime(project, mv, served, left_out, log)
    flask = by_task.flask_left_out(mv)
    if flask:
        left_out.append({"row": "(d) flask", "reason": flask})
    else:
        served(fixtures.flask_server(project, mv), [("(d) flask", rows_of)])
    kept, unavailable = by_task.formats_for(mv, all_formats(mv, formats, project.device))
    left_out += [{"row": f"(e) marforge {fmt}", "reason": why} for fmt, why in unavailable.items()]
    for fmt in kept:
        served(fixtures.format_server(project, mv, fmt), [(f"(e) marforge {fmt}", rows_of)])
    described = machine.describe(project.root)
    return {"model": mv.key, "format": mv.format, "task": task_of(mv), "seconds": seconds, "machine": described,
            "images": f"{len(paths)} from {paths[0].parent}", "rows": rows, "left_out": left_out, "notes": notes, "answers": said,
            "ratios": targets.ratios(rows, concurrencies), "targets": targets.check(rows, targets.targets_for(mv.name, described))}


def stock_b_prime(project, mv, served, left_out, log):
    """The (b') row: TorchServe's own handler for the task (by_task.stock_plans; the first that
    answers), else for a version served in another format stock TorchServe on its eager archive;
    returns the notes on what the row measured."""
    store = project.model_store
    plans = by_task.stock_plans(mv, fixtures.fits_stock_classifier(mv, read_metadata(mv)))
    for plan in plans:
        unloadable = plan.unloadable()
        if unloadable:
            left_out.append({"row": plan.label, "reason": unloadable})
            log(f"{left_out[-1]}")
            continue
        if served(fixtures.stock_handler(project, mv, plan), [(plan.label, rows_of)], plan.feeds):
            return [f"{plan.label}: {plan.note}"] if plan.note else []
    if plans:
        return []
    if mv.format != "eager" and mv.archive_path(store, "eager").is_file():
        # What stock TorchServe does with the PyTorch model itself, which is what most users start from.
        served(fixtures.format_server(project, mv, "eager", stock=True), [("(b') torchserve stock, eager archive", rows_of)])
    elif mv.format != "eager":
        why = (f"an exported {mv.exported} file has no eager model" if mv.exported else
               f"{mv.archive_path(store, 'eager')} not built (make archive FORMAT=eager)")
        left_out.append({"row": "(b') torchserve stock, eager archive", "reason": why})
        log(f"{left_out[-1]}")
    return []


def compare_formats(project, versions, formats, seconds=5.0, concurrencies=(16, 64), log=print):
    """Every version in every format, served with marforge's settings; rows plus the winner per version,
    and how each server started: the seconds until its workers were READY (their warm-up included) and
    its first requests (first.cold), before any other load."""
    from marforge.measure import first

    rows, winners, starts = [], {}, []
    for mv in versions:
        _, bodies = images_of(mv)
        for fmt in by_task.formats_for(mv, formats)[0]:
            started = time.monotonic()
            with fixtures.format_server(project, mv, fmt) as target:
                starts.append({"version": mv.key, "format": fmt, "ready_s": round(time.monotonic() - started, 1),
                               **first.cold(target.url, bodies, target.headers())})
                log(f"{mv.key} {starts[-1]}")
                for row in rows_of(fmt, target, bodies, concurrencies, seconds):
                    rows.append({**row, "version": mv.key, "format": fmt})
                    log(f"{mv.key} {rows[-1]}")
        if mine := [r for r in rows if r["version"] == mv.key]:
            winners[mv.key] = winner(mine)
    return {"seconds": seconds, "machine": machine.describe(project.root), "rows": rows, "winners": winners, "starts": starts}


def winner(rows, margin=1.05):
    """The format of `rows` (one version's) with the highest throughput at the highest concurrency
    measured; eager unless the best is at least `margin` times eager's (eager needs no conversion)."""
    top = max(r["concurrency"] for r in rows)
    at_top = {r["format"]: r["throughput"] for r in rows if r["concurrency"] == top}
    best = max(at_top, key=at_top.get)
    return best if "eager" not in at_top or at_top[best] >= margin * at_top["eager"] else "eager"
