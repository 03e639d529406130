"""An MLServer custom runtime serving the mnist-mlp artifact (bench/service/run's MLServer case): the version
directory of `parameters.uri` (mnist_artifact.Model), input "images" (FP32 [N, 784] in [0, 1], as
mnist-serve's own v2 input: both servers get the same requests), outputs "label", "confidence" and
"probabilities". Runs in .bench-mlserver-venv/."""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from mnist_artifact import Model


class MnistRuntime(MLModel):
    async def load(self) -> bool:
        self._model = Model.load(await get_model_uri(self.settings))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pixels = np.multiply(NumpyCodec.decode_input(payload.inputs[0]).reshape(-1, 784), 255, dtype=np.float32)
        probabilities = self._model.predict_proba(pixels)
        outputs = [NumpyCodec.encode_output("label", probabilities.argmax(axis=1)),
                   NumpyCodec.encode_output("confidence", probabilities.max(axis=1)),
                   NumpyCodec.encode_output("probabilities", probabilities)]
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
