// roster.v1.LeaderboardService and grpc.health.v1, against the real server.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, it } from "node:test";
import { status } from "@grpc/grpc-js";
import {
  CreateUserRequest,
  GameOutcome,
  GetUserStatsRequest,
  ListLeaderboardAroundUserRequest,
  ListLeaderboardRequest,
  RecordGameRequest,
  errorDetails,
  health,
  isServiceError,
  unary,
  type LeaderboardEntry,
} from "../src";
import { clients, deadline, uniqueName, uniquePassword } from "./helpers";

const c = clients();
after(() => c.close());

const { HealthCheckRequest, HealthCheckResponse_ServingStatus } = health;

describe("grpc.health.v1", () => {
  it("reports SERVING for Roster's services", async () => {
    for (const service of ["roster.v1.UserService", "roster.v1.LeaderboardService", ""]) {
      const response = await unary(c.health.check.bind(c.health), HealthCheckRequest.fromPartial({ service }), deadline());
      assert.equal(response.status, HealthCheckResponse_ServingStatus.SERVING, service);
    }
  });
});

describe("LeaderboardService", () => {
  it("records games, then reads stats and the board", async () => {
    const name = uniqueName();
    await unary(
      c.users.createUser.bind(c.users),
      CreateUserRequest.fromPartial({ name, password: uniquePassword() }),
      deadline(),
    );
    const stats = async () =>
      (await unary(c.board.getUserStats.bind(c.board), GetUserStatsRequest.fromPartial({ name }), deadline())).stats!;

    const before = await stats();
    assert.equal(before.gamesPlayed, 0n);
    assert.equal(before.rank, 0n);
    assert.equal(before.updateTime, undefined);

    const game = RecordGameRequest.fromPartial({
      name: name.toUpperCase(),
      outcome: GameOutcome.GAME_OUTCOME_WIN,
      score: 4242n,
      requestId: randomUUID(),
    });
    const first = (await unary(c.board.recordGame.bind(c.board), game, deadline())).stats!;
    assert.deepEqual(
      [first.gamesPlayed, first.wins, first.bestScore, first.totalScore],
      [1n, 1n, 4242n, 4242n],
    );
    assert.ok(first.rank >= 1n);
    assert.ok(first.updateTime instanceof Date);

    // A retry with the same request_id counts nothing twice.
    const retry = (await unary(c.board.recordGame.bind(c.board), game, deadline())).stats!;
    assert.deepEqual([retry.gamesPlayed, retry.totalScore], [1n, 4242n]);

    // A second game without a request_id counts.
    await unary(
      c.board.recordGame.bind(c.board),
      RecordGameRequest.fromPartial({ name, outcome: GameOutcome.GAME_OUTCOME_DRAW, score: 8n }),
      deadline(),
    );
    const now = await stats();
    assert.equal(now.name, name);
    assert.deepEqual([now.gamesPlayed, now.wins, now.losses, now.draws], [2n, 1n, 0n, 1n]);
    assert.deepEqual([now.bestScore, now.totalScore], [4242n, 4250n]);
    assert.ok(now.rank >= 1n);

    // Page through the board (small pages, following next_page_token) to find the user.
    const entries: LeaderboardEntry[] = [];
    let pageToken = "";
    for (let pages = 0; pages < 1000; pages++) {
      const page = await unary(
        c.board.listLeaderboard.bind(c.board),
        ListLeaderboardRequest.fromPartial({ pageSize: 2, pageToken }),
        deadline(),
      );
      assert.ok(page.totalSize >= 1n);
      entries.push(...page.entries);
      pageToken = page.nextPageToken;
      if (pageToken === "") break;
    }
    assert.deepEqual(
      entries.map((e) => e.rank),
      entries.map((_, i) => BigInt(i + 1)),
    );
    const mine = entries.filter((e) => e.userId === now.userId);
    assert.equal(mine.length, 1);
    assert.deepEqual([mine[0].name, mine[0].score], [name, 4242n]);

    const around = await unary(
      c.board.listLeaderboardAroundUser.bind(c.board),
      ListLeaderboardAroundUserRequest.fromPartial({ name, pageSize: 3 }),
      deadline(),
    );
    assert.ok(around.entries.some((e) => e.userId === now.userId));
  });

  it("refuses bad games and unknown users", async () => {
    const name = uniqueName();
    try {
      await unary(c.board.recordGame.bind(c.board), RecordGameRequest.fromPartial({ name, score: -1n }), deadline());
      assert.fail("the call succeeded");
    } catch (err) {
      assert.ok(isServiceError(err));
      const details = errorDetails(err);
      assert.equal(details.code, status.INVALID_ARGUMENT);
      const fields = new Set(details.fieldViolations.map((v) => v.field));
      assert.ok(fields.has("outcome") && fields.has("score"), [...fields].join(","));
    }
    try {
      await unary(c.board.getUserStats.bind(c.board), GetUserStatsRequest.fromPartial({ name }), deadline());
      assert.fail("the call succeeded");
    } catch (err) {
      assert.ok(isServiceError(err));
      assert.equal(errorDetails(err).code, status.NOT_FOUND);
      assert.equal(errorDetails(err).reason, "USER_NOT_FOUND");
    }
  });
});
