"""Documents an organization uploads: tables, formats, parsing, the ingestion runner, service and routes."""
