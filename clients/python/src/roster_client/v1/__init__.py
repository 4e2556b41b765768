"""roster.v1 messages and gRPC stubs, generated from proto/roster/v1 by clients/generate. Do not edit."""
