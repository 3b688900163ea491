//! Whether a webhook URL given by an untrusted tenant may be called: it must
//! never point inside the platform's network.
//!
//! The policy is read from the URL alone, before any name is resolved:
//! - `https://` only (`http://` too when allowed), no credentials, no port 0;
//! - host names: letters, digits, `.` and `-` only (IDNs in punycode),
//!   neither `localhost`, nor under an internal suffix (`.svc`, ...), nor
//!   single-label (completed with the platform's search domains);
//! - IP literals: public only. Every spelling `inet_aton` reads as IPv4
//!   (`2130706433`, `0x7f.1`, `0177.0.0.1`) is the address it denotes, since
//!   Envoy's resolvers read it so; other numeric-looking hosts are refused.
//!
//! The special-purpose ranges refused are those of the IANA IPv4 and IPv6
//! Special-Purpose Address Registries (RFC 6890) that are not globally
//! reachable (`192.0.0.0/24` whole), plus multicast (IANA multicast
//! registries) and, for IPv6, everything outside global unicast `2000::/3`
//! (IANA IPv6 Address Space). IPv6 forms embedding an IPv4 address (mapped,
//! compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that
//! address.
//!
//! A name that resolves to an internal address (`127.0.0.1.nip.io`, DNS
//! rebinding) cannot be seen here: that needs a check where Envoy connects.
//!
//! Operators may allow exceptions ([`AllowEntry`]): an address, a CIDR or a
//! host name, optionally with a port. The scheme rule applies to them too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::definition::{parse_url, without_credentials, WebhookUrl};

/// Decides whether tenants' webhook URLs may be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    allow_http: bool,
    /// Lower case, without leading or trailing dot: `svc` for `.svc`.
    internal_suffixes: Vec<String>,
    allow: Vec<AllowEntry>,
}

/// One operator exception: URLs to this host (and port, if given) pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    host: AllowedHost,
    port: Option<u16>,
}

/// The hosts an allow entry matches: a name, or the addresses of a CIDR
/// (one address is a /32 or /128).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedHost {
    /// Lower case, without trailing dot.
    Name(String),
    V4 {
        net: Ipv4Addr,
        prefix: u8,
    },
    V6 {
        net: Ipv6Addr,
        prefix: u8,
    },
}

/// A URL's host as resolvers read it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// Lower case, without trailing dot.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Where a URL's call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Host,
    /// As written in the URL (brackets removed), for messages.
    written: String,
    /// The port given, or the scheme's.
    port: u16,
}

