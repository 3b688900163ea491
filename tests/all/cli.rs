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
        "redrive",
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

/// A request the fake admin API saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

/// A stand-in for the filter's admin API (`POST {prefix}/webhooks/{id}/deliver`):
/// 202 echoing the record's message_id for `ok-hook` and `a%20b%2Fc`, 409 for
/// `stuck`, 404 for any other id, 401 without the token.
struct FakeAdmin {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const ADMIN_TOKEN: &str = "redrive-s3cret-token";

impl FakeAdmin {
    fn start() -> FakeAdmin {
        use std::sync::atomic::Ordering;
        let server = tiny_http::Server::http("127.0.0.1:0").expect("the fake admin listens");
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok(Some(mut request)) =
                        server.recv_timeout(std::time::Duration::from_millis(50))
                    else {
                        continue;
                    };
                    let mut body = String::new();
                    std::io::Read::read_to_string(request.as_reader(), &mut body)
                        .expect("a UTF-8 body");
                    let authorization = request
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("authorization"))
                        .map(|h| h.value.to_string());
                    let path = request.url().to_string();
                    seen.lock().unwrap().push(Seen {
                        method: request.method().to_string(),
                        path: path.clone(),
                        authorization: authorization.clone(),
                        body: body.clone(),
                    });
                    let message_id = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("message_id").cloned())
                        .unwrap_or(serde_json::Value::Null);
                    let (status, answer) =
                        if authorization.as_deref() != Some(&format!("Bearer {ADMIN_TOKEN}")) {
                            (
                                401,
                                r#"{"error":"a valid admin token is required"}"#.to_string(),
                            )
                        } else {
                            match path.as_str() {
                                "/webhooks-admin/webhooks/ok-hook/deliver"
                                | "/webhooks-admin/webhooks/a%20b%2Fc/deliver" => (
                                    202,
                                    serde_json::json!({ "message_id": message_id }).to_string(),
                                ),
                                "/webhooks-admin/webhooks/stuck/deliver" => (
                                    409,
                                    r#"{"error":"webhook stuck is FAILED; enable it first"}"#
                                        .to_string(),
                                ),
                                _ => (404, r#"{"error":"no such webhook"}"#.to_string()),
                            }
                        };
                    let response = tiny_http::Response::from_string(answer)
                        .with_status_code(status)
                        .with_header(
                            tiny_http::Header::from_bytes("content-type", "application/json")
                                .expect("a header"),
                        );
                    let _ = request.respond(response);
                }
            })
        };
        FakeAdmin {
            url: format!("http://127.0.0.1:{port}/webhooks-admin"),
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A dead-letter record as the filter writes it.
fn dead_letter(webhook_id: &str, message_id: &str) -> String {
    format!(
        r#"{{"webhook_id":{},"event":{{"event_type":"assets","object_id":"{message_id}-object","data":{{"n":12345678901234567890}}}},"attempts":8,"last_error":"503","first_attempt_at":1700000000,"reason":"retries_exhausted","message_id":"{message_id}","request_id":null}}"#,
        serde_json::to_string(webhook_id).unwrap()
    )
}

/// A file of the test's own, in a directory of this run's.
fn write_temp(name: &str, contents: &str) -> String {
    let dir = std::env::temp_dir().join(format!("envoy-webhooks-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write the records");
    path.to_str().expect("utf-8 path").to_string()
}

/// `envoy-webhooks redrive ARGS` with the token in `REDRIVE_TOKEN`, and
/// `stdin` on standard input.
fn redrive(args: &[&str], token: Option<&str>, stdin: &[u8]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_envoy-webhooks"));
    command
        .arg("redrive")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match token {
        Some(token) => command.env("REDRIVE_TOKEN", token),
        None => command.env_remove("REDRIVE_TOKEN"),
    };
    let mut child = command.spawn().expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("stdin takes the records");
    child.wait_with_output().expect("the binary finishes")
}

#[test]
fn redrive_posts_each_json_line_with_the_token_and_exits_1_on_a_409() {
    let admin = FakeAdmin::start();
    let records = [
        dead_letter("ok-hook", "msg_1"),
        dead_letter("stuck", "msg_2"),
        dead_letter("ok-hook", "msg_3"),
    ];
    let file = write_temp(
        "redrive-lines.jsonl",
        &format!("{}\n\n{}\r\n{}\n", records[0], records[1], records[2]),
    );
    let output = redrive(
        &["--admin", &admin.url, "--token-env", "REDRIVE_TOKEN", &file],
        Some(ADMIN_TOKEN),
        b"",
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}{}", stderr(&output));
    assert_eq!(
        out,
        "redrive: line 1 webhook ok-hook message_id msg_1 -> 202 delivered again as msg_1\n\
         redrive: line 3 webhook stuck message_id msg_2 -> 409 webhook stuck is FAILED; enable it first\n\
         redrive: line 4 webhook ok-hook message_id msg_3 -> 202 delivered again as msg_3\n\
         redrive: 3 record(s): 2 sent, 1 failed\n"
    );
    let seen = admin.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/webhooks-admin/webhooks/ok-hook/deliver",
            "/webhooks-admin/webhooks/stuck/deliver",
            "/webhooks-admin/webhooks/ok-hook/deliver",
        ]
    );
    for (request, record) in seen.iter().zip(&records) {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {ADMIN_TOKEN}").as_str())
        );
        // the record as written, byte for byte (the big integer too)
        assert_eq!(&request.body, record);
    }
    assert!(!out.contains(ADMIN_TOKEN) && !stderr(&output).contains(ADMIN_TOKEN));
}

