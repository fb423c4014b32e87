//! The client's address behind trusted proxies: `X-Forwarded-For` and `Forwarded` (RFC 7239),
//! read only from the proxies the service names, so that no client can choose its address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderMap;
use ipnet::IpNet;

/// The most hops of a forwarding header examined for one request, from the right: past them
/// the walk stops at the last one examined, so no more than 32 hops are parsed however long
/// the header (a `Forwarded` header is still scanned whole for its element boundaries, which
/// quoted strings can hide).
pub const MAX_FORWARDED_HOPS: usize = 32;

/// The longest node text taken as an address: a bracketed IPv6 address with a port is at most
/// 47 bytes; longer ones are malformed and not parsed at all.
const MAX_NODE_LEN: usize = 64;

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The networks of the proxies (load balancers, ingress) in front of the service, whose
/// forwarding header is believed, and which header that is ([`ForwardingHeader`], by default
/// `X-Forwarded-For`): see [`client_addr`](Self::client_addr) for the rule. Empty (the
/// default) believes none, and the client is the connection's peer.
///
/// ```
/// use periscope_context::TrustedProxies;
///
/// let proxies: TrustedProxies = "10.0.0.0/8, fd00::/8, 192.0.2.7".parse().unwrap();
/// assert!(proxies.contains("10.1.2.3".parse().unwrap()));
/// assert!(!proxies.contains("203.0.113.9".parse().unwrap()));
/// assert_eq!(proxies.to_string(), "10.0.0.0/8,fd00::/8,192.0.2.7/32");
/// assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
    header: ForwardingHeader,
}

/// The forwarding header the trusted proxies set, the only one read: choose the one your
/// proxies write (and overwrite or append to) themselves. Most (ingress-nginx, AWS ALB, Envoy
/// by default) append to `X-Forwarded-For` and pass a client's own `Forwarded` header
/// through, which is why that one is never read unless chosen.
///
/// ```
/// use periscope_context::ForwardingHeader;
///
/// assert_eq!(ForwardingHeader::default(), ForwardingHeader::XForwardedFor);
/// assert_eq!("Forwarded".parse(), Ok(ForwardingHeader::Forwarded));
/// assert_eq!(ForwardingHeader::XForwardedFor.to_string(), "x-forwarded-for");
/// assert!("x-real-ip".parse::<ForwardingHeader>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default): `Forwarded` is ignored.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239): `X-Forwarded-For` is ignored.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name, lowercase: `x-forwarded-for` or `forwarded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The header's name, lowercase, as [`FromStr`] reads it.
impl fmt::Display for ForwardingHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `x-forwarded-for` or `forwarded`, in any case (`TRUSTED_PROXIES_HEADER`).
impl FromStr for ForwardingHeader {
    type Err = InvalidForwardingHeader;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        [Self::XForwardedFor, Self::Forwarded]
            .into_iter()
            .find(|header| header.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| InvalidForwardingHeader {
                value: text.to_owned(),
            })
    }
}

/// A forwarding header periscope cannot read: neither `x-forwarded-for` nor `forwarded`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a forwarding header: use x-forwarded-for or forwarded")]
pub struct InvalidForwardingHeader {
    /// The text that was given.
    pub value: String,
}

/// A trusted proxy network that is not one: neither CIDR notation nor an IP address, or an
/// IPv4-mapped network with a prefix shorter than its 96 mapping bits (`::ffff:10.0.0.0/8`
/// is `::/8`, which holds every IPv4 address).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not an IP network: use CIDR notation (10.0.0.0/8, fd00::/8) or an address; an IPv4-mapped network counts the 96 mapping bits in its prefix (::ffff:10.0.0.0/104 is 10.0.0.0/8)"
)]
pub struct InvalidProxyNet {
    /// The text that was given.
    pub value: String,
}

