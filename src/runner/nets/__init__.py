"""Networks: models, their layers, initialization, diagnostics and transfer of trained weights."""
