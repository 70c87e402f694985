"""Deploying beyond one machine: what a cluster runs marforge's archives with.

    kserve.py   `make kserve`: a version's storage location for KServe's TorchServe runtime
                (config.properties, model-store/) and its InferenceService YAML (CPU, GPU, canary)
    schema.py   checks an InferenceService against KServe's CRD and Kubernetes' own schemas
"""
