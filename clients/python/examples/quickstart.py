"""Roster from Python: create a user, read it back under another spelling,
check its password, record a game, and print a refusal's field violations.

    python examples/quickstart.py [HOST:PORT]   # default $ROSTER_ADDR or 127.0.0.1:50051
"""

from __future__ import annotations

import os
import sys
import uuid

import grpc

from roster_client import error_details
from roster_client.v1 import (
    leaderboard_service_pb2 as lb,
    leaderboard_service_pb2_grpc,
    user_service_pb2 as us,
    user_service_pb2_grpc,
)

TIMEOUT = 10.0  # seconds: every call gets a deadline


def main() -> int:
    addr = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ROSTER_ADDR", "127.0.0.1:50051")
    name = f"Ada{uuid.uuid4().hex[:8]}"
    password = f"correct horse battery {uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(addr) as channel:
        users = user_service_pb2_grpc.UserServiceStub(channel)
        board = leaderboard_service_pb2_grpc.LeaderboardServiceStub(channel)

        # A request_id makes a retry of the same call safe (it returns the
        # first call's answer instead of ALREADY_EXISTS).
        created = users.CreateUser(
            us.CreateUserRequest(name=name, password=password, request_id=f"quickstart-{name}"),
            timeout=TIMEOUT,
        ).user
        print(f"created {created.name} ({created.id})")

        found = users.GetUser(us.GetUserRequest(name=name.lower()), timeout=TIMEOUT).user
        print(f"found {found.name} under {name.lower()!r}")

        good = users.VerifyPassword(us.VerifyPasswordRequest(name=name, password=password), timeout=TIMEOUT)
        bad = users.VerifyPassword(us.VerifyPasswordRequest(name=name, password="not it at all"), timeout=TIMEOUT)
        print(f"right password valid={good.valid}, wrong password valid={bad.valid}")

        stats = board.RecordGame(
            lb.RecordGameRequest(name=name, outcome=lb.GAME_OUTCOME_WIN, score=42, request_id=f"game-1-{name}"),
            timeout=TIMEOUT,
        ).stats
        print(f"after one win: {stats.games_played} game(s), best {stats.best_score}, rank {stats.rank}")

        try:
            users.CreateUser(us.CreateUserRequest(name="a b", password="x"), timeout=TIMEOUT)
        except grpc.RpcError as err:
            details = error_details(err)
            print(f"refused: {details.code.name} {details.reason}")
            for violation in details.field_violations:
                print(f"  {violation.field}: {violation.reason} ({violation.description})")
        else:
            print("expected INVALID_ARGUMENT", file=sys.stderr)
            return 1

        users.DeleteUser(us.DeleteUserRequest(name=name), timeout=TIMEOUT)
        print(f"deleted {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
