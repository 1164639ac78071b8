"""Local stand-ins for external services, for tests only: real HTTP servers following the services' documented APIs."""
