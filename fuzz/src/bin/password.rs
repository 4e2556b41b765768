//! Fuzz target `password`: see `roster_fuzz::password` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::password(data);
    });
}
