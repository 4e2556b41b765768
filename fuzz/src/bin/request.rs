//! Fuzz target `request`: see `roster_fuzz::request` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::request(data);
    });
}
