//! The `envoy-webhooks` command-line tool, run as a user would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)] // Tests may fail loudly.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const FORMATS: &str = "tests/fixtures/seed-formats-event.json";
const METADATA: &str = "tests/fixtures/seed-metadata-event.json";
const CONFIG: &str = "tests/fixtures/config.json";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_envoy-webhooks"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_envoy-webhooks"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("stdin takes the event");
    child.wait_with_output().expect("the binary finishes")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn eval_prints_match_and_exits_0() {
    let output = run(&[
        "eval",
        r#"data.status="ACTIVE" AND data.components.metadata.width>=1920"#,
        FORMATS,
    ]);
    assert_eq!(stdout(&output), "match\n");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn eval_prints_no_match_and_exits_1() {
    let output = run(&["eval", "data.is_online=true", FORMATS]);
    assert_eq!(stdout(&output), "no match\n");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn eval_reads_the_event_from_stdin() {
    let event = std::fs::read(FORMATS).expect("fixture");
    let output = run_with_stdin(
        &[
            "eval",
            r#"data.components.metadata.format=/MPEG-[2,4]/"#,
            "-",
        ],
        &event,
    );
    assert_eq!(stdout(&output), "no match\n");
    assert_eq!(output.status.code(), Some(1));
    let output = run_with_stdin(
        &["eval", r#"data.metadata.format=/MPEG-[2,4]/"#, "-"],
        &event,
    );
    assert_eq!(stdout(&output), "match\n");
}

#[test]
fn eval_rejects_an_invalid_query_with_exit_2_and_a_caret() {
    let output = run(&["eval", "data.status=", FORMATS]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let err = stderr(&output);
    assert!(
        err.contains("expected a value after '=' at column 13"),
        "{err}"
    );
    assert!(err.contains("  data.status=\n              ^"), "{err}");
}

#[test]
fn eval_rejects_unreadable_and_invalid_events_with_exit_2() {
    let output = run(&["eval", "a=1", "tests/fixtures/no-such-file.json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read tests/fixtures/no-such-file.json"));

    let output = run_with_stdin(&["eval", "a=1", "-"], b"{not json");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("standard input is not a JSON event"),
        "{}",
        stderr(&output)
    );

    let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
    let output = run_with_stdin(&["eval", "a=1", "-"], deep.as_bytes());
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("recursion limit exceeded"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn check_prints_the_normalised_query() {
    let output = run(&["check", "a=1 or b=2 AND not c=\"x\""]);
    assert_eq!(stdout(&output), "(a = 1 OR (b = 2 AND NOT c = \"x\"))\n");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn check_reports_errors_with_exit_2() {
    let output = run(&["check", "width >= \"1920\""]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("'>=' compares numbers only"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn validate_accepts_a_good_configuration() {
    let output = run(&["validate", CONFIG]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("7 webhook definition(s)"));
}

#[test]
fn validate_lists_every_problem_with_webhook_and_field() {
    let dir = std::env::temp_dir().join(format!("envoy-webhooks-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.json");
    std::fs::write(
        &path,
        r#"{"webhooks": [
            {"id": "no-url", "event_type": "assets"},
            {"id": "bad-query", "event_type": "assets", "url": "http://x/", "query": "a = ACTIVE"},
            {"id": "typo", "event_type": "assets", "url": "http://x/", "qeury": "a=1"},
            {"id": "download", "event_type": "collections", "operation": "download", "url": "http://x/"}
        ]}"#,
    )
    .expect("write config");
    let output = run(&["validate", path.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    for expected in [
        "4 problems",
        "webhook \"no-url\": field 'url': is required",
        "webhook \"bad-query\": field 'query': unquoted value 'ACTIVE' at column 5",
        "webhook \"typo\": field 'qeury': unknown field",
        "webhook \"download\": field 'operation'",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn match_prints_firing_webhooks_in_config_order() {
    let output = run(&["match", CONFIG, FORMATS]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // FAILED and DISABLED webhooks match but do not fire; collections-only and
    // one-object do not match; shared-metadata is for another realm.
    assert_eq!(stdout(&output), "active-video\nany-asset-update\n");

    let output = run(&["match", CONFIG, METADATA]);
    assert_eq!(
        stdout(&output),
        "any-asset-update\nshared-metadata\none-object\n"
    );
}

#[test]
fn explain_shows_each_comparison_and_what_it_saw() {
    let output = run(&[
        "explain",
        r#"data.status="ACTIVE" AND data.is_online=true"#,
        FORMATS,
    ]);
    let out = stdout(&output);
    assert!(
        out.contains("held         data.status = \"ACTIVE\"\n             saw \"ACTIVE\""),
        "{out}"
    );
    assert!(
        out.contains("did not hold data.is_online = true\n             saw false"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("no match"), "{out}");
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn unknown_commands_print_usage_and_exit_2() {
    let output = run(&["frobnicate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("USAGE:"));
}
