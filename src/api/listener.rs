//! The HTTP listener: the app served by hyper with the timeouts poem's own server lacks, so
//! that slow clients cannot hold connections. A connection is closed when
//! - a request's head has not arrived within `header` of its first byte (with no request
//!   in flight, any byte read starts a head);
//! - it has had no request in flight for `idle`: a kept-alive connection waiting for its
//!   next request, or one that never sends any;
//! - its client has taken no byte of a response for `idle`.
//!
//! A request is in flight from the call of the app until its response's body is sent. The
//! body timeout is the app's (`request_limits::BodyTimeout`), so that its `408` is counted.
//!
//! Stopping: no new connections; open ones finish their requests and close, each at once
//! when idle; those still open after the drain time are cut.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use poem::{
    http::uri::Scheme,
    listener::{Acceptor, TcpAcceptor},
    web::{LocalAddr, RemoteAddr},
    Endpoint, Response,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long clients may take; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// Serves `app` on the acceptor's connections until `stop` is cancelled, then lets open
/// connections finish for up to `drain`.
pub async fn serve<E>(
    mut acceptor: TcpAcceptor,
    app: E,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
    drain: Duration,
) -> io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    let app = Arc::new(app);
    let connections = TaskTracker::new();
    let cut = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok((io, local, remote, _)) => {
                connections.spawn(serve_connection(
                    io,
                    (local, remote),
                    app.clone(),
                    timeouts,
                    stop.clone(),
                    cut.clone(),
                ));
            }
            // Out of file descriptors, most likely: wait for connections to close.
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(acceptor);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "connections still open after the drain time; closing them"
        );
        cut.cancel();
        connections.wait().await;
    }
    Ok(())
}

async fn serve_connection<E>(
    io: TcpStream,
    (local, remote): (LocalAddr, RemoteAddr),
    app: Arc<E>,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
    cut: CancellationToken,
) where
    E: Endpoint<Output = Response> + 'static,
{
    let activity = Arc::new(Activity::new());
    let peer = remote.clone();
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::begin(activity.clone());
            let app = app.clone();
            let addresses = (local.clone(), remote.clone());
            async move {
                let (local, remote) = addresses;
                let request = poem::Request::from((request, local, remote, Scheme::HTTP));
                let response = app.get_response(request).await;
                Ok::<_, Infallible>(hyper::Response::from(response).map(|body| TrackedBody {
                    inner: body,
                    _in_flight: in_flight,
                }))
            }
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is the watchdog's: hyper's would also end kept-alive connections.
    builder.http1().header_read_timeout(None);
    let io = TokioIo::new(TrackedIo {
        inner: io,
        activity: activity.clone(),
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        why = activity.expired(timeouts) => {
            tracing::debug!(remote = %peer, why, "closing the connection");
            return;
        }
        _ = cut.cancelled() => return,
        _ = stop.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection => {}
        _ = cut.cancelled() => {}
    }
}

/// What a connection is doing, for its timeouts: requests in flight, since when there has
/// been none, since when a request's head has been arriving, since when a write to the
/// client has been waiting. Times are milliseconds since `start`; `NEVER` is none.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    write_waiting_since: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            write_waiting_since: AtomicU64::new(NEVER),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Bytes came in: with no request in flight, they begin a request's head.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(
                NEVER,
                self.now(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Resolves, with why, once a timeout has passed.
    async fn expired(&self, timeouts: ConnectionTimeouts) -> &'static str {
        let header = timeouts.header.as_millis() as u64;
        let idle = timeouts.idle.as_millis() as u64;
        loop {
            let now = self.now();
            let idle_for = if self.in_flight.load(Ordering::Acquire) == 0 {
                now.saturating_sub(self.idle_since.load(Ordering::Acquire))
            } else {
                0
            };
            let since = |at: &AtomicU64| match at.load(Ordering::Acquire) {
                NEVER => 0,
                at => now.saturating_sub(at),
            };
            let (head_for, stuck_for) = (since(&self.head_since), since(&self.write_waiting_since));
            if head_for >= header {
                return "the request head did not arrive in time";
            }
            if idle_for >= idle {
                return "no request for the idle timeout";
            }
            if stuck_for >= idle {
                return "the client took no byte of the response for the idle timeout";
            }
            let wait = (header - head_for)
                .min(idle - idle_for)
                .min(idle - stuck_for);
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

/// One request in flight on a connection, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NEVER, Ordering::Release);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> hyper::body::Body for TrackedBody<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when a write to the client starts waiting and when it goes through.
struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedIo {
    fn note_write<T>(&self, poll: Poll<T>) -> Poll<T> {
        let waiting = &self.activity.write_waiting_since;
        match poll {
            Poll::Pending => {
                let _ = waiting.compare_exchange(
                    NEVER,
                    self.activity.now(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Poll::Ready(_) => waiting.store(NEVER, Ordering::Release),
        }
        poll
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
