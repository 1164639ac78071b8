"""The HTTP surface: the app factory, shared dependencies and the mapping of errors to responses."""
