// Roster's error details, decoded from a failed call.
//
// Roster puts a google.rpc.Status in the `grpc-status-details-bin` trailer of
// every error it returns. Its details carry a google.rpc.ErrorInfo (domain
// "roster", a stable `reason` such as USER_NOT_FOUND), for INVALID_ARGUMENT a
// google.rpc.BadRequest with one violation per bad field, and for some
// RESOURCE_EXHAUSTED a google.rpc.RetryInfo.

import { type Metadata, type ServiceError, status as GrpcStatus } from "@grpc/grpc-js";
import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

const DETAILS_KEY = "grpc-status-details-bin";

/** One google.rpc.BadRequest.FieldViolation: which field, and why. */
export interface FieldViolation {
  field: string;
  reason: string;
  description: string;
}

/** What a failed call said: its status and the decoded google.rpc details. */
export interface ErrorDetails {
  /** The gRPC status code, e.g. status.NOT_FOUND (5). */
  code: GrpcStatus;
  /** The status message. */
  message: string;
  /** google.rpc.ErrorInfo.reason (stable, e.g. "USER_ALREADY_EXISTS"); undefined without ErrorInfo. */
  reason?: string;
  /** google.rpc.ErrorInfo.domain ("roster" for Roster's own errors). */
  domain?: string;
  /** google.rpc.ErrorInfo.metadata. */
  metadata: { [key: string]: string };
  /** google.rpc.BadRequest's violations, in the server's order. */
  fieldViolations: FieldViolation[];
  /** google.rpc.RetryInfo.retry_delay in milliseconds: wait this long before retrying. */
  retryDelayMs?: number;
  /** The whole google.rpc.Status; undefined when the trailer is absent
   * (for instance a deadline that expired in the client). */
  status?: Status;
}

/** Whether `err` is the error a @grpc/grpc-js call fails with. */
export function isServiceError(err: unknown): err is ServiceError {
  return (
    err instanceof Error &&
    typeof (err as Partial<ServiceError>).code === "number" &&
    (err as Partial<ServiceError>).metadata !== undefined
  );
}

function typeName(typeUrl: string): string {
  return typeUrl.substring(typeUrl.lastIndexOf("/") + 1);
}

/** Decodes the google.rpc.Status in a call's trailers, if there is one. */
export function decodeStatus(metadata: Metadata | undefined): Status | undefined {
  const value = metadata?.get(DETAILS_KEY)[0];
  if (value === undefined || typeof value === "string") {
    return undefined;
  }
  return Status.decode(value);
}

/**
 * Decodes a failed call into its status code, message, ErrorInfo reason,
 * BadRequest field violations and RetryInfo delay.
 */
export function errorDetails(err: Partial<ServiceError>): ErrorDetails {
  const details: ErrorDetails = {
    code: err.code ?? GrpcStatus.UNKNOWN,
    message: err.details ?? err.message ?? "",
    metadata: {},
    fieldViolations: [],
  };
  const status = decodeStatus(err.metadata);
  if (status === undefined) {
    return details;
  }
  details.status = status;
  for (const any of status.details) {
    switch (typeName(any.typeUrl)) {
      case "google.rpc.ErrorInfo": {
        const info = ErrorInfo.decode(any.value);
        details.reason = info.reason;
        details.domain = info.domain;
        details.metadata = info.metadata;
        break;
      }
      case "google.rpc.BadRequest":
        for (const v of BadRequest.decode(any.value).fieldViolations) {
          details.fieldViolations.push({ field: v.field, reason: v.reason, description: v.description });
        }
        break;
      case "google.rpc.RetryInfo": {
        const delay = RetryInfo.decode(any.value).retryDelay;
        if (delay !== undefined) {
          details.retryDelayMs = Number(delay.seconds) * 1000 + delay.nanos / 1e6;
        }
        break;
      }
    }
  }
  return details;
}
