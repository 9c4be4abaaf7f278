//! The guarded HTTP client against real servers on loopback.

use std::time::Duration;

use platescore::outbound::{
    FetchError, GuardedClient, OutboundError, OutboundPolicy, RedirectRule,
};
use poem::{
    handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::{Path, Redirect},
    Route, Server,
};

#[handler]
fn image() -> Vec<u8> {
    vec![0xAB; 4096]
}

#[handler]
fn status(Path(code): Path<u16>) -> StatusCode {
    StatusCode::from_u16(code).unwrap()
}

#[handler]
fn to_metadata() -> Redirect {
    Redirect::temporary("http://169.254.169.254/latest/meta-data/")
}

#[handler]
fn hop(Path(n): Path<u32>) -> Redirect {
    Redirect::temporary(format!("/hop/{}", n + 1))
}

#[handler]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn serve() -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    let app = Route::new()
        .at("/image.jpg", image)
        .at("/status/:code", status)
        .at("/to-metadata", to_metadata)
        .at("/hop/:n", hop)
        .at("/slow", slow);
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}")
}

fn loopback_allowed(redirects: RedirectRule) -> GuardedClient {
    let policy = OutboundPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    GuardedClient::new(policy, redirects, Duration::from_secs(2)).unwrap()
}

#[tokio::test]
async fn loopback_is_refused_unless_allow_listed() {
    let base = serve().await;
    let guarded = GuardedClient::new(
        OutboundPolicy::default(),
        RedirectRule::Follow(3),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = guarded
        .get_bytes(&format!("{base}/image.jpg"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(OutboundError::ForbiddenHost(_))),
        "{err:?}"
    );
    assert!(!err.is_transient());

    let body = loopback_allowed(RedirectRule::Follow(3))
        .get_bytes(&format!("{base}/image.jpg"), 1 << 20)
        .await
        .unwrap();
    assert_eq!(body.len(), 4096);
}

#[tokio::test]
async fn redirects_are_vetted_and_bounded() {
    let base = serve().await;
    let client = loopback_allowed(RedirectRule::Follow(3));
    let err = client
        .get_bytes(&format!("{base}/to-metadata"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Forbidden(_)),
        "a redirect to the metadata address: {err:?}"
    );
    let err = client
        .get_bytes(&format!("{base}/hop/0"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Other(ref m) if m.contains("redirect")),
        "{err:?}"
    );

    // Webhooks do not follow redirects at all: the 307 is the answer.
    let refusing = loopback_allowed(RedirectRule::Refuse);
    let response = refusing
        .send(
            refusing
                .request(reqwest::Method::POST, &format!("{base}/to-metadata"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 307);
}

#[tokio::test]
async fn bodies_are_capped_statuses_classified_and_timeouts_enforced() {
    let base = serve().await;
    let client = loopback_allowed(RedirectRule::Follow(3));
    let err = client
        .get_bytes(&format!("{base}/image.jpg"), 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
    let not_found = client
        .get_bytes(&format!("{base}/status/404"), 1000)
        .await
        .unwrap_err();
    assert!(matches!(not_found, FetchError::Status(404)) && !not_found.is_transient());
    let unavailable = client
        .get_bytes(&format!("{base}/status/503"), 1000)
        .await
        .unwrap_err();
    assert!(matches!(unavailable, FetchError::Status(503)) && unavailable.is_transient());
    let late = client
        .get_bytes(&format!("{base}/slow"), 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(late, FetchError::Timeout) && late.is_transient(),
        "{late:?}"
    );
}

#[tokio::test]
async fn ranges_added_to_the_guard_are_refused_before_dialling_unless_allow_listed() {
    let guarded = GuardedClient::new(
        OutboundPolicy::default(),
        RedirectRule::Follow(3),
        Duration::from_secs(2),
    )
    .unwrap();
    for url in [
        "http://[64:ff9b:1::a00:1]/x.jpg", // local-use NAT64
        "http://[2002:a00:1::1]/x.jpg",    // 6to4 of 10.0.0.1
        "http://[2002:808:808::1]/x.jpg",  // 6to4 of a public address: all of 2002::/16
        "http://[fec0::1]/x.jpg",          // site-local
        "http://[2001::1]/x.jpg",          // Teredo
        "http://[2001:db8::1]/x.jpg",      // documentation
        "http://[3fff::1]/x.jpg",          // documentation
        "http://[100::1]/x.jpg",           // discard
        "http://[::a00:1]/x.jpg",          // IPv4-compatible
        "http://192.0.2.1/x.jpg",          // documentation
        "http://192.88.99.1/x.jpg",        // 6to4 relay anycast
        "http://255.255.255.255/x.jpg",
    ] {
        let err = guarded.get_bytes(url, 1 << 20).await.unwrap_err();
        assert!(
            matches!(err, FetchError::Forbidden(OutboundError::ForbiddenHost(_))),
            "{url}: {err:?}"
        );
    }

    // Allow-listed, the same address is dialled (and fails however the network says).
    let opened = GuardedClient::new(
        OutboundPolicy::new(vec!["2002::/16".parse().unwrap()]),
        RedirectRule::Follow(3),
        Duration::from_secs(2),
    )
    .unwrap();
    let err = opened
        .get_bytes("http://[2002:a00:1::1]:9/x.jpg", 1 << 20)
        .await
        .unwrap_err();
    assert!(!matches!(err, FetchError::Forbidden(_)), "{err:?}");
}
