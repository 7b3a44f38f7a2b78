//! docs/configuration.md against the real binary: every flag and environment variable of
//! `meridian server` (and of the operator commands `admin`, `cluster`, `volume serve`) is
//! documented, the doc's tables name no flag that does not exist, and `--print-config` shows
//! the merged settings with secrets redacted. (The config file's keys are checked against the
//! doc by a unit test of `crates/meridian/src/config.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{expect_success, run_with_timeout};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md")).unwrap()
}

/// `meridian ARGS --help`.
fn help(args: &[&str]) -> String {
    let mut cmd = Command::new(common::binary());
    cmd.args(args).arg("--help");
    expect_success(&format!("meridian {args:?} --help"), &run_with_timeout(&mut cmd, Duration::from_secs(30)))
}

/// The long flags (`--name`) and environment variables (`[env: NAME`) a help text lists.
fn flags_and_env(help: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let flags = help
        .lines()
        .map(str::trim_start)
        .filter_map(|line| line.strip_prefix("-h, ").or(Some(line)))
        .filter_map(|line| line.strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '\t', '=']).next())
        .filter(|name| !name.is_empty() && *name != "help")
        .map(|name| format!("--{name}"))
        .collect();
    let env =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_string).collect();
    (flags, env)
}

/// Every subcommand path under `path`, from the help texts' "Commands:" sections.
fn subcommands(path: Vec<String>) -> Vec<Vec<String>> {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let text = help(&args);
    let mut all = vec![path.clone()];
    if let Some(section) = text.split("Commands:\n").nth(1) {
        for line in section.lines().take_while(|l| l.starts_with("  ")) {
            let name = line.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name != "help" {
                let mut next = path.clone();
                next.push(name.to_string());
                all.extend(subcommands(next));
            }
        }
    }
    all
}

#[test]
fn every_flag_and_environment_variable_of_the_operator_commands_is_documented() {
    let doc = doc();
    let mut missing = Vec::new();
    for command in [&["server"][..], &["admin"], &["cluster"], &["volume", "serve"]] {
        let (flags, env) = flags_and_env(&help(command));
        assert!(flags.len() >= 5, "{command:?}: too few flags found: {flags:?}");
        for flag in flags {
            if !doc.contains(&format!("`{flag} ")) && !doc.contains(&format!("`{flag}`")) {
                missing.push(format!("{command:?} {flag}"));
            }
        }
        for name in env {
            if !doc.contains(&format!("`{name}`")) {
                missing.push(format!("{command:?} {name}"));
            }
        }
    }
    assert!(missing.is_empty(), "missing from docs/configuration.md: {missing:#?}");
}

#[test]
fn the_configuration_tables_name_no_flag_that_does_not_exist() {
    let mut known = BTreeSet::new();
    for path in subcommands(Vec::new()) {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        known.extend(flags_and_env(&help(&args)).0);
    }
    assert!(known.contains("--print-config") && known.contains("--cache-dir"), "{known:?}");
    let doc = doc();
    let named: BTreeSet<String> = doc
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(|row| row.split('`').skip(1).step_by(2))
        .filter_map(|code| code.strip_prefix("--"))
        .map(|flag| format!("--{}", flag.split([' ', '=']).next().unwrap_or_default()))
        .collect();
    assert!(named.len() >= 30, "{named:?}");
    let unknown: Vec<&String> = named.difference(&known).collect();
    assert!(unknown.is_empty(), "docs/configuration.md names flags no command has: {unknown:?}");
}

