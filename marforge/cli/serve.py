"""Commands that operate a server: serve, stop, status, predict, explain, token, rollout, rollback."""

import json
import os
from pathlib import Path

from marforge.cli import Output, add_paths, existing, project_of
from marforge.errors import MarforgeError


def _run_dir(args, project=None):
    """The RunDir of the command's project (located from its flags unless given)."""
    from marforge.serve.rundir import RunDir

    return RunDir((project or project_of(args)).run_dir)


def cmd_serve(args):
    from marforge.serve import launch, status

    project = project_of(args)
    existing(project.config, "the base TorchServe config", "pass one with --config, e.g. --config config.properties")
    started = launch.serve(project, timeout=args.timeout)
    if args.warm_seconds is None or args.warm_seconds > 0:
        launch.warm(started, launch.loaded(project), args.warm_seconds)
    rows = status.annotate(status.collect(started.client), project.registry)
    return Output(serve_summary(project, started, rows),
                  {"pid": started.pid, "endpoints": vars(started.client.endpoints), "logs": str(started.run_dir.logs),
                   "versions": rows})


def serve_summary(project, started, rows):
    """What a person needs after `make serve`: the URLs, the versions, a curl to paste."""
    from marforge.archiving.verify import sample_files

    e = started.client.endpoints
    lines = [f"TorchServe is up (pid {started.pid}); every worker is READY.",
             f"  inference  {e.inference}", f"  management {e.management}", f"  metrics    {e.metrics}/metrics",
             f"  logs       {started.run_dir.logs}"]
    for name in dict.fromkeys(r["model"] for r in rows):
        lines.append(f"  {name}: " + ", ".join(r["version"] + (" (default)" if r["default"] else "")
                                              + (f" [{r['note']}]" if r.get("note") else "")
                                              for r in rows if r["model"] == name))
    first = next(iter(project.registry.models.values()))
    (sample, _), *_ = sample_files(first.versions[first.default_version])
    lines += [f"Query it (the token is TorchServe's inference key from {started.run_dir.key_file.name}):",
              f'  curl -H "Authorization: Bearer $(make -s token)" -T {os.path.relpath(sample)} '
              f"{e.inference}/predictions/{first.name}",
              "Stop it: make stop"]
    return "\n".join(lines)


def cmd_stop(args):
    from marforge.serve import process

    run_dir = _run_dir(args)
    was_running = process.stop(run_dir)
    return Output("TorchServe stopped" if was_running else f"no server was running from {run_dir.path}",
                  {"stopped": was_running})


def cmd_status(args):
    from marforge.serve import status

    project = project_of(args)
    rows = status.annotate(status.collect(_run_dir(args, project).client()), project.registry)
    return Output(status.format_table(rows), rows)


def _image_of(args, project):
    """The bytes of the image a predict or explain sends, once its model and version are known."""
    project.registry.get(args.name, args.version)
    example = f"python -m marforge {args.command} fashion samples/fashion/00000-ankle-boot.png"
    return existing(args.image, "the image to send", f"pass an image file that exists, e.g. {example}").read_bytes()


def cmd_predict(args):
    project = project_of(args)
    image = _image_of(args, project)
    run_dir = _run_dir(args, project)
    if args.protocol in ("grpc", "grpc-v2"):
        from marforge.serve.grpc_client import GrpcClient

        http = run_dir.client()
        grpc = GrpcClient(run_dir.endpoints().grpc, key_file=run_dir.key_file)
        try:
            if args.protocol == "grpc":
                answer = grpc.predict(args.name, image, version=args.version, refresh=http.refresh_key)
            else:
                answer = grpc.infer(args.name, [image], version=args.version, refresh=http.refresh_key)
        finally:
            grpc.close()
    else:
        answer = run_dir.client().predict(args.name, image, version=args.version)
    return Output(json.dumps(answer, indent=2), answer)


