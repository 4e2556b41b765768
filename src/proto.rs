//! Code generated from `proto/` and the descriptor set that reflection serves.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// The `roster.v1` package.
pub mod roster {
    /// Version 1 of Roster's API.
    pub mod v1 {
        tonic::include_proto!("roster.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Roster proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("roster_descriptor");

mod convert {
    //! Conversions between domain types and their wire form.

    use chrono::{DateTime, Utc};

    use super::roster::v1 as pb;
    use crate::domain::User;

    pub(super) fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: time.timestamp(),
            nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }

    pub(super) fn time(ts: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
        let ts = ts?;
        DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
    }

    impl From<&User> for pb::User {
        fn from(user: &User) -> Self {
            Self {
                id: user.id.to_string(),
                name: user.name.clone(),
                create_time: Some(timestamp(user.create_time)),
                update_time: Some(timestamp(user.update_time)),
            }
        }
    }

    /// A wire `User` that does not describe a valid user (bad id or times).
    #[derive(Debug)]
    pub struct MalformedUser;

    impl TryFrom<pb::User> for User {
        type Error = MalformedUser;

        fn try_from(user: pb::User) -> Result<Self, Self::Error> {
            Ok(Self {
                id: user.id.parse().map_err(|_| MalformedUser)?,
                name: user.name,
                create_time: time(user.create_time).ok_or(MalformedUser)?,
                update_time: time(user.update_time).ok_or(MalformedUser)?,
            })
        }
    }
}

pub use convert::MalformedUser;

/// A user in its stored wire form (cache values, idempotency records):
/// public fields only.
pub fn encode_user(user: &crate::domain::User) -> Vec<u8> {
    prost::Message::encode_to_vec(&roster::v1::User::from(user))
}

/// A user back from [`encode_user`]'s form; `None` when it is not one.
pub fn decode_user(bytes: &[u8]) -> Option<crate::domain::User> {
    <roster::v1::User as prost::Message>::decode(bytes)
        .ok()?
        .try_into()
        .ok()
}

mod leaderboard;
pub use leaderboard::{stats_from_wire, stats_to_wire};
