"""Fixtures for the tests against a running Roster (clients/test starts one and
sets ROSTER_ADDR)."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest

from roster_client.v1 import leaderboard_service_pb2_grpc, user_service_pb2_grpc


@pytest.fixture(scope="session")
def addr() -> str:
    value = os.environ.get("ROSTER_ADDR", "")
    if not value.startswith("127.0.0.1:"):
        pytest.fail("ROSTER_ADDR must be 127.0.0.1:PORT of a running Roster; run clients/test")
    return value


@pytest.fixture(scope="session")
def channel(addr: str):
    with grpc.insecure_channel(addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture(scope="session")
def users(channel) -> user_service_pb2_grpc.UserServiceStub:
    return user_service_pb2_grpc.UserServiceStub(channel)


@pytest.fixture(scope="session")
def board(channel) -> leaderboard_service_pb2_grpc.LeaderboardServiceStub:
    return leaderboard_service_pb2_grpc.LeaderboardServiceStub(channel)


@pytest.fixture
def unique_name() -> str:
    """A name no other test or run uses: letters and digits only."""
    return "Py" + uuid.uuid4().hex[:16]


@pytest.fixture
def password() -> str:
    return "py-" + uuid.uuid4().hex[:12] + "-staple"
