//! The `envoy-webhooks` command-line tool, run as a user would.

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn spawn_receiver(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_envoy-webhooks"))
        .arg("receive")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the receiver starts")
}

/// One raw HTTP/1.1 POST once the port accepts; the status line.
fn post(port: u16, path: &str, headers: &[(&str, String)], body: &[u8]) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("receiver not up: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: hooks\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response.lines().next().unwrap_or_default().to_string()
}

#[test]
fn send_posts_files_and_receive_prints_them_in_order() {
    let port = free_port();
    let receiver = spawn_receiver(&["--port", &port.to_string(), "--count", "2"]);
    let url = format!("http://127.0.0.1:{port}/hooks/formats");
    let output = run(&[
        "send",
        &url,
        FORMATS,
        METADATA,
        "--wait",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains(&format!("POST {url} {FORMATS}")), "{out}");
    assert_eq!(out.matches("-> 200 ok").count(), 2, "{out}");

    let received = receiver.wait_with_output().expect("receiver output");
    assert_eq!(received.status.code(), Some(0));
    let log = stdout(&received);
    assert!(
        log.contains("signatures not checked (no --secret)"),
        "{log}"
    );
    assert!(log.contains("=== delivery 1: POST /hooks/formats"), "{log}");
    assert!(log.contains("=== delivery 2: POST /hooks/formats"), "{log}");
    assert!(log.contains("content-type: application/json"), "{log}");
    // pretty JSON, keys in the order they were sent (system_domain_id comes first in the file)
    assert!(
        log.contains("body (1508 bytes, JSON):\n{\n  \"system_domain_id\": "),
        "{log}"
    );
    assert_eq!(log.matches("answered: 200").count(), 2, "{log}");
}

#[test]
fn receive_verifies_signatures_and_answers_the_chosen_status() {
    use envoy_webhooks::signature::{signature_header, SigningSecret};
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let port = free_port();
    let receiver = spawn_receiver(&[
        "--port",
        &port.to_string(),
        "--secret",
        secret,
        "--status",
        "503",
        "--count",
        "3",
    ]);
    let body = br#"{"event_type":"assets"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let secrets = [SigningSecret::parse(secret).expect("secret")];
    let signature = signature_header(&secrets, "msg_1", now, body);
    let signed = |sig: String| {
        vec![
            ("webhook-id", "msg_1".to_string()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", sig),
        ]
    };
    assert!(post(port, "/a", &signed(signature.clone()), body).contains(" 503 "));
    let tampered = br#"{"event_type":"assetz"}"#;
    assert!(post(port, "/b", &signed(signature), tampered).contains(" 401 "));
    assert!(post(port, "/c", &[], body).contains(" 401 "));
    let log = stdout(&receiver.wait_with_output().expect("receiver output"));
    let deliveries: Vec<&str> = log.split("=== delivery").skip(1).collect();
    assert_eq!(deliveries.len(), 3, "{log}");
    assert!(
        deliveries[0].contains("signature: verified") && deliveries[0].contains("answered: 503")
    );
    assert!(
        deliveries[1].contains("signature: INVALID (no signature matches"),
        "{log}"
    );
    assert!(deliveries[1].contains("answered: 401"));
    assert!(
        deliveries[2].contains("signature: INVALID (unsigned"),
        "{log}"
    );
    assert!(!log.contains(secret));
}

#[test]
fn every_command_has_help_and_the_tool_a_version_and_completions() {
    for command in [
        "eval",
        "explain",
        "check",
        "validate",
        "match",
        "receive",
        "send",
        "completions",
    ] {
        let output = run(&[command, "--help"]);
        assert_eq!(output.status.code(), Some(0), "{command}");
        assert!(stdout(&output).contains("USAGE:"), "{command}");
    }
    let output = run(&["--version"]);
    assert_eq!(
        stdout(&output),
        format!("envoy-webhooks {}\n", env!("CARGO_PKG_VERSION"))
    );
    let output = run(&["completions", "bash"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("receive"));
    let output = run(&["receive"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--port <PORT>"));
    let output = run(&["receive", "--port", "1", "--secret", "nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--secret: a secret must look like whsec_"));
}
