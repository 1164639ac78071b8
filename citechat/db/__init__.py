"""Database access: the declarative base, the embedded server, the engine and the migrations."""