def cmd_explain(args):
    from marforge import shipped
    from marforge.archiving.weights import task_of
    from marforge.serve import overlay

    project = project_of(args)
    image = _image_of(args, project)
    mv = project.registry.get(args.name, args.version)
    task = task_of(mv)
    if not shipped.module(shipped.contract().TASK_MODULES[task]).EXPLAINS:
        raise MarforgeError(f"{mv.name} {mv.version} is a {task} model: it has no explanations",
                            f"make predict MODEL={mv.name} VERSION={mv.version} IMAGE={args.image} answers it")
    out = Path(args.out or Path(args.image).with_suffix("").name + ".explained.png")
    if not out.parent.is_dir():
        raise MarforgeError(f"{out}: folder {out.parent} does not exist (--out)",
                            f"create it (mkdir -p {out.parent}) or pass --out in a folder that exists")
    answer = _run_dir(args, project).client().explain(args.name, image, version=args.version)
    out.write_bytes(overlay.render(image, answer))
    maps = ", ".join(f"{m['label']} ({m['probability']:.3f})" for m in answer["explanation"]["maps"])
    return Output(f"{answer['model']} {answer['version']}: {answer['explanation']['method']} on "
                  f"{answer['explanation']['layer'] or 'the input'} for {maps} -> {out}", {**answer, "png": str(out)})


def cmd_token(args):
    run_dir = _run_dir(args)
    key = run_dir.client().key(args.kind)
    if key is None:
        raise MarforgeError(f"no key file in {run_dir.path}: the server is not running or token auth is off",
                            "make serve")
    return Output(key, {args.kind: key})


def cmd_rollout(args):
    from marforge.serve import rollout

    project = project_of(args)
    project.registry.get(args.name, args.version)  # a name or version not in the registry: before any server
    return _report(args, lambda log: rollout.rollout(_run_dir(args, project).client(), project, args.name, args.version,
                                                     retire=args.retire, watch_s=args.watch_seconds, log=log))


def cmd_rollback(args):
    from marforge.serve import rollout

    project = project_of(args)
    project.registry.get(args.name)
    return _report(args, lambda log: rollout.rollback(_run_dir(args, project).client(), project, args.name, log=log))


def _report(args, run):
    """Print each step as it finishes (nothing with --json: the report comes at the end, or with the error)."""
    report = run((lambda line: None) if args.json else print)
    return Output(report.headline(), report.to_dict())


def add_commands(command):
    p = command("serve", cmd_serve, "start TorchServe with every registry version, wait until all are READY, warm them up",
                "python -m marforge serve                       # start, wait for READY workers, print URLs")
    add_paths(p, "model_store", "run_dir", "config")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for READY workers")
    p.add_argument("--warm-seconds", type=float, help="then send each version its samples for this long in all, "
                   "before saying it is up (0: not at all; default: WARM_S of marforge/serve/launch.py)")

    p = command("stop", cmd_stop, "stop the server started by serve (by its pid)", "python -m marforge stop")
    add_paths(p, "run_dir")
    p = command("status", cmd_status, "every model and version: default, workers, queue", "python -m marforge status")
    add_paths(p, "run_dir")

    p = command("predict", cmd_predict, "send one image to the server and print the JSON answer",
                "python -m marforge predict fashion samples/fashion/00000-ankle-boot.png --version 2.0")
    _image_request(p)
    p.add_argument("--protocol", choices=("http", "grpc", "grpc-v2"), default="http",
                   help="HTTP (the inference API), gRPC (TorchServe's inference.proto on the gRPC port) or "
                        "grpc-v2 (the Open Inference Protocol's ModelInfer there: a v2 answer)")
    add_paths(p, "run_dir")

    p = command("explain", cmd_explain, "where the model looked: POST /explanations, heatmaps over the image as a PNG",
                "python -m marforge explain fashion samples/fashion/00000-ankle-boot.png --out boot.png")
    _image_request(p)
    p.add_argument("--out", help="the PNG to write (default: <image name>.explained.png here)")
    add_paths(p, "run_dir")

    p = command("token", cmd_token, "print the server's inference key (for curl); prints nothing else",
                "curl -H \"Authorization: Bearer $(python -m marforge token)\" http://127.0.0.1:8080/ping")
    p.add_argument("--kind", choices=("inference", "management"), default="inference")
    add_paths(p, "run_dir")

    p = command("rollout", cmd_rollout, "register, gate, promote and watch a new version; roll back on failure",
                "python -m marforge rollout fashion 2.0            # exit 3: rejected, 4: rolled back")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--retire", action="store_true", help="unregister the previous version once drained")
    p.add_argument("--watch-seconds", type=float, help="how long to watch after promotion (default: registry)")
    add_paths(p, "model_store", "run_dir")

    p = command("rollback", cmd_rollback, "make the previously promoted version the default again",
                "python -m marforge rollback fashion")
    p.add_argument("name")
    add_paths(p, "model_store", "run_dir")


def _image_request(p):
    """The arguments of a command that sends one image to a model."""
    p.add_argument("name")
    p.add_argument("image")
    p.add_argument("--version", help="a specific version (default: the model's default version)")
