//! Envoy's half of the check on tenants' URLs: the egress listeners of
//! `envoy/dynamic-forward-proxy.yaml` refuse every internal address Envoy
//! resolves a name to. Their RBAC policy and their DNS caches' address
//! filter are generated here, from the ranges and the operator's exceptions
//! (`api.urls.allow`) the API's own URL check uses, so that both layers
//! refuse the same addresses (`envoy-webhooks egress-policy`).

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

use super::url_policy::{global_internal_v6, internal_networks, Network};
use super::UrlPolicy;

/// The pieces of Envoy configuration the egress listeners need.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressPolicy {
    /// The RBAC HTTP filter's `typed_config`: allows a call only when the
    /// address it is about to connect to is public, or one of the operator's
    /// exceptions (with its port, if the exception gives one).
    pub rbac: Value,
    /// The DNS caches' `resolved_address_filter` (Envoy 1.39 and later): drops every
    /// resolved address in these ranges, so that no connection attempt can
    /// reach one (RBAC sees only the first address; Envoy tries the others
    /// when that one fails). The operator's exceptions are cut out of them.
    pub resolved_address_filter: Value,
    /// The same ranges as dnsmasq options (`bogus-nxdomain=<net>/<prefix>`):
    /// for Envoy before 1.39, which has no `resolved_address_filter`, the
    /// listeners' DNS caches resolve through a local dnsmasq that answers
    /// "no such name" for any name with an address in these ranges.
    pub dnsmasq_options: Vec<String>,
    /// Exceptions that name hosts: Envoy sees addresses only, so these need
    /// their addresses in `api.urls.allow` too.
    pub names_not_covered: Vec<String>,
}

impl EgressPolicy {
    pub fn of(urls: &UrlPolicy) -> EgressPolicy {
        let allowed = urls.allowed_networks();
        let mut policies = serde_json::Map::new();
        policies.insert("public".to_string(), public_policy());
        if !allowed.is_empty() {
            let permissions: Vec<Value> = allowed
                .iter()
                .map(|(net, port)| upstream_matcher(*net, *port))
                .collect();
            policies.insert(
                "operator_allow".to_string(),
                json!({"permissions": permissions, "principals": [{"any": true}]}),
            );
        }
        let rbac = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies}
        });
        let holes: Vec<Network> = allowed.iter().map(|(net, _)| *net).collect();
        let refused: Vec<Network> = internal_networks()
            .into_iter()
            .flat_map(|net| without(net, &holes))
            .collect();
        let ranges: Vec<Value> = refused.iter().copied().map(cidr).collect();
        let dnsmasq_options = refused
            .iter()
            .map(|net| {
                let (addr, prefix) = net.parts();
                format!("bogus-nxdomain={addr}/{prefix}")
            })
            .collect();
        EgressPolicy {
            rbac,
            resolved_address_filter: json!({ "ranges": ranges }),
            dnsmasq_options,
            names_not_covered: urls.allowed_names(),
        }
    }
}

/// Public: any IPv4 address or global unicast IPv6 one, and in no internal range.
fn public_policy() -> Value {
    let any = [
        Network::V4(Ipv4Addr::UNSPECIFIED, 0),
        Network::V6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3),
    ];
    // IPv6 outside 2000::/3 never matches `any`: only the ranges inside it are listed.
    let internal = internal_networks()
        .into_iter()
        .filter(|net| match net {
            Network::V4(..) => true,
            Network::V6(addr, prefix) => global_internal_v6().contains(&(*addr, *prefix)),
        })
        .map(|net| upstream_matcher(net, None));
    json!({
        "permissions": [{"and_rules": {"rules": [
            {"or_rules": {"rules": any.map(|net| upstream_matcher(net, None))}},
            {"not_rule": {"or_rules": {"rules": internal.collect::<Vec<_>>()}}}
        ]}}],
        "principals": [{"any": true}]
    })
}

/// A permission that holds when the address the call connects to is in
/// `net` (and its port is `port`).
fn upstream_matcher(net: Network, port: Option<u16>) -> Value {
    let mut matcher = json!({
        "@type": "type.googleapis.com/envoy.extensions.rbac.matchers.upstream_ip_port.v3.UpstreamIpPortMatcher",
        "upstream_ip": cidr(net)
    });
    if let (Some(port), Some(object)) = (port, matcher.as_object_mut()) {
        // Envoy includes the range's end (unlike Int64Range's documented
        // half-open form; integration/test_egress.py shows it), so one port
        // is start = end.
        object.insert(
            "upstream_port_range".to_string(),
            json!({"start": port, "end": port}),
        );
    }
    json!({"matcher": {"name": "envoy.rbac.matchers.upstream_ip_port", "typed_config": matcher}})
}

fn cidr(net: Network) -> Value {
    let (addr, prefix) = net.parts();
    json!({"address_prefix": addr.to_string(), "prefix_len": prefix})
}

/// `net` without the addresses of `holes`: the smallest list of networks
/// covering the rest.
fn without(net: Network, holes: &[Network]) -> Vec<Network> {
    let mut pieces = vec![net];
    for hole in holes {
        pieces = pieces
            .into_iter()
            .flat_map(|piece| subtract(piece, *hole))
            .collect();
    }
    pieces
}

/// `net` minus `hole`: empty when `hole` holds `net`, `net` itself when they
/// do not meet, else the halves of `net`, each minus `hole`.
fn subtract(net: Network, hole: Network) -> Vec<Network> {
    let (Some((bits, prefix, width)), Some((hole_bits, hole_prefix, hole_width))) =
        (as_bits(net), as_bits(hole))
    else {
        return vec![net];
    };
    if width != hole_width {
        return vec![net];
    }
    let shared = prefix.min(hole_prefix);
    if !same_prefix(bits, hole_bits, shared, width) {
        return vec![net];
    }
    if hole_prefix <= prefix {
        return Vec::new();
    }
    // `hole` lies inside `net`, which is split at its next bit.
    let next = prefix.saturating_add(1);
    let upper_bit = 1u128
        .checked_shl(u32::from(width.saturating_sub(next)))
        .unwrap_or(0);
    [bits, bits | upper_bit]
        .into_iter()
        .filter_map(|half| from_bits(half, next, width))
        .flat_map(|half| subtract(half, hole))
        .collect()
}

/// A network as (its address's bits, prefix length, address width).
fn as_bits(net: Network) -> Option<(u128, u8, u8)> {
    match net {
        Network::V4(addr, prefix) => Some((u128::from(u32::from(addr)), prefix, 32)),
        Network::V6(addr, prefix) => Some((u128::from(addr), prefix, 128)),
    }
}

fn from_bits(bits: u128, prefix: u8, width: u8) -> Option<Network> {
    match width {
        32 => u32::try_from(bits)
            .ok()
            .map(|v4| Network::V4(Ipv4Addr::from(v4), prefix)),
        _ => Some(Network::V6(Ipv6Addr::from(bits), prefix)),
    }
}

/// Whether `a` and `b` agree on their first `prefix` bits (of `width`).
fn same_prefix(a: u128, b: u128, prefix: u8, width: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(u32::from(128u8.saturating_sub(prefix)))
        .unwrap_or(0)
        .checked_shr(u32::from(128u8.saturating_sub(width)))
        .unwrap_or(0);
    (a ^ b) & mask == 0
}