#[test]
fn redrive_reads_a_json_array_and_exits_0_when_all_are_accepted() {
    let admin = FakeAdmin::start();
    let first = dead_letter("ok-hook", "msg_a");
    let second = dead_letter("ok-hook", "msg_b");
    let file = write_temp(
        "redrive-array.json",
        &format!("  \n[\n  {first},\n  {second}\n]\n"),
    );
    let output = redrive(
        &["--admin", &admin.url, "--token-env", "REDRIVE_TOKEN", &file],
        Some(ADMIN_TOKEN),
        b"",
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}{}", stderr(&output));
    assert_eq!(
        out,
        "redrive: index 0 webhook ok-hook message_id msg_a -> 202 delivered again as msg_a\n\
         redrive: index 1 webhook ok-hook message_id msg_b -> 202 delivered again as msg_b\n\
         redrive: 2 record(s): 2 sent, 0 failed\n"
    );
    let bodies: Vec<String> = admin.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, [first, second]);
}

#[test]
fn redrive_dry_run_lists_the_requests_and_makes_none() {
    let admin = FakeAdmin::start();
    let file = write_temp(
        "redrive-dry.jsonl",
        &format!(
            "{}\n{}\n",
            dead_letter("ok-hook", "msg_1"),
            dead_letter("stuck", "msg_2")
        ),
    );
    // no --token-env: a dry run needs none
    let output = redrive(&["--admin", &admin.url, "--dry-run", &file], None, b"");
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}{}", stderr(&output));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(&format!(
            "redrive: line 1 webhook ok-hook message_id msg_1 -> would POST {}/webhooks/ok-hook/deliver (",
            admin.url
        )),
        "{out}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "redrive: line 2 webhook stuck message_id msg_2 -> would POST {}/webhooks/stuck/deliver (",
            admin.url
        )),
        "{out}"
    );
    assert_eq!(lines[2], "redrive: 2 record(s): would send 2");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
}

#[test]
fn redrive_reports_invalid_lines_by_number_and_sends_the_others() {
    let admin = FakeAdmin::start();
    let file = write_temp(
        "redrive-invalid.jsonl",
        &format!(
            "{}\nnot json\n{{\"event\":{{}},\"message_id\":\"msg_x\"}}\n{{\"webhook_id\":\"ok-hook\"}}\n[1]\n{}\n",
            dead_letter("ok-hook", "msg_1"),
            dead_letter("ok-hook", "msg_6"),
        ),
    );
    let output = redrive(
        &["--admin", &admin.url, "--token-env", "REDRIVE_TOKEN", &file],
        Some(ADMIN_TOKEN),
        b"",
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}{}", stderr(&output));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert!(
        lines[0].ends_with("-> 202 delivered again as msg_1"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("redrive: line 2: invalid record: not JSON"),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "redrive: line 3: invalid record: no \"webhook_id\""
    );
    assert_eq!(lines[3], "redrive: line 4: invalid record: no \"event\"");
    assert_eq!(
        lines[4],
        "redrive: line 5: invalid record: not a JSON object"
    );
    assert!(
        lines[5].starts_with("redrive: line 6 webhook ok-hook message_id msg_6 -> 202"),
        "{out}"
    );
    assert_eq!(lines[6], "redrive: 6 record(s): 2 sent, 4 failed");
    assert_eq!(admin.seen().len(), 2);
}

