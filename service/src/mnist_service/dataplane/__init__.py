"""The transport-free core that HTTP (http/) and gRPC (grpc/) both call, as MLServer's and KServe's
data planes: the model store and its hot swaps (store.py), picking and running a version
(inference.py), explanations (explain.py), per-request options and limits (options.py), and what the
server and its model declare (metadata.py). Nothing here knows WSGI, Flask or gRPC."""
