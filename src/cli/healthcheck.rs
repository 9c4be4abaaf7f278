//! `platescore healthcheck`: asks the node on this machine whether it is ready, for container
//! health checks (the images have no curl, and Debian's `sh` has no `/dev/tcp`). Exit status 0
//! means `/health/ready` said 200.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(config: &Config, url: Option<url::Url>) -> anyhow::Result<()> {
    let url = match url {
        Some(url) => url,
        None => ready_url(config.listen_addr()?)?,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .build()?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("{url}: no answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{body}");
    anyhow::ensure!(status.is_success(), "{url}: {status}");
    Ok(())
}

/// `/health/ready` on loopback at the port the node listens on.
fn ready_url(listen: SocketAddr) -> anyhow::Result<url::Url> {
    anyhow::ensure!(
        listen.port() != 0,
        "`listen` picks a random port (0): pass --url"
    );
    let ip = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        other => other.ip(),
    };
    Ok(url::Url::parse(&format!(
        "http://{}/health/ready",
        SocketAddr::new(ip, listen.port())
    ))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_loopback_when_listening_on_every_address() {
        let url = |listen: &str| ready_url(listen.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080/health/ready"
        );
        assert_eq!(url("[::]:9000").unwrap(), "http://[::1]:9000/health/ready");
        assert_eq!(
            url("10.1.2.3:8080").unwrap(),
            "http://10.1.2.3:8080/health/ready"
        );
        assert!(url("127.0.0.1:0").is_err());
    }
}
