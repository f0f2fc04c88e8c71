"""Matching and the box losses that the families' criteria share."""
