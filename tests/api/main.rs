//! Roster's integration tests: a real server on port 0 per test, a real SQLite
//! file, a private redis-server, and a real tonic client over TCP.

mod board_copy;
mod cache;
mod consistency;
mod crash;
mod credentials;
mod helpers;
mod history;
mod leaderboard;
mod lifecycle;
mod lifecycle_users;
mod malformed;
mod partition;
mod postgres;
mod redis_faults;
mod rig;
mod storage;
mod users;
