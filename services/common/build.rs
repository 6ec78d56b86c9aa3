// The migrations are embedded by `sqlx::migrate!`; a new file in the folder must
// rebuild this crate (sqlx's documented advice).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
