//! Real HTTP servers on loopback for the workers to talk to: a webhook receiver that
//! records what arrives and answers from a script, and an image host.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use poem::{
    handler,
    http::{HeaderMap, StatusCode},
    listener::{Acceptor, Listener, TcpListener},
    web::{Data, Path},
    Body, EndpointExt, Response, Route, Server,
};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// A status with this body.
    Body(u16, &'static [u8]),
    /// Never answers (until the test ends).
    Hang,
    /// 200 (with the bytes, from an image host) after this many milliseconds.
    Slow(u64),
    Redirect(String),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// Verifies `webhook-signature` as a partner would (Standard Webhooks), independently
    /// of the server's code: true if any of the signatures matches `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.",
                self.header("webhook-id"),
                self.header("webhook-timestamp")
            )
            .as_bytes(),
        );
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.header("webhook-signature")
            .split(' ')
            .any(|s| s == expected)
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    arrived: Notify,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: Mutex<(usize, usize)>,
    /// Ends every `Slow` reply at once.
    released: tokio_util::sync::CancellationToken,
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn start(state: &'a State) -> Self {
        let mut counts = state.in_flight.lock().unwrap();
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.lock().unwrap().0 -= 1;
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
}

#[handler]
async fn receive(state: Data<&Arc<State>>, headers: &HeaderMap, body: Body) -> Response {
    let _in_flight = InFlight::start(&state);
    let body = body.into_vec().await.unwrap_or_default();
    state.received.lock().unwrap().push(Received {
        headers: headers.clone(),
        body,
    });
    state.arrived.notify_waiters();
    let reply = state.script.lock().unwrap().pop_front();
    match reply.unwrap_or(Reply::Status(200)) {
        Reply::Status(code) => Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body("thanks"),
        Reply::Body(code, body) => Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(body),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::builder().body("")
        }
        Reply::Slow(ms) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                _ = state.released.cancelled() => {}
            }
            Response::builder().body("thanks")
        }
        Reply::Redirect(to) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(""),
    }
}

async fn serve(route: impl poem::Endpoint + 'static) -> SocketAddr {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(route));
    addr
}

impl Receiver {
    /// A receiver answering 200 unless scripted otherwise.
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let addr = serve(Route::new().at("/*path", receive).data(state.clone())).await;
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these answers, in order; then 200 again.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The most requests that were ever being answered at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.in_flight.lock().unwrap().1
    }

    /// Requests answered so far (arrived and no longer in flight).
    pub fn answered(&self) -> usize {
        self.received().len() - self.state.in_flight.lock().unwrap().0
    }

    /// Ends every `Slow` reply now, and every later one at once.
    pub fn release(&self) {
        self.state.released.cancel();
    }

    /// Waits until at least `n` requests have arrived (at most 60 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let wait = async {
            loop {
                let arrived = self.state.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                let received = self.received();
                if received.len() >= n {
                    return received;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{n} webhook(s) never arrived; got {}",
                    self.received().len()
                )
            })
    }
}

#[handler]
async fn image(files: Data<&Arc<Vec<HostedImage>>>, Path(name): Path<String>) -> Response {
    match files.iter().find(|(n, _, _)| *n == name) {
        Some((_, Reply::Redirect(to), _)) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to.clone())
            .body(""),
        Some((_, Reply::Status(code), bytes)) => Response::builder()
            .status(StatusCode::from_u16(*code).unwrap())
            .content_type("image/jpeg")
            .body(bytes.clone()),
        Some((_, Reply::Slow(ms), bytes)) => {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            Response::builder()
                .content_type("image/jpeg")
                .body(bytes.clone())
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body("no such image"),
    }
}

/// A file of the image host: its name, how it answers, its bytes.
type HostedImage = (String, Reply, Vec<u8>);

/// Serves `name → (reply, bytes)` at `/images/<name>`; anything else is 404.
pub async fn image_host(files: Vec<(&str, Reply, Vec<u8>)>) -> SocketAddr {
    let files: Vec<HostedImage> = files
        .into_iter()
        .map(|(n, r, b)| (n.to_string(), r, b))
        .collect();
    serve(
        Route::new()
            .at("/images/:name", image)
            .data(Arc::new(files)),
    )
    .await
}
