"""Losses and matching for DETR-family detectors."""
