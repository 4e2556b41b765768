//! Roster's integration tests: a real server on port 0 per test, a real SQLite
//! file, a private redis-server, and a real tonic client over TCP.

mod access;
mod audit;
mod backends;
mod board_copy;
mod cache;
mod consistency;
mod crash;
mod credentials;
mod helpers;
mod history;
mod key_prefix;
mod leaderboard;
mod lifecycle;
mod lifecycle_users;
mod limits;
mod malformed;
mod metrics;
mod migrations;
mod partition;
mod postgres;
mod postgres_faults;
mod redis_faults;
mod rig;
mod sentinel;
mod storage;
mod traces;
mod users;
