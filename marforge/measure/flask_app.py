"""The baseline marforge is measured against: a Flask app serving one model the way the
handwritten-digit example did, one request at a time per thread, no batching.

Benchmark only (`make bench` installs Flask). It uses the same decoding, preprocessing and model
as the TorchServe handler, so the difference measured is the serving, not the model. fixtures.py
runs `serve` in a process of its own:

    curl -T samples/fashion/00000-ankle-boot.png http://127.0.0.1:<port>/predict
"""

TASKS = ("multiclass", "multilabel")  # the models it serves: labels_of answers a classifier's labels


def labels_of(model, body: bytes, config) -> tuple[dict, int]:
    """(the labels part of the answer, 200) for one image `body`, or (the error, its code): decoded,
    preprocessed, activated and judged by the handler's own code (handlers/protocols.py, contract.py
    and classification.py), so a multilabel model gets its sigmoid and thresholds here as it does from
    TorchServe."""
    import torch

    from marforge import shipped

    protocols, contract = shipped.module("protocols"), shipped.contract()
    try:
        inputs = protocols.prepare({"body": body}, config)
    except shipped.module("image_io").BadInput as error:
        return error.as_dict(), error.code
    with torch.inference_mode():
        outputs = model(inputs.unsqueeze(0) if config.crops == 1 else inputs)
    probabilities = contract.activate(outputs, config).mean(dim=0)  # one view, or an image's crops averaged
    return shipped.module("classification").answer(probabilities, config), 200


def create_app(mv, metadata):
    from flask import Flask, jsonify, request

    from marforge import shipped
    from marforge.archiving.archive import handler_section
    from marforge.archiving.weights import source_model

    config = shipped.contract().HandlerConfig.from_dict(handler_section(mv, metadata))
    model = source_model(mv)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        labels, code = labels_of(model, request.get_data(), config)
        if code != 200:
            return jsonify(labels), code
        return jsonify({"model": mv.name, "version": mv.version, **labels})

    return app


def serve(registry_file, name, version, port):
    """Serve `name` `version` of the registry at `registry_file` on 127.0.0.1:`port` until killed,
    silently: werkzeug's line per request would cost the server time and fill the benchmark's log."""
    import logging
    import os
    import sys

    from marforge import registry
    from marforge.archiving.weights import read_metadata

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the server process)
    mv = registry.load(registry_file).get(name, version)
    create_app(mv, read_metadata(mv)).run(host="127.0.0.1", port=port, threaded=True)
