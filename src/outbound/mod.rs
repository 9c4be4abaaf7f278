//! The guard on URLs we will fetch or post to (image URLs, webhooks): only http(s), and
//! never loopback, private, link-local or cloud-metadata addresses unless allow-listed.

mod client;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use client::{FetchError, GuardedClient, RedirectRule};

use ipnet::IpNet;
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

    /// Whether an address may be contacted.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
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

/// Addresses that are not globally routable, or that reach cloud metadata services.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7, incl. fd00:ec2::254
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xff00) == 0xff00 // multicast ff00::/8
                || is_nat64_of_forbidden(v6)
        }
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network"
        || a == 10
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || a == 127
        || (a == 169 && b == 254) // link-local, incl. 169.254.169.254 metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 224 // multicast and reserved, incl. broadcast
}

/// 64:ff9b::/96 embeds an IPv4 address; judge that address.
fn is_nat64_of_forbidden(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_forbidden_v4(v4);
    }
    false
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
    }
}
