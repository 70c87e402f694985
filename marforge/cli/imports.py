"""Commands that bring a model in: import, expect."""

from marforge import shipped
from marforge.cli import Output, existing, numbers, project_of
from marforge.errors import MarforgeError


def _floats(text, flag):
    return numbers(text, flag, "0.485,0.456,0.406", kind=float) if text else None


def cmd_import(args):
    from marforge.archiving import import_exported, importer

    if args.format and args.exported:
        raise MarforgeError("--format with --exported: an exported model is archived as it is, in its own format",
                            "leave out --format")

    project = project_of(args)
    labels = args.labels.split(",") if args.labels else None
    if args.labels_file:
        hint = "pass a file with one label name per line, in output order"
        text = existing(args.labels_file, "--labels-file", hint).read_text()
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    size = numbers(args.image_size, "--image-size", "224,224 (or 224)") if args.image_size else None
    preprocess = {"image_size": size if size is None or len(size) == 2 else size * 2, "color": args.color,
                  "mean": _floats(args.mean, "--mean"), "std": _floats(args.std, "--std"), "resize": args.resize,
                  "crop": args.crop}
    bad = [item for item in args.handler or () if "=" not in item]
    if bad:
        raise MarforgeError(f"--handler {bad[0]!r}: not KEY=VALUE", "e.g. --handler crop=center")
    handler = dict(item.split("=", 1) for item in args.handler) if args.handler else None
    handler = handler and {k: _number(v) for k, v in handler.items()}
    own = importer.own_entries(project, args.handler_file, args.extra_file or (), args.requirements) if args.handler_file else None
    if args.exported:
        metadata, report = import_exported.import_exported(
            project, args.name, args.version, args.exported, own=own, preset=args.preset, handler=handler, force=args.force,
            labels=labels, task=args.task, activation=args.activation, preprocess=preprocess)
    else:
        metadata, report = importer.import_checkpoint(
            project, args.name, args.version, args.checkpoint, preset=args.preset, fmt=args.format, handler=handler,
            strip_prefix=args.strip_prefix, add_prefix=args.add_prefix, force=args.force, model_def=args.model_def,
            labels=labels, key=args.key, task=args.task, activation=args.activation, preprocess=preprocess, own=own)
    ready, line = importer.provide_samples(project, args.name, args.samples, args.preset, any_file=own is not None)
    report.append(line)
    if ready and own:
        report.append(f"next: record its expected answers: make expect NAME={args.name} VERSION={args.version}, "
                      "then make archive && make serve")
    elif ready:
        report.append(f"next: make archive && make serve (or python -m marforge archive {args.name} {args.version})")
    return Output("\n".join(report), metadata)


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text, text)


def cmd_expect(args):
    from marforge.archiving import archive

    project = project_of(args)
    mv = project.registry.get(args.name, args.version)
    path, recorded = archive.record_answers(mv)
    return Output(f"recorded {mv.name} {mv.version}'s answers to {len(recorded)} sample(s) in {project.relative(path)}: "
                  f"make archive now checks that its archive answers them so (read them: they are what a rollout "
                  f"and every rebuild are held to)", {"file": str(path), "answers": recorded})


def add_commands(command):
    p = command("import", cmd_import, "turn a checkpoint or an exported model (TorchScript, ONNX, torch.export) "
                "into a version's weights with provenance, and add the version to models.toml",
                "python -m marforge import chexnet 1.0 --checkpoint model.pth.tar --preset chexnet\n"
                "  python -m marforge import texts 1.0 --exported model.pt2 --handler-file handlers/texts.py "
                "--extra-file vocab.json --samples my_texts/")
    p.add_argument("name")
    p.add_argument("version")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="weights: torch.save (zip or legacy) or safetensors, with --model-def")
    source.add_argument("--exported", help="an exported model, recognised by its content: TorchScript "
                        "(torch.jit.save), ONNX, or a torch.export program (torch.export.save); no --model-def")
    p.add_argument("--handler-file", help="your own handler module (a BaseHandler subclass), archived as it is")
    p.add_argument("--extra-file", action="append", help="a file your handler reads, shipped beside it (repeatable)")
    p.add_argument("--requirements", help="your handler's requirements file: checked against the serving "
                   "environment before archiving (TorchServe will not install it at model load)")
    p.add_argument("--preset", help="what the checkpoint is: chexnet (model, labels, preprocessing, outputs)")
    p.add_argument("--samples", help="a folder of sample images, or of request bodies for your own handler (with a "
                   "labels.json where labels are known), copied to samples/<name>/ for make archive to verify with "
                   "(default: the preset's, if any)")
    p.add_argument("--model-def", help="the model definition file (one nn.Module built with no arguments)")
    p.add_argument("--key", help="the checkpoint entry holding the tensors (default: the whole file, or its "
                   "state_dict, model_state_dict or model entry)")
    p.add_argument("--labels", help="comma-separated label names in output order")
    p.add_argument("--labels-file", help="a file with one label name per line, in output order")
    p.add_argument("--image-size", help="H,W (or one number) of the model's input")
    p.add_argument("--color", choices=("grayscale", "rgb"))
    p.add_argument("--mean", help="comma-separated, one per channel, for pixels scaled to [0, 1]")
    p.add_argument("--std", help="comma-separated, one per channel")
    p.add_argument("--resize", type=int, help="resize the shorter side to this before a center or ten crop")
    p.add_argument("--crop", choices=shipped.contract().CROPS,
                   help="keep: each image at its own size (a torchvision detector resizes inside)")
    p.add_argument("--task", choices=tuple(shipped.contract().TASKS),
                   help="detection and segmentation: a model with torchvision's interface (default: multiclass)")
    p.add_argument("--activation", choices=("softmax", "sigmoid", "none"),
                   help="how outputs become probabilities (none: the model outputs probabilities)")
    p.add_argument("--format", help="the archive format make serve loads (default: eager)")
    p.add_argument("--handler", action="append", metavar="KEY=VALUE",
                   help="a handler option for the registry entry, e.g. crop=center (repeatable)")
    p.add_argument("--strip-prefix", help="remove this prefix from every checkpoint key first")
    p.add_argument("--add-prefix", help="add this prefix to every checkpoint key")
    p.add_argument("--force", action="store_true", help="replace the version's weights if they exist")

    p = command("expect", cmd_expect, "record what a version served by its own handler answers to its samples, "
                "as the expected answers its archive is verified with (samples/<name>/expected-<version>.json)",
                "python -m marforge expect debsections 1.0")
    p.add_argument("name")
    p.add_argument("version")
