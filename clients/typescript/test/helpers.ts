// Shared by the tests against a running Roster (clients/test starts one and
// sets ROSTER_ADDR).

import { randomBytes } from "node:crypto";
import { credentials } from "@grpc/grpc-js";
import { LeaderboardServiceClient, UserServiceClient, health } from "../src";

export function address(): string {
  const value = process.env.ROSTER_ADDR ?? "";
  if (!value.startsWith("127.0.0.1:")) {
    throw new Error("ROSTER_ADDR must be 127.0.0.1:PORT of a running Roster; run clients/test");
  }
  return value;
}

export function clients() {
  const addr = address();
  const creds = credentials.createInsecure();
  return {
    users: new UserServiceClient(addr, creds),
    board: new LeaderboardServiceClient(addr, creds),
    health: new health.HealthClient(addr, creds),
    close() {
      this.users.close();
      this.board.close();
      this.health.close();
    },
  };
}

/** A name no other test or run uses: letters and digits only. */
export function uniqueName(): string {
  return "Ts" + randomBytes(8).toString("hex");
}

export function uniquePassword(): string {
  return "ts-" + randomBytes(6).toString("hex") + "-staple";
}

/** Every call gets a deadline: a client should never wait forever. */
export function deadline(ms = 10_000): { deadline: number } {
  return { deadline: Date.now() + ms };
}

/** ASCII to its full-width form (U+FF01..U+FF5E), which Roster width-folds. */
export function fullwidth(text: string): string {
  return [...text]
    .map((c) => (c >= "!" && c <= "~" ? String.fromCodePoint(c.codePointAt(0)! + 0xfee0) : c))
    .join("");
}
