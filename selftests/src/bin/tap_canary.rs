//! A suite that fails on purpose: `cargo xtask test` runs it to prove that a
//! failing test inside the VM makes the harness fail.

fn main() {
    println!("TAP version 13");
    println!("1..2");
    println!("ok 1 canary passes");
    println!("not ok 2 deliberately failing test point");
    std::process::exit(1);
}
