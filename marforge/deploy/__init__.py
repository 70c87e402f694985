"""Deploying beyond one machine: what a cluster runs marforge's archives with.

    kserve.py    `make kserve`: a version's storage location (config.properties, model-store/), the
                 runtime that serves it and its InferenceService YAML (CPU, GPU, canary)
    runtime.py   marforge's own ServingRuntime: TorchServe alone on 8080, its probes and preStop drain
    defaults.py  `make kserve`'s defaults (image, pod size, protocol, runtime), standard library only
    schema.py    checks KServe documents against KServe's CRDs and Kubernetes' own schemas
    pod.py       a bundle's TorchServe (and the stock proxy) started here as its runtime's container starts it
"""
