"""Reproductions of published experiments, CPU-sized (each module has a run_* function and a CLI)."""
