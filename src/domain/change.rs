//! What a committed write changed, as the caches must learn it: one row of
//! the database's cache outbox. No I/O.

use uuid::Uuid;

use super::NameKey;

/// One change to a user's cached answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The user's public fields changed (created, password changed): the
    /// cached user must go.
    Account(NameKey),
    /// The user's stats or board position changed: the board must take the
    /// database's current values.
    Stats(NameKey),
    /// The user with this id was deleted: the cached user and the board
    /// entry must go, and the name keeps a tombstone on the board.
    Deleted(NameKey, Uuid),
}

impl Change {
    /// The user whose answers changed.
    pub fn key(&self) -> &NameKey {
        match self {
            Self::Account(key) | Self::Stats(key) | Self::Deleted(key, _) => key,
        }
    }

    /// The outbox's `kind` column.
    pub fn kind(&self) -> i16 {
        match self {
            Self::Account(_) => 1,
            Self::Stats(_) => 2,
            Self::Deleted(..) => 3,
        }
    }

    /// Rebuilds a change from its outbox columns; `None` for a row this
    /// version does not know (it is skipped, never guessed at).
    pub fn from_row(kind: i16, key: NameKey, user_id: Option<Uuid>) -> Option<Self> {
        match (kind, user_id) {
            (1, _) => Some(Self::Account(key)),
            (2, _) => Some(Self::Stats(key)),
            (3, Some(id)) => Some(Self::Deleted(key, id)),
            _ => None,
        }
    }

    /// The deleted user's id, for [`Change::Deleted`].
    pub fn deleted_id(&self) -> Option<Uuid> {
        match self {
            Self::Deleted(_, id) => Some(*id),
            _ => None,
        }
    }
}

/// A change with its place in commit order (the outbox's `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Outbox number: every change with a lower number committed earlier.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_survives_its_outbox_row() {
        let key = NameKey::from_stored("alice".into());
        let id = Uuid::now_v7();
        for change in [
            Change::Account(key.clone()),
            Change::Stats(key.clone()),
            Change::Deleted(key.clone(), id),
        ] {
            let back = Change::from_row(change.kind(), key.clone(), change.deleted_id());
            assert_eq!(back, Some(change));
        }
        assert_eq!(Change::from_row(3, key.clone(), None), None);
        assert_eq!(Change::from_row(9, key, None), None);
    }
}
