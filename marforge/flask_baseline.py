"""The baseline marforge is measured against: a Flask app serving one model the way the
handwritten-digit example did, one request at a time per thread, no batching.

Benchmark only (`make bench` installs Flask). It uses the same decoding, preprocessing and model
as the TorchServe handler, so the difference measured is the serving, not the model.

    python -m marforge.flask_baseline fashion 2.0 --port 5000
    curl -T samples/fashion/00000-ankle-boot.png http://127.0.0.1:5000/predict
"""

import argparse
import sys

import torch


def create_app(mv, metadata):
    from flask import Flask, jsonify, request

    from marforge.archive import HANDLERS_DIR, handler_section
    from marforge.weights import build_model, import_file

    image_io = import_file(HANDLERS_DIR / "image_io.py", "marforge_flask_image_io")
    config = image_io.HandlerConfig.from_dict(handler_section(mv, metadata))
    model = build_model(mv.model_def, mv.weights)
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        try:
            inputs = image_io.prepare({"body": request.get_data()}, config).unsqueeze(0)
        except image_io.BadInput as error:
            return jsonify(error.as_dict()), error.code
        with torch.inference_mode():
            probabilities = torch.softmax(model(inputs), dim=1)[0]
        return jsonify({"model": mv.name, "version": mv.version, "predictions": image_io.top_k(probabilities, config)})

    return app


def main(argv=None):
    from marforge import registry
    from marforge.weights import read_metadata

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--registry", default=registry.REGISTRY_FILE)
    args = parser.parse_args(argv)
    mv = registry.load(args.registry).get(args.name, args.version)
    create_app(mv, read_metadata(mv)).run(host="127.0.0.1", port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
