fn main() {
    eprintln!("pglink: not wired up yet");
    std::process::exit(2);
}
