// A promise for one unary call of a generated @grpc/grpc-js client.

import { type CallOptions, type ClientUnaryCall, Metadata, type ServiceError } from "@grpc/grpc-js";

/** The callback form of a generated client method, bound to its client. */
export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * Calls a unary method and resolves with its response, or rejects with its
 * ServiceError (decode that with errorDetails).
 *
 *   const { user } = await unary(users.getUser.bind(users), GetUserRequest.fromPartial({ name }),
 *     { deadline: Date.now() + 5000 });
 */
export function unary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: Partial<CallOptions> = {},
  metadata: Metadata = new Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, options, (error, response) => (error ? reject(error) : resolve(response)));
  });
}
