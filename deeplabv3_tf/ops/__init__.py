"""Losses and metrics on labels and logits (sums and their normalisers, confusion
matrices, IoU)."""
