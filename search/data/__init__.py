"""Datasets as tensors on the training device: reading image files, splitting, normalizing, ZCA."""
