"""Chat sessions and their messages: tables, schemas, service and routes."""
