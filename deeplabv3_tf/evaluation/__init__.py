"""Inference (single and multi-scale + flip, sliding windows), evaluation over
records and a run's protocol, CSV and chart reports."""
