"""Measuring: how fast and how steady a served model is, against the alternatives.

    loadgen.py      the one load generator (asyncio HTTP and gRPC): every measurement, and load under tests
    sampling.py     one load run: latency, throughput, and each server process's CPU and memory
    machine.py      what a measurement ran on (cores, processor, GPU, commit), named in every report
    fixtures.py     the servers measured: marforge's TorchServe, stock TorchServe, the Flask baseline
    flask_app.py    the Flask baseline itself
    experiments.py  `make bench` and `make bench-formats`: the rows, the ceiling, the formats, the protocols
    by_task.py      which rows apply to a version's task, why the others do not, TorchServe's own handler for it
    answers.py      each server's answers to each image: their sizes, or why it answered none
    tuning.py       the server's own settings: the defaults sweep, the request queue, the JVM's bounds
    first.py        `make bench-first`: the first requests after a start and after a promotion, warm-up on and off
    lone.py         `make bench-lone`: where a lone client's request goes, by the frontend's own counters
    tune.py         `make tune`: a version's workers, threads, batch size and window, chosen by measurement
    against.py      `make bench-against`: a version as this checkout serves it against another commit's own server
    targets.py      what `make bench` must show, as data
    tables.py       the markdown of every kind of result
    report.py       results folder, plot and the docs' generated blocks
    soak.py         `make soak`: errors, p99 drift and memory growth under steady load
    kserve_paths.py `make bench-kserve`: KServe's own and stock runtime pods, first answer, v1/v2 rows
"""