/// `meridian server ... --print-config` with the environment cleared of Meridian settings.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(common::binary());
    cmd.arg("server").args(args).arg("--print-config");
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("MERIDIAN_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

#[test]
fn print_config_shows_the_merged_settings_with_secrets_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("meridian.toml");
    std::fs::write(
        &file,
        "region = \"eu-west-1\"\ncluster_token = \"file-secret-1234\"\nmax_connections = 77\ninline_max = \"2KiB\"\n",
    )
    .unwrap();
    let (file_arg, data_arg) = (file.to_str().unwrap(), data.to_str().unwrap());
    let args = ["--config", file_arg, "--data", data_arg, "--inline-max", "4KiB", "--advertise", "http://node-a:9400"];
    let env =
        [("MERIDIAN_ETCD", "http://127.0.0.1:1,http://127.0.0.1:2"), ("MERIDIAN_CLUSTER_TOKEN", "env-secret-5678")];
    let printed = expect_success("--print-config", &print_config(&args, &env));

    assert!(!printed.contains("secret-1234") && !printed.contains("secret-5678"), "a secret leaked:\n{printed}");
    for line in [
        "cluster_token = \"<redacted>\"",
        "region = \"eu-west-1\"",                                  // from the file
        "max_connections = 77",                                    // from the file
        "inline_max = 4096",                                       // the flag wins over the file
        "advertise = \"http://node-a:9400\"",                      // a flag
        "etcd = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]", // the environment
        "etcd_namespace = \"/meridian/\"",                         // a default
        "listen = \"127.0.0.1:9400\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} missing from:\n{printed}");
    }
    assert!(!data.exists(), "--print-config must not create the data directory");

    // The output is a config file: read back, it prints the same settings.
    let again_file = tmp.path().join("printed.toml");
    std::fs::write(&again_file, &printed).unwrap();
    let again = expect_success(
        "--print-config of the printed file",
        &print_config(&["--config", again_file.to_str().unwrap()], &[]),
    );
    assert_eq!(again, printed);
}

/// The edge's cluster settings: `--web-advertise` (checked), and a site's own origin in its
/// `[[site]]` table, printed back as a config file that reads the same.
#[test]
fn web_advertise_and_a_sites_origin_are_configuration_like_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("meridian.toml");
    std::fs::write(
        &file,
        "[[site]]\nname = \"app\"\nbucket = \"app\"\n[site.origin]\npin_seconds = 30\n\
         [[site.origin.region]]\nname = \"ams\"\ninstances = [{ id = \"ams-1\", url = \"http://10.0.0.5:3000\" }]\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let printed = expect_success(
        "--print-config",
        &print_config(&["--config", file_arg, "--web-advertise", "http://edge-a:8080"], &[]),
    );
    assert!(printed.lines().any(|l| l == "web_advertise = \"http://edge-a:8080\""), "{printed}");
    assert!(printed.contains("pin_seconds = 30") && printed.contains("http://10.0.0.5:3000"), "{printed}");
    let again_file = tmp.path().join("printed.toml");
    std::fs::write(&again_file, &printed).unwrap();
    let again = expect_success("the printed file", &print_config(&["--config", again_file.to_str().unwrap()], &[]));
    assert_eq!(again, printed);

    let refused = print_config(&["--web-advertise", "edge-a:8080"], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--web-advertise") && stderr.contains("http(s)://host:port"), "{stderr}");
}

/// The blob bucket merges file, environment and flags like the rest, its secret key is
/// redacted, and a bucket without its keys is refused naming the settings to set.
#[test]
fn a_blob_bucket_is_configuration_like_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, file) = (tmp.path().join("data"), tmp.path().join("meridian.toml"));
    let toml = "blob_s3_bucket = \"bytes\"\nblob_s3_prefix = \"region-a\"\nblob_s3_access_key = \"file-key\"\n";
    std::fs::write(&file, toml).unwrap();
    let (file_arg, data_arg) = (file.to_str().unwrap(), data.to_str().unwrap());
    let args = [
        "--config",
        file_arg,
        "--data",
        data_arg,
        "--blob-s3-endpoint",
        "http://127.0.0.1:9",
        "--blob-orphan-grace",
        "90s",
    ];
    let printed =
        expect_success("--print-config", &print_config(&args, &[("MERIDIAN_BLOB_S3_SECRET_KEY", "env-secret-9876")]));
    assert!(!printed.contains("secret-9876"), "the secret key leaked:\n{printed}");
    for line in [
        "blob_s3_bucket = \"bytes\"",
        "blob_s3_prefix = \"region-a\"",
        "blob_s3_access_key = \"file-key\"",
        "blob_s3_secret_key = \"<redacted>\"",
        "blob_s3_endpoint = \"http://127.0.0.1:9\"",
        "blob_s3_region = \"us-east-1\"",
        "blob_orphan_grace_secs = 90",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} missing from:\n{printed}");
    }
    let refused = print_config(&args, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("MERIDIAN_BLOB_S3_SECRET_KEY"), "{stderr}");
}
