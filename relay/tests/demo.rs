//! `chive demo` as a user runs it: the built binary, its exit status and printed figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chive"))
        .arg("demo")
        .args(args)
        .output()
        .unwrap()
}

/// The number after `label` on the line that starts with it.
fn figure(stdout: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn text_output() {
    let out = demo(&["--seconds", "1", "--circuits", "8"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("testing_echo_drop = true, a test-network setting"));
    assert_eq!(figure(&stdout, "circuits built:"), 8, "{stdout}");
    let sent = figure(&stdout, "cells sent:");
    let received = figure(&stdout, "cells received:");
    assert!(sent > 0, "{stdout}");
    assert_eq!(sent, received, "every DROP is echoed before the run ends");
    assert_eq!(figure(&stdout, "hop-cells relayed:"), 6 * received);
    assert!(figure(&stdout, "cells/s:") > 0, "{stdout}");
    for label in [
        "cpu:",
        "crypto backend:",
        "reactor backend:",
        "CPU seconds:",
    ] {
        assert!(stdout.contains(label), "{label} missing:\n{stdout}");
    }
    assert!(stdout.contains("ok: every echoed byte matched"));
}

#[test]
fn json_output_on_poll() {
    let out = demo(&[
        "--seconds",
        "1",
        "--circuits",
        "8",
        "--channels",
        "2",
        "--backend",
        "poll",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["circuits_built"], 8);
    assert_eq!(v["channels"], 2);
    assert_eq!(v["reactor_backend"], "poll");
    assert_eq!(v["testing_echo_drop"], true);
    let fh = &v["first_hops"];
    assert_eq!(fh["ntor"], 3);
    assert_eq!(fh["ntor_v3"], 3);
    assert_eq!(fh["create_fast"], 2);
    let received = v["cells_received"].as_u64().unwrap();
    assert!(received > 0);
    assert_eq!(v["cells_sent"].as_u64().unwrap(), received);
    assert_eq!(v["hop_cells"].as_u64().unwrap(), 6 * received);
    assert!(v["cells_per_sec"].as_f64().unwrap() > 0.0);
    assert!(v["relay_cpu_secs"].as_f64().unwrap() >= 0.0);
}

#[test]
fn bad_options_fail_clearly() {
    let out = demo(&["--circuits", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chive demo FAILED: invalid option"), "{err}");
}
