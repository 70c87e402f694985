"""`bench --against REV`: a version served by this checkout against the same version as another commit
serves it, in alternating rounds, so that a change to the request path, the archive or the serving
settings shows as a ratio with the noise of the rounds beside it (issue 20: no regression at 16 and
64 clients).

The other side is that commit's own code, not a setting of this one: a git worktree of REV, where
REV's marforge builds the version's archive (REV's handler, model definition, registry entry) and
serves it alone, as REV's `measure.fixtures.torchserve` does (REV's config.properties, log4j2.xml,
launch environment and serving settings), in a process of its own. The version's weights are
REV's; generated ones that git does not keep (the CheXNet demo's, made by `make`) are copied from
this checkout, so both sides serve the same model. Both sides are sent the same images by this
checkout's load generator, warmed up the same way. REV must be a marforge commit with
`marforge.measure.fixtures` (any since the measure layout).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from marforge.errors import MarforgeError, MeasurementFailed
from marforge.measure import fixtures, machine
from marforge.measure.experiments import images_of, rows_of

NOW = "this checkout"
THEN = "the baseline"
START_TIMEOUT_S = 600.0  # REV's archive build and its server's start
# A ratio this close to 1 is never called a change, however alike one side's rounds were: each round
# starts a server anew, and two starts of the same code differ by more than one start's rounds do
# (an A/A run, `--against HEAD` with nothing changed, shows this machine's spread).
NOISE_FLOOR = {"throughput": 0.05, "p99_ms": 0.10}  # a tail is measured on far fewer requests than a rate
ROUNDS = 3
# What a change is judged on: the mean throughput (higher is better) and the mean p99 (lower is).
MEASURES = (("throughput", "req/s", 1), ("p99_ms", "p99", -1))

# Run by REV's Python in REV's worktree (cwd, so `marforge` is REV's): serve the version alone until
# stdin closes; its first line of output says where.
SERVE_REV = """
import json, sys
from marforge.measure import fixtures
from marforge.project import Project

project = Project.at("models.toml", model_store=sys.argv[3])
mv = project.registry.get(sys.argv[1], sys.argv[2])
with fixtures.torchserve(project, mv) as target:
    print(json.dumps({"url": target.url, "pid": target.pid, "key": target.token() if target.token else None}), flush=True)
    sys.stdin.read()
