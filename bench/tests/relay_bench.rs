//! `chive-bench relay` end to end, with tiny load and short windows: C tor 0.4.9 and chive as
//! the relay under test, the JSON output's keys and the sanity of its values. Not a timed test:
//! no figure is compared with a speed.
//!
//! Needs `tor` on PATH (`apt-get install tor`), as the other interop tests do.

#![allow(clippy::unwrap_used)] // Test: a panic is a failure.

use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_chive-bench"))
        .arg("relay")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chive-bench relay failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn num(o: &Value, key: &str) -> f64 {
    o.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or not a number in {o}"))
}

/// The per-implementation object's figures are present and sane.
fn check_impl(o: &Value, name: &str, rounds: u64) {
    assert_eq!(o.get("impl").and_then(Value::as_str), Some(name), "{o}");
    assert!(num(o, "cells_per_sec") > 0.0, "{o}");
    assert!(o.get("cells_relayed").and_then(Value::as_u64).unwrap() > 0);
    // Relayed cells are what was sent plus what came back.
    assert_eq!(
        o.get("cells_relayed").and_then(Value::as_u64),
        Some(
            o.get("cells_sent").and_then(Value::as_u64).unwrap()
                + o.get("cells_echoed").and_then(Value::as_u64).unwrap()
        )
    );
    assert!(num(o, "cpu_sec_per_mcell") >= 0.0, "{o}");
    // Kernel time is part of the CPU time.
    assert!(num(o, "sys_sec_per_mcell") <= num(o, "cpu_sec_per_mcell"), "{o}");
    let share = num(o, "relay_sys_share");
    assert!((0.0..=1.0).contains(&share), "{o}");
    let (p50, p99, p999) = (num(o, "p50_us"), num(o, "p99_us"), num(o, "p999_us"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{o}");
    assert!(num(o, "peak_rss_mb") > 1.0, "{o}");
    assert!(num(o, "loadgen_cpu_secs") >= 0.0, "{o}");
    assert_eq!(o.get("rounds").and_then(Value::as_u64), Some(rounds));
    for key in ["cpu_model", "crypto_backend", "mode"] {
        assert!(
            o.get(key)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            "{key} in {o}"
        );
    }
    assert!(o.get("shards").and_then(Value::as_u64).unwrap() >= 1);
}

#[test]
fn both_relays_closed_loop() {
    let lines = run(&[
        "--circuits",
        "4",
        "--channels",
        "2",
        "--window",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0.2",
        "--rounds",
        "2",
    ]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    check_impl(&lines[0], "ctor", 2);
    check_impl(&lines[1], "chive", 2);
    assert_eq!(
        lines[1].get("crypto_backend"),
        lines[2].get("crypto_backend")
    );
    // Present; null when a window was too short for the 10 ms CPU clock.
    let ratio = lines[2].get("ratio_cells_per_cpu_sec").unwrap();
    assert!(
        ratio.is_null() || ratio.as_f64().is_some_and(|r| r > 0.0),
        "{ratio}"
    );
    assert!(lines[2].get("ratio_ceiling_kernel_only").is_some());
}

#[test]
fn chive_open_loop_at_a_low_rate() {
    let lines = run(&[
        "--impls",
        "chive",
        "--rate",
        "400",
        "--circuits",
        "4",
        "--channels",
        "1",
        "--seconds",
        "0.5",
        "--warmup",
        "0.2",
        "--rounds",
        "1",
    ]);
    // One implementation: no ratio object.
    assert_eq!(lines.len(), 1, "{lines:?}");
    check_impl(&lines[0], "chive", 1);
    assert!(lines[0]
        .get("mode")
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("open loop")));
    // 400 cells/s offered for 0.5 s: far fewer relayed than a closed loop would.
    let sent = lines[0].get("cells_sent").and_then(Value::as_u64).unwrap();
    assert!(sent <= 400, "{sent}");
}

/// The same load with CGO circuits (proposal 359) through both relays: C tor 0.4.9 and chive
/// both accept the `Relay=6` request, and the sink echoes v1-format cells.
#[test]
fn both_relays_with_cgo_circuits() {
    let lines = run(&[
        "--cgo",
        "--circuits",
        "4",
        "--channels",
        "1",
        "--window",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0.2",
        "--rounds",
        "1",
    ]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    check_impl(&lines[0], "ctor", 1);
    check_impl(&lines[1], "chive", 1);
    for o in &lines[..2] {
        assert_eq!(
            o.get("relay_crypto").and_then(Value::as_str),
            Some("cgo"),
            "{o}"
        );
    }
}