impl UrlPolicy {
    /// Name suffixes that stay inside a cluster or a cloud's network.
    pub const DEFAULT_INTERNAL_SUFFIXES: [&'static str; 4] =
        [".internal", ".local", ".svc", ".cluster.local"];

    /// `internal_suffixes` replaces the default list; a suffix matches the
    /// name itself and names under it (`.svc`: `svc`, `a.svc`, not `asvc`).
    /// Empty suffixes are ignored.
    pub fn new(allow_http: bool, internal_suffixes: Vec<String>, allow: Vec<AllowEntry>) -> Self {
        let internal_suffixes = internal_suffixes
            .iter()
            .map(|suffix| normalize_suffix(suffix))
            .filter(|suffix| !suffix.is_empty())
            .collect();
        UrlPolicy {
            allow_http,
            internal_suffixes,
            allow,
        }
    }

    /// Whether `http://` URLs may be given (`urls.allow_http`).
    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// The operator's exceptions that name addresses, the ones Envoy's
    /// egress check can see: each network with its port, if one is given;
    /// IPv4 first.
    pub(super) fn allowed_networks(&self) -> Vec<(Network, Option<u16>)> {
        let mut networks: Vec<(Network, Option<u16>)> = self
            .allow
            .iter()
            .filter_map(|entry| match entry.host {
                AllowedHost::V4 { net, prefix } => Some((Network::V4(net, prefix), entry.port)),
                AllowedHost::V6 { net, prefix } => Some((Network::V6(net, prefix), entry.port)),
                AllowedHost::Name(_) => None,
            })
            .collect();
        networks.sort_by_key(|(net, _)| matches!(net, Network::V6(..)));
        networks
    }

    /// The operator's exceptions that name hosts: Envoy's egress check sees
    /// addresses only, so these need their addresses listed too.
    pub(super) fn allowed_names(&self) -> Vec<String> {
        self.allow
            .iter()
            .filter_map(|entry| match &entry.host {
                AllowedHost::Name(name) => Some(match entry.port {
                    Some(port) => format!("{name}:{port}"),
                    None => name.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The parsed URL if it may be called, else why not (naming the URL
    /// without any credentials it holds).
    pub fn check(&self, url: &str) -> Result<WebhookUrl, String> {
        let parsed = parse_url(url)?;
        let shown = without_credentials(url);
        if let Some(why) = userinfo_refusal(url).or_else(|| self.scheme_refusal(&parsed)) {
            return Err(format!("\"{shown}\": {why}"));
        }
        let target = read_authority(&parsed.authority, parsed.https)
            .map_err(|why| format!("\"{shown}\": {why}"))?;
        if self.allow.iter().any(|entry| entry.allows(&target)) {
            return Ok(parsed);
        }
        match self.host_refusal(&target) {
            Some(why) => Err(format!("\"{shown}\": {why}")),
            None => Ok(parsed),
        }
    }

    fn scheme_refusal(&self, url: &WebhookUrl) -> Option<String> {
        if url.https || self.allow_http {
            return None;
        }
        Some("plain http:// is not allowed: use https://".to_string())
    }

    /// Why the host must not be called, if it must not.
    fn host_refusal(&self, target: &Target) -> Option<String> {
        match &target.host {
            Host::Name(name) => self.name_refusal(name),
            Host::V4(addr) => ipv4_host_refusal(*addr, &target.written),
            Host::V6(addr) => {
                ipv6_refusal(*addr).map(|what| format!("{addr} is {what}{NOT_PUBLIC}"))
            }
        }
    }

    fn name_refusal(&self, name: &str) -> Option<String> {
        if name == "localhost" || name.ends_with(".localhost") {
            return Some(format!(
                "{name} names this very machine (localhost){NOT_PUBLIC}"
            ));
        }
        if let Some(suffix) = self
            .internal_suffixes
            .iter()
            .find(|suffix| is_under(name, suffix))
        {
            return Some(format!(
                "{name} is under \".{suffix}\", an internal name suffix{NOT_PUBLIC}"
            ));
        }
        if !name.contains('.') {
            // No public name has one label; resolvers complete it with the
            // platform's search domains (`kubernetes` → `kubernetes.default.svc...`).
            return Some(format!(
                "{name} is a single-label name, which resolvers complete with the platform's own search domains: give a fully qualified name (hooks.example.com){NOT_PUBLIC}"
            ));
        }
        None
    }
}

/// Why an IPv4 host written `written` must not be called, if it must not.
fn ipv4_host_refusal(addr: Ipv4Addr, written: &str) -> Option<String> {
    let what = ipv4_refusal(addr)?;
    if written.trim_end_matches('.') == addr.to_string() {
        return Some(format!("{addr} is {what}{NOT_PUBLIC}"));
    }
    // Say why a host that looks like no address is one.
    Some(format!(
        "{written} is the IPv4 address {addr} (resolvers read numeric hosts so), {what}{NOT_PUBLIC}"
    ))
}

/// The end of every refusal of a host: what to do instead.
const NOT_PUBLIC: &str =
    "; webhook URLs must point at a public host (an operator can allow an exception)";

/// `.svc.` → `svc`.
fn normalize_suffix(suffix: &str) -> String {
    let suffix = suffix.strip_prefix('.').unwrap_or(suffix);
    let suffix = suffix.strip_suffix('.').unwrap_or(suffix);
    suffix.to_ascii_lowercase()
}

/// Whether `name` is `suffix` or a name under it (both lower case, no dots around).
fn is_under(name: &str, suffix: &str) -> bool {
    name == suffix
        || name
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.'))
}

/// Credentials in the URL's authority, checked on the text itself (not
/// only as the URL parser split it) so that no spelling slips through.
fn userinfo_refusal(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or(after_scheme);
    if authority.contains('@') {
        return Some(
            "must not hold credentials (user@ or user:password@); put them in \"headers\" instead"
                .to_string(),
        );
    }
    None
}

/// The host and port of a URL's authority, read strictly.
fn read_authority(authority: &str, https: bool) -> Result<Target, String> {
    let (host, written, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (inner, port) = split_bracketed(rest)?;
            (Host::V6(read_ipv6_literal(inner)?), inner, port)
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            (read_name_or_ipv4(host)?, host, port)
        }
    };
    let port = match port {
        Some(text) => parse_port(text)?,
        None if https => 443,
        None => 80,
    };
    Ok(Target {
        host,
        written: written.to_string(),
        port,
    })
}

/// `[inner]` and the port after it, if any, from the text after `[`.
fn split_bracketed(rest: &str) -> Result<(&str, Option<&str>), String> {
    let (inner, after) = rest
        .split_once(']')
        .ok_or_else(|| "has no closing ']' after its IPv6 address".to_string())?;
    if after.is_empty() {
        return Ok((inner, None));
    }
    match after.strip_prefix(':') {
        Some(port) => Ok((inner, Some(port))),
        None => Err(format!(
            "has \"{after}\" after the IPv6 address; only :port may follow it"
        )),
    }
}

/// The address inside `[...]`.
fn read_ipv6_literal(inner: &str) -> Result<Ipv6Addr, String> {
    if let Some((_, zone)) = inner.split_once('%') {
        return Err(format!(
            "has an IPv6 zone id (%{zone}): zone ids name an interface of this machine; give a public address"
        ));
    }
    if inner.starts_with(['v', 'V']) {
        return Err(format!(
            "[{inner}] is an IPvFuture literal, which is not supported"
        ));
    }
    inner
        .parse()
        .map_err(|_| format!("[{inner}] is not a valid IPv6 address"))
}

/// A host outside brackets: an IPv4 address in any spelling `inet_aton`
/// accepts, or a DNS name.
fn read_name_or_ipv4(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("has no host".to_string());
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "the host {host} contains '{c}': host names are letters, digits, '.' and '-' only (give international names in punycode, xn--...)"
        ));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.split('.').any(str::is_empty) {
        return Err(format!(
            "the host {host} has an empty label (two dots in a row, or a leading dot)"
        ));
    }
    if let Some(addr) = inet_aton(name) {
        return Ok(Host::V4(addr));
    }
    if ends_in_number(name) {
        return Err(format!(
            "the host {host} looks numeric but is not an IPv4 address: no top-level domain is numeric; write an address as a.b.c.d"
        ));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// The address glibc's `inet_aton` reads `text` as, if any: one to four
/// parts split by dots, each decimal, octal (leading `0`) or hex (`0x`);
/// all but the last are one byte, the last fills the bytes left
/// (`127.1` is 127.0.0.1, `2130706433` too).
fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 {
        return None;
    }
    let mut value: u32 = 0;
    for part in leading {
        let byte = u8::try_from(inet_aton_number(part)?).ok()?;
        value = (value << 8) | u32::from(byte);
    }
    let last = inet_aton_number(last)?;
    let last_bits = 32 - 8 * u32::try_from(leading.len()).ok()?;
    // `checked_shr` is `None` for a shift by 32: the last part is then the
    // whole address and any value fits.
    if last.checked_shr(last_bits).is_some_and(|over| over != 0) {
        return None;
    }
    Some(Ipv4Addr::from(
        value.checked_shl(last_bits).unwrap_or(0) | last,
    ))
}

/// One part of an `inet_aton` address, as C's `strtoul(part, _, 0)` reads
/// it when it must consume the whole part: `0x1F`, `017`, `15`.
fn inet_aton_number(part: &str) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or(part.strip_prefix("0X")) {
        (hex, 16)
    } else if let Some(octal) = part.strip_prefix('0').filter(|rest| !rest.is_empty()) {
        (octal, 8)
    } else {
        (part, 10)
    };
    // `from_str_radix` would take a sign; C's reading here does not.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// Whether the last label is a number, or the start of one (`0x`): such a
/// host is meant as an address (the WHATWG URL standard's "ends in a
/// number"), and one `inet_aton` refuses is ambiguous.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if let Some(hex) = last.strip_prefix("0x").or(last.strip_prefix("0X")) {
        return hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    !last.is_empty() && last.chars().all(|c| c.is_ascii_digit())
}

/// A port from 1 to 65535, digits only.
fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err(
            "has an empty port: give one from 1 to 65535, or leave out the ':'".to_string(),
        );
    }
    let port = text
        .chars()
        .all(|c| c.is_ascii_digit())
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| format!("port {text} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 cannot be called: give a port from 1 to 65535".to_string());
    }
    Ok(port)
}

/// Special-purpose IPv4 ranges, first match wins: the IANA IPv4
/// Special-Purpose Address Registry's blocks that are not globally
/// reachable (all of 192.0.0.0/24), and multicast.
// One line an entry: a table reads best unwrapped.
#[rustfmt::skip]
const IPV4_SPECIAL: [([u8; 4], u8, &str); 16] = [
    ([0, 0, 0, 0], 8, "a \"this network\" (unspecified) address (RFC 791)"),
    ([10, 0, 0, 0], 8, "a private address (RFC 1918)"),
    ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address (RFC 6598)"),
    ([127, 0, 0, 0], 8, "a loopback address (RFC 1122)"),
    ([169, 254, 0, 0], 16, "a link-local address (RFC 3927; cloud metadata services answer there)"),
    ([172, 16, 0, 0], 12, "a private address (RFC 1918)"),
    ([192, 0, 0, 0], 24, "an IETF protocol assignment (RFC 6890)"),
    ([192, 0, 2, 0], 24, "a documentation address (TEST-NET-1, RFC 5737)"),
    ([192, 88, 99, 0], 24, "a deprecated 6to4 relay anycast address (RFC 7526)"),
    ([192, 168, 0, 0], 16, "a private address (RFC 1918)"),
    ([198, 18, 0, 0], 15, "a benchmarking address (RFC 2544)"),
    ([198, 51, 100, 0], 24, "a documentation address (TEST-NET-2, RFC 5737)"),
    ([203, 0, 113, 0], 24, "a documentation address (TEST-NET-3, RFC 5737)"),
    ([224, 0, 0, 0], 4, "a multicast address (RFC 5771)"),
    // Before 240.0.0.0/4, which holds it.
    ([255, 255, 255, 255], 32, "the limited broadcast address (RFC 919)"),
    ([240, 0, 0, 0], 4, "a reserved address (RFC 1112)"),
];

/// Special-purpose IPv6 ranges, first match wins: the IANA IPv6
/// Special-Purpose Address Registry's blocks that are not globally
/// reachable (all of 2001::/23), and the IPv6 Address Space's non-global
/// unicast and multicast blocks. Embedded IPv4 forms are judged apart.
// One line an entry: a table reads best unwrapped.
#[rustfmt::skip]
const IPV6_SPECIAL: [([u16; 8], u8, &str); 12] = [
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "the unspecified address (RFC 4291)"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "the loopback address (RFC 4291)"),
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "a local-use IPv4/IPv6 translation address (RFC 8215)"),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address (RFC 6666)"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "an IETF protocol assignment, Teredo included (RFC 2928, RFC 4380)"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "a documentation address (RFC 3849)"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address (RFC 9637)"),
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "a segment routing (SRv6) SID (RFC 9602)"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "a unique local address (RFC 4193)"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address (RFC 4291)"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address (deprecated, RFC 3879)"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "a multicast address (RFC 4291)"),
];

