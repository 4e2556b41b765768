//! Fuzz target `request_id`: see `roster_fuzz::request_id` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::request_id(data);
    });
}
