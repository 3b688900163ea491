//! Which tenant webhook URLs may be called: schemes, credentials, internal
//! names, special-purpose IP ranges in every spelling resolvers accept, the
//! operator's allow list, and its entries' parse errors.

use std::net::Ipv4Addr;

use envoy_webhooks::testing::url_policy::{AllowEntry, UrlPolicy};
use proptest::prelude::*;

fn default_suffixes() -> Vec<String> {
    UrlPolicy::DEFAULT_INTERNAL_SUFFIXES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// https only, the default suffixes, no exceptions.
fn strict() -> UrlPolicy {
    UrlPolicy::new(false, default_suffixes(), Vec::new())
}

fn with_allow(allow_http: bool, entries: &[&str]) -> UrlPolicy {
    let allow = entries
        .iter()
        .map(|e| AllowEntry::parse(e).unwrap_or_else(|why| panic!("{e}: {why}")))
        .collect();
    UrlPolicy::new(allow_http, default_suffixes(), allow)
}

fn assert_accepted(policy: &UrlPolicy, url: &str) {
    if let Err(why) = policy.check(url) {
        panic!("{url} should be accepted, refused: {why}");
    }
}

/// Refused, with every word of `words` in the message.
fn assert_refused(policy: &UrlPolicy, url: &str, words: &[&str]) {
    match policy.check(url) {
        Ok(parsed) => panic!("{url} should be refused, accepted as {parsed:?}"),
        Err(why) => {
            for word in words {
                assert!(
                    why.contains(word),
                    "{url}: the message should say {word:?}: {why}"
                );
            }
        }
    }
}

#[test]
fn public_urls_are_accepted_as_parsed() {
    let policy = strict();
    for url in [
        "https://example.com/hook",
        "https://example.com",
        "https://example.com/hook?x=1&y=2",
        "https://93.184.216.34/x",
        "https://[2606:2800:220:1::1]/",
        "https://[2606:2800:220:1::1]:8443/",
        "https://EXAMPLE.COM/Hook",
        "HTTPS://Example.Com/",
        "https://example.com./",
        "https://93.184.216.34./",
        "https://example.com:1/",
        "https://example.com:8443/",
        "https://example.com:65535/",
        "https://example.com:00443/",
        "https://xn--bcher-kva.example/",
        "https://hooks-1.example.co.uk/",
        "https://localhost.example.com/",
        "https://svc.example.com/",
        "https://xsvc.example/",
        "https://mylocal.example/",
        "https://internal-hooks.example/",
        "https://1e5.example/",
        "https://0x.example/",
        "https://172.32.0.1/",
        "https://172.15.255.255/",
        "https://100.63.255.255/",
        "https://100.128.0.1/",
        "https://198.20.0.1/",
        "https://192.0.3.1/",
        "https://223.255.255.255/",
        "https://[2001:200::1]/",
        "https://[2c0f:f248::1]/",
    ] {
        assert_accepted(&policy, url);
    }
    let parsed = policy.check("https://Example.com:8443/a/b?c").unwrap();
    assert_eq!(parsed.text, "https://Example.com:8443/a/b?c");
    assert_eq!(parsed.authority, "Example.com:8443");
    assert_eq!(parsed.host, "Example.com");
    assert_eq!(parsed.path, "/a/b?c");
    assert!(parsed.https);
}

#[test]
fn only_https_unless_http_is_allowed() {
    let strict = strict();
    assert_refused(&strict, "http://example.com/hook", &["http://", "https://"]);
    assert_refused(&strict, "HTTP://example.com/", &["plain http://"]);
    for url in ["ftp://example.com/", "ws://example.com/", "example.com:443"] {
        assert_refused(&strict, url, &["http:// or https://"]);
    }
    for url in ["file:///etc/passwd", "example.com/hook"] {
        assert_refused(&strict, url, &["not a valid URL"]);
    }
    let lax = UrlPolicy::new(true, default_suffixes(), Vec::new());
    assert_accepted(&lax, "http://example.com/hook");
    assert_accepted(&lax, "https://example.com/hook");
    // Allowing http does not open internal hosts.
    assert_refused(&lax, "http://10.0.0.1/", &["private"]);
    assert_refused(&lax, "http://localhost:8080/", &["localhost"]);
    assert_refused(&lax, "ftp://example.com/", &["http:// or https://"]);
}

#[test]
fn credentials_are_refused_and_never_shown() {
    let policy = strict();
    for url in [
        "https://user@example.com/",
        "https://user:secret@example.com/",
        "https://:secret@example.com/",
        "https://@example.com/",
        "https://user:@example.com/",
        "https://a@secret@example.com/",
        "HTTPS://User:Secret@Example.com/",
        "https://example.com@127.0.0.1/",
        "https://user:secret@[2606:2800:220:1::1]:8443/",
        "http://user:secret@example.com/",
    ] {
        let why = policy.check(url).expect_err(url);
        assert!(why.contains("credentials"), "{url}: {why}");
        assert!(!why.to_lowercase().contains("secret"), "{url}: {why}");
        assert!(!why.to_lowercase().contains("user"), "{url}: {why}");
    }
    // Spellings the URL parser refuses outright are refused too, still hiding them.
    for url in [
        "https://user:secret@/",
        "https://user:secret\\@example.com/",
        "https://user:secret%40x@example.com/",
    ] {
        let why = policy.check(url).expect_err(url);
        assert!(!why.contains("secret"), "{url}: {why}");
    }
    // An @ after the authority is no userinfo: the host is what comes before it.
    assert_accepted(&policy, "https://example.com/@10.0.0.1");
    assert_accepted(&policy, "https://example.com?@10.0.0.1");
    assert_refused(&policy, "https://10.0.0.1/@example.com", &["private"]);
    assert_refused(&policy, "https://10.0.0.1#@example.com", &["private"]);
}

#[test]
fn localhost_is_refused_in_any_case_and_with_a_trailing_dot() {
    let policy = strict();
    for url in [
        "https://localhost/",
        "https://LOCALHOST/",
        "https://LocalHost:8443/",
        "https://localhost./",
        "https://api.localhost/",
        "https://Foo.LocalHost./",
        "https://a.b.localhost:1/",
    ] {
        assert_refused(&policy, url, &["localhost", "public host"]);
    }
}

#[test]
fn names_under_internal_suffixes_are_refused() {
    let policy = strict();
    for (url, suffix) in [
        ("https://metadata.google.internal/", "\".internal\""),
        ("https://internal/", "\".internal\""),
        ("https://printer.local/", "\".local\""),
        ("https://api.default.svc/", "\".svc\""),
        ("https://svc/", "\".svc\""),
        ("https://X.SVC./", "\".svc\""),
        ("https://api.default.svc.cluster.local:8080/", "\".local\""),
        ("https://CLUSTER.LOCAL/", "\".local\""),
    ] {
        assert_refused(&policy, url, &[suffix, "internal name suffix"]);
    }
}

#[test]
fn single_label_names_are_refused() {
    let policy = strict();
    for url in [
        "https://kubernetes/",
        "https://metadata/",
        "https://redis:6379/",
        "https://xsvc/",
        "https://Hooks./",
        "https://1e5/",
    ] {
        assert_refused(&policy, url, &["single-label", "search domains"]);
    }
    assert_accepted(&policy, "https://hooks.example/");
    let allowed = with_allow(false, &["hooks"]);
    assert_accepted(&allowed, "https://hooks/");
}

#[test]
fn configured_suffixes_replace_the_default() {
    let policy = UrlPolicy::new(
        false,
        vec![".corp".to_string(), "Lan.".to_string(), String::new()],
        Vec::new(),
    );
    assert_refused(&policy, "https://api.corp/", &["\".corp\""]);
    assert_refused(&policy, "https://corp/", &["\".corp\""]);
    assert_refused(&policy, "https://API.CORP./", &["\".corp\""]);
    assert_refused(&policy, "https://printer.lan/", &["\".lan\""]);
    assert_accepted(&policy, "https://xcorp.example/");
    assert_accepted(&policy, "https://api.default.svc/");
    assert_accepted(&policy, "https://metadata.google.internal/");
    assert_accepted(&policy, "https://example.com/");
    // Not suffixes: always refused.
    assert_refused(&policy, "https://localhost/", &["localhost"]);
    assert_refused(&policy, "https://10.0.0.1/", &["private"]);

    let none = UrlPolicy::new(false, Vec::new(), Vec::new());
    assert_accepted(&none, "https://a.internal/");
    assert_refused(&none, "https://internal/", &["single-label"]);
    assert_refused(&none, "https://localhost/", &["localhost"]);
}

#[test]
fn special_ipv4_addresses_are_refused_with_their_range() {
    let policy = strict();
    for (host, words) in [
        ("0.0.0.0", &["unspecified", "0.0.0.0/8"][..]),
        ("0.1.2.3", &["unspecified", "0.0.0.0/8"]),
        ("10.0.0.1", &["private", "10.0.0.0/8", "RFC 1918"]),
        ("10.255.255.255", &["private", "10.0.0.0/8"]),
        ("100.64.0.1", &["carrier-grade NAT", "100.64.0.0/10"]),
        ("100.127.255.255", &["carrier-grade NAT", "100.64.0.0/10"]),
        ("127.0.0.1", &["loopback", "127.0.0.0/8"]),
        ("127.255.255.254", &["loopback", "127.0.0.0/8"]),
        ("169.254.169.254", &["link-local", "169.254.0.0/16"]),
        ("172.16.0.1", &["private", "172.16.0.0/12"]),
        ("172.31.255.255", &["private", "172.16.0.0/12"]),
        ("192.0.0.1", &["IETF protocol", "192.0.0.0/24"]),
        ("192.0.2.1", &["documentation", "192.0.2.0/24"]),
        ("192.88.99.1", &["6to4 relay", "192.88.99.0/24"]),
        ("192.168.1.1", &["private", "192.168.0.0/16"]),
        ("198.18.0.1", &["benchmarking", "198.18.0.0/15"]),
        ("198.19.255.255", &["benchmarking", "198.18.0.0/15"]),
        ("198.51.100.1", &["documentation", "198.51.100.0/24"]),
        ("203.0.113.1", &["documentation", "203.0.113.0/24"]),
        ("224.0.0.1", &["multicast", "224.0.0.0/4"]),
        ("239.255.255.255", &["multicast", "224.0.0.0/4"]),
        ("240.0.0.1", &["reserved", "240.0.0.0/4"]),
        ("255.255.255.254", &["reserved", "240.0.0.0/4"]),
        ("255.255.255.255", &["broadcast", "255.255.255.255/32"]),
    ] {
        let url = format!("https://{host}/hook");
        let mut all = vec![host, "public host"];
        all.extend_from_slice(words);
        assert_refused(&policy, &url, &all);
        assert_refused(&policy, &format!("https://{host}:8443/"), words);
        assert_refused(&policy, &format!("https://{host}./"), words);
    }
}

#[test]
fn special_ipv6_addresses_are_refused_with_their_range() {
    let policy = strict();
    for (host, words) in [
        ("::", &["unspecified", "::/128"][..]),
        ("::1", &["loopback", "::1/128"]),
        ("0:0:0:0:0:0:0:1", &["loopback"]),
        ("fe80::1", &["link-local", "fe80::/10"]),
        ("FEBF::1", &["link-local", "fe80::/10"]),
        ("fec0::1", &["site-local", "fec0::/10"]),
        ("fc00::1", &["unique local", "fc00::/7"]),
        ("fd12:3456::1", &["unique local", "fc00::/7"]),
        ("ff02::1", &["multicast", "ff00::/8"]),
        ("2001:db8::1", &["documentation", "2001:db8::/32"]),
        ("3fff::1", &["documentation", "3fff::/20"]),
        ("100::1", &["discard-only", "100::/64"]),
        ("2001::1", &["IETF protocol", "Teredo", "2001::/23"]),
        ("2001:1ff::1", &["IETF protocol", "2001::/23"]),
        ("64:ff9b:1::a00:1", &["local-use", "64:ff9b:1::/48"]),
        ("5f00::1", &["SRv6", "5f00::/16"]),
        ("4000::1", &["outside global unicast", "2000::/3"]),
        ("::ffff:0:102:304", &["outside global unicast"]),
        ("1::", &["outside global unicast"]),
    ] {
        assert_refused(&policy, &format!("https://[{host}]/"), words);
        assert_refused(&policy, &format!("https://[{host}]:8443/x"), words);
    }
}

#[test]
fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
    let policy = strict();
    for (host, words) in [
        (
            "::ffff:127.0.0.1",
            &["IPv4-mapped", "127.0.0.1", "loopback"][..],
        ),
        ("::FFFF:7f00:1", &["IPv4-mapped", "127.0.0.1", "loopback"]),
        (
            "::ffff:169.254.169.254",
            &["IPv4-mapped", "169.254.169.254", "link-local"],
        ),
        ("::ffff:10.0.0.1", &["IPv4-mapped", "10.0.0.1", "private"]),
        ("::ffff:0.0.0.0", &["IPv4-mapped", "unspecified"]),
        ("::127.0.0.1", &["IPv4-compatible", "127.0.0.1", "loopback"]),
        ("::10.0.0.1", &["IPv4-compatible", "10.0.0.1", "private"]),
        ("::a9fe:a9fe", &["IPv4-compatible", "169.254.169.254"]),
        ("64:ff9b::10.0.0.1", &["NAT64", "10.0.0.1", "private"]),
        ("64:ff9b::7f00:1", &["NAT64", "127.0.0.1", "loopback"]),
        (
            "64:ff9b::a9fe:a9fe",
            &["NAT64", "169.254.169.254", "link-local"],
        ),
        ("2002:7f00:1::", &["6to4", "127.0.0.1", "loopback"]),
        (
            "2002:a9fe:a9fe::1",
            &["6to4", "169.254.169.254", "link-local"],
        ),
        ("2002:a00:1:1::1", &["6to4", "10.0.0.1", "private"]),
        ("2002:c0a8:101::", &["6to4", "192.168.1.1", "private"]),
    ] {
        assert_refused(&policy, &format!("https://[{host}]/"), words);
    }
    for host in [
        "::ffff:93.184.216.34",
        "::93.184.216.34",
        "64:ff9b::93.184.216.34",
        "64:ff9b::5db8:d822",
        "2002:5db8:d822::1",
    ] {
        assert_accepted(&policy, &format!("https://[{host}]/"));
    }
}

