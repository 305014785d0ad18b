fn main() {
    // Rebuild when the shared types change.
    println!("cargo:rerun-if-changed=common/src");
}