/// A network: an address and the length of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Network {
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Network {
    /// Its address and prefix length, whatever the family.
    pub(super) fn parts(self) -> (IpAddr, u8) {
        match self {
            Network::V4(addr, prefix) => (IpAddr::V4(addr), prefix),
            Network::V6(addr, prefix) => (IpAddr::V6(addr), prefix),
        }
    }
}

/// Every network whose addresses a tenant's call must never reach: the
/// special-purpose IPv4 ranges; for IPv6, everything outside global unicast
/// `2000::/3`, the special-purpose ranges inside it, and 6to4 `2002::/16`
/// (whose embedded IPv4 address cannot be listed as a range of its own).
/// The ranges held by another in the list are left out.
pub(super) fn internal_networks() -> Vec<Network> {
    let v4 = IPV4_SPECIAL
        .iter()
        .map(|(net, prefix, _)| (Ipv4Addr::from(*net), *prefix))
        .filter(|(net, prefix)| {
            !IPV4_SPECIAL.iter().any(|(outer, outer_prefix, _)| {
                outer_prefix < prefix && in_ipv4_net(*net, Ipv4Addr::from(*outer), *outer_prefix)
            })
        })
        .map(|(net, prefix)| Network::V4(net, prefix));
    let outside_global = [
        (Ipv6Addr::UNSPECIFIED, 3),
        (Ipv6Addr::new(0x4000, 0, 0, 0, 0, 0, 0, 0), 2),
        (Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0), 1),
    ];
    let v6 = outside_global
        .into_iter()
        .chain(global_internal_v6())
        .map(|(net, prefix)| Network::V6(net, prefix));
    v4.chain(v6).collect()
}

