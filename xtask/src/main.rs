//! Developer tasks of kmm-rs.
fn main() {}
