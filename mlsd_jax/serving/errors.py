"""Request errors with TF Serving's canonical codes, mapped to HTTP and gRPC statuses."""
from __future__ import annotations

# canonical code -> (HTTP status as TF Serving's REST API maps it, grpc.StatusCode name)
CODES = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT"),
    "FAILED_PRECONDITION": (400, "FAILED_PRECONDITION"),
    "NOT_FOUND": (404, "NOT_FOUND"),
    "PAYLOAD_TOO_LARGE": (413, "RESOURCE_EXHAUSTED"),
    "UNSUPPORTED_MEDIA": (415, "INVALID_ARGUMENT"),
    "RESOURCE_EXHAUSTED": (429, "RESOURCE_EXHAUSTED"),
    "UNIMPLEMENTED": (501, "UNIMPLEMENTED"),
    "UNAVAILABLE": (503, "UNAVAILABLE"),
    "DEADLINE_EXCEEDED": (504, "DEADLINE_EXCEEDED"),
    "INTERNAL": (500, "INTERNAL"),
}


class ServingError(Exception):
    """An error answered to the client: ``code`` is a key of :data:`CODES`; the message names
    the field at fault and what was expected."""

    def __init__(self, code: str, message: str):
        if code not in CODES:
            raise ValueError(f"unknown serving error code {code!r}")
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> int:
        return CODES[self.code][0]

    @property
    def grpc_code(self) -> str:
        return CODES[self.code][1]


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)
