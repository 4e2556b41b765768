// Roster from TypeScript: create a user, read it back under another spelling,
// check its password, record a game, and print a refusal's field violations.
//
//   npm run build && node dist/examples/quickstart.js [HOST:PORT]
//   (default $ROSTER_ADDR or 127.0.0.1:50051)

import { randomUUID } from "node:crypto";
import { credentials, status } from "@grpc/grpc-js";
import {
  CreateUserRequest,
  DeleteUserRequest,
  GameOutcome,
  GetUserRequest,
  LeaderboardServiceClient,
  RecordGameRequest,
  UserServiceClient,
  VerifyPasswordRequest,
  errorDetails,
  isServiceError,
  unary,
} from "../src";

/** Every call gets a deadline. */
const deadline = () => ({ deadline: Date.now() + 10_000 });

async function main(): Promise<number> {
  const addr = process.argv[2] ?? process.env.ROSTER_ADDR ?? "127.0.0.1:50051";
  const users = new UserServiceClient(addr, credentials.createInsecure());
  const board = new LeaderboardServiceClient(addr, credentials.createInsecure());
  const name = `Ada${randomUUID().slice(0, 8)}`;
  const password = `correct horse battery ${randomUUID().slice(0, 8)}`;
  try {
    // A requestId makes a retry of the same call safe (it returns the first
    // call's answer instead of ALREADY_EXISTS).
    const { user } = await unary(
      users.createUser.bind(users),
      CreateUserRequest.fromPartial({ name, password, requestId: `quickstart-${name}` }),
      deadline(),
    );
    console.log(`created ${user?.name} (${user?.id})`);

    const found = await unary(users.getUser.bind(users), GetUserRequest.fromPartial({ name: name.toLowerCase() }), deadline());
    console.log(`found ${found.user?.name} under '${name.toLowerCase()}'`);

    const verify = users.verifyPassword.bind(users);
    const good = await unary(verify, VerifyPasswordRequest.fromPartial({ name, password }), deadline());
    const bad = await unary(verify, VerifyPasswordRequest.fromPartial({ name, password: "not it at all" }), deadline());
    console.log(`right password valid=${good.valid}, wrong password valid=${bad.valid}`);

    const { stats } = await unary(
      board.recordGame.bind(board),
      RecordGameRequest.fromPartial({ name, outcome: GameOutcome.GAME_OUTCOME_WIN, score: 42, requestId: `game-1-${name}` }),
      deadline(),
    );
    console.log(`after one win: ${stats?.gamesPlayed} game(s), best ${stats?.bestScore}, rank ${stats?.rank}`);

    try {
      await unary(users.createUser.bind(users), CreateUserRequest.fromPartial({ name: "a b", password: "x" }), deadline());
      console.error("expected INVALID_ARGUMENT");
      return 1;
    } catch (err) {
      if (!isServiceError(err)) throw err;
      const details = errorDetails(err);
      console.log(`refused: ${status[details.code]} ${details.reason}`);
      for (const violation of details.fieldViolations) {
        console.log(`  ${violation.field}: ${violation.reason} (${violation.description})`);
      }
    }

    await unary(users.deleteUser.bind(users), DeleteUserRequest.fromPartial({ name }), deadline());
    console.log(`deleted ${name}`);
    return 0;
  } finally {
    users.close();
    board.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
