"""roster.v1.LeaderboardService and grpc.health.v1, against the real server."""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from roster_client import error_details
from roster_client.v1 import leaderboard_service_pb2 as lb
from roster_client.v1 import user_service_pb2 as pb

TIMEOUT = 10


def test_health_check(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("roster.v1.UserService", "roster.v1.LeaderboardService", ""):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_record_game_stats_and_board(users, board, unique_name, password):
    users.CreateUser(pb.CreateUserRequest(name=unique_name, password=password), timeout=TIMEOUT)

    before = board.GetUserStats(lb.GetUserStatsRequest(name=unique_name), timeout=TIMEOUT).stats
    assert (before.games_played, before.rank) == (0, 0)
    assert not before.HasField("update_time")

    request_id = str(uuid.uuid4())
    game = lb.RecordGameRequest(
        name=unique_name.upper(), outcome=lb.GAME_OUTCOME_WIN, score=4242, request_id=request_id
    )
    first = board.RecordGame(game, timeout=TIMEOUT).stats
    assert (first.games_played, first.wins, first.best_score, first.total_score) == (1, 1, 4242, 4242)
    assert first.rank >= 1
    assert first.HasField("update_time")

    # A retry with the same request_id counts nothing twice.
    retry = board.RecordGame(game, timeout=TIMEOUT).stats
    assert (retry.games_played, retry.total_score) == (1, 4242)

    # A second game without a request_id counts.
    board.RecordGame(
        lb.RecordGameRequest(name=unique_name, outcome=lb.GAME_OUTCOME_LOSS, score=7), timeout=TIMEOUT
    )
    stats = board.GetUserStats(lb.GetUserStatsRequest(name=unique_name), timeout=TIMEOUT).stats
    assert stats.name == unique_name
    assert (stats.games_played, stats.wins, stats.losses, stats.draws) == (2, 1, 1, 0)
    assert (stats.best_score, stats.total_score) == (4242, 4249)
    assert stats.rank >= 1

    # Page through the board (small pages, following next_page_token) to find the user.
    entries, token, pages = [], "", 0
    while True:
        page = board.ListLeaderboard(lb.ListLeaderboardRequest(page_size=2, page_token=token), timeout=TIMEOUT)
        entries.extend(page.entries)
        assert page.total_size >= 1
        pages += 1
        token = page.next_page_token
        if not token or pages > 1000:
            break
    assert [e.rank for e in entries] == list(range(1, len(entries) + 1))
    mine = [e for e in entries if e.user_id == stats.user_id]
    assert len(mine) == 1
    assert (mine[0].name, mine[0].score) == (unique_name, 4242)

    around = board.ListLeaderboardAroundUser(
        lb.ListLeaderboardAroundUserRequest(name=unique_name, page_size=3), timeout=TIMEOUT
    )
    assert stats.user_id in [e.user_id for e in around.entries]


def test_record_game_invalid_and_unknown(board, unique_name):
    with pytest.raises(grpc.RpcError) as caught:
        board.RecordGame(lb.RecordGameRequest(name=unique_name, score=-1), timeout=TIMEOUT)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details.field_violations} >= {"outcome", "score"}

    with pytest.raises(grpc.RpcError) as caught:
        board.GetUserStats(lb.GetUserStatsRequest(name=unique_name), timeout=TIMEOUT)
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "USER_NOT_FOUND"
