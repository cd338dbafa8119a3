//! Helpers of the CLI tests: running `trib` as a process, and reading a stream back
//! through the library.

#![allow(dead_code, reason = "each test file uses its own part")]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tributary::{Client, ConsumerConfig, Received};

/// What one run of `trib` did.
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `trib ARGS` against `url` with `stdin`, from `dir`.
pub(crate) fn trib(url: &str, args: &[&str], stdin: &str) -> Run {
    trib_in(
        std::env::temp_dir().as_path(),
        &[("TRIBUTARY_URL", url)],
        args,
        stdin,
    )
}

/// Runs `trib ARGS` in `dir` with extra environment variables (and without the
/// caller's TRIBUTARY_* ones).
pub(crate) fn trib_in(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Run {
    let mut command = trib_command();
    command
        .args(args)
        .current_dir(dir)
        .env_remove("TRIBUTARY_URL")
        .env_remove("TRIBUTARY_CONNECTION")
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("trib starts");
    child
        .stdin
        .take()
        .expect("a stdin pipe")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("trib ends");
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("trib {args:?} -> {}\n{}", run.code, run.stderr.trim_end());
    run
}

/// The `trib` binary with the emulators' test credentials (they accept any; nothing
/// reaches AWS).
pub(crate) fn trib_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trib"));
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

/// `trib` that must succeed; its standard output.
pub(crate) fn ok(url: &str, args: &[&str], stdin: &str) -> String {
    let run = trib(url, args, stdin);
    assert_eq!(run.code, 0, "trib {args:?} failed: {}", run.stderr);
    run.stdout
}

/// Reads every record of `stream` with an independent reader, until none arrived for
/// `quiet`.
pub(crate) async fn read_all(client: &Client, stream: &str, quiet: Duration) -> Vec<Received> {
    let mut consumer = client
        .consumer(ConsumerConfig::broadcast(stream))
        .await
        .expect("a reader");
    let mut records = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        let batch = consumer
            .poll(5000, Duration::from_millis(200))
            .await
            .expect("poll");
        if !batch.is_empty() {
            last = std::time::Instant::now();
            records.extend(batch);
        }
    }
    consumer.close().await.expect("close");
    records
}

/// Produce → consume roundtrip, admin commands and error exits against `url`, whose
/// engine keeps streams between processes. `stream` must not exist yet.
pub(crate) fn roundtrip_and_admin(url: &str, stream: &str, idle: &str) {
    ok(url, &["streams", "create", stream, "--partitions", "2"], "");
    assert!(ok(url, &["streams", "list"], "").lines().any(|l| l == stream));
    let again = trib(url, &["streams", "create", stream], "");
    assert_eq!(again.code, 4, "creating twice: {}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    let lines = "{\"user\":\"ann\",\"n\":1}\n{\"user\":\"bob\",\"n\":2}\n{\"user\":\"ann\",\"n\":3}\n";
    ok(
        url,
        &["produce", stream, "--key-field", "user", "-H", "source=cli-test"],
        lines,
    );
    let json = ok(url, &["consume", stream, "--format", "json", "--idle", idle], "");
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 3, "{json}");
    let anns: Vec<&str> = records
        .iter()
        .filter(|r| r["key"] == "ann")
        .map(|r| r["value"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        anns,
        ["{\"user\":\"ann\",\"n\":1}", "{\"user\":\"ann\",\"n\":3}"],
        "per-key order"
    );
    assert!(
        records.iter().all(|r| r["headers"]["source"] == "cli-test"),
        "{json}"
    );

    // A group reads what it has not committed, once.
    let template = [
        "consume",
        stream,
        "-g",
        "cli-test",
        "-t",
        "{key}={value}\\n",
        "--idle",
        idle,
    ];
    let first = ok(url, &template, "");
    assert_eq!(first.lines().count(), 3, "{first}");
    assert!(first.contains("bob={\"user\":\"bob\",\"n\":2}"), "{first}");
    ok(url, &["produce", stream, "-k", "carol"], "plain line\n");
    let second = ok(url, &template, "");
    assert_eq!(second, "carol=plain line\n");
    let limited = ok(url, &["consume", stream, "-n", "2", "--idle", idle], "");
    assert_eq!(limited.lines().count(), 2, "{limited}");

    let described = ok(url, &["streams", "describe", stream, "--json"], "");
    let info: serde_json::Value = serde_json::from_str(&described).expect("describe JSON");
    assert_eq!(
        info["partitions"].as_array().map(Vec::len),
        Some(2),
        "{described}"
    );
    assert!(ok(url, &["streams", "describe", stream], "").contains("partition"));

    // Malformed input: the lines before it are sent, the line is named, exit 2.
    let bad = trib(
        url,
        &["produce", stream, "--key-field", "user"],
        "{\"user\":\"dan\"}\nnot json\n{\"user\":\"eve\"}\n",
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("line 2: not JSON"), "{}", bad.stderr);
    assert!(bad.stderr.contains("produced 1 records"), "{}", bad.stderr);
    let after = ok(url, &template, "");
    assert_eq!(
        after, "dan={\"user\":\"dan\"}\n",
        "the line before the bad one arrived, nothing after"
    );
    let missing_key = trib(
        url,
        &["produce", stream, "--key-field", "user.id"],
        "{\"user\":\"x\"}\n",
    );
    assert_eq!(missing_key.code, 2);
    assert!(
        missing_key.stderr.contains("no key field \"user.id\""),
        "{}",
        missing_key.stderr
    );

    // Missing streams: exit 3 naming the stream.
    let missing = format!("{stream}-missing");
    for args in [
        vec!["consume", missing.as_str(), "--idle", idle],
        vec!["produce", missing.as_str()],
        vec!["streams", "describe", missing.as_str()],
        vec!["streams", "delete", missing.as_str()],
    ] {
        let run = trib(url, &args, "x\n");
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(&missing), "{args:?}: {}", run.stderr);
    }
    let bad_template = trib(url, &["consume", stream, "-t", "{nope}"], "");
    assert_eq!(bad_template.code, 2, "{}", bad_template.stderr);
    let bad_start = trib(url, &["consume", stream, "--from", "yesterday"], "");
    assert_eq!(bad_start.code, 2, "{}", bad_start.stderr);

    ok(url, &["streams", "set-partitions", stream, "4"], "");
    let described = ok(url, &["streams", "describe", stream, "--json"], "");
    let info: serde_json::Value = serde_json::from_str(&described).expect("describe JSON");
    let open = info["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["state"] == "open").count());
    assert_eq!(open, Some(4), "{described}");

    ok(url, &["streams", "delete", stream], "");
    assert!(!ok(url, &["streams", "list"], "").lines().any(|l| l == stream));
}
