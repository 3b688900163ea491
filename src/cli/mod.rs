//! The command line: every command's arguments (clap) and the commands themselves.

pub mod http;
pub mod pretty;
pub mod query;
pub mod receive;
pub mod redrive;
pub mod send;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

const TEMPLATE: &str = "\
{name} {version}: {about}

USAGE:
    {usage}

{all-args}{after-help}";

const AFTER_HELP: &str = "\
EVENT_FILE may be '-' for standard input. Errors exit with status 2.
`envoy-webhooks COMMAND --help` describes each command.";

#[derive(Parser)]
#[command(
    name = "envoy-webhooks",
    version,
    about = "iconik-style webhook queries and configurations, without Envoy",
    help_template = TEMPLATE,
    after_help = AFTER_HELP,
    subcommand_required = true,
    arg_required_else_help = false
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print 'match' (exit 0) or 'no match' (exit 1).
    Eval {
        /// A query, e.g. 'data.status="ACTIVE"'.
        #[arg(allow_hyphen_values = true)]
        query: String,
        /// The event's JSON file, '-' for standard input.
        #[arg(value_name = "EVENT_FILE")]
        event: String,
    },
    /// Show each comparison, the values it saw and whether it held (exit 0 / 1).
    Explain {
        /// A query.
        #[arg(allow_hyphen_values = true)]
        query: String,
        /// The event's JSON file, '-' for standard input.
        #[arg(value_name = "EVENT_FILE")]
        event: String,
    },
    /// Print the normalised query, or the error (exit 2).
    Check {
        /// A query.
        #[arg(allow_hyphen_values = true)]
        query: String,
    },
    /// Check a plugin configuration; list every problem (exit 2).
    Validate {
        /// The plugin configuration JSON, '-' for standard input.
        #[arg(value_name = "CONFIG_FILE")]
        config: String,
    },
    /// Print the egress listeners' RBAC policy and DNS address filter for a configuration's api.urls (JSON).
    #[command(after_help = "\
Tenants' calls go through the egress listeners of envoy/dynamic-forward-proxy.yaml,
which refuse internal addresses after Envoy resolves the URL's name. Their RBAC
filter (`rbac`) and their DNS caches' `resolved_address_filter` (Envoy 1.39+) must
refuse the same addresses as the API's URL check, and let the operator's
exceptions (api.urls.allow) through: paste this output there after every change
to api.urls.allow. Exceptions naming hosts are listed on standard error: Envoy
sees addresses only, so give their addresses too.

--dnsmasq prints the same ranges as a dnsmasq configuration instead, for Envoy
before 1.39 (no resolved_address_filter): its egress DNS caches resolve through
that dnsmasq, which answers \"no such name\" for a name with any internal address.")]
    EgressPolicy {
        /// The plugin configuration JSON, '-' for standard input.
        #[arg(value_name = "CONFIG_FILE")]
        config: String,
        /// Print dnsmasq options (bogus-nxdomain=NET/PREFIX, one a line) instead of JSON.
        #[arg(long)]
        dnsmasq: bool,
    },
    /// Print the id of each webhook that fires for an event, one a line.
    Match {
        /// The plugin configuration JSON.
        #[arg(value_name = "CONFIG_FILE")]
        config: String,
        /// The event's JSON file, '-' for standard input.
        #[arg(value_name = "EVENT_FILE")]
        event: String,
    },
    /// A webhook receiver: print each delivery, verify its signature, answer a chosen status.
    Receive(ReceiveArgs),
    /// POST event files to a URL (the platform's event traffic), one request a file.
    Send(SendArgs),
    /// Send dead-letter records again through the filter's admin API, one request a record.
    Redrive(RedriveArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
#[command(after_help = "\
Each delivery is printed: method and path, the headers that matter, the body as
pretty JSON and, with --secret, whether its Standard Webhooks signature holds
(a delivery whose signature does not is answered 401). Ctrl-C stops it.")]
pub struct ReceiveArgs {
    /// The port to listen on.
    #[arg(long)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The webhook's signing secret(s), whsec_<base64> (space-separated while rotating).
    #[arg(long, env = "ENVOY_WEBHOOKS_RECEIVE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The HTTP status to answer with (e.g. 500 or 410 to rehearse failures).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status: u16,
    /// Stop after this many deliveries (default: run until stopped).
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Args)]
pub struct SendArgs {
    /// Where to POST, http://HOST:PORT/PATH.
    pub url: String,
    /// The files to send, one request each ('-' for standard input).
    #[arg(required = true)]
    pub files: Vec<String>,
    /// The content-type of the requests.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Before sending, wait until HOST:PORT accepts connections, or until an
    /// http:// URL answers 200 to a GET (repeatable).
    #[arg(long, value_name = "HOST:PORT|URL")]
    pub wait: Vec<String>,
    /// How long to wait for each --wait, in seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_timeout_s: u64,
}

#[derive(Args)]
#[command(after_help = "\
FILE holds dead-letter records as the filter POSTs them to a dead-letter
destination ({\"webhook_id\", \"event\", \"attempts\", ..., \"message_id\"}): either
one record a line (JSON Lines; blank lines are skipped) or one JSON array of
records (the first non-blank character is '['). Each record is POSTed as it
is written to ADMIN/webhooks/WEBHOOK_ID/deliver with the admin token, so the
filter delivers it again under the same message_id; one line is printed per
record, then a summary. A record that is not an object with a string
\"webhook_id\" and an \"event\" is reported (with its line or index) and the
others still go.

Exit status: 0 if every record was accepted (202), 1 if any was not (an
invalid record, another answer, no connection), 2 for a usage error (the
--admin URL, an unreadable FILE, the token variable unset or empty).")]
pub struct RedriveArgs {
    /// The filter's admin API, http://HOST:PORT/PREFIX (e.g. http://127.0.0.1:18080/webhooks-admin).
    #[arg(long, value_name = "URL")]
    pub admin: String,
    /// The environment variable holding the admin token (required unless --dry-run).
    #[arg(long, value_name = "VAR", required_unless_present = "dry_run")]
    pub token_env: Option<String>,
    /// List each request it would make, and make none.
    #[arg(long)]
    pub dry_run: bool,
    /// The dead-letter records, JSON Lines or one JSON array ('-' for standard input).
    #[arg(value_name = "FILE")]
    pub file: String,
}

/// Why a command could not run; printed on stderr, exit status 2.
pub struct Failure(pub String);

/// Prints clap's help, version or error; errors exit 2 with the usage.
pub fn report_usage_error(err: &clap::Error) -> ExitCode {
    // The usage heading reads the same in errors as in --help.
    let text = err.render().to_string().replace("Usage:", "USAGE:");
    if err.use_stderr() {
        eprint!("{text}");
        ExitCode::from(2)
    } else {
        print!("{text}");
        ExitCode::SUCCESS
    }
}

pub fn read_input(path: &str) -> Result<Vec<u8>, Failure> {
    use std::io::Read;
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| Failure(format!("cannot read standard input: {e}")))?;
        Ok(bytes)
    } else {
        std::fs::read(path).map_err(|e| Failure(format!("cannot read {path}: {e}")))
    }
}
