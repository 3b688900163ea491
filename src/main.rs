//! `envoy-webhooks`: try queries and configurations without Envoy.

use std::io::Read;
use std::process::ExitCode;

use envoy_webhooks::config::PluginConfig;
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use serde_json::Value;

const USAGE: &str = "\
envoy-webhooks: iconik-style webhook queries and configurations, without Envoy

USAGE:
    envoy-webhooks eval QUERY EVENT_FILE       print 'match' (exit 0) or 'no match' (exit 1)
    envoy-webhooks explain QUERY EVENT_FILE    show each comparison, the values it saw and whether it held
    envoy-webhooks check QUERY                 print the normalised query, or the error (exit 2)
    envoy-webhooks validate CONFIG_FILE        check a plugin configuration; list every problem (exit 2)
    envoy-webhooks match CONFIG_FILE EVENT_FILE
                                               print the id of each webhook that fires, one a line

EVENT_FILE may be '-' for standard input. Errors exit with status 2.
";

/// Why a command could not run; printed on stderr, exit status 2.
struct Failure(String);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv.as_slice() {
        ["eval", query, event] => eval(query, event),
        ["explain", query, event] => explain(query, event),
        ["check", query] => check(query),
        ["validate", config] => validate(config),
        ["match", config, event] => match_event(config, event),
        ["-h" | "--help" | "help"] => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        ["-V" | "--version"] => {
            println!("envoy-webhooks {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(Failure(format!(
            "unrecognised arguments: {}\n\n{USAGE}",
            if argv.is_empty() {
                "(none)".to_string()
            } else {
                argv.join(" ")
            }
        ))),
    };
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn read_input(path: &str) -> Result<Vec<u8>, Failure> {
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

fn read_event(path: &str) -> Result<Value, Failure> {
    let bytes = read_input(path)?;
    let name = if path == "-" { "standard input" } else { path };
    serde_json::from_slice(&bytes).map_err(|e| Failure(format!("{name} is not a JSON event: {e}")))
}

fn parse_query(text: &str) -> Result<Query, Failure> {
    Query::parse(text).map_err(|e| Failure(format!("invalid query: {e}")))
}

fn eval(query: &str, event: &str) -> Result<ExitCode, Failure> {
    let query = parse_query(query)?;
    let event = read_event(event)?;
    if query.matches(&event) {
        println!("match");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("no match");
        Ok(ExitCode::from(1))
    }
}

fn explain(query: &str, event: &str) -> Result<ExitCode, Failure> {
    let query = parse_query(query)?;
    let event = read_event(event)?;
    let explanation = query.explain(&event);
    println!("query: {query}");
    println!("{explanation}");
    Ok(if explanation.matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn check(query: &str) -> Result<ExitCode, Failure> {
    println!("{}", parse_query(query)?);
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &str) -> Result<PluginConfig, Failure> {
    let bytes = read_input(path)?;
    PluginConfig::from_json(&bytes).map_err(|e| Failure(format!("{path}: {e}")))
}

fn validate(path: &str) -> Result<ExitCode, Failure> {
    let config = load_config(path)?;
    println!(
        "{path}: valid, {} webhook definition(s)",
        config.webhooks.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn match_event(config: &str, event: &str) -> Result<ExitCode, Failure> {
    let config = load_config(config)?;
    let event = read_event(event)?;
    if !event.is_object() {
        return Err(Failure("the event must be a JSON object".to_string()));
    }
    let matcher = Matcher::new(config.webhooks);
    let mut matches = Vec::new();
    matcher.matching(&event, &mut matches);
    for index in matches {
        if let Some(definition) = matcher.definitions().get(index) {
            // The configured status decides here; Envoy also tracks failures at run time.
            if definition.status.delivers() {
                println!("{}", definition.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
