//! `trib` as a process on the embedded native engine: roundtrips, admin, errors, the
//! config file's connections, bench, completions and man pages.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::{ok, roundtrip_and_admin, trib, trib_in};

fn native_url(dir: &tempfile::TempDir) -> String {
    format!("native://{}", dir.path().join("data").display())
}

#[test]
fn produce_consume_admin_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    roundtrip_and_admin(&native_url(&dir), "orders", "300ms");
}

#[test]
fn bad_urls_and_missing_engines_are_usage_errors() {
    for (url, says) in [
        ("bogus://x", "unknown backend \"bogus\""),
        ("native:///tmp/x?durability=maybe", "durability"),
        ("not a url", "bad URL"),
        ("kafka://127.0.0.1:1?linger=forever", "linger"),
    ] {
        let run = trib(url, &["streams", "list"], "");
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let none = trib_in(dir.path(), &[], &["streams", "list"], "");
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("no engine chosen"), "{}", none.stderr);
    let usage = trib("memory://", &["produce"], "");
    assert_eq!(usage.code, 2, "clap usage errors exit 2");
}

#[test]
fn named_connections_come_from_tributary_toml() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("tributary.toml"),
        format!(
            "default = \"local\"\n\n[connections.local]\nurl = \"native://{0}\"\n\n\
             [connections.tuned]\nbackend = \"native\"\npath = \"{0}\"\ndurability = \"sync\"\n\n\
             [connections.broken]\nbackend = \"native\"\nno_such_key = 1\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| trib_in(dir.path(), env, args, "");
    assert_eq!(
        run(&["streams", "create", "a"], &[]).code,
        0,
        "the default connection"
    );
    assert_eq!(
        run(&["-c", "tuned", "streams", "list"], &[]).stdout,
        "a\n",
        "same data, other settings"
    );
    assert_eq!(
        run(&["streams", "list"], &[("TRIBUTARY_CONNECTION", "tuned")]).stdout,
        "a\n"
    );
    let broken = run(&["-c", "broken", "streams", "list"], &[]);
    assert_eq!(broken.code, 2);
    assert!(broken.stderr.contains("no_such_key"), "{}", broken.stderr);
    let unknown = run(&["-c", "elsewhere", "streams", "list"], &[]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown
            .stderr
            .contains("no connection \"elsewhere\" (it has: broken, local, tuned)"),
        "{}",
        unknown.stderr
    );
    // --url wins over the file.
    let other = tempfile::tempdir().unwrap();
    let url = native_url(&other);
    assert_eq!(run(&["--url", &url, "streams", "list"], &[]).stdout, "");
}

#[test]
fn bench_reports_json_with_every_record_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?durability=group_commit", native_url(&dir));
    let out = ok(
        &url,
        &[
            "bench",
            "--count",
            "5000",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--record-size",
            "200",
            "--json",
            "--label",
            "test",
        ],
        "",
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["label"], "test");
    assert_eq!(report["produce"]["records"], 5000);
    assert_eq!(report["consume"]["records"], 5000);
    assert!(report["produce"]["records_per_sec"].as_f64().unwrap() > 0.0);
    let p = &report["end_to_end_latency_ms"];
    assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(), "{p}");
    assert!(p["p99"].as_f64().unwrap() <= p["max"].as_f64().unwrap(), "{p}");
    assert!(
        ok(&url, &["streams", "list"], "").is_empty(),
        "the bench stream is deleted"
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    let bash = ok("memory://", &["completions", "bash"], "");
    assert!(
        bash.contains("set-partitions") && bash.contains("--key-field"),
        "{}",
        &bash[..200]
    );
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    ok("memory://", &["man", "--dir", man.to_str().unwrap()], "");
    let page = std::fs::read_to_string(man.join("trib-consume.1")).unwrap();
    assert!(page.contains(r"\-\-template"), "{page}");
    assert!(man.join("trib-streams-set-partitions.1").exists());
    assert!(man.join("trib.1").exists());
}