/// The special-purpose IPv6 ranges inside global unicast `2000::/3`, and
/// 6to4 `2002::/16`: what a check that allows `2000::/3` must still refuse.
pub(super) fn global_internal_v6() -> Vec<(Ipv6Addr, u8)> {
    let global = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);
    IPV6_SPECIAL
        .iter()
        .map(|(net, prefix, _)| (Ipv6Addr::from(*net), *prefix))
        .filter(|(net, prefix)| *prefix >= 3 && in_ipv6_net(*net, global, 3))
        .chain([(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16)])
        .collect()
}

/// What `addr` is, with its range, if it is not a public address.
fn ipv4_refusal(addr: Ipv4Addr) -> Option<String> {
    IPV4_SPECIAL
        .iter()
        .map(|(net, prefix, what)| (Ipv4Addr::from(*net), *prefix, what))
        .find(|(net, prefix, _)| in_ipv4_net(addr, *net, *prefix))
        .map(|(net, prefix, what)| format!("{what}, in {net}/{prefix}"))
}

/// What `addr` is, with its range, if it is not a public address.
fn ipv6_refusal(addr: Ipv6Addr) -> Option<String> {
    if let Some((net, prefix, what)) = IPV6_SPECIAL
        .iter()
        .map(|(net, prefix, what)| (Ipv6Addr::from(*net), *prefix, what))
        .find(|(net, prefix, _)| in_ipv6_net(addr, *net, *prefix))
    {
        return Some(format!("{what}, in {net}/{prefix}"));
    }
    if let Some((form, embedded)) = embedded_ipv4(addr) {
        return ipv4_refusal(embedded)
            .map(|what| format!("{form} embedding {embedded}, which is {what}"));
    }
    let global_unicast = Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0);
    if !in_ipv6_net(addr, global_unicast, 3) {
        return Some(
            "reserved by the IETF: outside global unicast 2000::/3 (RFC 4291)".to_string(),
        );
    }
    None
}

