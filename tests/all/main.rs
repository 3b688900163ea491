//! Every native test of the crate, as one test binary (one link instead of
//! fifteen): its public surface, and its private modules through
//! `envoy_webhooks::testing`. Private helpers are tested next to their code.

// Tests may fail loudly; the rules against panics are for the filter's code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)]

mod admin_delivery;
mod allocations;
mod api_caller;
mod api_config;
mod api_exchange;
mod api_resource;
mod api_tenants;
mod cli;
mod cluster;
mod config;
mod conformance;
mod delivery_policy;
mod egress_policy;
mod engine;
mod etcd_answers;
mod events;
mod fake_etcd;
mod fields;
mod health;
mod intake;
mod matcher;
mod module_imports;
mod operate;
mod pending;
mod query_budget;
mod query_properties;
mod retry;
mod signature;
mod url_policy;
mod view;
