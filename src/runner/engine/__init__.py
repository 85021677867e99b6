"""The engine: one run from the config to a run directory (its loop, components, state, tracking)."""
