//! The `caisse` command.

fn main() {
    eprintln!("caisse: the node is not built yet; see README.md");
    std::process::exit(2);
}
