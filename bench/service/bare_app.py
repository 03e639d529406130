"""The ceiling for bench/service/run: the least a Flask app under gunicorn can do for /v1/predict (orjson,
mnist_artifact.Model's forward pass, mnist-serve's response shape; no validation, metrics, logs or ids).
The version directory comes from BARE_MODEL_PATH: `gunicorn --chdir bench/service bare_app:app`."""

from __future__ import annotations

import os

import numpy as np
import orjson
from flask import Flask, Response, request

from mnist_artifact import Model

model = Model.load(os.environ["BARE_MODEL_PATH"])
app = Flask(__name__)


@app.post("/v1/predict")
def predict():
    pixels = np.asarray(orjson.loads(request.get_data(cache=False))["instances"], dtype=np.float32)
    probabilities = model.predict_proba(pixels)
    labels, confidences = probabilities.argmax(axis=1), probabilities.max(axis=1)
    predictions = [{"label": int(label), "confidence": float(conf), "probabilities": p}
                   for label, conf, p in zip(labels, confidences, probabilities)]
    body = {"model": {"name": model.name, "version": model.version}, "predictions": predictions}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), mimetype="application/json")
