"""The errors every layer raises, and the one way they become OpenAI error bodies.

This module imports nothing of the project, so the engine, the API, the
deployments and the config can all use it without pointing upwards. Each class
carries what the HTTP layer and the metrics need:

* `status_code` and `error_type`: the HTTP status and OpenAI's `error.type`;
* `reason`: a stable, low-cardinality label for the rejection/failure metrics
  (renaming a class keeps its label; a new class must choose one).

The app factory (`serving.api.app`) installs one handler that turns an `APIError`
into `{"error": {"message", "type", "param", "code"}}` with the matching status.
Anything else becomes a 500 with a generic message: no traceback reaches a client.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    reason: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    # Ray pickles exceptions raised in a replica; subclasses have other __init__
    # signatures, so rebuild from the fields rather than by calling __init__.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[APIError], message: str, state: dict[str, Any]) -> APIError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


# -- client errors (4xx) ----------------------------------------------------------


class InvalidRequestError(APIError):
    status_code = 400
    error_type = "invalid_request_error"
    reason = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    reason = "context_length"

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            param="messages",
            code="context_length_exceeded",
        )


class InputTooLongError(InvalidRequestError):
    """An embeddings input longer than the model's context."""

    reason = "input_too_long"

    def __init__(self, index: int, tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, input {index} has "
            f"{tokens} tokens. Please reduce the input.",
            param="input",
            code="context_length_exceeded",
        )


def too_many_input_tokens(total: int, cap: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"The inputs have {total} tokens together; at most {cap} per request. Send fewer inputs per request.",
        param="input",
        code="request_too_large",
    )


class ModelNotFoundError(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    reason = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


class NotFoundError(APIError):
    """A stored object (a response) that does not exist, expired, or is another API key's."""

    status_code = 404
    error_type = "invalid_request_error"
    reason = "not_found"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "invalid_request_error"
    reason = "auth"


class RateLimitError(APIError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    reason = "rate_limit"


class PayloadTooLargeError(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    reason = "body_too_large"


# -- server side (5xx) ------------------------------------------------------------


class EngineUnavailableError(APIError):
    """The engine is dead, starting or draining: the client may retry elsewhere/later."""

    status_code = 503
    error_type = "service_unavailable"
    reason = "engine_unavailable"


class BudgetUnavailableError(EngineUnavailableError):
    """The cluster's rate-limit budget holder cannot be reached, and the caller's budget fails closed."""

    reason = "budget_unavailable"


class OverloadedError(APIError):
    """The model's bounded queue is full: answered at once, with Retry-After."""

    status_code = 503
    error_type = "service_unavailable"
    reason = "queue_full"


class ShuttingDownError(EngineUnavailableError):
    """The replica is stopping (redeploy, downscale, SIGTERM) and its drain time ran out: retry elsewhere."""

    reason = "shutting_down"

    def __init__(self, message: str = "The server is shutting down; retry the request.") -> None:
        super().__init__(message, code="server_shutting_down", headers={"Retry-After": "1"})


class RequestTimeoutError(APIError):
    status_code = 504
    error_type = "timeout"
    reason = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="request_timeout")


class EngineError(APIError):
    status_code = 500
    error_type = "server_error"
    reason = "engine_error"


class ClientDisconnectedError(APIError):
    """The client closed the connection before the answer: its work was cancelled.

    Nobody reads the response; 499 (nginx's "client closed request") labels it
    in the metrics and the access log.
    """

    status_code = 499
    error_type = "invalid_request_error"
    reason = "client_disconnected"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def unwrap(exc: BaseException) -> BaseException:
    """Return the APIError behind a Ray-wrapped exception, if there is one."""
    seen = 0
    while not isinstance(exc, APIError) and seen < 5:
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None:
            break
        exc = cause
        seen += 1
    return exc
