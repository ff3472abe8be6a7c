"""The neutral errors: every class answers with its own status, OpenAI type and a stable metrics reason."""

from __future__ import annotations

import pickle

import pytest

from serving import errors
from serving.errors import APIError

CLASSES = [
    cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, APIError) and cls is not APIError
]

# The metric label of each class is part of the dashboard's contract: changing one is a breaking change.
EXPECTED_REASONS = {
    "InvalidRequestError": "invalid_request",
    "PromptTooLongError": "context_length",
    "InputTooLongError": "input_too_long",
    "ModelNotFoundError": "model_not_found",
    "NotFoundError": "not_found",
    "AuthenticationError": "auth",
    "RateLimitError": "rate_limit",
    "PayloadTooLargeError": "body_too_large",
    "EngineUnavailableError": "engine_unavailable",
    "BudgetUnavailableError": "budget_unavailable",
    "OverloadedError": "queue_full",
    "ShuttingDownError": "shutting_down",
    "RequestTimeoutError": "timeout",
    "EngineError": "engine_error",
    "ClientDisconnectedError": "client_disconnected",
}


def test_every_error_class_has_the_expected_reason():
    assert {cls.__name__: cls.reason for cls in CLASSES} == EXPECTED_REASONS


def test_reasons_are_distinct_per_class():
    """A subclass that forgets its own reason would inherit its parent's and be miscounted."""
    reasons = [cls.reason for cls in CLASSES]
    assert len(set(reasons)) == len(reasons)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_status_and_type_follow_openai(cls):
    assert 400 <= cls.status_code < 600
    assert cls.error_type in {
        "invalid_request_error",
        "rate_limit_exceeded",
        "service_unavailable",
        "timeout",
        "server_error",
    }


def test_errors_survive_pickling_as_ray_does():
    err = errors.PromptTooLongError(100, 20, 64)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.PromptTooLongError
    assert back.body() == err.body()
    assert back.status_code == 400 and back.code == "context_length_exceeded" and back.reason == "context_length"
    err2 = errors.InputTooLongError(1, 600, 512)
    back2 = pickle.loads(pickle.dumps(err2))
    assert type(back2) is errors.InputTooLongError and back2.body() == err2.body() and back2.param == "input"


def test_unwrap_finds_the_api_error_behind_a_wrapper():
    inner = errors.OverloadedError("full", headers={"Retry-After": "1"})
    try:
        try:
            raise inner
        except errors.OverloadedError as exc:
            raise RuntimeError("ray wrapped it") from exc
    except RuntimeError as outer:
        assert errors.unwrap(outer) is inner