#[test]
fn redrive_without_its_token_variable_is_a_usage_error() {
    let admin = FakeAdmin::start();
    let file = write_temp(
        "redrive-token.jsonl",
        &format!("{}\n", dead_letter("ok-hook", "msg_1")),
    );
    let args = [
        "--admin",
        admin.url.as_str(),
        "--token-env",
        "REDRIVE_TOKEN",
        &file,
    ];
    let output = redrive(&args, None, b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(stdout(&output).is_empty());
    assert!(
        stderr(&output).contains("the environment variable REDRIVE_TOKEN is not set"),
        "{}",
        stderr(&output)
    );
    let output = redrive(&args, Some(""), b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("the environment variable REDRIVE_TOKEN is empty"),
        "{}",
        stderr(&output)
    );
    // without --token-env at all, clap says it is required
    let output = redrive(&["--admin", &admin.url, &file], Some(ADMIN_TOKEN), b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--token-env <VAR>"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains(ADMIN_TOKEN));
    // other usage errors: an https:// admin, an unreadable file
    let output = redrive(
        &[
            "--admin",
            "https://127.0.0.1/webhooks-admin",
            "--token-env",
            "REDRIVE_TOKEN",
            &file,
        ],
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("only http:// URLs"),
        "{}",
        stderr(&output)
    );
    let output = redrive(
        &[
            "--admin",
            &admin.url,
            "--token-env",
            "REDRIVE_TOKEN",
            "tests/fixtures/no-such-file.jsonl",
        ],
        Some(ADMIN_TOKEN),
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read tests/fixtures/no-such-file.jsonl"));
    assert!(admin.seen().is_empty());
}

#[test]
fn redrive_reads_standard_input_and_percent_encodes_the_id() {
    let admin = FakeAdmin::start();
    let records = format!(
        "{}\n{}\n",
        dead_letter("a b/c", "msg_1"),
        dead_letter("nobody", "msg_2")
    );
    let output = redrive(
        &[
            "--admin",
            &format!("{}/", admin.url),
            "--token-env",
            "REDRIVE_TOKEN",
            "-",
        ],
        Some(ADMIN_TOKEN),
        records.as_bytes(),
    );
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}{}", stderr(&output));
    assert_eq!(
        out,
        "redrive: line 1 webhook \"a b/c\" message_id msg_1 -> 202 delivered again as msg_1\n\
         redrive: line 2 webhook nobody message_id msg_2 -> 404 no such webhook\n\
         redrive: 2 record(s): 1 sent, 1 failed\n"
    );
    let paths: Vec<String> = admin.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(
        paths,
        [
            "/webhooks-admin/webhooks/a%20b%2Fc/deliver",
            "/webhooks-admin/webhooks/nobody/deliver",
        ]
    );
}

#[test]
fn egress_policy_prints_the_listeners_policy_and_names_what_envoy_cannot_see() {
    let config = br#"{"api": {"tokens": {}, "clusters": {"https": "webhooks_egress_https"},
                      "urls": {"allow": ["10.0.0.7:8443", "hooks.corp.example"]}},
             "cluster_state": {"etcd": {"cluster": "etcd", "authority": "etcd:2379"}}}"#;
    let output = run_with_stdin(&["egress-policy", "-"], config);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let policies = &printed["rbac"]["rules"]["policies"];
    assert!(policies["public"].is_object() && policies["operator_allow"].is_object());
    assert!(
        printed["resolved_address_filter"]["ranges"]
            .as_array()
            .unwrap()
            .len()
            > 20
    );
    assert!(
        stderr(&output).contains("\"hooks.corp.example\" names a host"),
        "{}",
        stderr(&output)
    );
    // The same ranges for dnsmasq, one option a line.
    let output = run_with_stdin(&["egress-policy", "--dnsmasq", "-"], config);
    let text = stdout(&output);
    assert!(
        text.lines().any(|l| l == "bogus-nxdomain=127.0.0.0/8"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "bogus-nxdomain=10.0.0.6/32"),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l == "bogus-nxdomain=10.0.0.0/8"),
        "{text}"
    );
    // Without an api section there is nothing to check: said, exit 2.
    let output = run_with_stdin(&["egress-policy", "-"], br#"{"webhooks": []}"#);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no api section"),
        "{}",
        stderr(&output)
    );
}