/// The IPv4 address an IPv6 address carries, and the form carrying it:
/// these reach (or claim to reach) that IPv4 address.
fn embedded_ipv4(addr: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let o = addr.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match addr.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(("an IPv4-mapped address (RFC 4291)", last)),
        [0, 0, 0, 0, 0, 0, _, _] => {
            Some(("an IPv4-compatible address (deprecated, RFC 4291)", last))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(("a NAT64 address (64:ff9b::/96, RFC 6052)", last))
        }
        [0x2002, ..] => Some((
            "a 6to4 address (2002::/16, RFC 3056)",
            Ipv4Addr::new(o[2], o[3], o[4], o[5]),
        )),
        _ => None,
    }
}

fn in_ipv4_net(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    (u32::from(addr) ^ u32::from(net)) & ipv4_mask(prefix) == 0
}

fn in_ipv6_net(addr: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    (u128::from(addr) ^ u128::from(net)) & ipv6_mask(prefix) == 0
}

/// The first `prefix` bits set.
fn ipv4_mask(prefix: u8) -> u32 {
    // A shift by 32 (prefix 0) is `None`: no bit set.
    u32::MAX
        .checked_shl(32_u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

/// The first `prefix` bits set.
fn ipv6_mask(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128_u32.saturating_sub(u32::from(prefix)))
        .unwrap_or(0)
}

impl AllowEntry {
    /// `10.0.0.1`, `10.0.0.0/8`, `fd00::1`, `fd00::/8`, `hooks.example`,
    /// each with an optional port: `10.0.0.0/8:8443`, `[fd00::1]:8443`,
    /// `hooks.example:8443` (an IPv6 entry takes a port in brackets only).
    pub fn parse(text: &str) -> Result<AllowEntry, String> {
        parse_allow_entry(text).map_err(|why| format!("\"{text}\": {why}"))
    }

    /// Whether this entry lets `target` be called.
    fn allows(&self, target: &Target) -> bool {
        let host_matches = match (&self.host, &target.host) {
            (AllowedHost::Name(allowed), Host::Name(name)) => allowed == name,
            (AllowedHost::V4 { net, prefix }, Host::V4(addr)) => in_ipv4_net(*addr, *net, *prefix),
            (AllowedHost::V6 { net, prefix }, Host::V6(addr)) => in_ipv6_net(*addr, *net, *prefix),
            _ => false,
        };
        host_matches && self.port.is_none_or(|port| port == target.port)
    }
}

/// [`AllowEntry::parse`], its errors without the entry's text.
fn parse_allow_entry(text: &str) -> Result<AllowEntry, String> {
    const FORMS: &str = "write an address (10.0.0.1), a CIDR (10.0.0.0/8), or a host name, each with an optional :port";
    if text.is_empty() {
        return Err(format!("an allow entry must not be empty; {FORMS}"));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, port) = split_bracketed(rest)?;
        let host = parse_allowed_ipv6(inner)?;
        return Ok(AllowEntry {
            host,
            port: port.map(parse_port).transpose()?,
        });
    }
    // Two colons or more: a bare IPv6 address or CIDR, without port.
    if text.matches(':').count() > 1 {
        return Ok(AllowEntry {
            host: parse_allowed_ipv6(text)?,
            port: None,
        });
    }
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (text, None),
    };
    Ok(AllowEntry {
        host: parse_allowed_v4_or_name(host)?,
        port,
    })
}

