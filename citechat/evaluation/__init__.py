"""Offline evaluation: retrieval metrics and dataset loaders."""