/// Every spelling `inet_aton` reads as `address`.
const NUMERIC_SPELLINGS: [(&str, &[&str]); 4] = [
    (
        "127.0.0.1",
        &[
            "2130706433",
            "0x7f000001",
            "0X7F000001",
            "0x00007f000001",
            "017700000001",
            "0177.0.0.1",
            "0177.0.0.01",
            "0177.00.000.0001",
            "0x7f.0.0.1",
            "0x7f.0x0.0x0.0x1",
            "0X7F.0.0X0.1",
            "127.0x0.0.1",
            "127.1",
            "127.0.1",
            "0x7f.1",
            "0177.1",
            "127.0x1",
            "0x7f.0.1",
            "0177.0x0.1",
            "127.0.0x1",
        ],
    ),
    (
        "10.0.0.1",
        &[
            "167772161",
            "0xa000001",
            "0x0A000001",
            "01200000001",
            "012.0.0.1",
            "0xa.0.0.1",
            "10.1",
            "10.0.1",
            "0xa.1",
            "012.1",
            "10.0x1",
            "012.0x0.01",
        ],
    ),
    (
        "169.254.169.254",
        &[
            "2852039166",
            "0xa9fea9fe",
            "025177524776",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "169.254.43518",
            "169.16689662",
            "0xa9.0xfe.0xa9fe",
            "0251.0xfe.43518",
            "0xa9.0xfea9fe",
        ],
    ),
    (
        "0.0.0.0",
        &[
            "0",
            "00",
            "0x0",
            "0X00",
            "0.0",
            "0x0.0",
            "0.0.0",
            "000.000.000.000",
            "0x0.0.00.0",
        ],
    ),
];

