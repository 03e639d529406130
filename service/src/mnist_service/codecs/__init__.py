"""The HTTP wire formats: v1.py (JSON instances, images and uploads in; predictions out) and v2.py
(the Open Inference Protocol's JSON and binary tensors). Each turns a body into (N, 784) float32
pixels on 0..255 or an ApiError, and probabilities into a body. gRPC's messages: grpc/codec.py."""
