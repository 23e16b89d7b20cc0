"""Measurements: the training-loop bench, the GPU suite, augmentation cost and search quality."""