#[test]
fn every_numeric_spelling_of_an_internal_ipv4_address_is_refused() {
    let policy = strict();
    for (address, spellings) in NUMERIC_SPELLINGS {
        for spelling in spellings {
            let url = format!("https://{spelling}/hook");
            assert_refused(
                &policy,
                &url,
                &[
                    spelling,
                    &format!("the IPv4 address {address}"),
                    "resolvers",
                ],
            );
            assert_refused(&policy, &format!("https://{spelling}./"), &[address]);
            assert_refused(&policy, &format!("https://{spelling}:8443/"), &[address]);
        }
    }
}

#[test]
fn numeric_spellings_of_public_addresses_are_accepted() {
    let policy = strict();
    // 93.184.216.34, and octal that is no 127 (0127 is 87).
    for host in [
        "1572395042",
        "0x5db8d822",
        "0135.0270.0330.042",
        "93.12113954",
        "93.184.55330",
        "0127.0.0.1",
        "00000127.0.0.1",
    ] {
        assert_accepted(&policy, &format!("https://{host}/"));
    }
}

#[test]
fn numeric_looking_hosts_that_are_no_address_are_refused_as_ambiguous() {
    let policy = strict();
    for host in [
        "1.2.3.4.5",
        "0x",
        "0X",
        "08.0.0.1",
        "0.0.0.08",
        "09",
        "1.2.3.08",
        "4294967296",
        "0x100000000",
        "256.0.0.1",
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "127.0.0.0x",
        "0xg.1",
        "example.123",
        "example.0x1f",
        "a-1.2",
        "127.0.0.1.5",
    ] {
        assert_refused(
            &policy,
            &format!("https://{host}/"),
            &[host, "looks numeric", "a.b.c.d"],
        );
    }
}

