"""The error tree: codes, messages, printing and hierarchy."""

from __future__ import annotations

import pytest

from wsevents.exceptions import (
    ProtocolError,
    RoutingError,
    TransportError,
    WsClientError,
    WsError,
    WsEventsError,
)

CODED = [WsError, WsClientError]


@pytest.mark.parametrize("cls", CODED)
def test_code_and_message_are_kept(cls: type[WsError | WsClientError]) -> None:
    exc = cls(403, "private room")
    assert (exc.code, exc.message) == (403, "private room")
    assert exc.args == (403, "private room")


@pytest.mark.parametrize("cls", CODED)
def test_str_is_code_colon_message(cls: type[WsError | WsClientError]) -> None:
    assert str(cls(403, "private room")) == "403: private room"


@pytest.mark.parametrize("cls", CODED)
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not found"),
        (408, "Request Timeout"),
        (409, "Conflict"),
        (429, "Too Many Requests"),
        (500, "Internal Error"),
        (503, "Service Unavailable"),
    ],
)
def test_default_message_follows_the_code(
    cls: type[WsError | WsClientError], code: int, message: str
) -> None:
    exc = cls(code)
    assert exc.message == message
    assert str(exc) == f"{code}: {message}"


@pytest.mark.parametrize("cls", CODED)
def test_unknown_code_has_a_generic_default_message(cls: type[WsError | WsClientError]) -> None:
    assert cls(418).message == "Error"
    assert str(cls(599)) == "599: Error"


@pytest.mark.parametrize("cls", CODED)
def test_empty_message_is_kept_not_replaced_by_default(
    cls: type[WsError | WsClientError],
) -> None:
    assert cls(404, "").message == ""


@pytest.mark.parametrize("cls", CODED)
def test_code_is_coerced_to_int(cls: type[WsError | WsClientError]) -> None:
    exc = cls("404")  # type: ignore[arg-type]
    assert exc.code == 404 and type(exc.code) is int
    assert exc.message == "Not found"


def test_ws_error_can_be_raised_and_caught_as_the_base() -> None:
    with pytest.raises(WsEventsError) as info:
        raise WsError(409, "taken")
    assert isinstance(info.value, WsError)
    assert info.value.code == 409


def test_errors_chain_with_raise_from() -> None:
    cause = ConnectionError("redis down")
    with pytest.raises(TransportError) as info:
        try:
            raise cause
        except ConnectionError as exc:
            raise TransportError("publish failed") from exc
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    "cls", [WsError, ProtocolError, RoutingError, TransportError, WsClientError]
)
def test_every_error_subclasses_ws_events_error(cls: type[Exception]) -> None:
    assert issubclass(cls, WsEventsError)
    assert issubclass(WsEventsError, Exception)


@pytest.mark.parametrize("cls", [ProtocolError, RoutingError])
def test_protocol_and_routing_errors_are_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, ValueError)
    with pytest.raises(ValueError):
        raise cls("bad")


@pytest.mark.parametrize("cls", [WsError, TransportError, WsClientError])
def test_other_errors_are_not_value_errors(cls: type[Exception]) -> None:
    assert not issubclass(cls, ValueError)


def test_client_and_server_errors_are_distinct() -> None:
    assert not issubclass(WsClientError, WsError)
    assert not issubclass(WsError, WsClientError)


def test_ws_error_details_default_to_none_and_keep_args() -> None:
    exc = WsError(400, "Invalid data: text: too short")
    assert exc.details is None
    assert exc.args == (400, "Invalid data: text: too short")


def test_ws_error_details_are_copied_into_plain_dicts() -> None:
    given = [{"path": ["text"], "message": "expected a string"}]
    exc = WsError(400, "Invalid data: text: expected a string", details=given)
    given[0]["message"] = "changed"
    assert exc.details == [{"path": ["text"], "message": "expected a string"}]
    assert str(exc) == "400: Invalid data: text: expected a string"
