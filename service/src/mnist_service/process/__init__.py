"""The processes of `mnist-serve`: cli.py (the command), supervisor.py (gunicorn and the gRPC
processes under one parent), gunicorn_config.py (gunicorn's settings and JSON logger), worker.py
(the gevent worker, bounded against slow clients) and shedding.py (late requests answered at accept)."""