/// An IPv6 address or CIDR.
fn parse_allowed_ipv6(text: &str) -> Result<AllowedHost, String> {
    let (addr_text, prefix) = match text.split_once('/') {
        Some((addr, prefix)) => (addr, parse_prefix(prefix, 128)?),
        None => (text, 128),
    };
    let net: Ipv6Addr = addr_text.parse().map_err(|_| {
        if text.contains('.') && !text.contains(':') {
            "brackets are for IPv6 addresses only; write an IPv4 address without them".to_string()
        } else {
            format!("{addr_text} is not a valid IPv6 address (zone ids are not allowed)")
        }
    })?;
    let cleared = Ipv6Addr::from(u128::from(net) & ipv6_mask(prefix));
    if cleared != net {
        return Err(format!(
            "{net}/{prefix} has bits set after the first {prefix}; did you mean {cleared}/{prefix}?"
        ));
    }
    Ok(AllowedHost::V6 { net, prefix })
}

/// An IPv4 address or CIDR (dotted decimal), or a host name.
fn parse_allowed_v4_or_name(text: &str) -> Result<AllowedHost, String> {
    if let Some((addr_text, prefix)) = text.split_once('/') {
        let prefix = parse_prefix(prefix, 32)?;
        let net: Ipv4Addr = addr_text
            .parse()
            .map_err(|_| format!("{addr_text} is not a dotted-decimal IPv4 address (a.b.c.d)"))?;
        let cleared = Ipv4Addr::from(u32::from(net) & ipv4_mask(prefix));
        if cleared != net {
            return Err(format!(
                "{net}/{prefix} has bits set after the first {prefix}; did you mean {cleared}/{prefix}?"
            ));
        }
        return Ok(AllowedHost::V4 { net, prefix });
    }
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok(AllowedHost::V4 {
            net: addr,
            prefix: 32,
        });
    }
    // Other spellings of addresses are for tenants' URLs, not for the
    // operator's list: they hide which address is meant.
    if ends_in_number(text.strip_suffix('.').unwrap_or(text)) {
        return Err(format!(
            "{text} looks numeric but is not a dotted-decimal IPv4 address; write all four parts (a.b.c.d)"
        ));
    }
    match read_name_or_ipv4(text)? {
        Host::Name(name) => Ok(AllowedHost::Name(name)),
        // `inet_aton` reads only hosts ending in a number, refused above.
        Host::V4(_) | Host::V6(_) => Err(format!(
            "{text} is not a dotted-decimal IPv4 address (a.b.c.d)"
        )),
    }
}

/// A CIDR's prefix length, at most `max`.
fn parse_prefix(text: &str, max: u8) -> Result<u8, String> {
    let prefix = (!text.is_empty() && text.chars().all(|c| c.is_ascii_digit()))
        .then(|| text.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| {
            format!("the prefix length must be a number from 0 to {max}, not \"{text}\"")
        })?;
    u8::try_from(prefix)
        .ok()
        .filter(|prefix| *prefix <= max)
        .ok_or_else(|| format!("prefix length {prefix} is over {max}"))
}