"""


def _git(root, *args):
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode:
        raise MarforgeError(f"git {' '.join(args)} in {root}: {done.stderr.strip() or 'failed'}",
                            "name a commit of this repository, e.g. --against HEAD~1 (git log --oneline)")
    return done.stdout.strip()


@contextmanager
def worktree(project, rev):
    """A detached git worktree of `rev` (temporary), holding the generated weights it lacks."""
    if not (project.root / ".git").exists():
        raise MarforgeError(f"{project.root} is not a git checkout: --against needs the commit's files from git",
                            "run it in a clone of the repository")
    try:
        commit = _git(project.root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except MarforgeError:
        raise MarforgeError(f"--against {rev}: not a commit of {project.root}",
                            "name one that git log --oneline lists, e.g. --against HEAD~1") from None
    folder = Path(tempfile.mkdtemp(prefix="marforge-against-"))
    tree = folder / "tree"
    _git(project.root, "worktree", "add", "--detach", str(tree), commit)
    try:
        for weights in sorted((project.root / "weights").glob("*")):
            if weights.is_file() and (tree / "weights").is_dir() and not (tree / "weights" / weights.name).exists():
                shutil.copy(weights, tree / "weights" / weights.name)
        yield tree, commit
    finally:
        subprocess.run(["git", "-C", str(project.root), "worktree", "remove", "--force", str(tree)], capture_output=True)
        subprocess.run(["git", "-C", str(project.root), "worktree", "prune"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _rev_env(tree):
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def build(tree, mv, store):
    """REV's archive of `mv`, built and verified by REV's marforge into `store`."""
    done = subprocess.run([sys.executable, "-m", "marforge", "--registry", "models.toml", "archive", "--key", mv.key,
                           "--model-store", str(store)], cwd=tree, env=_rev_env(tree), capture_output=True, text=True,
                          timeout=START_TIMEOUT_S)
    if done.returncode:
        raise MeasurementFailed(f"the baseline could not build {mv.key}: {(done.stderr or done.stdout).strip()[-2000:]}",
                                "the baseline must be a marforge commit that has this version; pick another --against")


@contextmanager
def served(tree, mv, store):
    """REV's server of `mv` (a fixtures.Target) for as long as the block runs."""
    log = store.parent / "rev-serve.log"
    with open(log, "w") as errors:
        process = subprocess.Popen([sys.executable, "-c", SERVE_REV, mv.name, mv.version, str(store)], cwd=tree,
                                   env=_rev_env(tree), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                   text=True)
    try:
        # the first line that is its address, past anything REV's code printed before it ("" if none came)
        line = next((text for text in process.stdout or () if text.startswith('{"url"')), "")
        if not line:
            process.wait(timeout=60)
            raise MeasurementFailed(f"the baseline's server did not start: {log.read_text().strip()[-2000:]}",
                                    "the baseline must be a marforge commit with marforge.measure.fixtures")
        where = json.loads(line)
        yield fixtures.Target(where["url"], where["pid"], {where["pid"]: "frontend"}, lambda: where["key"])
    finally:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def against(project, mv, rev, rounds=ROUNDS, concurrencies=(16, 64), seconds=8.0, log=print):
    """`mv` as this checkout serves it and as commit `rev` serves it, one after the other for
    `rounds` rounds (the first side alternating), each warmed up and then loaded at every
    concurrency; a row per side, round and concurrency."""
    _, bodies = images_of(mv)
    rows = []
    with worktree(project, rev) as (tree, commit), tempfile.TemporaryDirectory(prefix="marforge-against-store-") as out:
        store = Path(out) / "model_store"
        store.mkdir()
        log(f"building {mv.key} as {commit[:7]} builds it")
        build(tree, mv, store)
        sides = {NOW: lambda: fixtures.torchserve(project, mv), THEN: lambda: served(tree, mv, store)}
        for round_ in range(1, rounds + 1):
            for name in (NOW, THEN) if round_ % 2 else (THEN, NOW):
                with sides[name]() as target:
                    for row in rows_of(name, target, bodies, concurrencies, seconds):
                        row["round"] = round_
                        rows.append(row)
                        log(f"{row}")
        subject = _git(project.root, "log", "-1", "--format=%s", commit)
    return {"seconds": seconds, "machine": machine.describe(project.root), "model": mv.key, "rows": rows,
            "rounds": rounds, "against": {"rev": rev, "commit": commit[:7], "subject": subject}}


def verdicts(rows):
    """Per concurrency and measure (MEASURES): this checkout's mean over the baseline's, the noise (the
    widest spread, max over min minus one, of either side's rounds there, at least NOISE_FLOOR), and
    whether the ratio is within it, better or worse."""
    by = {}
    for r in rows:
        by.setdefault((r["row"], r["concurrency"]), []).append(r)
    out = {}
    for concurrency in sorted({c for _, c in by}):
        for key, name, better in MEASURES:
            now, then = ([r[key] for r in by.get((side, concurrency), [])] for side in (NOW, THEN))
            if not now or not then or not min(now + then):
                out[concurrency, name] = {"ratio": None, "noise": None, "verdict": "not measured"}
                continue
            ratio = (sum(now) / len(now)) / (sum(then) / len(then))
            noise = max(NOISE_FLOOR[key], max(max(side) / min(side) - 1 for side in (now, then)))
            verdict = ("within noise" if abs(ratio - 1) <= noise else
                       "better" if (ratio - 1) * better > 0 else "worse: a regression")
            out[concurrency, name] = {"ratio": round(ratio, 3), "noise": round(noise, 3), "verdict": verdict}
    return out


def markdown(results):
    """`bench --against`: every round, the means, the ratios and the verdicts per concurrency."""
    from marforge.measure.tables import ROUND_COLUMNS, head, rounds_lines

    a = results["against"]
    lines = head(f"`bench --against {a['rev']}`: {results['model']}, this checkout against commit {a['commit']} "
                 f"(\"{a['subject']}\") as the baseline, {results['rounds']} alternating rounds, {results['seconds']:g} s "
                 "per point", results, ROUND_COLUMNS)
    lines += rounds_lines(results, [], [(NOW, THEN, "this checkout / the baseline")])
    lines += ["", "| conc. | measure | ratio | noise (rounds' spread) | verdict |", "| ---: | --- | ---: | ---: | --- |"]
    for (concurrency, name), v in verdicts(results["rows"]).items():
        lines.append(f"| {concurrency} | {name} | {v['ratio']} | {v['noise']} | {v['verdict']} |")
    return "\n".join(lines) + "\n"
