"""gRPC: the Open Inference Protocol on GRPC_PORT, in processes of their own beside gunicorn
(server.py, run by process/supervisor.py). An RPC goes through observe.py (id, keys, shedding by
lag.py, its record), then servicer.py, which decodes with codec.py and runs the data plane
(dataplane/). proto/ holds the .proto and its generated modules (scripts/protos). No Flask or WSGI
module is imported here."""
