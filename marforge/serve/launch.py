"""`marforge serve`: which versions a server loads, which one of each model is the default, and how
many threads each worker gets; then the process is started (process.py).

It loads every registry version that a rollout has not retired, from built archives, with each
model's default taken from the run dir's state (the last promotion) or, failing that, from the
registry. The frontend logs with the project's log4j2.xml when there is one.
"""

from marforge import files, shipped
from marforge.device import threads_per_worker as threads_per_worker  # re-exported: bench tuning imports it here
from marforge.errors import ServerError
from marforge.serve import process, state
from marforge.serve.config import read_properties, render
from marforge.serve.rundir import RunDir

# `marforge serve` (make serve) sends each version its own samples for this long in all, from
# WARM_CLIENTS clients, before it says the server is up: a frontend fresh from its start answers a
# lone request at about twice its latency once at work (its JIT has not compiled the request path
# yet; docs/performance.md, `make bench-first`), and the workers see their batch sizes through the
# frontend. A worker's own warm-up (the handler's) runs before it is READY, this after.
WARM_S, WARM_CLIENTS = 6.0, 4
MIN_WARM_S = 0.5  # per version, however many are loaded

# The environment marforge's server runs in, where it is the only lever (docs/operations.md): glibc's
# malloc makes up to 8 arenas per core for the frontend's threads, memory the JVM does not account.
FRONTEND_ENV = {"MALLOC_ARENA_MAX": "2"}


def defaults_for(registry, versions, saved, chosen, run_dir):
    """{model name: default version} for the models among `versions`.

    `saved` is the run dir's state; `chosen` says the caller picked `versions`, and then a model's
    first version among them is its default when the recorded one is not loaded.
    """
    loaded = {(mv.name, mv.version) for mv in versions}
    defaults = {}
    for name in dict.fromkeys(mv.name for mv in versions):
        defaults[name] = saved["defaults"].get(name, registry.models[name].default_version)
        if chosen and (name, defaults[name]) not in loaded:
            defaults[name] = next(mv.version for mv in versions if mv.name == name)
        if (name, defaults[name]) not in loaded:
            origin = run_dir.state_file.name if name in saved["defaults"] else "models.toml"
            raise ServerError(f"the default of {name} is {defaults[name]} (from {origin}), "
                              "which is not among the versions to load",
                              f"marforge rollback {name}, or fix {run_dir.state_file}")
    return defaults


def loaded(project):
    """The versions `serve` loads unless told: every registry version a rollout has not retired."""
    retired = state.load(RunDir(project.run_dir))["retired"]
    return [mv for mv in project.registry.all_versions() if mv.version not in retired.get(mv.name, [])]


def serve(project, versions=None, ports=None, timeout=300.0, stock=False, env=None):
    """Start a server for `project` (its model store, run dir and base config) and wait until every
    version it loads is READY; returns the process.Server.

    `versions` (default: every registry version not retired by a rollout) picks what it loads;
    `ports` moves every listener (config.PORT_NAMES -> port). `stock` leaves everything else to
    TorchServe's defaults, as a user who installs it would (the benchmark's stock rows): no base
    config, no thread count for the workers, its own logging. `env` replaces FRONTEND_ENV, the
    environment marforge adds to the frontend's (the benchmark's JVM comparison).
    """
    registry, model_store, run_dir = project.registry, project.model_store, RunDir(project.run_dir)
    saved = state.load(run_dir)
    chosen = versions is not None
    if not chosen:
        versions = loaded(project)
    missing = [str(mv.archive_path(model_store)) for mv in versions if not mv.archive_path(model_store).is_file()]
    if missing:
        raise ServerError(f"archives not built: {', '.join(missing)}", "make archive")
    defaults = defaults_for(registry, versions, saved, chosen, run_dir)
    expected = sorted({(mv.name, mv.version) for mv in versions})
    if stock:
        props = render({}, versions, model_store, defaults, ports=ports)
        started = process.start(run_dir, props, expected, timeout=timeout)
    else:
        props = render(read_properties(project.config), versions, model_store, defaults, ports=ports,
                       source=project.config)
        threads = threads_per_worker(sum(mv.serving["workers"] for mv in versions))
        env = {**(FRONTEND_ENV if env is None else env), **worker_threads([*registry.all_versions(), *versions])}
        started = process.start(run_dir, props, expected, timeout=timeout, threads=threads,
                                log_config=project.log_config, env=env)
    for mv in versions:
        state.record_archive(run_dir, mv.key, files.sha256(mv.archive_path(model_store)))
    return started


def worker_threads(versions):
    """The environment that gives each version's workers the threads `make tune` chose for them
    (contract.THREADS_ENV, read by the handler; a later entry of a key wins); the other versions'
    workers get OMP_NUM_THREADS's share. Every registry version is in it, not only those loaded: a
    rollout registers its candidate with the server running."""
    contract = shipped.contract()
    chosen = {mv.key: mv.serving["threads"] for mv in versions}
    chosen = {key: threads for key, threads in chosen.items() if threads}
    return {contract.THREADS_ENV: contract.threads_setting(chosen)} if chosen else {}


def warm(started, versions, seconds=None, log=lambda line: None):
    """Send each of `versions` its samples (verify.sample_files) on its versioned URL from WARM_CLIENTS
    clients (threads, each with a client of its own), `seconds` in all (default WARM_S; at least
    MIN_WARM_S each); returns {version key: (requests, failed)}. A failed request is counted, not
    raised: the server was READY, and the samples are the user's."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from marforge.archiving.verify import sample_files
    from marforge.errors import MarforgeError
    from marforge.serve.client import Client

    each = max(MIN_WARM_S, (WARM_S if seconds is None else seconds) / max(1, len(versions)))
    counts = {}
    for mv in versions:
        bodies = [path.read_bytes() for path, _ in sample_files(mv)]
        deadline = time.monotonic() + each

        def client_loop(offset, mv=mv, bodies=bodies, deadline=deadline):
            client = Client(started.client.endpoints, started.client.key_file)
            sent = failed = 0
            while time.monotonic() < deadline:
                try:
                    client.predict(mv.name, bodies[(offset + sent) % len(bodies)], mv.version)
                except MarforgeError:
                    failed += 1
                sent += 1
            return sent, failed

        with ThreadPoolExecutor(WARM_CLIENTS) as pool:
            done = list(pool.map(client_loop, range(WARM_CLIENTS)))
        counts[mv.key] = (sum(n for n, _ in done), sum(f for _, f in done))
        log(f"warmed {mv.key}: {counts[mv.key][0]} requests in {each:.1f} s, {counts[mv.key][1]} failed")
    return counts
