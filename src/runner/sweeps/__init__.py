"""Sweeps: the glue between runner's Optuna sweeper plugin and its runs (storage, trials, tables)."""
