"""AWS-shaped errors: pre-stream JSON error responses and in-stream exceptions."""

from __future__ import annotations

# Bedrock returns the coral namespace after the type; botocore keeps only the part before ':'.
_ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"

_STATUS_BY_TYPE = {
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "InternalServerException": 500,
    "BadGatewayException": 502,
    "ServiceUnavailableException": 503,
}


class AwsError(Exception):
    """An error AWS returns *before* the stream: HTTP status, ``x-amzn-ErrorType``, JSON body.

    Attributes:
        error_type: the modelled exception name, e.g. ``ValidationException``.
        message: the human-readable message put in the body's ``message``.
        status: the HTTP status code.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.status = _STATUS_BY_TYPE[error_type]

    @property
    def header_value(self) -> str:
        """The ``x-amzn-ErrorType`` header value."""
        return self.error_type + _ERROR_TYPE_SUFFIX


def validation_error(message: str) -> AwsError:
    """A 400 ``ValidationException``."""
    return AwsError("ValidationException", message)


def not_found(message: str) -> AwsError:
    """A 404 ``ResourceNotFoundException``."""
    return AwsError("ResourceNotFoundException", message)


class StreamException(Exception):
    """A modelled exception that arrives *inside* the event stream.

    Attributes:
        exception_type: the stream member name, e.g. ``dependencyFailedException``.
        message: the message put in the payload.
    """

    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(f"{exception_type}: {message}")
        self.exception_type = exception_type
        self.message = message
