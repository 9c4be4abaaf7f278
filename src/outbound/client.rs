//! An HTTP client that only talks to hosts the [`OutboundPolicy`] allows: IP literals are
//! checked before sending; names are resolved here and only vetted addresses are dialled;
//! redirects are re-checked (or refused); no proxy; timeouts; a cap on the body read.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use reqwest::{
    dns::{Addrs, Name, Resolve, Resolving},
    redirect,
};

use super::{OutboundError, OutboundPolicy};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Forbidden(#[from] OutboundError),
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("the response is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request failed: {0}")]
    Other(String),
}

impl FetchError {
    /// Worth retrying later (a timeout, a refused connection, a 5xx or 429), as opposed to
    /// failures that will not change (a forbidden host, a 404, an oversized body).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout | Self::Connect(_) | Self::Other(_) => true,
            Self::Status(code) => *code >= 500 || *code == 429 || *code == 408,
            Self::Forbidden(_) | Self::TooLarge { .. } => false,
        }
    }

    fn from_reqwest(err: reqwest::Error) -> Self {
        // A refusal by our resolver or redirect rule surfaces as the source of the error.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(forbidden) = e.downcast_ref::<OutboundError>() {
                return Self::Forbidden(forbidden.clone());
            }
            source = e.source();
        }
        if err.is_timeout() {
            Self::Timeout
        } else if err.is_connect() {
            Self::Connect(err.to_string())
        } else {
            Self::Other(err.to_string())
        }
    }
}

/// Resolves names, then drops every address the policy forbids.
struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = vetted(&policy, host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The addresses a name resolved to that the policy allows, in the resolver's order; an
/// error when it allows none.
fn vetted(
    policy: &OutboundPolicy,
    host: String,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, OutboundError> {
    let allowed: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| policy.ip_allowed(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(OutboundError::ForbiddenHost(host));
    }
    Ok(allowed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectRule {
    /// Redirects are not followed: the 3xx is the answer (webhooks count it as a failure).
    Refuse,
    /// Follow up to this many, each target vetted like the first URL.
    Follow(usize),
}

#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<OutboundPolicy>,
}

impl GuardedClient {
    pub fn new(
        policy: OutboundPolicy,
        redirects: RedirectRule,
        timeout: Duration,
    ) -> Result<Self, FetchError> {
        let policy = Arc::new(policy);
        let redirect_policy = match redirects {
            RedirectRule::Refuse => redirect::Policy::none(),
            RedirectRule::Follow(max) => {
                let policy = policy.clone();
                redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() > max {
                        return attempt.error(format!("more than {max} redirects"));
                    }
                    match policy.check_url(attempt.url().as_str()) {
                        Ok(_) => attempt.follow(),
                        Err(err) => attempt.error(err),
                    }
                })
            }
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(redirect_policy)
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("platescore/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Other(e.to_string()))?;
        Ok(Self { client, policy })
    }

    /// The URL vetted by text, ready for a request on the guarded client.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, FetchError> {
        let url = self.policy.check_url(url)?;
        Ok(self.client.request(method, url))
    }

    /// GETs a URL and returns its body, failing on a non-2xx status or past `max_bytes`
    /// (read chunk by chunk, never further than the cap).
    pub async fn get_bytes(&self, url: &str, max_bytes: usize) -> Result<Bytes, FetchError> {
        let response = self
            .request(reqwest::Method::GET, url)?
            .send()
            .await
            .map_err(FetchError::from_reqwest)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > max_bytes as u64)
        {
            return Err(FetchError::TooLarge { limit: max_bytes });
        }
        read_capped(response, max_bytes).await
    }

    /// Sends a prepared request (for webhooks, which read the status and a little body).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        request.send().await.map_err(FetchError::from_reqwest)
    }
}

/// Reads at most `max_bytes` of a body; more is an error.
pub async fn read_capped(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<Bytes, FetchError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::from_reqwest)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge { limit: max_bytes });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[tokio::test]
    async fn names_resolving_to_forbidden_addresses_are_refused() {
        let resolver = GuardedResolver {
            policy: Arc::new(OutboundPolicy::default()),
        };
        let err = resolver
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("refused");
        assert!(err.downcast_ref::<OutboundError>().is_some(), "{err}");

        let allowed = GuardedResolver {
            policy: Arc::new(OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
        };
        let addrs: Vec<_> = allowed
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
    }

    /// What the resolver does with a name's answer, for an answer in each refused range (a
    /// test cannot make the system resolver answer with them; `localhost` above is real).
    #[test]
    fn answers_in_refused_ranges_are_dropped() {
        use crate::outbound::tests::{ALLOWED, REFUSED};
        let policy = OutboundPolicy::default();
        let answer = |texts: &[&str]| -> Vec<SocketAddr> {
            texts
                .iter()
                .map(|t| SocketAddr::new(t.parse().unwrap(), 0))
                .collect()
        };
        for refused in REFUSED {
            assert_eq!(
                vetted(&policy, "images.example".into(), answer(&[refused])),
                Err(OutboundError::ForbiddenHost("images.example".into())),
                "{refused}"
            );
        }
        assert_eq!(
            vetted(&policy, "images.example".into(), answer(REFUSED)),
            Err(OutboundError::ForbiddenHost("images.example".into()))
        );
        for allowed in ALLOWED {
            // A public address among refused ones: only it is dialled.
            let mixed = answer(&["10.0.0.1", allowed, "2002::1", "64:ff9b:1::1"]);
            assert_eq!(
                vetted(&policy, "images.example".into(), mixed),
                Ok(answer(&[allowed])),
                "{allowed}"
            );
        }
        let opened = OutboundPolicy::new(vec!["2002::/16".parse().unwrap()]);
        assert_eq!(
            vetted(
                &opened,
                "relay.example".into(),
                answer(&["fec0::1", "2002::1"])
            ),
            Ok(answer(&["2002::1"]))
        );
    }
}
