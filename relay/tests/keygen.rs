//! The `chive` binary end to end: `chive keygen` into a fresh data directory, twice (the keys
//! must not change), then the installed C tor (`tor --list-fingerprint`, 0.4.9) on that
//! directory must print the same identities and keep chive's keys; a third `chive keygen`
//! after tor has been there still reports the same.
//!
//! CI installs tor; locally: `apt-get install tor`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a test failure.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const NICK: &str = "chivekeygen";

fn chive(args: &[&str], data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chive"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// Runs `chive keygen` and returns its two output lines.
fn keygen(data_dir: &Path) -> Vec<String> {
    let out = chive(&["keygen", "--nickname", NICK], data_dir);
    assert!(
        out.status.success(),
        "chive keygen failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    lines
}

/// Runs `tor --list-fingerprint KIND` and returns the line it prints for our nickname.
fn tor_list_fingerprint(data_dir: &Path, kind: &str) -> String {
    let out = Command::new("tor")
        .args(["-f", "/dev/null", "--defaults-torrc", "/dev/null"])
        .args(["--ignore-missing-torrc", "--list-fingerprint", kind])
        .arg("--DataDirectory")
        .arg(data_dir)
        .args(["--ORPort", "127.0.0.1:9999", "--SocksPort", "0"])
        .args(["--Nickname", NICK, "--Log", "err stderr"])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "this test needs C tor on PATH (`tor`, version 0.4.9): install it with \
             `apt-get install tor`"
        ),
        Err(e) => panic!("could not run tor: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tor failed: {stdout}");
    // Notices go to stdout too before the Log option applies; the answer is the last line.
    let prefix = format!("{NICK} ");
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no fingerprint line in tor's output:\n{stdout}"))
        .to_string()
}

fn key_files(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(data_dir.join("keys"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn keygen_is_stable_and_agrees_with_ctor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let first = keygen(&data);
    let files = key_files(&data);
    assert_eq!(
        files.len(),
        6,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let second = keygen(&data);
    assert_eq!(first, second);
    assert_eq!(key_files(&data), files);

    // `NAME XXXX XXXX ...` (ten groups of four hex digits) and `NAME <43 base64 chars>`.
    let rsa = first[0].strip_prefix(&format!("{NICK} ")).unwrap();
    assert_eq!(rsa.split(' ').count(), 10);
    assert!(rsa.split(' ').all(|g| g.len() == 4
        && g.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))));
    let ed = first[1].strip_prefix(&format!("{NICK} ")).unwrap();
    assert_eq!(ed.len(), 43);

    // The fingerprint files hold the same identities, unspaced.
    assert_eq!(
        fs::read_to_string(data.join("fingerprint")).unwrap(),
        format!("{NICK} {}\n", rsa.replace(' ', ""))
    );
    assert_eq!(
        fs::read_to_string(data.join("fingerprint-ed25519")).unwrap(),
        format!("{NICK} {ed}\n")
    );

    // C tor reads the same identities from chive's directory and keeps every key file.
    assert_eq!(tor_list_fingerprint(&data, "rsa"), first[0]);
    assert_eq!(tor_list_fingerprint(&data, "ed25519"), first[1]);
    let after_tor = key_files(&data);
    for (name, bytes) in &files {
        let theirs = after_tor.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(&theirs.1, bytes, "tor changed {name}");
    }
    // And chive still agrees once tor has added its own files (the TAP onion key).
    assert_eq!(keygen(&data), first);
}

#[test]
fn bad_nickname_fails_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = chive(&["keygen", "--nickname", "not valid"], &data);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid nickname"));
    assert!(!data.exists());
}

#[test]
fn version() {
    let out = Command::new(env!("CARGO_BIN_EXE_chive"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("chive {}\n", env!("CARGO_PKG_VERSION"))
    );
}
