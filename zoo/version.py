"""The package version, in a leaf module so that any part of zoo can read it without importing zoo."""
__version__ = "0.1.0"
