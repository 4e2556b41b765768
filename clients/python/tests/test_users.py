"""roster.v1.UserService through the generated stubs, against the real server."""

from __future__ import annotations

import grpc
import pytest

from roster_client import error_details
from roster_client.v1 import user_service_pb2 as pb

# Every call gets a deadline: a client should never wait forever.
TIMEOUT = 10


def fullwidth(text: str) -> str:
    """ASCII to its full-width form (U+FF01..U+FF5E), which Roster width-folds."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def create(users, name: str, password: str) -> pb.User:
    return users.CreateUser(pb.CreateUserRequest(name=name, password=password), timeout=TIMEOUT).user


def test_create_then_get_under_other_spellings(users, unique_name, password):
    created = create(users, unique_name, password)
    assert created.name == unique_name
    assert len(created.id) == 36
    assert created.create_time.seconds > 0

    for spelling in (unique_name.upper(), unique_name.lower(), fullwidth(unique_name)):
        got = users.GetUser(pb.GetUserRequest(name=spelling), timeout=TIMEOUT).user
        assert got.id == created.id
        assert got.name == unique_name  # shown as registered


def test_invalid_argument_has_field_violations(users):
    with pytest.raises(grpc.RpcError) as caught:
        users.CreateUser(pb.CreateUserRequest(name="a b", password="x"), timeout=TIMEOUT)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.domain == "roster"
    assert details.reason == "NAME_WHITESPACE"
    assert [v.field for v in details.field_violations] == ["name", "password"]
    assert details.violation("name").reason == "NAME_WHITESPACE"
    assert details.violation("password").reason == "PASSWORD_TOO_SHORT"
    assert all(v.description for v in details.field_violations)
    assert details.violation("nope") is None


def test_already_exists(users, unique_name, password):
    create(users, unique_name, password)
    with pytest.raises(grpc.RpcError) as caught:
        create(users, unique_name.upper(), password)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.reason == "USER_ALREADY_EXISTS"
    assert details.domain == "roster"
    assert details.field_violations == ()


def test_not_found(users, unique_name):
    with pytest.raises(grpc.RpcError) as caught:
        users.GetUser(pb.GetUserRequest(name=unique_name), timeout=TIMEOUT)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "USER_NOT_FOUND"


def test_verify_password(users, unique_name, password):
    created = create(users, unique_name, password)

    ok = users.VerifyPassword(pb.VerifyPasswordRequest(name=unique_name.upper(), password=password), timeout=TIMEOUT)
    assert ok.valid is True
    assert ok.user.id == created.id

    bad = users.VerifyPassword(pb.VerifyPasswordRequest(name=unique_name, password=password + "!"), timeout=TIMEOUT)
    assert bad.valid is False
    assert not bad.HasField("user")

    # An unknown user answers the same way as a wrong password.
    unknown = users.VerifyPassword(pb.VerifyPasswordRequest(name=unique_name + "x", password=password), timeout=TIMEOUT)
    assert unknown.valid is False


def test_deadline(users, unique_name, password):
    create(users, unique_name, password)
    # A generous deadline: the call completes.
    assert users.GetUser(pb.GetUserRequest(name=unique_name), timeout=5).user.name == unique_name
    # A deadline shorter than one argon2id check (~20 ms): the call fails.
    # Whichever comes first: Roster sees the hash cannot finish in time and
    # refuses at once (RESOURCE_EXHAUSTED, HASHING_CAPACITY_EXHAUSTED, with
    # RetryInfo); the client's own timer gives DEADLINE_EXCEEDED; the server's
    # grpc-timeout gives CANCELLED "Timeout expired" (as tonic answers). The
    # last two carry no Roster details.
    with pytest.raises(grpc.RpcError) as caught:
        users.VerifyPassword(pb.VerifyPasswordRequest(name=unique_name, password=password), timeout=0.001)
    details = error_details(caught.value)
    if details.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert details.reason == "HASHING_CAPACITY_EXHAUSTED"
        assert details.retry_delay is not None
        return
    if details.code == grpc.StatusCode.CANCELLED:
        assert details.message == "Timeout expired"
    else:
        assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details.reason is None
    assert details.status is None


def test_delete_then_not_found(users, unique_name, password):
    create(users, unique_name, password)
    users.DeleteUser(pb.DeleteUserRequest(name=unique_name), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError) as caught:
        users.GetUser(pb.GetUserRequest(name=unique_name), timeout=TIMEOUT)
    assert error_details(caught.value).reason == "USER_NOT_FOUND"
