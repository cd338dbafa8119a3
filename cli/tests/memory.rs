//! `trib` commands run in one process on the in-memory engine (whose streams live only
//! as long as the process), through the same entry point as the binary.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::io::Write;
use std::sync::{Arc, Mutex};

use clap::Parser;
use tributary_cli::{Cli, Io, Session, run};

/// A writer whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `trib --url memory://?partitions=3 ARGS` in `session`: exit code, stdout, stderr.
async fn trib(session: &mut Session, args: &[&str], stdin: &str) -> (u8, String, String) {
    let cli = Cli::try_parse_from(["trib", "--url", "memory://?partitions=3"].iter().chain(args)).unwrap();
    let (stdout, stderr) = (Captured::default(), Captured::default());
    let mut io = Io {
        stdin: Box::new(std::io::Cursor::new(stdin.as_bytes().to_vec())),
        stdout: Box::new(stdout.clone()),
        stderr: Box::new(stderr.clone()),
        terminal: false,
    };
    let code = match run(cli, &mut io, session).await {
        Ok(()) => 0,
        Err(e) => {
            writeln!(io.stderr, "trib: {e}").unwrap();
            e.code
        }
    };
    (code, stdout.text(), stderr.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_consume_and_admin_in_one_process() {
    let mut s = Session::new();
    assert_eq!(trib(&mut s, &["streams", "create", "events"], "").await.0, 0);
    assert_eq!(trib(&mut s, &["streams", "list"], "").await.1, "events\n");
    let (code, _, err) = trib(
        &mut s,
        &["produce", "events", "-k", "k1", "-H", "h=v"],
        "one\ntwo\n\nthree\n",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("produced 3 records"),
        "blank lines are skipped: {err}"
    );
    let (code, out, _) = trib(
        &mut s,
        &[
            "consume",
            "events",
            "-t",
            "{key} {value} {header.h}\\n",
            "--idle",
            "200ms",
        ],
        "",
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(out, "k1 one v\nk1 two v\nk1 three v\n");
    let (_, out, _) = trib(
        &mut s,
        &["consume", "events", "--from", "offset:1", "--idle", "200ms"],
        "",
    )
    .await;
    assert_eq!(out, "two\nthree\n", "from an offset (one partition holds key k1)");
    let (_, out, _) = trib(
        &mut s,
        &[
            "consume", "events", "--format", "json", "-n", "1", "--idle", "200ms",
        ],
        "",
    )
    .await;
    let record: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (
            record["key"].as_str(),
            record["value"].as_str(),
            record["offset"].as_str()
        ),
        (Some("k1"), Some("one"), Some("0"))
    );
    // Group commits: a second run of the group gets nothing.
    assert_eq!(
        trib(&mut s, &["consume", "events", "-g", "g", "--idle", "200ms"], "")
            .await
            .1
            .lines()
            .count(),
        3
    );
    assert_eq!(
        trib(&mut s, &["consume", "events", "-g", "g", "--idle", "200ms"], "")
            .await
            .1,
        ""
    );
    let (code, out, _) = trib(&mut s, &["streams", "describe", "events"], "").await;
    assert_eq!(code, 0);
    assert!(out.contains("partitions 3"), "{out}");
    let (code, _, err) = trib(&mut s, &["streams", "delete", "nope"], "").await;
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = trib(&mut s, &["produce", "events", "--key-field", "id"], "[1,2]\n").await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no key field \"id\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_between_streams_of_one_engine_keeps_keys_headers_and_order() {
    let mut s = Session::new();
    trib(&mut s, &["streams", "create", "from"], "").await;
    trib(&mut s, &["streams", "create", "to"], "").await;
    let lines: String = (0..300)
        .map(|i| format!("{{\"k\":\"key{}\",\"i\":{i}}}\n", i % 7))
        .collect();
    assert_eq!(
        trib(
            &mut s,
            &["produce", "from", "--key-field", "k", "-H", "origin=test"],
            &lines
        )
        .await
        .0,
        0
    );
    let (code, out, err) = trib(
        &mut s,
        &[
            "mirror", "from", "to", "--idle", "300ms", "--json", "--batch", "50",
        ],
        "",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["mirrored"], 300, "{out}");
    assert_eq!(last["lag_secs"], 0.0, "caught up: {out}");
    let (_, out, _) = trib(
        &mut s,
        &[
            "consume",
            "to",
            "-t",
            "{key} {header.origin} {value}\\n",
            "--idle",
            "200ms",
        ],
        "",
    )
    .await;
    assert_eq!(out.lines().count(), 300);
    let mut last_of_key = std::collections::HashMap::new();
    for line in out.lines() {
        let (key, rest) = line.split_once(' ').unwrap();
        let (origin, value) = rest.split_once(' ').unwrap();
        assert_eq!(origin, "test");
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["k"], key);
        let i = v["i"].as_i64().unwrap();
        if let Some(prev) = last_of_key.insert(key.to_owned(), i) {
            assert!(prev < i, "{key}: {prev} then {i}");
        }
    }
    // Resumed with the same group: nothing new, nothing copied again.
    let (code, out, _) = trib(&mut s, &["mirror", "from", "to", "--idle", "300ms", "--json"], "").await;
    assert_eq!(code, 0);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["mirrored"], 0, "{out}");
    let (code, _, err) = trib(&mut s, &["mirror", "from", "from", "--idle", "300ms"], "").await;
    assert_eq!(code, 2, "a stream into itself: {err}");
    assert!(err.contains("same stream"), "{err}");
    let (code, _, err) = trib(&mut s, &["mirror", "from", "nowhere", "--idle", "300ms"], "").await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("destination stream \"nowhere\""), "{err}");
}