impl TrustedProxies {
    /// No trusted proxy: the client is the connection's peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// The networks, each in CIDR notation (`10.0.0.0/8`, `fd00::/8`) or a single address;
    /// the header read is the default, `X-Forwarded-For` (see
    /// [`with_forwarding_header`](Self::with_forwarding_header)).
    pub fn parse<I, S>(nets: I) -> Result<Self, InvalidProxyNet>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = nets
            .into_iter()
            .map(|net| parse_net(net.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nets: nets.into(),
            header: ForwardingHeader::default(),
        })
    }

    /// These networks, whose proxies set `header`: the only forwarding header read, the
    /// other ignored entirely (default [`ForwardingHeader::XForwardedFor`]).
    ///
    /// ```
    /// use periscope_context::{ForwardingHeader, TrustedProxies};
    ///
    /// let proxies = "10.0.0.0/8".parse::<TrustedProxies>().unwrap();
    /// assert_eq!(proxies.forwarding_header(), ForwardingHeader::XForwardedFor);
    /// let proxies = proxies.with_forwarding_header(ForwardingHeader::Forwarded);
    /// assert_eq!(proxies.forwarding_header(), ForwardingHeader::Forwarded);
    /// ```
    #[must_use]
    pub fn with_forwarding_header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    /// The forwarding header read (see [`with_forwarding_header`](Self::with_forwarding_header)).
    pub fn forwarding_header(&self) -> ForwardingHeader {
        self.header
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is inside a trusted network. An IPv4 address and its IPv4-mapped IPv6 form
    /// (`::ffff:10.0.0.1`, as a dual-stack listener reports IPv4 peers) are the same address,
    /// whichever form the network or `ip` is written in (so `::/0` holds every IPv4 address
    /// too).
    ///
    /// ```
    /// use periscope_context::TrustedProxies;
    ///
    /// let proxies: TrustedProxies = "::ffff:10.0.0.0/104".parse().unwrap();
    /// assert!(proxies.contains("10.0.0.7".parse().unwrap()));
    /// assert!(proxies.contains("::ffff:10.0.0.7".parse().unwrap()));
    /// assert!(!proxies.contains("11.0.0.7".parse().unwrap()));
    /// ```
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        // Networks are kept as written, so an IPv4 address is also looked for in its mapped
        // form, which only IPv6 networks can hold.
        let mapped = match ip {
            IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(_) => None,
        };
        self.nets
            .iter()
            .any(|net| net.contains(&ip) || mapped.is_some_and(|mapped| net.contains(&mapped)))
    }

    /// The client's address for a request that came from `peer`, the rule no client can
    /// spoof: a peer outside every trusted network is the client, whatever its headers say.
    /// From a trusted peer, the hops its proxies recorded are walked from the right (the one
    /// nearest the service first), skipping those inside trusted networks: the first other one
    /// is the client. The hops are the addresses of `X-Forwarded-For` or, when
    /// [`ForwardingHeader::Forwarded`] is chosen, the `for=` of each `Forwarded` element
    /// (RFC 7239), over all the header's lines; the other header is never read. An entry that
    /// is not an address (`unknown`, an obfuscated `_name`, garbage, an element without
    /// `for=`) stops the walk at the last address before it, the proxy that added it; so does
    /// the end of the header, and the [`MAX_FORWARDED_HOPS`]th hop.
    ///
    /// The proxies must set the header chosen: a client can send either header, and only the
    /// hops a trusted proxy appended are believed.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use periscope_context::TrustedProxies;
    ///
    /// let proxies: TrustedProxies = "10.0.0.0/8".parse().unwrap();
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.3".parse().unwrap());
    /// // Through two proxies of ours: the address the outer one saw.
    /// assert_eq!(proxies.client_addr("10.0.0.2".parse().unwrap(), &headers), "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
    /// // Straight from the internet: the headers are the client's own words.
    /// assert_eq!(proxies.client_addr("192.0.2.1".parse().unwrap(), &headers), "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
    /// ```
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        match self.header {
            ForwardingHeader::Forwarded => {
                // Elements are split outside quoted strings, so they are read from the left;
                // only the last `MAX_FORWARDED_HOPS` are kept, and parsed.
                let mut hops = LastHops::default();
                for value in headers.get_all(http::header::FORWARDED) {
                    // Empty elements (`a,,b`, a trailing comma) are no elements: RFC 9110
                    // has them ignored, not taken for one without `for=`.
                    for element in split_unquoted(value.as_bytes(), b',') {
                        if !element.trim_ascii().is_empty() {
                            hops.push(element);
                        }
                    }
                }
                self.walk(peer, hops.right_to_left().map(forwarded_for))
            }
            ForwardingHeader::XForwardedFor => {
                let hops = headers
                    .get_all(X_FORWARDED_FOR)
                    .iter()
                    .rev()
                    .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','))
                    // Empty elements are no hops, as in `Forwarded` (RFC 9110's list rule).
                    .map(<[u8]>::trim_ascii)
                    .filter(|hop| !hop.is_empty())
                    .map(parse_node);
                self.walk(peer, hops)
            }
        }
    }

    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops.take(MAX_FORWARDED_HOPS) {
            let Some(ip) = hop else { break };
            client = ip.to_canonical();
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// A comma-separated list of networks (`TRUSTED_PROXIES`); blank entries are ignored. The
/// header read is the default, `X-Forwarded-For`.
impl FromStr for TrustedProxies {
    type Err = InvalidProxyNet;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list.split(',').map(str::trim).filter(|net| !net.is_empty()))
    }
}

