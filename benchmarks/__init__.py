"""Benchmarks of the MoE profiler (run as scripts: ``python benchmarks/overhead.py``)."""
