//! A plain WASI command: a valid component of another world (wasi:cli/command).
fn main() {
    println!("not a kiln plugin");
}
