"""The benchmarks of mnist-mlp: bench/trainer.py (bench/run) and bench/service/ (bench/service/run); bench/README.md."""
