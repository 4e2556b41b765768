//! The board's Lua scripts (the `.lua` files beside this one), each run by
//! its SHA-1. Every script documents its keys, arguments and reply.

use crate::cache::Script;

/// Applies entries forward-only (`scripts/update.lua`).
pub(super) static UPDATE: Script = Script::new(concat!(
    include_str!("../scripts/mark.lua"),
    include_str!("scripts/update.lua")
));
/// Removes a deleted user, leaving a tombstone (`scripts/remove.lua`).
pub(super) static REMOVE: Script = Script::new(concat!(
    include_str!("../scripts/mark.lua"),
    include_str!("scripts/remove.lua")
));
/// A user's stats and rank (`scripts/stats.lua`).
pub(super) static STATS: Script = Script::new(include_str!("scripts/stats.lua"));
/// A page of the board (`scripts/page.lua`).
pub(super) static PAGE: Script = Script::new(include_str!("scripts/page.lua"));
/// The window around a user (`scripts/around.lua`).
pub(super) static AROUND: Script = Script::new(include_str!("scripts/around.lua"));
/// Takes the rebuild lease and empties the board (`scripts/begin.lua`).
pub(super) static BEGIN: Script = Script::new(include_str!("scripts/begin.lua"));
/// Extends the rebuild lease (`scripts/renew.lua`).
pub(super) static RENEW: Script = Script::new(include_str!("scripts/renew.lua"));
/// Marks a rebuilt board ready (`scripts/finish.lua`).
pub(super) static FINISH: Script = Script::new(include_str!("scripts/finish.lua"));
/// A copy's catch-up with the change log (`scripts/sync.lua`).
pub(super) static SYNC: Script = Script::new(include_str!("scripts/sync.lua"));
/// One step of a scan of the whole board (`scripts/scan.lua`).
pub(super) static SCAN: Script = Script::new(include_str!("scripts/scan.lua"));