#[test]
fn malformed_hosts_are_refused() {
    let policy = strict();
    for (url, words) in [
        ("https://[fe80::1%25eth0]/", &["zone id", "%25eth0"][..]),
        ("https://[fe80::1%eth0]:8443/", &["zone id"]),
        ("https://[2606:2800:220:1::1%25x]/", &["zone id"]),
        ("https://[v1.fe80::1]/", &["IPvFuture"]),
        ("https://[::ffff:127.1]/", &["not a valid IPv6 address"]),
        ("https://[127.0.0.1]/", &["not a valid IPv6 address"]),
        ("https://[::1]x/", &["only :port"]),
        ("https://[::1/", &["not a valid URL"]),
        ("https://exa_mple.com/", &["'_'", "punycode"]),
        ("https://a!b.example/", &["'!'", "letters, digits"]),
        ("https://a$b.example/", &["'$'"]),
        ("https://a~b.example/", &["'~'"]),
        ("https://a..b/", &["empty label"]),
        ("https://.example.com/", &["empty label"]),
        ("https://example.com../", &["empty label"]),
        ("https://./", &["empty label"]),
    ] {
        assert_refused(&policy, url, words);
    }
    // The URL parser refuses these already (percent-encoding, non-ASCII, backslash).
    for url in [
        "https://ex%61mple.com/",
        "https://%31%32%37.0.0.1/",
        "https://héllo.example/",
        "https://example.com\\@10.0.0.1/",
        "https:// example.com/",
    ] {
        assert!(policy.check(url).is_err(), "{url} should be refused");
    }
}

