"""`make kserve`'s defaults, written once: the CLI's flags and marforge/deploy/kserve.py both read
them. Standard library only, so the CLI can build its parser without loading the deploy code."""

IMAGE = "marforge-torchserve:0.12.0"  # docker/Dockerfile.kserve (not built or pushed by marforge)
CPUS = 2  # CPU cores per pod
GPUS = 0  # GPUs per pod in inferenceservice.yaml (inferenceservice-gpu.yaml has one at least)
MEMORY = "4Gi"  # memory per pod, a Kubernetes quantity
PROTOCOL = "v1"  # the InferenceService's protocolVersion
CANARY_PERCENT = 10  # traffic the canary step sends to the new storage location
RUNTIMES = ("own", "stock")  # marforge's own ServingRuntime (the default), or KServe's kserve-torchserve
# `bench-kserve --wrapper`: what pytorch/serve v0.12.0's kubernetes/kserve/requirements.txt pins for kserve_wrapper
WRAPPER_KSERVE = "kserve[storage]==0.13.0"
