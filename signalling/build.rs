//! The web app (`../web`, including the generated `web/pkg`) is embedded in release builds;
//! rebuild when any of it changes, including when `cargo xtask web` first creates `pkg/`.
fn main() {
    println!("cargo:rerun-if-changed=../web");
}
