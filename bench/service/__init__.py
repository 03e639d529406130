"""The service benchmarks: bench/service/run (bench/README.md, "Service")."""