#[test]
fn any_port_but_zero_is_accepted() {
    let policy = strict();
    assert_refused(&policy, "https://example.com:0/", &["port 0", "1 to 65535"]);
    assert_refused(&policy, "https://example.com:000/", &["port 0"]);
    assert_refused(&policy, "https://[2606:2800:220:1::1]:0/", &["port 0"]);
    assert_refused(
        &policy,
        "https://example.com:65536/",
        &["port 65536", "1 to 65535"],
    );
    assert_refused(&policy, "https://example.com:+80/", &["port +80"]);
    assert_refused(&policy, "https://example.com:-1/", &["port -1"]);
    assert_refused(&policy, "https://example.com:/", &["empty port"]);
    for port in [1, 22, 25, 80, 443, 6379, 8080, 65535] {
        assert_accepted(&policy, &format!("https://example.com:{port}/"));
    }
}

#[test]
fn an_allowed_address_passes_in_any_spelling() {
    let policy = with_allow(false, &["10.0.0.5"]);
    for url in [
        "https://10.0.0.5/",
        "https://10.0.0.5:8443/",
        "https://167772165/",
        "https://0xa000005/",
        "https://012.0.0.05/",
        "https://10.5/",
        "https://10.0.0.5./",
    ] {
        assert_accepted(&policy, url);
    }
    assert_refused(&policy, "https://10.0.0.6/", &["private"]);
    assert_refused(&policy, "https://127.0.0.1/", &["loopback"]);
    // The scheme rule and port 0 still apply.
    assert_refused(&policy, "http://10.0.0.5/", &["plain http://"]);
    assert_refused(&policy, "https://10.0.0.5:0/", &["port 0"]);
    // An IPv4 entry is for IPv4 hosts; IPv6 forms embedding it stay refused.
    assert_refused(&policy, "https://[::ffff:10.0.0.5]/", &["IPv4-mapped"]);
}

