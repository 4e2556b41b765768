//! Fuzz target `user_name`: see `roster_fuzz::user_name` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::user_name(data);
    });
}
