//! The built `scientist` binary: help, the embedded-store commands, errors and exit codes.

use assert_cmd::Command;
use predicates::prelude::*;
use predicates::str::contains;

/// The binary with a clean environment and its own store file.
fn scientist(store: &tempfile::TempDir) -> Command {
    let mut command = Command::cargo_bin("scientist").expect("binary is built");
    command.env_clear().env("SCIENTIST_STORE", store.path().join("store.sqlite")).env("NO_COLOR", "1");
    command
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    scientist::cmd::Cli::command().debug_assert();
}

#[test]
fn help_lists_every_subcommand_and_the_exit_codes() {
    let store = tempfile::tempdir().expect("temp dir");
    let assert = scientist(&store).arg("--help").assert().success();
    let help = String::from_utf8(assert.get_output().stdout.clone()).expect("utf-8");
    for subcommand in ["serve", "work", "runs", "stats", "emit", "completions"] {
        assert!(help.contains(&format!("\n  {subcommand} ")), "{subcommand} missing from:\n{help}");
    }
    assert!(help.contains("Exit codes: 0 success"), "{help}");
}

#[test]
fn create_then_list_show_cancel_and_reset() {
    let store = tempfile::tempdir().expect("temp dir");
    let idea = store.path().join("idea.json");
    std::fs::write(&idea, r#"{"Title": "warm-up ablation"}"#).expect("write idea");
    let created = scientist(&store).args(["runs", "create", "--priority", "5", "--idea"]).arg(&idea).assert().success();
    let id = String::from_utf8(created.get_output().stdout.clone()).expect("utf-8").trim().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id:?}");

    scientist(&store).args(["runs", "list"]).assert().success().stdout(contains(&id).and(contains("QUEUED")));
    let shown = scientist(&store).args(["runs", "show", &id, "--json"]).assert().success();
    let run: serde_json::Value = serde_json::from_slice(&shown.get_output().stdout).expect("json");
    assert_eq!((run["_id"].as_str(), run["priority"].as_i64()), (Some(id.as_str()), Some(5)));
    assert_eq!(run["idea"]["Title"], "warm-up ablation");

    scientist(&store).args(["runs", "cancel", &id]).assert().success().stderr(contains("canceled"));
    scientist(&store).args(["stats", "--json"]).assert().success().stdout(contains(r#""CANCELED": 1"#));
    scientist(&store).args(["runs", "reset", &id]).assert().success().stderr(contains("QUEUED again"));
    scientist(&store)
        .args(["runs", "list", "--status", "queued", "--json"])
        .assert()
        .success()
        .stdout(contains(&id).and(contains(r#""retryCount": 1"#)));
}

#[test]
fn errors_name_the_problem_and_exit_with_their_code() {
    let store = tempfile::tempdir().expect("temp dir");
    scientist(&store)
        .args(["runs", "show", "no-such-run"])
        .assert()
        .code(3)
        .stderr(contains("run no-such-run not found"));
    let bad_idea = store.path().join("idea.json");
    std::fs::write(&bad_idea, "{not json").expect("write");
    scientist(&store)
        .args(["runs", "create", "--idea"])
        .arg(&bad_idea)
        .assert()
        .code(2)
        .stderr(contains("is not valid JSON").and(contains("pass a JSON object")));
    scientist(&store)
        .args(["runs", "list", "--status", "DONE"])
        .assert()
        .code(2)
        .stderr(contains("unknown status \"DONE\"; expected one of QUEUED"));

    let idea = store.path().join("ok.json");
    std::fs::write(&idea, "{}").expect("write");
    let created = scientist(&store).args(["runs", "create", "--idea"]).arg(&idea).assert().success();
    let id = String::from_utf8(created.get_output().stdout.clone()).expect("utf-8").trim().to_owned();
    scientist(&store)
        .args(["runs", "reset", &id])
        .assert()
        .code(4)
        .stderr(contains("it is QUEUED; only FAILED or CANCELED runs can be reset"));
}

#[test]
fn serve_refuses_a_public_address_without_a_token() {
    let store = tempfile::tempdir().expect("temp dir");
    scientist(&store)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .assert()
        .code(2)
        .stderr(contains("refusing to listen on 0.0.0.0:0 without a token").and(contains("Set SCIENTIST_TOKEN")));
}

#[test]
fn a_retention_too_short_or_unreadable_is_refused_with_an_example() {
    let store = tempfile::tempdir().expect("temp dir");
    for (age, reason) in [("10s", "must be at least 1m"), ("a month", "write an age such as 30d")] {
        scientist(&store)
            .args(["serve", "--retain-logs", age])
            .assert()
            .code(2)
            .stderr(contains("--retain-logs").and(contains(reason)));
    }
    scientist(&store)
        .env_remove("SCIENTIST_STORE")
        .args(["work", "--config", "x.toml", "--server", "http://127.0.0.1:9", "--retain-logs", "30d"])
        .assert()
        .code(2)
        .stderr(contains("pass it to `scientist serve`"));
}

/// Retries are decided by the store's writes: a worker on --server has none to decide, and a
/// zero backoff or stall time would mean "at once, forever".
#[test]
fn retry_and_stall_flags_are_checked_with_the_fix() {
    let store = tempfile::tempdir().expect("temp dir");
    scientist(&store)
        .env_remove("SCIENTIST_STORE")
        .args(["work", "--config", "x.toml", "--server", "http://127.0.0.1:9", "--retry-max", "3"])
        .assert()
        .code(2)
        .stderr(contains("--retry-max applies to a worker on a store").and(contains("scientist serve")));
    for flag in ["--retry-backoff", "--stall-after"] {
        scientist(&store)
            .args(["serve", flag, "0s"])
            .assert()
            .code(2)
            .stderr(contains(flag).and(contains("above zero")));
    }
    scientist(&store)
        .args(["serve", "--on-stall", "kill"])
        .assert()
        .code(2)
        .stderr(contains("flag").and(contains("cancel")));
}

#[test]
fn follow_exit_codes_are_in_the_help() {
    let store = tempfile::tempdir().expect("temp dir");
    scientist(&store).arg("--help").assert().success().stdout(contains("8 when it failed, 9 when it was canceled"));
    for command in ["show", "logs"] {
        scientist(&store)
            .args(["runs", command, "--help"])
            .assert()
            .success()
            .stdout(contains("0 when it COMPLETED, 8 when it FAILED").and(contains("unique prefix")));
    }
}

#[test]
fn completions_for_each_shell() {
    let store = tempfile::tempdir().expect("temp dir");
    for (shell, marker) in [("bash", "_scientist()"), ("zsh", "#compdef scientist"), ("fish", "complete -c scientist")]
    {
        scientist(&store)
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(contains(marker).and(contains("runs")).and(contains("logs")));
    }
    scientist(&store).args(["completions", "tcsh"]).assert().code(2).stderr(contains("possible values: bash"));
}

#[test]
fn a_bad_clock_override_is_a_usage_error() {
    let store = tempfile::tempdir().expect("temp dir");
    scientist(&store)
        .env("SCIENTIST_NOW", "yesterday")
        .arg("stats")
        .assert()
        .code(2)
        .stderr(contains("SCIENTIST_NOW=\"yesterday\" is not an RFC 3339 time"));
}

#[test]
fn under_log_format_json_the_error_line_is_json_too() {
    let store = tempfile::tempdir().expect("temp dir");
    let assert = scientist(&store).env("LOG_FORMAT", "json").args(["runs", "show", "no-such-run"]).assert().code(3);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}")))
        .collect();
    let error = lines.last().expect("an error line");
    assert_eq!(error["level"], "ERROR", "{stderr}");
    let message = error["fields"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("error: ") && message.contains("run no-such-run not found"), "{stderr}");
}

#[test]
fn a_token_typed_on_the_command_line_is_warned_about_and_one_in_the_environment_is_not() {
    let store = tempfile::tempdir().expect("temp dir");
    let emit = ["emit", "ai.run.log", "--run", "r1", "--data", r#"{"message": "m"}"#, "--server", "http://127.0.0.1:9"];
    let warning = "--token on the command line shows in `ps` and shell history: set SCIENTIST_TOKEN instead";
    // Nothing listens on port 9 of loopback: both fail to deliver (exit 6) after the warning, or not.
    let typed = scientist(&store).args(emit).args(["--token", "typed-secret"]).assert().code(6);
    let stderr = String::from_utf8_lossy(&typed.get_output().stderr).into_owned();
    assert!(stderr.contains(warning), "{stderr}");
    assert!(!stderr.contains("typed-secret"), "the warning does not repeat it: {stderr}");
    let set = scientist(&store).args(emit).env("SCIENTIST_TOKEN", "env-secret").assert().code(6);
    let stderr = String::from_utf8_lossy(&set.get_output().stderr).into_owned();
    assert!(!stderr.contains("--token on the command line"), "{stderr}");
}
