// errorDetails on hand-made trailers: RetryInfo (which needs Redis's throttle
// to happen for real) and errors without details. Needs no server.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Metadata, status } from "@grpc/grpc-js";
import { ErrorInfo, RetryInfo, Status, errorDetails } from "../src";

describe("errorDetails", () => {
  it("decodes ErrorInfo and RetryInfo", () => {
    const trailer = Status.encode(
      Status.fromPartial({
        code: status.RESOURCE_EXHAUSTED,
        message: "too many failed attempts",
        details: [
          {
            typeUrl: "type.googleapis.com/google.rpc.ErrorInfo",
            value: Buffer.from(
              ErrorInfo.encode(
                ErrorInfo.fromPartial({ reason: "TOO_MANY_FAILED_ATTEMPTS", domain: "roster", metadata: { k: "v" } }),
              ).finish(),
            ),
          },
          {
            typeUrl: "type.googleapis.com/google.rpc.RetryInfo",
            value: Buffer.from(
              RetryInfo.encode(RetryInfo.fromPartial({ retryDelay: { seconds: 2n, nanos: 500_000_000 } })).finish(),
            ),
          },
        ],
      }),
    ).finish();
    const metadata = new Metadata();
    metadata.set("grpc-status-details-bin", Buffer.from(trailer));
    const details = errorDetails({ code: status.RESOURCE_EXHAUSTED, details: "too many failed attempts", metadata });
    assert.equal(details.reason, "TOO_MANY_FAILED_ATTEMPTS");
    assert.deepEqual(details.metadata, { k: "v" });
    assert.equal(details.retryDelayMs, 2500);
    assert.deepEqual(details.fieldViolations, []);
  });

  it("handles an error without details", () => {
    const details = errorDetails({ code: status.UNAVAILABLE, details: "connection refused", metadata: new Metadata() });
    assert.deepEqual(
      [details.code, details.message, details.reason, details.status],
      [status.UNAVAILABLE, "connection refused", undefined, undefined],
    );
  });
});
