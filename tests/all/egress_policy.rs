//! The egress listeners' policy (`envoy-webhooks egress-policy`), judged the
//! way Envoy judges it: the DNS caches' `resolved_address_filter` drops an
//! address in any of its ranges; RBAC allows a connection whose address is
//! public, or one of the operator's exceptions with its port.

use std::net::IpAddr;

use envoy_webhooks::config::{EgressPolicy, UrlPolicy};
use serde_json::Value;

fn policy(allow: &[&str]) -> EgressPolicy {
    let allow = allow
        .iter()
        .map(|entry| envoy_webhooks::config::AllowEntry::parse(entry).unwrap())
        .collect();
    EgressPolicy::of(&UrlPolicy::new(true, Vec::new(), allow))
}

fn in_cidr(addr: IpAddr, cidr: &Value) -> bool {
    let net: IpAddr = cidr["address_prefix"].as_str().unwrap().parse().unwrap();
    let prefix = u32::try_from(cidr["prefix_len"].as_u64().unwrap()).unwrap();
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            (u32::from(a) ^ u32::from(n)) & mask == 0
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            (u128::from(a) ^ u128::from(n)) & mask == 0
        }
        _ => false,
    }
}

/// Whether the DNS cache drops `addr`.
fn filtered(policy: &EgressPolicy, addr: IpAddr) -> bool {
    policy.resolved_address_filter["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|range| in_cidr(addr, range))
}

/// An RBAC permission, evaluated for a connection to `addr:port`.
fn holds(permission: &Value, addr: IpAddr, port: u16) -> bool {
    if let Some(rules) = permission.get("and_rules") {
        return rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| holds(r, addr, port));
    }
    if let Some(rules) = permission.get("or_rules") {
        return rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| holds(r, addr, port));
    }
    if let Some(rule) = permission.get("not_rule") {
        return !holds(rule, addr, port);
    }
    let matcher = &permission["matcher"];
    assert_eq!(matcher["name"], "envoy.rbac.matchers.upstream_ip_port");
    let config = &matcher["typed_config"];
    let port_ok = match config.get("upstream_port_range") {
        // Both ends included, as Envoy does.
        Some(range) => (range["start"].as_u64().unwrap()..=range["end"].as_u64().unwrap())
            .contains(&u64::from(port)),
        None => true,
    };
    in_cidr(addr, &config["upstream_ip"]) && port_ok
}

fn rbac_allows(policy: &EgressPolicy, addr: IpAddr, port: u16) -> bool {
    assert_eq!(policy.rbac["rules"]["action"], "ALLOW");
    policy.rbac["rules"]["policies"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["permissions"].as_array().unwrap())
        .any(|permission| holds(permission, addr, port))
}

const INTERNAL: [&str; 22] = [
    "0.0.0.0",
    "10.0.0.1",
    "10.203.0.1",
    "100.64.1.1",
    "127.0.0.1",
    "127.0.0.2",
    "169.254.169.254",
    "172.16.5.4",
    "192.0.0.170",
    "192.168.1.1",
    "198.18.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.2",
    "::ffff:93.184.216.34",
    "64:ff9b::a00:1",
    "2002:a00:1::1",
    "2001:db8::1",
    "fd12::1",
    "fe80::1",
];
const PUBLIC: [&str; 5] = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "2a00:1450:4001::200e",
];

#[test]
fn every_internal_address_is_dropped_and_refused_and_public_ones_pass() {
    let policy = policy(&[]);
    for text in INTERNAL {
        let addr: IpAddr = text.parse().unwrap();
        assert!(filtered(&policy, addr), "{text} is not filtered");
        assert!(
            !rbac_allows(&policy, addr, 443),
            "{text} is allowed by RBAC"
        );
    }
    for text in PUBLIC {
        let addr: IpAddr = text.parse().unwrap();
        assert!(!filtered(&policy, addr), "{text} is filtered");
        assert!(rbac_allows(&policy, addr, 443), "{text} is refused by RBAC");
    }
    assert!(!policy.rbac["rules"]["policies"]
        .as_object()
        .unwrap()
        .contains_key("operator_allow"));
}

/// What the API's own check refuses as an IP literal, the egress policy
/// refuses too (it may refuse more: IPv6 forms embedding a public IPv4
/// address are not global unicast, and Envoy would connect to them as IPv6).
#[test]
fn the_egress_policy_refuses_whatever_the_url_check_refuses() {
    let policy = policy(&[]);
    let urls = UrlPolicy::new(true, Vec::new(), Vec::new());
    for text in INTERNAL.iter().chain(PUBLIC.iter()) {
        let addr: IpAddr = text.parse().unwrap();
        let url = match addr {
            IpAddr::V4(_) => format!("https://{text}/"),
            IpAddr::V6(_) => format!("https://[{text}]/"),
        };
        if urls.check(&url).is_err() {
            assert!(
                filtered(&policy, addr) && !rbac_allows(&policy, addr, 443),
                "{text}"
            );
        }
    }
}

#[test]
fn an_exception_lets_exactly_its_address_and_port_through() {
    let policy = policy(&[
        "10.0.0.7:8443",
        "fd00::5",
        "192.168.10.0/24",
        "hooks.example:443",
    ]);
    let addr = |text: &str| text.parse::<IpAddr>().unwrap();
    // With its port only.
    assert!(rbac_allows(&policy, addr("10.0.0.7"), 8443));
    assert!(!rbac_allows(&policy, addr("10.0.0.7"), 8444));
    assert!(!rbac_allows(&policy, addr("10.0.0.7"), 8442));
    assert!(!rbac_allows(&policy, addr("10.0.0.8"), 8443));
    assert!(!filtered(&policy, addr("10.0.0.7")));
    for neighbour in [
        "10.0.0.6",
        "10.0.0.8",
        "10.0.0.0",
        "10.255.255.255",
        "10.0.1.7",
    ] {
        assert!(filtered(&policy, addr(neighbour)), "{neighbour}");
    }
    // Without a port: any port, that address only.
    assert!(rbac_allows(&policy, addr("fd00::5"), 1));
    assert!(!filtered(&policy, addr("fd00::5")));
    assert!(filtered(&policy, addr("fd00::4")) && filtered(&policy, addr("fd00::6")));
    assert!(!rbac_allows(&policy, addr("fd00::6"), 1));
    // A network: all of it.
    assert!(rbac_allows(&policy, addr("192.168.10.200"), 80));
    assert!(!filtered(&policy, addr("192.168.10.200")));
    assert!(filtered(&policy, addr("192.168.11.1")));
    // The rest stays as without exceptions.
    for text in INTERNAL {
        let a = addr(text);
        if !["10.0.0.7", "fd00::5"].contains(&text) {
            assert!(filtered(&policy, a), "{text}");
        }
    }
    // dnsmasq gets the filter's ranges, one option each.
    let ranges = policy.resolved_address_filter["ranges"].as_array().unwrap();
    assert_eq!(policy.dnsmasq_options.len(), ranges.len());
    for (option, range) in policy.dnsmasq_options.iter().zip(ranges) {
        assert_eq!(
            option,
            &format!(
                "bogus-nxdomain={}/{}",
                range["address_prefix"].as_str().unwrap(),
                range["prefix_len"]
            )
        );
    }
    // A host name cannot be seen by Envoy's check: said, not silently dropped.
    assert_eq!(policy.names_not_covered, ["hooks.example:443"]);
}
