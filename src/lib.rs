//! Roster: a gRPC user service. See README.md for what it promises.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)
)]

pub mod access;
pub mod audit;
pub mod backends;
pub mod cache;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod delivery;
pub mod domain;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod grpc;
pub mod leaderboard;
pub mod limits;
pub mod metrics;
mod pem;
#[cfg(test)]
mod properties;
pub mod proto;
pub mod single_flight;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod users;
