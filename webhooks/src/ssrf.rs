//! Which targets a webhook may reach: the URL rules and the address matrix.
//!
//! A webhook URL is chosen by a tenant, so the server must never be turned into a proxy
//! towards its own network. Two checks, both before any connection:
//! - the URL ([`TargetUrl::parse`]): `https` only (plain `http` only with
//!   `webhooks.allow_insecure_targets`), a host, no user info, no fragment;
//! - every address the host resolves to ([`check_ip`]); one refused address refuses the
//!   whole name, so a DNS answer that mixes a public and a private address cannot be used
//!   to reach the private one. The connector then connects only to the addresses that were
//!   checked (see `client.rs`), so a second resolution (DNS rebinding) cannot swap them.
//!
//! The address classes are written out here rather than taken from `std` because the
//! `is_global`-style helpers are unstable, and because the list is the product's policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse, has no host, carries credentials or a fragment.
    #[error("not a valid webhook URL: {0}")]
    BadUrl(&'static str),
    /// `http` without `allow_insecure_targets`, or a scheme other than http(s).
    #[error("webhook URLs must use https")]
    Scheme,
    /// An address of the target is not a public unicast address.
    #[error("webhook target address {addr} is not allowed ({class})")]
    Address { addr: IpAddr, class: &'static str },
    /// The name did not resolve to any address.
    #[error("webhook target host does not resolve")]
    Unresolved,
}

/// The policy knobs of [`check_ip`] and [`TargetUrl::parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Development and tests: allow `http` and loopback addresses (nothing else).
    pub allow_insecure: bool,
}

/// A webhook URL that passed the URL rules (not yet the address rules: those need DNS and
/// are checked at every delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl(Url);

impl TargetUrl {
    /// Parses and checks a webhook URL. An IP-literal host is checked against the address
    /// matrix here already, so it is refused at registration.
    pub fn parse(s: &str, policy: TargetPolicy) -> Result<Self, TargetError> {
        if s.len() > 2048 {
            return Err(TargetError::BadUrl("longer than 2048 characters"));
        }
        let url = Url::parse(s).map_err(|_| TargetError::BadUrl("does not parse"))?;
        match url.scheme() {
            "https" => {}
            "http" if policy.allow_insecure => {}
            _ => return Err(TargetError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::BadUrl("user info is not allowed"));
        }
        if url.fragment().is_some() {
            return Err(TargetError::BadUrl("a fragment is not allowed"));
        }
        match url.host() {
            None => return Err(TargetError::BadUrl("no host")),
            Some(Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), policy)?,
            Some(Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), policy)?,
            Some(Host::Domain(_)) => {}
        }
        Ok(Self(url))
    }

    /// A URL read back from the store (it passed [`TargetUrl::parse`] when it was set; the
    /// client checks it against the current policy again before every attempt).
    pub fn from_stored(s: &str) -> Result<Self, TargetError> {
        Url::parse(s)
            .map(Self)
            .map_err(|_| TargetError::BadUrl("does not parse"))
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The IP literal of the host, if it is one.
    pub fn ip_literal(&self) -> Option<IpAddr> {
        match self.0.host()? {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        }
    }
}

/// Refuses every address that is not public unicast. Loopback passes only with
/// `policy.allow_insecure`.
pub fn check_ip(ip: IpAddr, policy: TargetPolicy) -> Result<(), TargetError> {
    let class = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match class {
        None => Ok(()),
        Some("loopback") if policy.allow_insecure => Ok(()),
        Some(class) => Err(TargetError::Address { addr: ip, class }),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "unspecified or \"this network\"",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, 169, 254] => "cloud metadata",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (CGNAT)",
        [192, 0, 0, _] => "IETF protocol assignments",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [192, 88, 99, _] => "6to4 relay anycast",
        [a, ..] if a >= 240 => "reserved or broadcast",
        [a, ..] if (224..240).contains(&a) => "multicast",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses reach an IPv4
    // address: refused whatever it is (even loopback under the insecure flag, even a public
    // one): nothing legitimate needs the form, and stacks disagree on how they route it.
    if ip.to_ipv4_mapped().is_some() {
        return Some("IPv4-mapped");
    }
    if s[0..6] == [0; 6] {
        return Some("IPv4-compatible");
    }
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address: judge that one.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_class(v4).map(|_| "NAT64 of a non-public address");
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "unique local (private)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        // 6to4 embeds an IPv4 address and is relayed to it; Teredo tunnels through one.
        0x2002 => "6to4",
        0x2001 if s[1] == 0 => "Teredo",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x0100 if s[1..4] == [0; 3] => "discard-only",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy {
        allow_insecure: false,
    };
    const DEV: TargetPolicy = TargetPolicy {
        allow_insecure: true,
    };

    #[test]
    fn the_address_matrix() {
        let refused = [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.10.10",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "fd00:ec2::254",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2002:c0a8:101::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "100::1",
        ];
        for s in refused {
            let ip: IpAddr = s.parse().unwrap();
            assert!(check_ip(ip, STRICT).is_err(), "{s} must be refused");
        }
        let allowed = [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "64:ff9b::808:808",
        ];
        for s in allowed {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(check_ip(ip, STRICT), Ok(()), "{s} must be allowed");
        }
    }

    #[test]
    fn the_insecure_flag_opens_loopback_only() {
        for s in ["127.0.0.1", "::1"] {
            assert_eq!(check_ip(s.parse().unwrap(), DEV), Ok(()));
        }
        for s in [
            "10.0.0.1",
            "169.254.169.254",
            "::ffff:127.0.0.1",
            "fd00:ec2::254",
        ] {
            assert!(check_ip(s.parse().unwrap(), DEV).is_err(), "{s}");
        }
    }

    #[test]
    fn url_rules() {
        assert!(TargetUrl::parse("https://hooks.example.com/x?y=1", STRICT).is_ok());
        assert_eq!(
            TargetUrl::parse("http://hooks.example.com/", STRICT),
            Err(TargetError::Scheme)
        );
        assert!(TargetUrl::parse("http://hooks.example.com/", DEV).is_ok());
        assert_eq!(
            TargetUrl::parse("ftp://hooks.example.com/", DEV),
            Err(TargetError::Scheme)
        );
        assert_eq!(
            TargetUrl::parse("file:///etc/passwd", DEV),
            Err(TargetError::Scheme)
        );
        assert!(matches!(
            TargetUrl::parse("https://user:pw@hooks.example.com/", STRICT),
            Err(TargetError::BadUrl(_))
        ));
        assert!(matches!(
            TargetUrl::parse("not a url", STRICT),
            Err(TargetError::BadUrl(_))
        ));
        for literal in [
            "https://127.0.0.1/",
            "https://[::1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://2130706433/", // 127.0.0.1 as one decimal number (WHATWG parses it)
            "https://0x7f.1/",
        ] {
            assert!(
                matches!(
                    TargetUrl::parse(literal, STRICT),
                    Err(TargetError::Address { .. })
                ),
                "{literal}"
            );
        }
        assert!(TargetUrl::parse("http://127.0.0.1:9/", DEV).is_ok());
    }
}
