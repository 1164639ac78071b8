"""Domain errors. Each carries the HTTP status it maps to; ``citechat.api.errors`` turns them into responses.

Messages are written for API clients: they say what is wrong and never include internal exception text.
"""


class CitechatError(Exception):
    """Base of every error citechat reports to a client."""

    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AuthenticationError(CitechatError):
    """The bearer token is missing, malformed, expired, or not signed by a trusted key."""

    status_code = 401


class MissingCredentials(AuthenticationError):
    """No bearer token was sent at all."""


class PermissionDenied(CitechatError):
    """The caller is authenticated but may not act in the requested organization."""

    status_code = 403


class NotFound(CitechatError):
    """The resource does not exist for this caller (which includes belonging to someone else)."""

    status_code = 404


class Conflict(CitechatError):
    """The request conflicts with the resource's current state."""

    status_code = 409


class ConfigurationError(Exception):
    """The service is configured in a way it cannot run with; raised at start-up, never to a client."""


class ServiceUnavailable(CitechatError):
    """A dependency (database, key set, provider) cannot be reached right now; the client may retry."""

    status_code = 503
