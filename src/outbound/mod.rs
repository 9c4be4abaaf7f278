//! The guard on URLs we will fetch or post to (image URLs, webhooks): only http(s), and
//! never an address that is not globally reachable (loopback, private, link-local,
//! cloud metadata, …) unless allow-listed.

mod client;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use client::{FetchError, GuardedClient, RedirectRule};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OutboundError {
    #[error("not a valid absolute URL: {0}")]
    Invalid(String),
    #[error("scheme `{0}` is not allowed; use http or https")]
    Scheme(String),
    #[error("URLs with credentials are not allowed")]
    Credentials,
    #[error("host `{0}` is private, loopback or a metadata address")]
    ForbiddenHost(String),
}

#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow: Vec<IpNet>,
}

/// Host names that always mean this machine or the cloud's metadata service.
const FORBIDDEN_NAMES: &[&str] = &[
    "localhost",
    "metadata.google.internal",
    "metadata",
    "instance-data",
];
const FORBIDDEN_SUFFIXES: &[&str] = &[".localhost", ".internal", ".local"];

impl OutboundPolicy {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Whether an address may be contacted. An IPv4-mapped IPv6 address is the IPv4 address,
    /// for the allow-list too.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !is_forbidden_ip(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Parses and vets a URL by its text. Names are resolved, and the addresses vetted
    /// again, only when the URL is actually used.
    pub fn check_url(&self, raw: &str) -> Result<Url, OutboundError> {
        let url = Url::parse(raw.trim()).map_err(|e| OutboundError::Invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OutboundError::Scheme(url.scheme().to_string()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OutboundError::Credentials);
        }
        match url.host() {
            None => return Err(OutboundError::Invalid("missing host".into())),
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), raw)?,
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), raw)?,
            Some(Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if FORBIDDEN_NAMES.contains(&name.as_str())
                    || FORBIDDEN_SUFFIXES.iter().any(|s| name.ends_with(s))
                {
                    return Err(OutboundError::ForbiddenHost(name));
                }
            }
        }
        Ok(url)
    }

    fn check_ip(&self, ip: IpAddr, _raw: &str) -> Result<(), OutboundError> {
        if self.ip_allowed(ip) {
            Ok(())
        } else {
            Err(OutboundError::ForbiddenHost(ip.to_string()))
        }
    }
}

/// Addresses that are not globally routable, or that reach cloud metadata services: the
/// IANA IPv4 and IPv6 Special-Purpose Address Registries' ranges that are not globally
/// reachable, and everything in IPv6 outside global unicast (`2000::/3`). Addresses that
/// carry an IPv4 address (`::ffff:0:0/96` mapped, `64:ff9b::/96` NAT64) are judged by it.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match nat64_embedded_v4(v6) {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

/// IPv4 ranges refused: the registry's not globally reachable ones, plus the deprecated
/// 6to4 relay anycast (192.88.99.0/24).
const FORBIDDEN_V4: &[Ipv4Net] = &[
    v4(0, 0, 0, 0, 8),       // "this network"
    v4(10, 0, 0, 0, 8),      // private
    v4(100, 64, 0, 0, 10),   // shared address space (CGNAT)
    v4(127, 0, 0, 0, 8),     // loopback
    v4(169, 254, 0, 0, 16),  // link-local, incl. 169.254.169.254 metadata
    v4(172, 16, 0, 0, 12),   // private
    v4(192, 0, 0, 0, 24),    // IETF protocol assignments (DS-Lite, NAT64 discovery, …)
    v4(192, 0, 2, 0, 24),    // documentation (TEST-NET-1)
    v4(192, 88, 99, 0, 24),  // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),  // private
    v4(198, 18, 0, 0, 15),   // benchmarking
    v4(198, 51, 100, 0, 24), // documentation (TEST-NET-2)
    v4(203, 0, 113, 0, 24),  // documentation (TEST-NET-3)
    v4(224, 0, 0, 0, 4),     // multicast
    v4(240, 0, 0, 0, 4),     // reserved, incl. 255.255.255.255 broadcast
];

/// Ranges refused inside IPv6 global unicast (`2000::/3`); all outside it are refused too.
const FORBIDDEN_V6_UNICAST: &[Ipv6Net] = &[
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments, incl. Teredo 2001::/32
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), // 6to4: any IPv4 address, private ones included
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().any(|net| net.contains(&ip))
}

/// Outside `2000::/3` lie the unspecified and loopback addresses, IPv4-compatible `::/96`,
/// local-use NAT64 `64:ff9b:1::/48`, discard `100::/64`, unique local `fc00::/7` (incl.
/// fd00:ec2::254), link-local `fe80::/10`, site-local `fec0::/10`, multicast `ff00::/8` and
/// every range not yet allocated.
fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let global_unicast = (ip.segments()[0] & 0xe000) == 0x2000;
    !global_unicast || FORBIDDEN_V6_UNICAST.iter().any(|net| net.contains(&ip))
}

