"""Training of the embedded default model (and, later, the length predictor)."""