/// The networks, comma-separated, as [`FromStr`] reads them (without the header read).
impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, net) in self.nets.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

fn parse_net(text: &str) -> Result<IpNet, InvalidProxyNet> {
    let text = text.trim();
    let invalid = || InvalidProxyNet {
        value: text.to_owned(),
    };
    if text.contains('/') {
        // `10.1.2.3/8` means the network `10.0.0.0/8`.
        let net: IpNet = text.parse().map_err(|_| invalid())?;
        // `::ffff:10.0.0.0/8` reads as `::/8`, which holds every IPv4 address in its mapped
        // form: any IPv4 client would be trusted to name its own address.
        if let IpNet::V6(v6) = net
            && v6.addr().to_ipv4_mapped().is_some()
            && v6.prefix_len() < 96
        {
            return Err(invalid());
        }
        Ok(net.trunc())
    } else {
        let ip: IpAddr = text.parse().map_err(|_| invalid())?;
        Ok(IpNet::from(ip))
    }
}

/// The last [`MAX_FORWARDED_HOPS`] elements of a header read from the left, without allocating.
#[derive(Default)]
struct LastHops<'a> {
    hops: [&'a [u8]; MAX_FORWARDED_HOPS],
    pushed: usize,
}

impl<'a> LastHops<'a> {
    fn push(&mut self, hop: &'a [u8]) {
        self.hops[self.pushed % MAX_FORWARDED_HOPS] = hop;
        self.pushed += 1;
    }

    fn right_to_left(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let kept = self.pushed.min(MAX_FORWARDED_HOPS);
        (0..kept).map(move |back| self.hops[(self.pushed - 1 - back) % MAX_FORWARDED_HOPS])
    }
}

/// `value` split at `separator` outside quoted strings (with their `\` escapes); an unclosed
/// quote runs to the end.
fn split_unquoted(value: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let value = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (at, &b) in value.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == separator && !quoted {
                rest = Some(&value[at + 1..]);
                return Some(&value[..at]);
            }
        }
        rest = None;
        Some(value)
    })
}

/// The address in the `for` parameter of one `Forwarded` element; `None` when it has none,
/// or it is not an address (`unknown`, `_hidden`, malformed). The whole element must be
/// well formed (`name=token` or `name="quoted"` pairs, `for` at most once): an unclosed quote
/// a client sent swallows the elements a proxy appended to the same line, leaving the
/// client's own `for` as the last element.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let at = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return None;
        }
        let value = forwarded_value(value)?;
        if name.eq_ignore_ascii_case(b"for") {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    parse_node(found?)
}

/// A pair's value: one quoted string (its inside, escapes left as they are) or one run of
/// visible characters without quotes; `None` for anything else.
fn forwarded_value(value: &[u8]) -> Option<&[u8]> {
    match value.strip_prefix(b"\"") {
        Some(quoted) => {
            let mut escaped = false;
            for (at, &b) in quoted.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    // The closing quote ends the value.
                    return (at + 1 == quoted.len()).then_some(&quoted[..at]);
                }
            }
            None
        }
        None => {
            let visible = value.iter().all(|&b| b.is_ascii_graphic() && b != b'"');
            (!value.is_empty() && visible).then_some(value)
        }
    }
}

/// An RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A node of either header: an IPv4 address, an IPv6 address bare or in brackets, each
/// with an optional port (digits, or an obfuscated `_port`).
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    if node.len() > MAX_NODE_LEN {
        return None;
    }
    let node = std::str::from_utf8(node).ok()?;
    if let Some(bracketed) = node.strip_prefix('[') {
        let (ip, rest) = bracketed.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(valid_port);
        return port_ok.then_some(IpAddr::V6(ip));
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, port) = node.split_once(':')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    valid_port(port).then_some(IpAddr::V4(ip))
}

