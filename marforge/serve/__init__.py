"""Operating a server: start TorchServe for the registry's archives, talk to it, move traffic safely.

    rundir.py   the run directory's layout: pid, endpoints, keys, logs, state (nothing else spells it)
    config.py   config.properties: the base file, the model snapshot, the ports
    process.py  the TorchServe process: start detached, wait for READY workers, stop by pid
    launch.py   `marforge serve`: which versions load, each model's default, threads per worker
    client.py   the inference, management and metrics APIs, with tokens and typed errors
    grpc_client.py  the gRPC inference API (TorchServe's inference.proto), the same answers and errors
    state.py    what the run dir remembers across restarts (promoted defaults, history)
    status.py   what is served right now
    overlay.py  an explanation's heatmaps drawn over its image (make explain)
    gate.py     a rollout's measurements: the gate before promotion, the watch after
    rollout.py  gated promotion, watch, automatic rollback, drained retirement
"""
