//! The `fitviz-events` binary, driven as a user would, against the real broker: what
//! it prints and the exit code that says what happened.
#![cfg(feature = "cli")]

mod support;

use std::process::{Command, Output};

use fitviz_events::{events::WorkoutCreated, testing::Example};
use support::Fixture;

/// Runs the binary with `args` and only the given `FITVIZ_EVENTS_*` variables.
fn run(vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fitviz-events"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FITVIZ_EVENTS_") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().copied()).args(args);
    command.output().expect("run fitviz-events")
}

/// [`run`], with `input` on stdin.
fn run_with_stdin(vars: &[(&str, &str)], args: &[&str], input: &[u8]) -> Output {
    use std::{io::Write, process::Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_fitviz-events"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FITVIZ_EVENTS_") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().copied()).args(args);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run fitviz-events");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from another thread: the child may answer before reading it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for fitviz-events");
    writer.join().unwrap();
    output
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A valid `workout.created` payload, as JSON.
fn workout() -> serde_json::Value {
    serde_json::to_value(WorkoutCreated::example()).unwrap()
}

/// The variables that point the binary at `fx`'s exchange.
fn vars_for<'a>(fx: &'a Fixture, url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("FITVIZ_EVENTS_URL", url),
        ("FITVIZ_EVENTS_EXCHANGE", fx.exchange.as_str()),
        ("FITVIZ_EVENTS_CONNECTION_NAME", fx.name.as_str()),
    ]
}