#[test]
fn an_allowed_cidr_passes_its_addresses() {
    let policy = with_allow(false, &["10.0.0.0/8", "fd00::/8"]);
    for url in [
        "https://10.0.0.1/",
        "https://10.255.255.255:8443/",
        "https://0xa010203/",
        "https://[fd12::1]/",
        "https://[FDFF::1]:9000/",
    ] {
        assert_accepted(&policy, url);
    }
    assert_refused(&policy, "https://192.168.1.1/", &["private"]);
    assert_refused(&policy, "https://[fc00::1]/", &["unique local"]);
    assert_refused(&policy, "https://[fe80::1]/", &["link-local"]);

    let everything = with_allow(false, &["0.0.0.0/0"]);
    assert_accepted(&everything, "https://127.0.0.1/");
    assert_refused(&everything, "https://[::1]/", &["loopback"]);
}

#[test]
fn an_entry_with_a_port_allows_that_port_only() {
    let policy = with_allow(false, &["10.0.0.0/8:8443", "[fd00::1]:8443"]);
    assert_accepted(&policy, "https://10.1.2.3:8443/");
    assert_accepted(&policy, "https://10.1.2.3:08443/");
    assert_refused(&policy, "https://10.1.2.3/", &["private"]);
    assert_refused(&policy, "https://10.1.2.3:443/", &["private"]);
    assert_refused(&policy, "https://10.1.2.3:8080/", &["private"]);
    assert_accepted(&policy, "https://[fd00::1]:8443/");
    assert_refused(&policy, "https://[fd00::1]/", &["unique local"]);
    assert_refused(&policy, "https://[fd00::2]:8443/", &["unique local"]);

    // No port given in the URL: the scheme's.
    let https_port = with_allow(true, &["10.0.0.5:443"]);
    assert_accepted(&https_port, "https://10.0.0.5/");
    assert_accepted(&https_port, "https://10.0.0.5:443/");
    assert_accepted(&https_port, "http://10.0.0.5:443/");
    assert_refused(&https_port, "https://10.0.0.5:8443/", &["private"]);
    assert_refused(&https_port, "http://10.0.0.5/", &["private"]);
    let http_port = with_allow(true, &["10.0.0.5:80"]);
    assert_accepted(&http_port, "http://10.0.0.5/");
    assert_refused(&http_port, "https://10.0.0.5/", &["private"]);
}

#[test]
fn an_allowed_name_passes_that_name_only() {
    let policy = with_allow(
        false,
        &["hooks.svc", "Receiver.Internal.:8443", "localhost"],
    );
    for url in [
        "https://hooks.svc/",
        "https://HOOKS.SVC./",
        "https://hooks.svc:9000/",
        "https://receiver.internal:8443/",
        "https://RECEIVER.internal.:8443/x",
        "https://localhost/",
    ] {
        assert_accepted(&policy, url);
    }
    assert_refused(&policy, "https://other.svc/", &["\".svc\""]);
    assert_refused(&policy, "https://a.hooks.svc/", &["\".svc\""]);
    assert_refused(&policy, "https://receiver.internal/", &["\".internal\""]);
    assert_refused(&policy, "https://api.localhost/", &["localhost"]);
    assert_refused(&policy, "http://hooks.svc/", &["plain http://"]);
    // A name entry says nothing of addresses.
    assert_refused(&policy, "https://127.0.0.1/", &["loopback"]);
}

