//! eval, explain, check, validate and match: queries and configurations without Envoy.

use std::process::ExitCode;

use envoy_webhooks::config::{EgressPolicy, PluginConfig};
use envoy_webhooks::matcher::Matcher;
use envoy_webhooks::query::Query;
use serde_json::Value;

use super::{read_input, Failure};

fn read_event(path: &str) -> Result<Value, Failure> {
    let bytes = read_input(path)?;
    let name = if path == "-" { "standard input" } else { path };
    serde_json::from_slice(&bytes).map_err(|e| Failure(format!("{name} is not a JSON event: {e}")))
}

fn parse_query(text: &str) -> Result<Query, Failure> {
    Query::parse(text).map_err(|e| Failure(format!("invalid query: {e}")))
}

pub fn eval(query: &str, event: &str) -> Result<ExitCode, Failure> {
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

pub fn explain(query: &str, event: &str) -> Result<ExitCode, Failure> {
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

pub fn check(query: &str) -> Result<ExitCode, Failure> {
    println!("{}", parse_query(query)?);
    Ok(ExitCode::SUCCESS)
}

fn load_config(path: &str) -> Result<PluginConfig, Failure> {
    let bytes = read_input(path)?;
    PluginConfig::from_json(&bytes).map_err(|e| Failure(format!("{path}: {e}")))
}

pub fn validate(path: &str) -> Result<ExitCode, Failure> {
    let config = load_config(path)?;
    println!(
        "{path}: valid, {} webhook definition(s)",
        config.webhooks.len()
    );
    for note in config.notes() {
        eprintln!("note: {note}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn egress_policy(path: &str, dnsmasq: bool) -> Result<ExitCode, Failure> {
    let config = load_config(path)?;
    let api = config.api.as_ref().ok_or_else(|| {
        Failure(format!(
            "{path}: no api section: the egress listeners are for tenants' webhooks, which need one"
        ))
    })?;
    let policy = EgressPolicy::of(&api.urls);
    for name in &policy.names_not_covered {
        eprintln!("note: api.urls.allow entry \"{name}\" names a host; Envoy's egress check sees addresses only, so it refuses this host's internal addresses unless they are listed too");
    }
    if dnsmasq {
        println!("# envoy-webhooks egress-policy --dnsmasq {path}: a name with any of these addresses is answered NXDOMAIN");
        for option in &policy.dnsmasq_options {
            println!("{option}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let output = serde_json::json!({
        "rbac": policy.rbac,
        "resolved_address_filter": policy.resolved_address_filter,
    });
    let text = serde_json::to_string_pretty(&output)
        .map_err(|e| Failure(format!("cannot print the policy: {e}")))?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub fn match_event(config: &str, event: &str) -> Result<ExitCode, Failure> {
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
