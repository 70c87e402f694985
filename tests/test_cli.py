"""The command line: argument handling, exit codes and the exact messages a user reads.

Most commands run in-process through `marforge.cli.main`; one test runs `python -m marforge` as a
user would, and the Makefile's two standard-library commands run in a Python that cannot import
torch, numpy, Pillow, yaml or requests.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from marforge.cli import main
from marforge.errors import ServerError

REGISTRY = ROOT / "models.toml"
SCENES = [f"store/{m}-{v}.mar" for m in ("fashiondet", "fashionseg", "debsections") for v in ("1.0", "2.0")]  # their registry formats


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `marforge --registry models.toml --device cpu ARGV` (the CPU
    machine's formats, whatever this machine is)."""
    try:
        code = main(["--registry", str(REGISTRY), "--device", "cpu", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command_with_an_example(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("archive", "verify", "archives", "stamp", "train", "samples", "serve", "stop", "status",
                    "predict", "token", "rollout", "rollback", "bench", "soak"):
        assert command in out
    code, out, _ = run(capsys, "rollout", "--help")
    assert code == 0 and "example:\n  python -m marforge rollout fashion 2.0" in out


def test_a_usage_error_exits_1_and_says_what_to_run(capsys):
    code, _, err = run(capsys, "launch")
    assert code == 1
    assert "error: argument command: invalid choice: 'launch'" in err and err.endswith("  next: marforge --help\n")
    code, _, err = run(capsys, "rollout", "fashion")
    assert code == 1 and "the following arguments are required: version" in err
    assert err.endswith("  next: marforge rollout --help\n")


def test_an_unknown_model_names_the_known_ones_and_the_fix(capsys):
    code, out, err = run(capsys, "archive", "shoes")
    assert (code, out) == (1, "")
    assert err == (f"error: {REGISTRY}: no model named 'shoes' "
                   "(known: fashion, digits, chexnet, fashiondet, fashionseg, debsections)\n"
                   "  next: add a [models.shoes] table to models.toml\n")
    code, _, err = run(capsys, "archive", "fashion", "7.0")
    assert err == (f"error: {REGISTRY}: model 'fashion' has no version '7.0' (known: 1.0, 2.0)\n"
                   '  next: add a [models.fashion.versions."7.0"] table to models.toml\n')


def test_archives_lists_what_the_makefile_builds(capsys):
    code, out, _ = run(capsys, "archives", "--model-store", "store")
    assert code == 0 and out.split() == ["store/fashion-1.0.mar", "store/fashion-2.0.mar", "store/digits-1.0.mar",
                                         "store/chexnet-0.1.mar", *SCENES]
    code, out, _ = run(capsys, "archives", "--model-store", "store", "--formats", "eager,onnx")
    assert out.split() == ["store/fashion-1.0.mar", "store/fashion-2.0-eager.mar", "store/digits-1.0-eager.mar",
                           "store/chexnet-0.1-eager.mar", *SCENES,
                           "store/fashion-1.0-onnx.mar", "store/fashion-2.0.mar", "store/digits-1.0.mar",
                           "store/chexnet-0.1.mar"]  # a detector, segmenter or own handler is not archived as onnx
    code, out, _ = run(capsys, "archives", "--model-store", "store", "--formats", "torchscript")
    assert [p for p in out.split() if "scene" in p or "det" in p or "seg" in p] == [
        "store/fashiondet-1.0-torchscript.mar", "store/fashiondet-2.0-torchscript.mar",
        "store/fashionseg-1.0-torchscript.mar", "store/fashionseg-2.0-torchscript.mar"]
    code, _, err = run(capsys, "archives", "--formats", "tensorrt")
    assert code == 1 and err == ("error: unknown archive format(s): tensorrt\n"
                                 "  next: use some of: eager, torchscript, onnx, compile, quantized, cudagraphs, export\n")


def test_json_reaches_every_command_and_errors_too(capsys, tmp_path):
    code, out, _ = run(capsys, "--json", "archives", "--model-store", "store")
    assert code == 0 and json.loads(out) == ["store/fashion-1.0.mar", "store/fashion-2.0.mar", "store/digits-1.0.mar",
                                             "store/chexnet-0.1.mar", *SCENES]
    code, out, err = run(capsys, "--json", "status", "--run-dir", str(tmp_path))
    assert code == 2
    assert json.loads(out) == {"error": f"{tmp_path}/endpoints.json not found: no server was started from {tmp_path}",
                               "next": "make serve", "exit_code": 2, "report": None}
    assert err.startswith("error: ")


def test_commands_against_no_server_exit_2_or_say_nothing_runs(capsys, tmp_path):
    code, _, err = run(capsys, "status", "--run-dir", str(tmp_path))
    assert (code, err) == (2, f"error: {tmp_path}/endpoints.json not found: no server was started from {tmp_path}\n"
                              "  next: make serve\n")
    code, out, _ = run(capsys, "stop", "--run-dir", str(tmp_path))
    assert (code, out) == (0, f"no server was running from {tmp_path}\n")


def test_serving_unbuilt_archives_says_make_archive(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "--model-store", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "run"))
    assert code == 2
    assert err == (f"error: archives not built: {tmp_path}/empty/fashion-1.0.mar, {tmp_path}/empty/fashion-2.0.mar, "
                   f"{tmp_path}/empty/digits-1.0.mar, {tmp_path}/empty/chexnet-0.1.mar, "
                   + ", ".join(f"{tmp_path}/empty/{m}-{v}.mar" for m in ("fashiondet", "fashionseg", "debsections")
                               for v in ("1.0", "2.0"))
                   + "\n  next: make archive\n")


def test_train_without_a_version_says_how(capsys):
    code, _, err = run(capsys, "train")
    assert (code, err) == (1, "error: say which version to train: NAME VERSION, or --all\n"
                              "  next: python -m marforge train --all\n")


def test_the_entry_point_runs_as_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "marforge", "--registry", str(REGISTRY), "status", "--run-dir",
                           str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {tmp_path}/endpoints.json not found")


BLOCKED = ("import os, sys\nos.environ['MARFORGE_DEVICE'] = 'cpu'\n"
           "for m in ('torch', 'numpy', 'PIL', 'yaml', 'requests', 'psutil'):\n    sys.modules[m] = None\n")


def test_the_makefiles_commands_need_only_the_standard_library(tmp_path):
    """`make` lists archives and writes input stamps before the virtualenv exists."""
    script = BLOCKED + ("from marforge.cli import main\n"
                        f"assert main(['--registry', {str(REGISTRY)!r}, 'archives']) == 0\n"
                        f"assert main(['--registry', {str(REGISTRY)!r}, 'stamp', 'fashion-2.0', "
                        f"'--model-store', {str(tmp_path)!r}]) == 0\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == ("model_store/fashion-1.0.mar model_store/fashion-2.0.mar "
                                          "model_store/digits-1.0.mar model_store/chexnet-0.1.mar "
                                          "model_store/fashiondet-1.0.mar model_store/fashiondet-2.0.mar "
                                          "model_store/fashionseg-1.0.mar model_store/fashionseg-2.0.mar "
                                          "model_store/debsections-1.0.mar model_store/debsections-2.0.mar")
    stamp = json.loads((tmp_path / ".inputs" / "fashion-2.0.json").read_text())
    assert stamp["key"] == "fashion-2.0" and stamp["format"] == "onnx" and len(stamp["eval"]) == 64


def test_a_stamp_changes_only_when_the_versions_own_inputs_do(capsys, tmp_path):
    store = str(tmp_path)
    assert run(capsys, "stamp", "digits-1.0", "--model-store", store)[1] == f"{tmp_path}/.inputs/digits-1.0.json: updated\n"
    assert run(capsys, "stamp", "digits-1.0", "--model-store", store)[1] == f"{tmp_path}/.inputs/digits-1.0.json: unchanged\n"
    changed = tmp_path / "models.toml"
    changed.write_text(REGISTRY.read_text().replace("min_accuracy = 0.95", "min_accuracy = 0.5")
                       .replace('[models.digits.versions."1.0"]', '[models.digits.versions."1.0"]\nhandler = { top_k = 5 }'))
    for name in ("model_defs", "samples", "eval", "weights"):
        (tmp_path / name).symlink_to(ROOT / name)
    code = main(["--registry", str(changed), "--device", "cpu", "stamp", "fashion-1.0", "--model-store", store])
    assert code == 0 and capsys.readouterr().out.endswith("fashion-1.0.json: updated\n")  # first stamp in this store
    main(["--registry", str(changed), "--device", "cpu", "stamp", "digits-1.0", "--model-store", store])
    assert capsys.readouterr().out.endswith("digits-1.0.json: updated\n")  # its handler options changed


def live_server_registry():
    from marforge.project import Project

    return Project.at(REGISTRY).registry


@pytest.mark.integration
def test_status_predict_and_a_refused_rollout_against_the_live_server(live_server, store, samples, capsys):
    run_dir = str(live_server.run_dir.path)
    from marforge.serve import status

    code, out, _ = run(capsys, "--json", "status", "--run-dir", run_dir)
    assert code == 0 and json.loads(out) == status.annotate(status.collect(live_server.client), live_server_registry())
    path, label = samples["fashion"][0]
    code, out, _ = run(capsys, "predict", "fashion", str(path), "--version", "2.0", "--run-dir", run_dir)
    assert code == 0 and json.loads(out)["predictions"][0]["label"] == label
    code, out, _ = run(capsys, "token", "--run-dir", run_dir)
    assert code == 0 and out == live_server.client.key("inference") + "\n"
    code, out, err = run(capsys, "--json", "rollout", "fashion", "1.0", "--run-dir", run_dir, "--model-store", str(store))
    assert code == 3, err
    error = json.loads(out)
    assert error["error"] == "fashion 1.0 is already the default" and error["next"] == "marforge status"
    assert error["report"]["steps"][0]["step"] == "preflight" and error["report"]["steps"][0]["ok"] is False


def test_a_path_that_does_not_exist_is_the_users_mistake_not_a_bug(capsys, tmp_path):
    example = "python -m marforge {} fashion samples/fashion/00000-ankle-boot.png"
    for command in ("predict", "explain"):
        code, out, err = run(capsys, command, "fashion", "/nope.png", "--run-dir", str(tmp_path))
        assert (code, out) == (1, "")
        assert err == ("error: /nope.png: no such file (the image to send)\n"
                       f"  next: pass an image file that exists, e.g. {example.format(command)}\n")
    code, _, err = run(capsys, "predict", "fashion", str(tmp_path))
    assert (code, err) == (1, f"error: {tmp_path}: not a file (the image to send)\n"
                              f"  next: pass an image file that exists, e.g. {example.format('predict')}\n")
    image = ROOT / "samples" / "fashion" / "00000-ankle-boot.png"
    code, _, err = run(capsys, "explain", "fashion", str(image), "--out", "/nope/boot.png", "--run-dir", str(tmp_path))
    assert (code, err) == (1, "error: /nope/boot.png: folder /nope does not exist (--out)\n"
                              "  next: create it (mkdir -p /nope) or pass --out in a folder that exists\n")
    hint = "  next: pass a .mar file that make archive built, e.g. model_store/fashion-2.0.mar\n"
    code, _, err = run(capsys, "verify", "/nope.mar")
    assert (code, err) == (1, "error: /nope.mar: no such file (the archive to verify)\n" + hint)
    code, _, err = run(capsys, "verify", str(REGISTRY))
    assert (code, err) == (1, f"error: {REGISTRY}: not a .mar archive (File is not a zip file)\n" + hint)


def test_a_name_not_in_the_registry_is_refused_before_any_server_is_asked(capsys, tmp_path):
    image = str(ROOT / "samples" / "fashion" / "00000-ankle-boot.png")
    no_model = (f"error: {REGISTRY}: no model named 'shoes' (known: fashion, digits, chexnet, fashiondet, fashionseg, debsections)\n"
                "  next: add a [models.shoes] table to models.toml\n")
    no_version = (f"error: {REGISTRY}: model 'fashion' has no version '7.0' (known: 1.0, 2.0)\n"
                  '  next: add a [models.fashion.versions."7.0"] table to models.toml\n')
    for argv, message in ((("predict", "shoes", image), no_model), (("explain", "fashion", image, "--version", "7.0"),
                          no_version), (("rollout", "fashion", "7.0"), no_version), (("rollback", "shoes"), no_model)):
        assert run(capsys, *argv, "--run-dir", str(tmp_path))[::2] == (1, message)


def test_a_bad_bench_flag_names_itself_and_a_good_value(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--sweep", "--queue")
    assert code == 1 and "error: argument --queue: not allowed with argument --sweep\n" in err
    code, _, err = run(capsys, "bench", "--compare-formats", "--protocols")
    assert code == 1 and "error: argument --protocols: not allowed with argument --compare-formats\n" in err
    for value in ("a,b", "16,0"):
        assert run(capsys, "bench", "--concurrency", value)[::2] == (
            1, f"error: --concurrency '{value}': not a comma-separated list of whole numbers above 0\n"
               "  next: e.g. --concurrency 1,16,64\n")
    assert run(capsys, "bench", "--formats", "eager,tensorrt")[::2] == (
        1, "error: unknown archive format(s): tensorrt\n"
           "  next: use some of: eager, torchscript, onnx, compile, quantized, cudagraphs, export\n")
    assert run(capsys, "bench", "--images", str(tmp_path / "none"))[::2] == (
        1, f"error: {tmp_path}/none: no such folder (--images)\n  next: pass a folder of images, e.g. --images eval/fashion\n")


def test_bench_refuses_archives_that_are_missing_or_older_than_their_inputs(capsys, tmp_path):
    store = tmp_path / "store"
    code, _, err = run(capsys, "bench", "fashion", "2.0", "--model-store", str(store))
    assert (code, err) == (1, "error: refusing to measure archives that are not what make builds now: "
                              f"{store}/fashion-2.0.mar: not built; {store}/fashion-2.0-eager.mar: not built; "
                              f"{store}/fashion-2.0-torchscript.mar: not built; {store}/fashion-2.0-quantized.mar: "
                              f"not built; {store}/fashion-2.0-compile.mar: not built\n"
                              "  next: make archive FORMAT=onnx,eager,torchscript,quantized,compile\n")
    store.mkdir()
    archives = ("fashion-2.0.mar", "fashion-2.0-eager.mar", "fashion-2.0-torchscript.mar", "fashion-2.0-quantized.mar",
                "fashion-2.0-compile.mar")
    for name in archives:
        (store / name).write_bytes(b"built before its stamp")
    after_weights = max((ROOT / "weights" / f"fashion-2.0.{suffix}").stat().st_mtime for suffix in ("pt", "json")) + 1
    os.utime(store / "fashion-2.0.mar", (after_weights, after_weights))  # built after its weights, before the stamp
    run(capsys, "stamp", "fashion-2.0", "--model-store", str(store))
    for name in archives[1:]:
        os.utime(store / name)  # built after the stamp: current
    stamp = store / ".inputs" / "fashion-2.0.json"
    code, _, err = run(capsys, "bench", "fashion", "2.0", "--model-store", str(store))
    assert (code, err) == (1, "error: refusing to measure archives that are not what make builds now: "
                              f"{store}/fashion-2.0.mar: {stamp} changed after it was built\n  next: make archive\n")
    stamp.write_text(stamp.read_text().replace('"format": "onnx"', '"format": "eager"'))  # the inputs moved on
    os.utime(stamp, (after_weights, after_weights))
    for name in archives:
        os.utime(store / name)
    code, _, err = run(capsys, "bench", "fashion", "2.0", "--model-store", str(store))
    why = "fashion-2.0's registry entry, model definition, samples or eval images changed after it was built"
    assert (code, err) == (1, "error: refusing to measure archives that are not what make builds now: "
                              + "; ".join(f"{store}/{name}: {why}" for name in archives)
                              + "\n  next: make archive FORMAT=onnx,eager,torchscript,quantized,compile\n")


def test_an_archive_older_than_the_code_that_builds_it_is_stale(tmp_path):
    from marforge.archiving import inputs
    from marforge.project import Project

    mv = Project.at(REGISTRY).registry.get("fashion", "2.0")
    archive = tmp_path / "store" / "fashion-2.0.mar"
    archive.parent.mkdir()
    archive.write_bytes(b"built after its weights")
    built = max(Path(mv.weights).stat().st_mtime, Path(mv.metadata).stat().st_mtime) + 10
    os.utime(archive, (built, built))
    checkout = tmp_path / "checkout"
    (checkout / "handlers").mkdir(parents=True)
    for name in ("image_handler.py", "protocols.py"):
        (checkout / "handlers" / name).write_text("# the code\n")
        os.utime(checkout / "handlers" / name, (built - 1, built - 1))
    assert inputs.stale(archive.parent, mv, archive, checkout) is None
    os.utime(checkout / "handlers" / "protocols.py", (built + 1, built + 1))  # edited after the build
    assert inputs.stale(archive.parent, mv, archive, checkout) == (
        "the code that builds it changed after it was built (handlers/protocols.py)")
    from marforge import shipped

    shipped_files = {f"handlers/{name}" for name in (shipped.HANDLER_FILE, *shipped.MODULES)}
    assert {str(p) for p in inputs.build_code() if str(p).startswith("handlers/")} == shipped_files  # not users' own


def test_explaining_a_detector_says_it_has_no_explanations_and_what_answers_it(capsys):
    scene = sorted((ROOT / "samples" / "fashiondet").glob("*.png"))[0]
    assert run(capsys, "explain", "fashiondet", str(scene), "--version", "2.0")[::2] == (
        1, "error: fashiondet 2.0 is a detection model: it has no explanations\n"
           f"  next: make predict MODEL=fashiondet VERSION=2.0 IMAGE={scene} answers it\n")


def test_serve_names_a_missing_base_config(capsys, tmp_path):
    code, _, err = run(capsys, "serve", "--config", str(tmp_path / "none.properties"), "--run-dir", str(tmp_path))
    assert (code, err) == (1, f"error: {tmp_path}/none.properties: no such file (the base TorchServe config)\n"
                              "  next: pass one with --config, e.g. --config config.properties\n")


def test_a_command_that_starts_a_server_names_a_missing_base_config(tmp_path):
    from marforge.serve.config import read_properties

    with pytest.raises(ServerError) as caught:  # tune and bench start servers without serve's --config check
        read_properties(tmp_path / "config.properties")
    assert caught.value.message == f"{tmp_path}/config.properties: no such file (the base TorchServe config every " \
                                   "server starts from)" and "MARFORGE_CONFIG=" in caught.value.hint


def test_a_bad_import_flag_names_itself_and_a_good_value(capsys, tmp_path):
    base = ("import", "xraycheck", "7.0", "--checkpoint", str(tmp_path / "model.pth.tar"))
    for flags, message in (
            (("--labels-file", "/nope.txt"), "error: /nope.txt: no such file (--labels-file)\n"
                                             "  next: pass a file with one label name per line, in output order\n"),
            (("--image-size", "big"), "error: --image-size 'big': not a comma-separated list of whole numbers above 0\n"
                                      "  next: e.g. --image-size 224,224 (or 224)\n"),
            (("--std", "0.2,wide"), "error: --std '0.2,wide': not a comma-separated list of numbers\n"
                                    "  next: e.g. --std 0.485,0.456,0.406\n"),
            (("--handler", "crop"), "error: --handler 'crop': not KEY=VALUE\n  next: e.g. --handler crop=center\n")):
        assert run(capsys, *base, *flags)[::2] == (1, message)