#[test]
fn allow_entries_parse_every_form() {
    for text in [
        "10.0.0.1",
        "10.0.0.1:8443",
        "10.0.0.0/8",
        "10.0.0.0/8:8443",
        "0.0.0.0/0",
        "10.0.0.1/32",
        "fd00::1",
        "fd00::/8",
        "[fd00::1]",
        "[fd00::1]:8443",
        "[fd00::/8]:8443",
        "::/0",
        "hooks.example",
        "Hooks.Example.:8443",
        "localhost",
    ] {
        if let Err(why) = AllowEntry::parse(text) {
            panic!("{text} should parse: {why}");
        }
    }
    assert_eq!(
        AllowEntry::parse("Hooks.Example."),
        AllowEntry::parse("hooks.example")
    );
}

#[test]
fn allow_entry_errors_teach() {
    assert_eq!(
        AllowEntry::parse("10.0.0.0/33").unwrap_err(),
        "\"10.0.0.0/33\": prefix length 33 is over 32"
    );
    for (text, words) in [
        ("", &["must not be empty", "10.0.0.0/8"][..]),
        ("fd00::/129", &["prefix length 129 is over 128"]),
        ("[fd00::/129]:80", &["prefix length 129 is over 128"]),
        (
            "10.0.0.0/",
            &["prefix length must be a number from 0 to 32"],
        ),
        (
            "10.0.0.0/x",
            &["prefix length must be a number from 0 to 32"],
        ),
        ("10.0.0.0/+8", &["prefix length must be a number"]),
        ("10.0.0.0/999", &["prefix length 999 is over 32"]),
        ("10.0.0.1/8", &["did you mean 10.0.0.0/8?"]),
        ("fd00::1/8", &["did you mean fd00::/8?"]),
        ("10.0/8", &["10.0 is not a dotted-decimal IPv4 address"]),
        ("10.1", &["looks numeric", "a.b.c.d"]),
        ("0x7f000001", &["looks numeric"]),
        ("010.0.0.1", &["looks numeric"]),
        ("1.2.3.4.5", &["looks numeric"]),
        ("[10.0.0.1]", &["brackets are for IPv6"]),
        ("[fd00::1", &["closing ']'"]),
        ("[fd00::1]8443", &["only :port"]),
        ("[fd00::1]:abc", &["port abc"]),
        ("hooks.example:0", &["port 0"]),
        ("hooks.example:", &["empty port"]),
        ("hooks.example:99999", &["port 99999"]),
        ("fe80::1%eth0", &["not a valid IPv6 address"]),
        ("[fe80::1%25eth0]:80", &["not a valid IPv6 address"]),
        ("exa_mple.com", &["'_'"]),
        ("a..b", &["empty label"]),
    ] {
        let why = AllowEntry::parse(text).expect_err(text);
        assert!(
            why.starts_with(&format!("\"{text}\": ")),
            "{text}: the message should name the entry: {why}"
        );
        for word in words {
            assert!(why.contains(word), "{text}: should say {word:?}: {why}");
        }
    }
}

/// Addresses of any kind, and many in the special ranges.
fn address() -> impl Strategy<Value = u32> {
    let first_octets = vec![0u8, 10, 100, 127, 169, 172, 192, 198, 203, 224, 240, 255];
    prop_oneof![
        any::<u32>(),
        (proptest::sample::select(first_octets), any::<u32>())
            .prop_map(|(first, rest)| (u32::from(first) << 24) | (rest & 0x00ff_ffff)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn numeric_spellings_get_the_dotted_decimal_verdict(a in address()) {
        let policy = strict();
        let dotted = Ipv4Addr::from(a).to_string();
        let verdict = policy.check(&format!("https://{dotted}/")).is_ok();
        let [b0, b1, b2, b3] = a.to_be_bytes();
        let spellings = [
            a.to_string(),
            format!("0x{a:x}"),
            format!("0X{a:08X}"),
            format!("0{a:o}"),
            format!("0{b0:o}.0{b1:o}.0{b2:o}.0{b3:o}"),
            format!("{b0}.{}", a & 0x00ff_ffff),
            format!("0x{b0:x}.{b1}.0{:o}", a & 0xffff),
        ];
        for spelling in spellings {
            let result = policy.check(&format!("https://{spelling}/"));
            prop_assert_eq!(result.is_ok(), verdict, "{} ({}): {:?}", spelling, dotted, result);
            if let Err(why) = result {
                prop_assert!(why.contains(&dotted), "{}: {}", spelling, why);
            }
        }
    }
}
