//! Fuzz target `page_token`: see `roster_fuzz::page_token` for the invariants it asserts.

fn main() {
    roster_fuzz::warm_up();
    afl::fuzz!(|data: &[u8]| {
        roster_fuzz::page_token(data);
    });
}