fn valid_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.strip_prefix('_').is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    digits || obfuscated
}

/// The client's address, in the request's extensions when the service trusts proxies
/// ([`TrustedProxies`]): periscope's server layer puts it there, and the access log writes it
/// as `client`. The peer itself when the request did not come through a trusted proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client address of `request`, when a layer put one in its extensions.
    pub fn of<B>(request: &http::Request<B>) -> Option<IpAddr> {
        request.extensions().get::<Self>().map(|client| client.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn proxies() -> TrustedProxies {
        "10.0.0.0/8, 2001:db8:ffff::/48".parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let proxies: TrustedProxies = " 10.1.2.3/8 ,, ::1, 192.0.2.0/24 ,".parse().unwrap();
        assert_eq!(proxies.to_string(), "10.0.0.0/8,::1/128,192.0.2.0/24");
        assert!(proxies.contains(ip("10.255.0.1")));
        assert!(proxies.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        assert!(proxies.contains(ip("::1")));
        assert!(!proxies.contains(ip("::2")));
        assert!(!proxies.contains(ip("11.0.0.1")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0",
            "fd00::/129",
            "example.com",
            "10.0.0.0/",
            "*",
            // An IPv4 prefix on a mapped address: `::/8`, every IPv4 address.
            "::ffff:10.0.0.0/8",
            "::ffff:192.0.2.0/24",
        ] {
            let error = bad.parse::<TrustedProxies>().unwrap_err();
            assert_eq!(error.value, bad);
        }
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!(TrustedProxies::none().is_empty());
    }

    #[test]
    fn networks_written_in_the_ipv4_mapped_form_hold_ipv4_peers() {
        // As a dual-stack listener's access line shows an IPv4 proxy.
        let proxies: TrustedProxies = "::ffff:10.0.0.1, ::ffff:192.0.2.0/120".parse().unwrap();
        for trusted in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "192.0.2.77",
            "::ffff:192.0.2.77",
        ] {
            assert!(proxies.contains(ip(trusted)), "{trusted}");
        }
        for other in ["10.0.0.2", "::ffff:10.0.0.2", "192.0.3.1", "::1"] {
            assert!(!proxies.contains(ip(other)), "{other}");
        }
        let sent = headers(&[("x-forwarded-for", "203.0.113.9")]);
        for peer in ["::ffff:10.0.0.1", "10.0.0.1"] {
            assert_eq!(proxies.client_addr(ip(peer), &sent), ip("203.0.113.9"));
        }
        // The whole mapped range, and an IPv6 network wider than it.
        for wide in ["::ffff:0:0/96", "::/0"] {
            let proxies: TrustedProxies = wide.parse().unwrap();
            assert!(proxies.contains(ip("198.51.100.1")), "{wide}");
        }
    }

    #[test]
    fn untrusted_peers_are_the_client() {
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
            assert_eq!(
                proxies()
                    .with_forwarding_header(header)
                    .client_addr(ip("203.0.113.9"), &spoof),
                ip("203.0.113.9")
            );
        }
        // Nothing trusted: never read.
        let none = TrustedProxies::none();
        assert_eq!(none.client_addr(ip("10.0.0.1"), &spoof), ip("10.0.0.1"));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let p = proxies();
        let peer = ip("10.0.0.1");
        for (lines, client) in [
            (&["203.0.113.9"][..], "203.0.113.9"),
            // The client's own (spoofed) entries lie left of the first untrusted hop.
            (&["6.6.6.6, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),
            // All header lines, in order.
            (
                &["6.6.6.6", "203.0.113.9,10.0.0.7", "10.0.0.8"],
                "203.0.113.9",
            ),
            (&["203.0.113.9:4711"], "203.0.113.9"),
            (&["[2001:db8::1]:443"], "2001:db8::1"),
            (&["2001:db8::1, 2001:db8:ffff::3"], "2001:db8::1"),
            (&["::ffff:203.0.113.9"], "203.0.113.9"),
            // Every hop trusted: the farthest one.
            (&["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // Malformed entries stop the walk at the proxy that added them.
            (&["203.0.113.9, garbage"], "10.0.0.1"),
            (&["203.0.113.9, unknown, 10.0.0.2"], "10.0.0.2"),
            // Empty elements are none.
            (&["203.0.113.9,,10.0.0.2"], "203.0.113.9"),
            (&["203.0.113.9, 10.0.0.2,"], "203.0.113.9"),
            (&[",", "203.0.113.9", ""], "203.0.113.9"),
            (&["203.0.113.9, 10.0.0.2:123456"], "10.0.0.1"),
            (&["1.2.3.4%eth0"], "10.0.0.1"),
            (&[""], "10.0.0.1"),
        ] {
            let pairs: Vec<_> = lines.iter().map(|l| ("x-forwarded-for", *l)).collect();
            assert_eq!(
                p.client_addr(peer, &headers(&pairs)),
                ip(client),
                "{lines:?}"
            );
        }
        assert_eq!(p.client_addr(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn forwarded_is_read_only_when_chosen() {
        let p = proxies().with_forwarding_header(ForwardingHeader::Forwarded);
        let peer = ip("10.0.0.1");
        for (lines, client) in [
            (&["for=203.0.113.9"][..], "203.0.113.9"),
            (&["For=\"[2001:db8::1]:4711\";proto=https"], "2001:db8::1"),
            (&["for=\"[2001:db8::1]\""], "2001:db8::1"),
            (&["for=192.0.2.60:8080;by=10.0.0.1"], "192.0.2.60"),
            (
                &["for=6.6.6.6, for=198.51.100.17;proto=http", "for=10.0.0.2"],
                "198.51.100.17",
            ),
            (
                &["proto=https;for=198.51.100.17;host=\"a,b;c\""],
                "198.51.100.17",
            ),
            (
                &["for=198.51.100.17, for=\"[2001:db8:ffff::9]\""],
                "198.51.100.17",
            ),
            // `unknown` and obfuscated nodes stop the walk.
            (&["for=198.51.100.17, for=unknown"], "10.0.0.1"),
            (
                &["for=198.51.100.17, for=_hidden, for=10.0.0.4"],
                "10.0.0.4",
            ),
            (&["for=198.51.100.17:_abc"], "198.51.100.17"),
            // Malformed elements too.
            (&["for=198.51.100.17, proto=https"], "10.0.0.1"),
            (&["for=198.51.100.17, for=\"[2001:db8::1\""], "10.0.0.1"),
            (&["for=198.51.100.17, for=\"10.0.0.2"], "10.0.0.1"),
            (&["for=198.51.100.17, garbage"], "10.0.0.1"),
            // Empty elements are ignored (RFC 9110, section 5.6.1.2).
            (&["for=198.51.100.17,, for=10.0.0.2"], "198.51.100.17"),
            (&["for=198.51.100.17, "], "198.51.100.17"),
            (&["for=198.51.100.17", ", ,"], "198.51.100.17"),
        ] {
            let mut pairs: Vec<_> = lines.iter().map(|l| ("forwarded", *l)).collect();
            // Never read when `Forwarded` is chosen.
            pairs.push(("x-forwarded-for", "7.7.7.7"));
            assert_eq!(
                p.client_addr(peer, &headers(&pairs)),
                ip(client),
                "{lines:?}"
            );
        }
        // Only X-Forwarded-For: as if no proxy had said anything.
        let xff = headers(&[("x-forwarded-for", "7.7.7.7")]);
        assert_eq!(p.client_addr(peer, &xff), peer);
    }

    #[test]
    fn forwarded_is_ignored_by_default() {
        let p = proxies();
        assert_eq!(p.forwarding_header(), ForwardingHeader::XForwardedFor);
        let peer = ip("10.0.0.1");
        // A client's own `Forwarded`, passed through by a proxy that appended
        // X-Forwarded-For: the client cannot choose its address with it.
        let spoof = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        assert_eq!(p.client_addr(peer, &spoof), ip("203.0.113.9"));
        let alone = headers(&[("forwarded", "for=6.6.6.6")]);
        assert_eq!(p.client_addr(peer, &alone), peer);
        // Choosing a header keeps the networks, and back.
        let chosen = p
            .clone()
            .with_forwarding_header(ForwardingHeader::Forwarded);
        assert_eq!(chosen.to_string(), p.to_string());
        assert_eq!(chosen.client_addr(peer, &spoof), ip("6.6.6.6"));
        let back = chosen.with_forwarding_header(ForwardingHeader::XForwardedFor);
        assert_eq!(back, p);
    }

    #[test]
    fn forwarded_quotes_cannot_swallow_a_proxys_element() {
        let p = proxies().with_forwarding_header(ForwardingHeader::Forwarded);
        let peer = ip("10.0.0.1");
        // A client's element with an unclosed quote, to which a trusted proxy appended its own
        // element on the same line: the quote swallows the proxy's element, so the only
        // element left names the address the client chose. Malformed: not believed.
        for line in [
            "for=6.6.6.6;x=\", for=203.0.113.9",
            "for=6.6.6.6;x=\", for=\"[2001:db8::5]\"",
            "for=6.6.6.6;x=\"a\\, for=203.0.113.9",
            // Repeated or trailing parameters, and values that are not one token or one
            // quoted string, make the element malformed too.
            "for=203.0.113.9;for=6.6.6.6",
            "for=6.6.6.6;x=\"a\"b",
            "for=6.6.6.6;x",
            "for=6.6.6.6;=x",
            "for=6.6.6.6 x",
        ] {
            assert_eq!(
                p.client_addr(peer, &headers(&[("forwarded", line)])),
                peer,
                "{line}"
            );
        }
        // Valid parameters around `for` are still read.
        let line = "by=10.0.0.1;for=\"203.0.113.9\";host=\"a;b,\\\"c\";proto=https";
        assert_eq!(
            p.client_addr(peer, &headers(&[("forwarded", line)])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarding_headers_parse() {
        for (text, header) in [
            ("x-forwarded-for", ForwardingHeader::XForwardedFor),
            (" X-Forwarded-For ", ForwardingHeader::XForwardedFor),
            ("forwarded", ForwardingHeader::Forwarded),
            ("FORWARDED", ForwardingHeader::Forwarded),
        ] {
            assert_eq!(text.parse(), Ok(header), "{text}");
            assert_eq!(header.to_string().parse(), Ok(header));
        }
        for bad in ["", "xff", "x-real-ip", "forwarded,x-forwarded-for"] {
            let error = bad.parse::<ForwardingHeader>().unwrap_err();
            assert_eq!(error.value, bad);
        }
    }

    #[test]
    fn hostile_headers_are_walked_only_so_far() {
        let p = proxies();
        let peer = ip("10.0.0.1");
        // A thousand trusted hops after the client's address: it is never reached.
        let mut hops = vec!["203.0.113.9".to_owned()];
        hops.extend((0..1000).map(|i| format!("10.0.{}.{}", i / 250, i % 250)));
        let xff = hops.join(", ");
        let client = p.client_addr(peer, &headers(&[("x-forwarded-for", &xff)]));
        assert!(p.contains(client), "{client}");
        let forwarded = hops
            .iter()
            .map(|hop| format!("for={hop}"))
            .collect::<Vec<_>>()
            .join(",");
        let fp = p
            .clone()
            .with_forwarding_header(ForwardingHeader::Forwarded);
        let client = fp.client_addr(peer, &headers(&[("forwarded", &forwarded)]));
        assert!(p.contains(client), "{client}");
        // The client is found within the cap, not past it.
        let trusted = &hops[1..];
        let within = format!(
            "203.0.113.9,{}",
            trusted[..MAX_FORWARDED_HOPS - 1].join(",")
        );
        let past = format!("203.0.113.9,{}", trusted[..MAX_FORWARDED_HOPS].join(","));
        let client = |xff: &str| p.client_addr(peer, &headers(&[("x-forwarded-for", xff)]));
        assert_eq!(client(&within), ip("203.0.113.9"));
        assert_eq!(client(&past), ip(&trusted[0]));
        // The same cap for `Forwarded`, whose last elements are kept as it is read.
        let client = |list: &str| {
            let elements = list.split(',').map(|hop| format!("for={hop}"));
            let value = elements.collect::<Vec<_>>().join(", ");
            fp.client_addr(peer, &headers(&[("forwarded", &value)]))
        };
        assert_eq!(client(&within), ip("203.0.113.9"));
        assert_eq!(client(&past), ip(&trusted[0]));
        // A long run of garbage is not parsed.
        let garbage = "9".repeat(100_000);
        assert_eq!(
            p.client_addr(peer, &headers(&[("x-forwarded-for", &garbage)])),
            peer
        );
        assert_eq!(
            fp.client_addr(
                peer,
                &headers(&[("forwarded", &format!("for=\"{garbage}"))])
            ),
            peer
        );
    }
}
