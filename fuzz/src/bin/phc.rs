//! Fuzz target `phc`: see `roster_fuzz::phc` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::phc(data);
    });
}
