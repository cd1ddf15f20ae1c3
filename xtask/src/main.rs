//! `cargo xtask test [cargo test arguments…]`: make sure the programs the tests start are
//! installed, installing the Debian packages that provide them when they are missing,
//! then run every test of the workspace (`cargo test --all-targets`).
//!
//! The end-to-end tests drive real servers and clients: Prometheus and promtool (Debian's
//! `prometheus`) scrape and lint `/metrics`; Debian's `python3-aiozipkin` sends Zipkin
//! spans; `curl` is the HTTPS client of the TLS tests; `chromium` and `chromium-driver`
//! run the page in a real browser; `nats-server` runs the cluster's JetStream. A missing one is installed with `apt-get` when we are root, and named with the
//! command to run otherwise.

use std::process::{Command, ExitCode};

/// (shell check that succeeds when it is there, Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[
    ("command -v prometheus", "prometheus"),
    ("command -v promtool", "prometheus"),
    ("command -v curl", "curl"),
    // The page's tests drive Debian's headless Chromium through chromedriver.
    ("command -v chromium", "chromium"),
    ("command -v chromedriver", "chromium-driver"),
    // The cluster's tests start three of them as one JetStream cluster.
    ("command -v nats-server", "nats-server"),
    // Debian's interpreter: another python3 may come first on the PATH.
    (
        "/usr/bin/python3 -c 'import aiozipkin'",
        "python3-aiozipkin",
    ),
];

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

fn found(check: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(check)
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
        .filter(|(check, _)| !found(check))
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
    match NEEDED.iter().find(|(check, _)| !found(check)) {
        Some((check, package)) => Err(format!("`{check}` still fails after installing {package}")),
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
