"""Distributed, resumable training: strategy and precision, the optimizer and its
schedule, the train step, the trainer."""
