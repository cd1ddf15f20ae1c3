//! `cargo xtask test [cargo test arguments…]`: make sure the programs the tests start are
//! installed, installing the Debian packages that provide them when they are missing,
//! then run every test of the workspace (`cargo test --all-targets`).
//!
//! The end-to-end tests drive real servers: Prometheus and promtool (Debian's
//! `prometheus`) scrape and lint `/metrics`. A missing program is installed with
//! `apt-get` when we are root, and named with the command to run otherwise.

use std::process::{Command, ExitCode};

/// (program the tests run, Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[("prometheus", "prometheus"), ("promtool", "prometheus")];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("test") => test(args.collect()),
        _ => {
            eprintln!("usage: cargo xtask test [cargo test arguments…]");
            ExitCode::from(64)
        }
    }
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|output| output.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn run(command: &mut Command) -> bool {
    command.status().is_ok_and(|status| status.success())
}

fn install_missing() -> Result<(), String> {
    let mut packages: Vec<&str> = NEEDED
        .iter()
        .filter(|(program, _)| !found(program))
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !is_root() {
        return Err(format!(
            "the tests need Debian packages that are not installed: run `sudo apt-get install {list}`"
        ));
    }
    eprintln!("xtask: installing {list} (Debian packages the tests use)");
    let updated = run(Command::new("apt-get").args(["update", "-qq"]));
    let installed = run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages));
    if !(updated && installed) {
        return Err(format!("apt-get could not install {list}"));
    }
    match NEEDED.iter().find(|(program, _)| !found(program)) {
        Some((program, package)) => Err(format!(
            "{program} is still missing after installing {package}"
        )),
        None => Ok(()),
    }
}

fn test(extra: Vec<String>) -> ExitCode {
    if let Err(problem) = install_missing() {
        eprintln!("xtask: {problem}");
        return ExitCode::FAILURE;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let passed = run(Command::new(cargo)
        .args(["test", "--workspace", "--all-targets"])
        .args(extra));
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
