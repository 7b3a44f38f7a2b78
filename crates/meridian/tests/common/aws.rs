//! The AWS CLI from tests, with only the test's credentials and endpoint.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::{Server, expect_success, require_tool, run_with_timeout, text};

/// Long enough for multi-part uploads of test files on a busy machine.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// The AWS CLI, isolated from any ~/.aws of the developer running the tests.
pub struct AwsCli {
    bin: PathBuf,
    endpoint: String,
    home: tempfile::TempDir,
}

impl AwsCli {
    pub fn new(server: &Server) -> AwsCli {
        let bin = require_tool("aws", "pip install awscli");
        AwsCli { bin, endpoint: server.endpoint.clone(), home: tempfile::tempdir().expect("temp dir") }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--endpoint-url").arg(&self.endpoint).args(args);
        super::aws_env_only_ours(&mut cmd, self.home.path());
        cmd.env("AWS_PAGER", "");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(&mut self.command(args), TOOL_TIMEOUT)
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        expect_success(&format!("aws {}", args.join(" ")), &out);
        text(&out.stdout)
    }

    /// Runs an `s3api` call and parses its JSON output.
    pub fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("aws {} printed no JSON ({e}): {stdout}", args.join(" ")))
    }
}
