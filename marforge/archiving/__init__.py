"""Building archives: a registry version's weights in, a verified `<model_store>/<key>.mar` out.

    weights.py   a version's weights and provenance metadata, safe loading, its model definition
    variants.py  the archive formats (eager, TorchScript, ONNX, torch.compile, int8, torch.export) and their tolerances
    archive.py   runs torch-model-archiver and installs a verified archive in the model store
    verify.py    loads an archive as a worker does and compares it with the source model
    worker.py    a TorchServe worker's loading and predict path, in-process, without a server
    mar.py       reading a built archive: manifest, model-config.yaml, format stamp
    checkpoints.py  foreign checkpoints: what a file is, where its tensors are, key matching by rules
    importer.py  `marforge import`: a foreign checkpoint becomes weights/<key>.pt with provenance
    exported.py  exported models (TorchScript, ONNX, torch.export): what a file is, by content; run and describe it
    import_exported.py  `marforge import --exported`: a TorchScript, ONNX or torch.export file becomes a version
    presets.py   what an import knows about a known network (chexnet)
    exported.py  a model exported elsewhere (TorchScript, ONNX, torch.export): told by content, loaded, described
    onnx_model.py  an ONNX file through onnx and onnxruntime: checked, its graph's inputs, a CPU session
    synthetic.py labelled synthetic stand-ins: a CheXNet-format checkpoint, the demo's samples
    inputs.py    what an archive is built from, for the Makefile's rebuild decisions
    expected.py  a user's handler's expected answers per sample (samples/<name>/expected-<version>.json), compared
    requirements.py  a version's requirements file, checked against the serving environment before archiving
"""