/// The IPv4 address in a NAT64 well-known-prefix address (`64:ff9b::/96`, RFC 6052).
fn nat64_embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0])
        .then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_refused() {
        let policy = OutboundPolicy::default();
        for url in [
            "http://127.0.0.1/x.jpg",
            "http://10.1.2.3/x.jpg",
            "http://172.20.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://metadata.google.internal/",
            "http://2130706433/", // 127.0.0.1 in decimal: the URL parser normalises it
        ] {
            assert!(
                matches!(policy.check_url(url), Err(OutboundError::ForbiddenHost(_))),
                "{url}"
            );
        }
    }

    /// One address inside each refused range (its first, a middle one and its last where
    /// the edges matter), and the addresses just outside it.
    pub(crate) const REFUSED: &[&str] = &[
        "0.0.0.0",
        "0.255.255.255",
        "10.0.0.1",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.1",
        "192.0.0.170",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "::7f00:1",         // IPv4-compatible ::127.0.0.1
        "::808:808",        // IPv4-compatible ::8.8.8.8: deprecated, never dialled
        "::ffff:127.0.0.1", // IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:0:a00:1",     // IPv4-translated (SIIT)
        "64:ff9b::a00:1",     // NAT64 of 10.0.0.1
        "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
        "64:ff9b::c000:201",  // NAT64 of 192.0.2.1
        "64:ff9b:1::1",       // local-use NAT64
        "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        "100::1", // discard-only
        "100:0:0:1::1",
        "2001::1", // Teredo
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "2001:2::1", // benchmarking
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db8::1", // documentation
        "2001:db8:ffff::1",
        "2002::1",          // 6to4
        "2002:c0a8:101::1", // 6to4 of 192.168.1.1
        "2002:808:808::1",  // 6to4 of 8.8.8.8: blocked too
        "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "3fff::1", // documentation
        "3fff:fff:ffff::1",
        "5f00::1", // segment routing
        "fc00::1",
        "fd00:ec2::254", // AWS metadata
        "fe80::1",
        "febf::1",
        "fec0::1", // site-local
        "feff:ffff::1",
        "ff02::1",
    ];

    pub(crate) const ALLOWED: &[&str] = &[
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",
        "100.128.0.1",
        "172.15.255.255",
        "172.32.0.1",
        "192.0.3.1",
        "192.88.98.255",
        "192.88.100.1",
        "198.17.255.255",
        "198.20.0.1",
        "198.51.99.1",
        "203.0.112.1",
        "223.255.255.255",
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822", // NAT64 of 93.184.216.34
        "2001:200::1",        // just past 2001::/23
        "2001:db9::1",
        "2003::1",
        "2400:cb00::1",
        "2606:4700:4700::1111",
        "2620:4f:8000::1", // AS112, globally reachable
        "3ffe:ffff::1",
        "3fff:1000::1", // just past 3fff::/20
    ];

    #[test]
    fn every_special_purpose_range_is_refused_and_its_neighbours_are_not() {
        let policy = OutboundPolicy::default();
        for text in REFUSED {
            let ip: IpAddr = text.parse().unwrap();
            assert!(!policy.ip_allowed(ip), "{text} should be refused");
            let url = match ip {
                IpAddr::V4(_) => format!("http://{ip}/x.jpg"),
                IpAddr::V6(_) => format!("http://[{ip}]/x.jpg"),
            };
            assert_eq!(
                policy.check_url(&url),
                Err(OutboundError::ForbiddenHost(ip.to_string())),
                "{url}"
            );
        }
        for text in ALLOWED {
            let ip: IpAddr = text.parse().unwrap();
            assert!(policy.ip_allowed(ip), "{text} should be allowed");
            let url = match ip {
                IpAddr::V4(_) => format!("http://{ip}/x.jpg"),
                IpAddr::V6(_) => format!("http://[{ip}]/x.jpg"),
            };
            assert!(policy.check_url(&url).is_ok(), "{url}");
        }
    }

    #[test]
    fn public_hosts_pass_and_bad_schemes_do_not() {
        let policy = OutboundPolicy::default();
        assert!(policy
            .check_url("https://images.example.com/meal.jpg")
            .is_ok());
        assert!(policy.check_url("http://93.184.216.34/meal.jpg").is_ok());
        assert!(matches!(
            policy.check_url("ftp://example.com/x"),
            Err(OutboundError::Scheme(_))
        ));
        assert!(matches!(
            policy.check_url("file:///etc/passwd"),
            Err(OutboundError::Scheme(_))
        ));
        assert!(matches!(
            policy.check_url("not a url"),
            Err(OutboundError::Invalid(_))
        ));
        assert!(matches!(
            policy.check_url("https://user:pw@example.com/"),
            Err(OutboundError::Credentials)
        ));
    }

    #[test]
    fn the_allow_list_opens_listed_ranges_only() {
        let policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(policy.check_url("http://127.0.0.1:9000/x.jpg").is_ok());
        assert!(policy.check_url("http://10.0.0.1/x.jpg").is_err());
        assert!(policy.ip_allowed("127.0.0.2".parse().unwrap()));
        assert!(!policy.ip_allowed("169.254.169.254".parse().unwrap()));
        // An IPv4-mapped address is its IPv4 address, for the allow-list too.
        assert!(policy.ip_allowed("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!policy.ip_allowed("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_allow_list_opens_refused_ipv6_ranges_too() {
        let policy = OutboundPolicy::new(vec![
            "64:ff9b:1::/48".parse().unwrap(),
            "2002:c0a8:101::/48".parse().unwrap(),
            "fec0::/10".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ]);
        for open in [
            "64:ff9b:1::a00:1",
            "2002:c0a8:101::1",
            "fec0::1",
            "192.0.2.1",
        ] {
            assert!(policy.ip_allowed(open.parse().unwrap()), "{open}");
        }
        for shut in [
            "64:ff9b:2::1",
            "2002:c0a8:102::1",
            "fe80::1",
            "198.51.100.1",
        ] {
            assert!(!policy.ip_allowed(shut.parse().unwrap()), "{shut}");
        }
        assert!(policy.check_url("http://[2002:c0a8:101::1]/x.jpg").is_ok());
        assert!(policy.check_url("http://[2002:c0a8:102::1]/x.jpg").is_err());
    }
}
