//! Release builds for x86-64 Linux lay out the executable's functions in the order
//! `benches/link-order.txt` gives: start-up code first, then the request path. An idle
//! proxy's resident code shrinks from pages spread over the whole executable to a few
//! neighbouring ones (benches/README.md, "Idle RSS"); `benches/link-order.sh` rewrites the
//! file. Names that no longer exist are skipped without a warning.

use std::env;
use std::path::Path;

fn main() {
    const ORDER: &str = "benches/link-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-changed=build.rs");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    // rustc links this target with its own LLD, which reads ordering files; other linkers
    // (GNU ld) do not know the option.
    let lld_target = env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(ORDER);
    if release && lld_target && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
