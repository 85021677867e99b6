"""Optimization: optimizers (torch's and the lecture's rules), schedules and regularizers."""
