"""What the server and its model declare, in the Open Inference Protocol's terms: the server's name,
version and extensions, and the model's one input tensor and two outputs. Both transports answer
their metadata requests from here (http/control.py, grpc/servicer.py) and their codecs check
tensors against it (codecs/v2.py, grpc/codec.py)."""

from importlib import metadata

from mnist_artifact.format import PIXELS

SERVER = {"name": "mnist-mlp", "version": metadata.version("mnist-mlp-service"),
          "extensions": ["binary_tensor_data", "classification"]}
INPUT = "images"
OUTPUTS = ("probabilities", "labels")
CLASSES = 10
MODEL_METADATA = {
    "platform": "numpy_mlp",
    "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, PIXELS]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
                {"name": "labels", "datatype": "INT64", "shape": [-1]}],
}
