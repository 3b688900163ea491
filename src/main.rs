//! `envoy-webhooks`: try queries and configurations without Envoy, receive
//! webhooks, send sample events, and redrive dead letters.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return cli::report_usage_error(&err),
    };
    let result = match cli.command {
        Command::Eval { query, event } => cli::query::eval(&query, &event),
        Command::Explain { query, event } => cli::query::explain(&query, &event),
        Command::Check { query } => cli::query::check(&query),
        Command::Validate { config } => cli::query::validate(&config),
        Command::EgressPolicy { config, dnsmasq } => cli::query::egress_policy(&config, dnsmasq),
        Command::Match { config, event } => cli::query::match_event(&config, &event),
        Command::Receive(args) => cli::receive::run(&args),
        Command::Send(args) => cli::send::run(&args),
        Command::Redrive(args) => cli::redrive::run(&args),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(
                shell,
                &mut command,
                "envoy-webhooks",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}
