// roster.v1.UserService through the generated client, against the real server.

import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { status } from "@grpc/grpc-js";
import {
  CreateUserRequest,
  DeleteUserRequest,
  GetUserRequest,
  VerifyPasswordRequest,
  errorDetails,
  isServiceError,
  unary,
  type User,
} from "../src";
import { clients, deadline, fullwidth, uniqueName, uniquePassword } from "./helpers";

const c = clients();
after(() => c.close());

async function create(name: string, password: string): Promise<User> {
  const { user } = await unary(c.users.createUser.bind(c.users), CreateUserRequest.fromPartial({ name, password }), deadline());
  assert.ok(user);
  return user;
}

/** The call must fail; returns its decoded details. */
async function failure(promise: Promise<unknown>) {
  try {
    await promise;
  } catch (err) {
    assert.ok(isServiceError(err), `not a ServiceError: ${err}`);
    return errorDetails(err);
  }
  assert.fail("the call succeeded");
}

describe("UserService", () => {
  it("creates a user and finds it under other spellings", async () => {
    const name = uniqueName();
    const created = await create(name, uniquePassword());
    assert.equal(created.name, name);
    assert.equal(created.id.length, 36);
    assert.ok(created.createTime instanceof Date);

    for (const spelling of [name.toUpperCase(), name.toLowerCase(), fullwidth(name)]) {
      const { user } = await unary(c.users.getUser.bind(c.users), GetUserRequest.fromPartial({ name: spelling }), deadline());
      assert.equal(user?.id, created.id);
      assert.equal(user?.name, name); // shown as registered
    }
  });

  it("answers INVALID_ARGUMENT with BadRequest field violations", async () => {
    const details = await failure(
      unary(c.users.createUser.bind(c.users), CreateUserRequest.fromPartial({ name: "a b", password: "x" }), deadline()),
    );
    assert.equal(details.code, status.INVALID_ARGUMENT);
    assert.equal(details.domain, "roster");
    assert.equal(details.reason, "NAME_WHITESPACE");
    assert.deepEqual(
      details.fieldViolations.map((v) => [v.field, v.reason]),
      [
        ["name", "NAME_WHITESPACE"],
        ["password", "PASSWORD_TOO_SHORT"],
      ],
    );
    assert.ok(details.fieldViolations.every((v) => v.description.length > 0));
  });

  it("answers ALREADY_EXISTS for a taken name in another spelling", async () => {
    const name = uniqueName();
    const password = uniquePassword();
    await create(name, password);
    const details = await failure(create(name.toUpperCase(), password));
    assert.equal(details.code, status.ALREADY_EXISTS);
    assert.equal(details.reason, "USER_ALREADY_EXISTS");
    assert.deepEqual(details.fieldViolations, []);
  });

  it("answers NOT_FOUND for an unknown user", async () => {
    const details = await failure(
      unary(c.users.getUser.bind(c.users), GetUserRequest.fromPartial({ name: uniqueName() }), deadline()),
    );
    assert.equal(details.code, status.NOT_FOUND);
    assert.equal(details.reason, "USER_NOT_FOUND");
    assert.equal(details.domain, "roster");
  });

  it("verifies passwords", async () => {
    const name = uniqueName();
    const password = uniquePassword();
    const created = await create(name, password);
    const verify = (n: string, p: string) =>
      unary(c.users.verifyPassword.bind(c.users), VerifyPasswordRequest.fromPartial({ name: n, password: p }), deadline());

    const ok = await verify(fullwidth(name), password);
    assert.equal(ok.valid, true);
    assert.equal(ok.user?.id, created.id);

    const bad = await verify(name, password + "!");
    assert.equal(bad.valid, false);
    assert.equal(bad.user, undefined);

    assert.equal((await verify(name + "x", password)).valid, false);
  });

  it("honours deadlines", async () => {
    const name = uniqueName();
    const password = uniquePassword();
    await create(name, password);
    // A generous deadline: the call completes.
    const { user } = await unary(c.users.getUser.bind(c.users), GetUserRequest.fromPartial({ name }), deadline(5_000));
    assert.equal(user?.name, name);
    // Shorter than one argon2id check (~20 ms): the call fails. Whichever
    // comes first: Roster sees the hash cannot finish in time and refuses at
    // once (RESOURCE_EXHAUSTED, HASHING_CAPACITY_EXHAUSTED, with RetryInfo);
    // the client's own timer gives DEADLINE_EXCEEDED; the server's
    // grpc-timeout gives CANCELLED "Timeout expired" (as tonic answers). The
    // last two carry no Roster details.
    const details = await failure(
      unary(c.users.verifyPassword.bind(c.users), VerifyPasswordRequest.fromPartial({ name, password }), deadline(1)),
    );
    if (details.code === status.RESOURCE_EXHAUSTED) {
      assert.equal(details.reason, "HASHING_CAPACITY_EXHAUSTED");
      assert.ok(details.retryDelayMs !== undefined);
      return;
    }
    if (details.code === status.CANCELLED) {
      assert.equal(details.message, "Timeout expired");
    } else {
      assert.equal(details.code, status.DEADLINE_EXCEEDED);
    }
    assert.equal(details.reason, undefined);
    assert.equal(details.status, undefined);
  });

  it("deletes a user", async () => {
    const name = uniqueName();
    await create(name, uniquePassword());
    await unary(c.users.deleteUser.bind(c.users), DeleteUserRequest.fromPartial({ name }), deadline());
    const details = await failure(unary(c.users.getUser.bind(c.users), GetUserRequest.fromPartial({ name }), deadline()));
    assert.equal(details.reason, "USER_NOT_FOUND");
  });
});