#[test]
fn help_documents_every_command_and_the_exit_codes() {
    let output = run(&[], &["--help"]);
    assert_eq!(code(&output), 0);
    let help = stdout(&output);
    for command in ["publish", "schemas", "topology", "dlq", "archive"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    assert!(help.contains("Exit codes"), "{help}");
    let output = run(&[], &["publish", "--help"]);
    assert_eq!(code(&output), 0);
    for option in ["--org", "--version", "--json"] {
        assert!(stdout(&output).contains(option), "{}", stdout(&output));
    }
    let output = run(&[], &["schemas", "list", "--json"]);
    assert_eq!(code(&output), 0);
    let lines: Vec<serde_json::Value> = (stdout(&output).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert!(lines.iter().any(|l| l["event_type"] == "payment.failed"));
}

#[test]
fn a_usage_error_exits_2_and_a_bad_setting_exits_3() {
    let output = run(&[], &["publsh"]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    let output = run(
        &[("FITVIZ_EVENTS_POOL_SIZE", "many")],
        &["publish", "workout.created", "{}", "--org", "org-1"],
    );
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.starts_with("fitviz-events: config: "), "{message}");
    assert!(message.contains("FITVIZ_EVENTS_POOL_SIZE"), "{message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
}

/// With `--json` anywhere — also after the argument clap failed at — a usage error is
/// one JSON line on stdout, `"error":"usage"` with a one-line message, and exit 2; without
/// it, clap's text on stderr (issue 19).
#[test]
fn with_json_a_usage_error_is_one_json_line_exiting_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["--json", "publsh"], "unrecognized subcommand 'publsh'"),
        (&["publsh", "--json"], "unrecognized subcommand 'publsh'"),
        (
            &["publish", "workout.created", "{}", "--bogus", "--json"],
            "unexpected argument '--bogus' found",
        ),
        (
            &["--json", "publish", "workout.created"],
            "the following required arguments were not provided: <DATA>",
        ),
        (
            &[
                "publish",
                "workout.created",
                "{}",
                "--version",
                "x",
                "--json",
            ],
            "invalid value 'x' for '--version <V>'",
        ),
        (&["--json", "dlq"], "a subcommand is required"),
        (
            &["dlq", "list", "q", "--limit", "many", "--json"],
            "invalid value 'many'",
        ),
    ];
    for (args, says) in cases {
        let output = run(&[], args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
        let out = stdout(&output);
        assert_eq!(out.lines().count(), 1, "{args:?}: one line: {out}");
        let error: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"));
        assert_eq!(error["error"], "usage", "{args:?}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(says), "{args:?}: {message}");
        assert!(!message.contains('\n'), "{args:?}: {message}");
        assert!(!message.starts_with("error:"), "{args:?}: {message}");
        assert_eq!(error.as_object().unwrap().len(), 2, "{error}");
        assert!(stderr(&output).is_empty(), "{args:?}: {}", stderr(&output));
    }
    // Without `--json`, or with it only after `--` (a value, not the flag): clap's text.
    for args in [
        &["publsh"][..],
        &["publish", "t", "{}", "--bogus"],
        &["publsh", "--", "--json"],
    ] {
        let output = run(&[], args);
        assert_eq!(code(&output), 2, "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
        assert!(
            stderr(&output).starts_with("error: "),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    // Help and version still print as text and succeed.
    let output = run(&[], &["--json", "--help"]);
    assert_eq!(code(&output), 0);
    assert!(stdout(&output).contains("Usage:"), "{}", stdout(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_receipt_of_a_confirmed_event() {
    require_broker!();
    let fx = Fixture::new("cli_publish", "#").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let data = workout().to_string();
    let args = ["publish", "workout.created", &data, "--org", "org-1"];
    let output = run(&vars, &[&["--json"], &args[..]].concat());
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let receipt: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let messages = fx.drain().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].1.message_id().as_ref().unwrap().as_str(),
        receipt["event_id"].as_str().unwrap()
    );
    let body: serde_json::Value = serde_json::from_slice(&messages[0].0).unwrap();
    assert_eq!(body["organization_id"], "org-1");
    assert_eq!(body["data"], workout());

    // Human output: one line naming the event.
    let output = run(&vars, &args);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("published "),
        "{}",
        stdout(&output)
    );
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_refused_and_unavailable_have_their_own_exit_codes() {
    require_broker!();
    let fx = Fixture::new("cli_codes", "nothing.binds.this").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let data = workout().to_string();

    // Invalid: 4, one line naming the field, nothing sent.
    let mut invalid = workout();
    invalid["workout_id"] = "".into();
    let invalid = invalid.to_string();
    let output = run(
        &vars,
        &["publish", "workout.created", &invalid, "--org", "org-1"],
    );
    assert_eq!(code(&output), 4, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("workout_id"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    let output = run(
        &vars,
        &["publish", "workout.created", "not json", "--org", "o"],
    );
    assert_eq!(code(&output), 4, "{}", stderr(&output));

    // No queue is bound: kept in `<exchange>.unrouted` by default (the receipt says
    // so), refused by the broker with the `error` policy: 5.
    let args = [
        "--json",
        "publish",
        "workout.created",
        &data,
        "--org",
        "org-1",
    ];
    let output = run(&vars, &args);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let receipt: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(receipt["routing"], "kept", "the default policy keeps it");
    let mut refusing = vars.clone();
    refusing.push(("FITVIZ_EVENTS_UNROUTABLE", "error"));
    let output = run(&refusing, &args);
    assert_eq!(code(&output), 5, "{}", stdout(&output));
    let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(error["error"], "unroutable");
    assert_eq!(fx.queue_len().await, 0);

    // Broker unavailable: 6, within the publish deadline, without the password.
    let nobody = "amqp://guest:secret-pw@127.0.0.1:1/%2f";
    let mut vars = vars_for(&fx, nobody);
    vars.push(("FITVIZ_EVENTS_CONFIRM_TIMEOUT_MS", "1000"));
    vars.push(("FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS", "1500"));
    let output = run(
        &vars,
        &["publish", "workout.created", &data, "--org", "org-1"],
    );
    assert_eq!(code(&output), 6, "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("secret-pw"),
        "{}",
        stderr(&output)
    );
    fx.cleanup().await;
}

/// Data over the 128 KiB a single argument may hold on Linux is published from stdin
/// (`-`) or a file (`@PATH`); an unreadable file is exit 1 naming it, invalid JSON exit
/// 4, data over `max_body_bytes` exit 4 `too_large` (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reads_data_over_the_argument_limit_from_stdin_or_a_file() {
    require_broker!();
    let fx = Fixture::new("cli_bigdata", "#").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    // Unknown fields are forwarded: a 200 KiB note, between the 128 KiB argument limit
    // and the publisher's default `max_body_bytes` (1 MiB).
    let mut data = workout();
    data["notes"] = "n".repeat(200 * 1024).into();
    let text = data.to_string();
    assert!(text.len() > 128 * 1024 && text.len() < 1024 * 1024);
    #[cfg(target_os = "linux")]
    {
        // As an argument, it cannot even be passed.
        let err = Command::new(env!("CARGO_BIN_EXE_fitviz-events"))
            .args(["publish", "workout.created", &text])
            .output()
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(7), "E2BIG: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.json");
    std::fs::write(&file, &text).unwrap();
    let at_file = format!("@{}", file.display());
    let stdin_args = [
        "--json",
        "publish",
        "workout.created",
        "-",
        "--org",
        "org-1",
    ];
    let file_args = [
        "--json",
        "publish",
        "workout.created",
        &at_file,
        "--org",
        "org-1",
    ];
    let mut ids = Vec::new();
    for output in [
        run_with_stdin(&vars, &stdin_args, text.as_bytes()),
        run(&vars, &file_args),
    ] {
        assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
        let receipt: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(receipt["routing"], "routed");
        ids.push(receipt["event_id"].as_str().unwrap().to_owned());
    }
    let messages = fx.drain().await;
    assert_eq!(messages.len(), 2);
    for (message, id) in messages.iter().zip(&ids) {
        assert_eq!(message.1.message_id().as_ref().unwrap().as_str(), id);
        let body: serde_json::Value = serde_json::from_slice(&message.0).unwrap();
        assert_eq!(body["data"], data);
    }

    // Over `max_body_bytes`: refused as too large, nothing sent.
    let mut small = vars.clone();
    small.push(("FITVIZ_EVENTS_MAX_BODY_BYTES", "131072"));
    for output in [
        run_with_stdin(&small, &stdin_args, text.as_bytes()),
        run(&small, &file_args),
    ] {
        assert_eq!(code(&output), 4, "{}{}", stdout(&output), stderr(&output));
        let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(error["error"], "too_large", "{error}");
    }

    // An unreadable file: exit 1, one line naming the path.
    let missing = dir.path().join("missing.json");
    let at_missing = format!("@{}", missing.display());
    let output = run(
        &vars,
        &["publish", "workout.created", &at_missing, "--org", "o"],
    );
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.starts_with("fitviz-events: io: "), "{message}");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    let output = run(
        &vars,
        &[
            "--json",
            "publish",
            "workout.created",
            &format!("@{}", dir.path().display()),
        ],
    );
    assert_eq!(code(&output), 1, "{}", stdout(&output));
    let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(error["error"], "io");

    // Invalid JSON, from stdin or a file (here not UTF-8 either): exit 4.
    std::fs::write(&file, b"{\"workout_id\": \xff").unwrap();
    let output = run(&vars, &file_args);
    assert_eq!(code(&output), 4, "{}", stdout(&output));
    let output = run_with_stdin(&vars, &stdin_args, b"not json");
    assert_eq!(code(&output), 4, "{}", stdout(&output));
    let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(error["error"], "validation", "{error}");
    assert_eq!(fx.queue_len().await, 0);
    fx.cleanup().await;
}

#[test]
fn schemas_export_writes_what_is_checked_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let output = run(&[], &["--json", "schemas", "export", out]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let checked_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut names: Vec<_> = std::fs::read_dir(&checked_in)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 12, "{names:?}");
    assert_eq!(stdout(&output).lines().count(), names.len());
    for name in names {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&name)).unwrap(),
            std::fs::read_to_string(checked_in.join(&name)).unwrap(),
            "{name:?}"
        );
    }
}

/// Deletes what `topology declare` made for `exchange` and `queue`.
async fn delete_declared(fx: &Fixture, queue: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let channel = fx.connection.create_channel().await.unwrap();
    for q in [
        queue.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.retry"),
    ] {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            format!("{queue}.dlx").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_declare_then_a_rejected_event_is_replayed_from_the_dlq_exactly_once() {
    use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions};
    require_broker!();
    let fx = Fixture::new("cli_dlq", "nothing.binds.this").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let queue = format!("{}.consumer", fx.name);
    let declare = [
        "--json",
        "topology",
        "declare",
        "--consumer-queue",
        &queue,
        "--bind",
        "workout.*",
    ];
    // Twice: declaring is idempotent.
    for _ in 0..2 {
        let output = run(&vars, &declare);
        assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
        let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        let declared = report["declared"].to_string();
        assert!(declared.contains(&format!("{queue}.dlq")), "{declared}");
    }

    // A published event reaches the consumer's queue; the consumer rejects it.
    let data = workout().to_string();
    let output = run(
        &vars,
        &[
            "--json",
            "publish",
            "workout.created",
            &data,
            "--org",
            "org-1",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let receipt: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(receipt["routing"], "routed");
    let id = receipt["event_id"].as_str().unwrap().to_owned();
    let channel = fx.connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the event is in the consumer's queue");
    message
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    // It is in the DLQ, listed without being consumed.
    let dlq = format!("{queue}.dlq");
    for _ in 0..2 {
        let output = run(&vars, &["--json", "dlq", "list", &dlq]);
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        let letters: Vec<serde_json::Value> = (stdout(&output).lines())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0]["message_id"], id.as_str());
        assert_eq!(letters[0]["deaths"][0]["reason"], "rejected");
    }

    // Replayed to its queue: once, with the same id, and the DLQ is empty.
    let output = run(&vars, &["--json", "dlq", "replay", &dlq]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(report["replayed"].as_array().unwrap().len(), 1, "{report}");
    let passive = |name: String| {
        let channel = channel.clone();
        async move {
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .unwrap()
                .message_count()
        }
    };
    assert_eq!(passive(dlq.clone()).await, 0);
    assert_eq!(passive(queue.clone()).await, 1);
    let back = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("replayed");
    assert_eq!(
        back.delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        id
    );
    // A second replay finds nothing: no duplicate.
    let output = run(&vars, &["--json", "dlq", "replay", &dlq]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(passive(queue.clone()).await, 0);

    // A missing queue is one line and exit 5.
    let output = run(&vars, &["dlq", "list", &format!("{queue}.nope.dlq")]);
    assert_eq!(code(&output), 5, "{}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));

    delete_declared(&fx, &queue).await;
    fx.cleanup().await;
}

/// `--json dlq list` shows a body that is not UTF-8 whole, in base64 (`body_base64`),
/// and a UTF-8 one as text (`body`), never both and never lossily (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_a_binary_body_in_base64_and_a_text_body_as_text() {
    use lapin::{
        BasicProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions},
    };
    require_broker!();
    let fx = Fixture::new("cli_dlq_binary", "nothing.binds.this").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let channel = fx.connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let binary: &[u8] = &[0xff, 0x00, 0xfe, b'{', 0x80, b'"', 0xc3];
    let text = "{\"note\":\"café ☕\"}";
    for (id, body) in [
        ("bin-1", binary),
        ("text-1", text.as_bytes()),
        ("empty-1", b""),
    ] {
        channel
            .basic_publish(
                "".into(),
                fx.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default().with_message_id(id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The fixture's queue is not a `.dlq` (a classic queue without a delivery limit):
    // listing it is allowed with `--count-as-delivery`.
    let output = run(
        &vars,
        &["--json", "dlq", "list", &fx.queue, "--count-as-delivery"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let letters: Vec<serde_json::Value> = (stdout(&output).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0]["message_id"], "bin-1");
    // Standard base64 of ff 00 fe 7b 80 22 c3.
    assert_eq!(letters[0]["body_base64"], "/wD+e4Aiww==", "{}", letters[0]);
    assert!(letters[0].get("body").is_none(), "{}", letters[0]);
    assert_eq!(letters[1]["message_id"], "text-1");
    assert_eq!(letters[1]["body"], text, "{}", letters[1]);
    assert!(letters[1].get("body_base64").is_none(), "{}", letters[1]);
    assert_eq!(letters[2]["body"], "", "{}", letters[2]);
    // Listed, not consumed.
    assert_eq!(fx.queue_len().await, 3);
    let _ = channel.close(200, "done".into()).await;
    fx.cleanup().await;
}

/// Names too long for AMQP once the crate's suffixes are added, or empty, or with white
/// space, are refused with exit 3 and one line naming them — never a panic (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_do_not_fit_exit_3_naming_them_without_a_panic() {
    require_broker!();
    let fx = Fixture::new("cli-names", "#").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let long = |n: usize| "q".repeat(n);
    let (q252, q256) = (long(252), long(256));
    let exchange247 = "e".repeat(247);
    // (variables, arguments, what the message says)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vars.clone(),
            vec!["topology", "declare", "--consumer-queue", &q252],
            "has 252 bytes, more than 251",
        ),
        (
            vars.clone(),
            vec!["topology", "declare", "--consumer-queue", ""],
            "is empty",
        ),
        (
            vars.clone(),
            vec!["topology", "declare", "--consumer-queue", "a b"],
            "white-space",
        ),
        (
            vars.clone(),
            vec![
                "topology",
                "declare",
                "--consumer-queue",
                "cli-names-ok",
                "--bind",
                &q256,
            ],
            "binding pattern",
        ),
        (
            vars.clone(),
            vec!["dlq", "list", &q256],
            "has 256 bytes, more than 255",
        ),
        (
            vars.clone(),
            vec!["dlq", "replay", &q256],
            "has 256 bytes, more than 255",
        ),
        (
            vec![
                ("FITVIZ_EVENTS_URL", url.as_str()),
                ("FITVIZ_EVENTS_EXCHANGE", exchange247.as_str()),
            ],
            vec!["topology", "declare"],
            "FITVIZ_EVENTS_EXCHANGE",
        ),
        (
            vec![
                ("FITVIZ_EVENTS_URL", url.as_str()),
                ("FITVIZ_EVENTS_EXCHANGE", exchange247.as_str()),
            ],
            vec!["publish", "workout.created", "{}", "--org", "org-1"],
            "FITVIZ_EVENTS_EXCHANGE",
        ),
    ];
    for (vars, args, says) in cases {
        let output = run(&vars, &args);
        let message = stderr(&output);
        let shown: Vec<String> = args.iter().map(|a| a.chars().take(20).collect()).collect();
        assert_eq!(code(&output), 3, "{shown:?}: {message}");
        assert!(
            message.starts_with("fitviz-events: config: "),
            "{shown:?}: {message}"
        );
        assert!(message.contains(says), "{shown:?}: {message}");
        assert!(!message.contains("panicked"), "{shown:?}: {message}");
        assert_eq!(message.lines().count(), 1, "{shown:?}: one line: {message}");
    }
    fx.cleanup().await;
}

/// The `x-delivery-count` of the messages in `queue` (0 when the header is absent: never
/// delivered), taking them (acked).
async fn delivery_counts(channel: &lapin::Channel, queue: &str) -> Vec<i64> {
    use lapin::{options::BasicGetOptions, types::AMQPValue};
    let mut counts = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        counts.push(match headers.inner().get("x-delivery-count") {
            None => 0,
            Some(AMQPValue::LongLongInt(n)) => *n,
            Some(AMQPValue::LongInt(n)) => (*n).into(),
            Some(other) => panic!("x-delivery-count {other:?}"),
        });
    }
    counts
}

/// `dlq list` is read-only (issue 19): AMQP has no peek, so listing a consumer queue
/// (which has an `x-delivery-limit`) would count as a delivery each time and, after a few
/// listings, dead-letter its messages. It is refused with exit 2, naming why and the
/// flag, and the messages are untouched (never delivered, nothing dead-lettered);
/// `--count-as-delivery` lists it, counting one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_refuses_a_consumer_queue_and_leaves_its_messages_undelivered() {
    use lapin::{BasicProperties, options::BasicPublishOptions};
    require_broker!();
    let fx = Fixture::new("cli_dlq_list", "nothing.binds.this").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let queue = format!("{}.consumer", fx.name);
    let dlq = format!("{queue}.dlq");
    let declare = [
        "topology",
        "declare",
        "--consumer-queue",
        &queue,
        "--bind",
        "workout.*",
        "--delivery-limit",
        "2",
    ];
    let output = run(&vars, &declare);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    for id in ["evt-a", "evt-b"] {
        fx.channel
            .basic_publish(
                fx.exchange.as_str().into(),
                "workout.created".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id(id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let connection = &fx.connection;
    for _ in 0..100 {
        if support::queue_len(connection, &queue).await == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(support::queue_len(connection, &queue).await, Some(2));

    // Four listings, twice the delivery limit: each refused, nothing read.
    for json in [false, true, false, true] {
        let args = [&["--json"][..], &["dlq", "list", &queue]].concat();
        let output = run(&vars, if json { &args } else { &args[1..] });
        assert_eq!(code(&output), 2, "{}{}", stdout(&output), stderr(&output));
        if json {
            let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
            assert_eq!(error["error"], "counts_as_delivery", "{error}");
        } else {
            let message = stderr(&output);
            assert!(
                message.starts_with("fitviz-events: counts_as_delivery: "),
                "{message}"
            );
            assert!(message.contains("counts as a delivery"), "{message}");
            assert!(message.contains("--count-as-delivery"), "{message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }
    // A DLQ is listed as before (empty here).
    let output = run(&vars, &["--json", "dlq", "list", &dlq]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "");

    // With the flag: listed once, which counts one delivery of each.
    let output = run(
        &vars,
        &["--json", "dlq", "list", &queue, "--count-as-delivery"],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 2, "{}", stdout(&output));
    // Both still in the queue, delivered once (by the flagged listing only), none
    // dead-lettered.
    for _ in 0..100 {
        if support::queue_len(connection, &queue).await == Some(2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(support::queue_len(connection, &dlq).await, Some(0));
    let channel = connection.create_channel().await.unwrap();
    assert_eq!(delivery_counts(&channel, &queue).await, vec![1, 1]);

    delete_declared(&fx, &queue).await;
    fx.cleanup().await;
}

/// A replay stopped by an error prints what it had moved and exits non-zero (issue 19):
/// the DLQ holds a dead letter of its own queue, then one of a queue deleted since (the
/// broker returns its copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_stopped_by_an_error_prints_what_it_moved() {
    use lapin::{
        options::QueueDeclareOptions,
        types::{AMQPValue, FieldTable},
    };
    require_broker!();
    let fx = Fixture::new("cli_dlq_partial", "nothing.binds.this").await;
    let url = support::broker_url();
    let vars = vars_for(&fx, &url);
    let queue = format!("{}.consumer", fx.name);
    let dlq = format!("{queue}.dlq");
    let gone = format!("{}.gone", fx.name);
    let output = run(
        &vars,
        &[
            "topology",
            "declare",
            "--consumer-queue",
            &queue,
            "--bind",
            "workout.*",
        ],
    );
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let channel = fx.connection.create_channel().await.unwrap();
    // Both queues emptied, the DLQ holds `first` from the queue, then `second` from
    // `gone`, deleted since.
    let dead_letter_two = |first: &'static str, second: &'static str| {
        let (channel, connection) = (channel.clone(), &fx.connection);
        let (queue, dlq, gone) = (queue.clone(), dlq.clone(), gone.clone());
        async move {
            for name in [&queue, &dlq] {
                channel
                    .queue_purge(name.as_str().into(), Default::default())
                    .await
                    .unwrap();
            }
            let mut args = FieldTable::default();
            args.insert("x-expires".into(), AMQPValue::LongLongInt(300_000));
            let dlx = format!("{queue}.dlx");
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
            channel
                .queue_declare(gone.as_str().into(), QueueDeclareOptions::default(), args)
                .await
                .unwrap();
            for (from, id, n) in [(&queue, first, 1), (&gone, second, 2)] {
                support::publish_and_reject(&channel, from, id).await;
                for _ in 0..100 {
                    if support::queue_len(connection, &dlq).await == Some(n) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                assert_eq!(support::queue_len(connection, &dlq).await, Some(n));
            }
            channel
                .queue_delete(gone.as_str().into(), Default::default())
                .await
                .unwrap();
        }
    };

    // Human output: the moved id on stdout, then the error (one line on stderr).
    dead_letter_two("evt-1", "evt-2").await;
    let output = run(&vars, &["dlq", "replay", &dlq]);
    assert_eq!(code(&output), 5, "{}{}", stdout(&output), stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("replayed evt-1\t"), "{out}");
    let message = stderr(&output);
    assert!(message.starts_with("fitviz-events: refused: "), "{message}");
    assert!(message.contains(&gone), "{message}");
    assert!(
        message.contains("1 dead letter(s) had been replayed"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");

    // With --json: one object, the error and the report of what was moved.
    dead_letter_two("evt-3", "evt-4").await;
    let output = run(&vars, &["--json", "dlq", "replay", &dlq]);
    assert_eq!(code(&output), 5, "{}{}", stdout(&output), stderr(&output));
    let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(error["error"], "refused", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains(&gone),
        "{error}"
    );
    let replayed = error["report"]["replayed"].as_array().expect("the report");
    assert_eq!(replayed.len(), 1, "{error}");
    assert_eq!(replayed[0]["message_id"], "evt-3");
    assert_eq!(replayed[0]["routing_key"], queue.as_str());
    // What it reports is what happened: evt-3 is back in the queue, evt-4 stays in the
    // DLQ.
    assert_eq!(support::queue_len(&fx.connection, &queue).await, Some(1));
    assert_eq!(support::queue_len(&fx.connection, &dlq).await, Some(1));

    delete_declared(&fx, &queue).await;
    let _ = channel
        .queue_delete(gone.as_str().into(), Default::default())
        .await;
    fx.cleanup().await;
}

#[cfg(feature = "outbox-postgres")]
#[tokio::test]
async fn outbox_commands_migrate_report_and_fail_on_the_database_with_exit_7() {
    require_postgres!();
    let schema = support::postgres::unique_schema("cli");
    let url = support::postgres::pg_url();
    let vars = [
        ("FITVIZ_EVENTS_OUTBOX_URL", url.as_str()),
        ("FITVIZ_EVENTS_OUTBOX_SCHEMA", schema.as_str()),
    ];
    // Not migrated: the database's own exit code, saying what to do.
    let output = run(&vars, &["--json", "outbox", "status"]);
    assert_eq!(code(&output), 7, "{}", stdout(&output));
    let error: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(error["error"], "schema");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("outbox migrate"),
        "{error}"
    );

    let output = run(&vars, &["--json", "outbox", "migrate"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(
        report,
        serde_json::json!({"from": 0, "to": 2, "applied": [1, 2]})
    );
    let output = run(&vars, &["--json", "outbox", "status"]);
    assert_eq!(code(&output), 0);
    let status: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(
        (status["pending"].as_u64(), status["dead"].as_u64()),
        (Some(0), Some(0))
    );
    let output = run(&vars, &["outbox", "dead", "retry"]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    let output = run(&vars, &["--json", "outbox", "dead", "retry", "--all"]);
    assert_eq!(stdout(&output).trim(), r#"{"retried":0}"#);

    // A database that does not answer: exit 7, the password never shown.
    let down = [
        (
            "FITVIZ_EVENTS_OUTBOX_URL",
            "postgres://app:s3cret@127.0.0.1:1/test",
        ),
        ("FITVIZ_EVENTS_OUTBOX_SCHEMA", schema.as_str()),
    ];
    let output = run(&down, &["outbox", "status"]);
    assert_eq!(code(&output), 7, "{}", stderr(&output));
    assert!(stderr(&output).contains("database"), "{}", stderr(&output));
    // A bad URL is a configuration error (3), redacted.
    let bad = [("FITVIZ_EVENTS_OUTBOX_URL", "mysql://app:s3cret@db/x")];
    let output = run(&bad, &["outbox", "status"]);
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    for output in [
        run(&down, &["outbox", "status"]),
        run(&bad, &["outbox", "status"]),
    ] {
        assert!(!stderr(&output).contains("s3cret"), "{}", stderr(&output));
    }
    support::postgres::drop_schema(&schema).await;
}

/// `archive declare`, `status` and `replay` (issue 22): the archive is declared, its
/// status shows the first event and the head, a dry run counts exactly the matching
/// events and publishes nothing, a replay to a queue delivers each of them once, and a
/// malformed `--from` is a usage error.
#[tokio::test]
async fn archive_declare_status_and_replay_dry_run_and_to_a_queue() {
    require_broker!();
    use fitviz_events::{
        Event, EventPublisher, PublisherConfig, config::ArchivePatterns, events::PaymentFailed,
        topology::archive_name,
    };
    let fx = Fixture::new("cli_archive", "nothing.binds.this").await;
    let _leftovers = support::Leftovers {
        exchanges: Vec::new(),
        queues: vec![archive_name(&fx.exchange)],
    };
    let url = support::broker_url();
    let mut vars = vars_for(&fx, &url);
    vars.push(("FITVIZ_EVENTS_ARCHIVE", "on"));

    let output = run(
        &vars,
        &[
            "--json",
            "archive",
            "declare",
            "--max-bytes",
            "5000000",
            "--segment-bytes",
            "500000",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let declared: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(
        declared["archive"],
        archive_name(&fx.exchange),
        "{declared}"
    );

    let publisher = EventPublisher::connect(PublisherConfig {
        archive: ArchivePatterns::all(),
        ..fx.config()
    })
    .await
    .unwrap();
    let mut payments = 0;
    for i in 0..30 {
        let event = match i % 3 {
            0 => {
                payments += 1;
                Event::new(PaymentFailed::example())
            }
            _ => Event::new(WorkoutCreated::example()),
        };
        publisher
            .publish(event.with_organization("org-cli"))
            .await
            .unwrap();
    }
    publisher.close().await;

    let output = run(&vars, &["--json", "archive", "status"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let status: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(status["first_offset"], 0, "{status}");
    assert_eq!(status["head"], 29, "{status}");

    let output = run(
        &vars,
        &[
            "--json",
            "archive",
            "replay",
            "--type",
            "payment.*",
            "--queue",
            &fx.queue,
            "--dry-run",
        ],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(summary["read"], 30, "{summary}");
    assert_eq!(summary["matched"], payments, "{summary}");
    assert_eq!(summary["published"], 0, "{summary}");
    assert_eq!(fx.queue_len().await, 0, "a dry run publishes nothing");

    // At most 20 events a second: the 10 payments take at least 9 intervals.
    let started = std::time::Instant::now();
    let output = run(
        &vars,
        &[
            "--json",
            "archive",
            "replay",
            "--type",
            "payment.*",
            "--queue",
            &fx.queue,
            "--rate",
            "20",
        ],
    );
    let took = started.elapsed();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(summary["published"], payments, "{summary}");
    assert_eq!(fx.queue_len().await, payments, "each matching event once");
    assert!(
        took >= std::time::Duration::from_millis(450),
        "--rate 20 published {payments} events in {took:?}"
    );

    let output = run(
        &vars,
        &[
            "--json",
            "archive",
            "replay",
            "--from",
            "yesterday",
            "--queue",
            "q",
        ],
    );
    assert_eq!(code(&output), 2, "{}", stdout(&output));
    assert!(stdout(&output).contains("RFC 3339"), "{}", stdout(&output));
    fx.cleanup().await;
}
