"""POST /predict: read the digit in each canvas image of a request."""
import time

import numpy as np
from flask import request

from . import payload, preprocess
from .errors import ApiError, json_response, loaded_model
from .model import softmax
from .wsgi import MODEL_VERSION


def register(app, holder, cfg):
    max_batch = cfg["MAX_BATCH"]

    @app.post("/predict")
    def predict():
        model = loaded_model(holder)
        images, want_preview, batch = payload.parse_predict(request, max_batch)
        request.environ[MODEL_VERSION] = model.version
        limits = preprocess.Limits(cfg["MAX_IMAGE_PIXELS"], cfg["MAX_IMAGE_SIDE"])
        if batch:  # every image's header first, so a batch over its pixels costs no decoding
            total = preprocess.Limits(cfg["MAX_IMAGE_PIXELS"], cfg["MAX_IMAGE_SIDE"], cfg["MAX_BATCH_PIXELS"])
            for i, data in enumerate(images):
                try:
                    total.charge(*preprocess.size(data))
                except ApiError as e:
                    e.message = f"images[{i}]: {e.message}"
                    raise
        inputs = []
        for i, data in enumerate(images):
            try:
                inputs.append(preprocess.preprocess(data, limits))
            except ApiError as e:
                if e.code == "empty_canvas":
                    app.metrics.observe_empty_canvas(model.version)
                if batch:
                    e.message = f"images[{i}]: {e.message}"
                raise
        x = np.stack(inputs)[:, None]
        started = time.perf_counter()
        logits = model.logits(x)
        app.metrics.observe_inference(time.perf_counter() - started, model.version)
        predictions = []
        probabilities = softmax(logits.astype(np.float64))
        for xi, p, rounded in zip(inputs, probabilities, np.round(probabilities, 6).tolist()):
            digit = int(p.argmax())
            result = {"digit": digit, "confidence": rounded[digit], "probabilities": rounded,
                      "model_version": model.version}
            if want_preview:
                result["preview"] = preprocess.preview_data_url(xi)
            predictions.append(result)
        app.metrics.observe_predictions([p["confidence"] for p in predictions], model.version)
        if batch:
            return json_response({"predictions": predictions, "model_version": model.version})
        return json_response(predictions[0])
