//! The accept loop: HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on a TCP
//! listener, with the limits that `axum::serve` lacks, so that slow and idle
//! clients cannot exhaust the server.
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no cap on open
//! connections: every idle socket holds a file descriptor for good, and once
//! the open-file limit is reached `accept` fails (`Too many open files`) and
//! nobody, health checks and verifications included, gets in. Here:
//!
//! - **Idle timeout**: a connection with no request in flight for
//!   [`Limits::idle_timeout`] is closed, whether it never sent a byte, sits
//!   between keep-alive requests, or is an HTTP/2 connection without streams.
//! - **Header-read timeout**: from the first byte of a request head, the whole
//!   head must be in within [`Limits::header_read_timeout`] (HTTP/1; HTTP/2
//!   for its first request), however steadily it trickles.
//! - **Connection cap**: a new connection at [`Limits::max_connections`] closes
//!   the one idle the longest (no request in flight), so that it gets in at
//!   once. Only when every connection is busy does the loop stop accepting:
//!   the connection just accepted waits, and later ones wait in the kernel's
//!   backlog, holding no descriptor of ours, until one closes or goes idle.
//!   Reaching the cap is logged at most every 10 s. By default the cap follows
//!   the open-file limit ([`default_max_connections`]), which is first raised
//!   to the hard limit as far as needed.
//!
//! Both timeouts are ours rather than hyper's `http1().header_read_timeout`:
//! hyper (1.x) starts that timer as soon as a connection waits for a request
//! head, that is right after each response, so it doubles as a keep-alive
//! timeout of the same length; it never sees a connection that sent nothing,
//! since the auto builder first waits for 24 bytes to tell HTTP/1 from HTTP/2;
//! nor HTTP/2. Each connection's task watches its state (requests in flight,
//! when it went idle, when a head began) and closes it on time: gracefully
//! (HTTP/2 GOAWAY), then dropped if it has not closed a second later.
//!
//! Graceful shutdown is as `axum::serve`'s: stop accepting, let in-flight
//! requests finish, close the other connections, wait for all. One difference:
//! a connection whose first request head has begun but not ended (which hyper
//! would wait for, and `axum::serve` with it, for ever) is dropped after a
//! second. Each request carries the client address as `ConnectInfo<SocketAddr>`
//! in its extensions, where axum's extractor looks for it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Request, Response, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::Config;
use crate::http::router::App;

/// Open files kept back from client connections: the database pools (SQLite:
/// 8 connections, each with its WAL; PostgreSQL: 16 and a listener), the
/// listener, standard streams and the runtime's own descriptors.
pub const RESERVED_FILES: u64 = 64;

/// Most connections the default cap allows, whatever the open-file limit: each
/// one costs buffers and a task, and a key-verification service behind
/// connection-pooling clients and proxies needs far fewer.
pub const MAX_CONNECTIONS_CEILING: usize = 10_000;

/// How long a connection being closed (timed out or evicted) may take to say
/// goodbye (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often reaching the cap (or an accept error) is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// "No head begun" in [`Tracker::head_since`].
const NONE: u64 = u64::MAX;

/// The limits the accept loop enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// With no request in flight (including before the first byte).
    pub idle_timeout: Duration,
    /// Open client connections.
    pub max_connections: usize,
}

impl Limits {
    /// The configured limits; the connection cap defaults from the open-file
    /// limit (raised to the hard limit where needed), and a configured cap
    /// larger than that limit allows is lowered to fit.
    pub fn from_config(config: &Config) -> Self {
        let (open_files, affordable) = affordable_connections(config.max_connections);
        let max_connections = match config.max_connections {
            None => default_max_connections(open_files),
            Some(wanted) if wanted > affordable => {
                tracing::warn!(
                    max_connections = wanted,
                    open_file_limit = open_files,
                    using = affordable,
                    "KEYLEDGER_MAX_CONNECTIONS leaves too few of the open-file limit for the \
                     databases; lowered (raise `ulimit -n` to allow more)"
                );
                affordable
            }
            Some(wanted) => wanted,
        };
        let limits = Self {
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: max_connections.max(1),
        };
        tracing::info!(
            max_connections = limits.max_connections,
            open_file_limit = open_files,
            header_read_timeout = ?limits.header_read_timeout,
            idle_timeout = ?limits.idle_timeout,
            "connection limits"
        );
        limits
    }
}

/// The default cap for an open-file limit: the limit less [`RESERVED_FILES`]
/// (half the limit when it is tiny), at most [`MAX_CONNECTIONS_CEILING`].
pub fn default_max_connections(open_file_limit: u64) -> usize {
    connections_within(open_file_limit).min(MAX_CONNECTIONS_CEILING)
}

fn connections_within(open_file_limit: u64) -> usize {
    let files = if open_file_limit > 2 * RESERVED_FILES {
        open_file_limit - RESERVED_FILES
    } else {
        open_file_limit / 2
    };
    usize::try_from(files).unwrap_or(usize::MAX).max(1)
}

/// Raises the soft open-file limit as far as the wanted connections need (at
/// most to the hard limit); returns the limit in force and the connections it
/// affords.
fn affordable_connections(wanted: Option<usize>) -> (u64, usize) {
    let connections = u64::try_from(wanted.unwrap_or(MAX_CONNECTIONS_CEILING)).unwrap_or(u64::MAX);
    let target = connections.saturating_add(RESERVED_FILES);
    let limit = match rlimit::increase_nofile_limit(target) {
        Ok(limit) => limit,
        Err(e) => {
            let current = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            current.unwrap_or(1024)
        }
    };
    (limit, connections_within(limit))
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new
/// connections, idle ones closed, in-flight requests answered.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shared = Arc::new(Shared {
        limits,
        epoch: Instant::now(),
        connections: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        live: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    // No hyper timer: our tasks keep the time (see the module docs), and with a
    // timer hyper would start its own 30 s header-read timeout.
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let stop = CancellationToken::new();
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (drained_tx, drained_rx) = watch::channel(());
    let mut evicting = Warning::default();
    let mut holding = Warning::default();
    let mut accept_errors = Warning::default();
    tokio::pin!(shutdown);
    'accept: loop {
        let (stream, address) = tokio::select! {
            () = &mut shutdown => break 'accept,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Most likely out of descriptors (EMFILE, ENFILE): free one
                    // and try again shortly.
                    accept_errors.note(|times| {
                        tracing::error!(error = %e, times, "accept error");
                    });
                    if let Some(idle) = shared.longest_idle() {
                        idle.evict();
                    }
                    tokio::select! {
                        () = &mut shutdown => break 'accept,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            }
        };
        // Room for it: close the connection idle the longest or, when every
        // connection is busy, wait (accepting no more) until one closes or goes idle.
        while shared.live() >= limits.max_connections {
            if let Some(idle) = shared.longest_idle() {
                idle.evict();
                evicting.note(|times| {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        times,
                        "connection limit reached: closing the longest-idle connections to admit \
                         new ones (raise --max-connections or `ulimit -n` if this is real load)"
                    );
                });
                break;
            }
            holding.note(|times| {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    times,
                    "connection limit reached and every connection is busy: not accepting \
                     until one frees (raise --max-connections or `ulimit -n` if this is real load)"
                );
            });
            tokio::select! {
                () = &mut shutdown => break 'accept,
                () = shared.changed.notified() => {}
            }
        }
        // Registered here, not in the task, so that the next turn counts it.
        let registration = Registration::new(&shared);
        tokio::spawn(connection(
            builder.clone(),
            stream,
            address,
            app.clone(),
            registration,
            stop.clone(),
            drained_rx.clone(),
        ));
    }
    drop(listener);
    tracing::debug!(open = shared.live(), "not accepting; draining connections");
    stop.cancel();
    drop(drained_rx);
    drained_tx.closed().await;
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A warning logged at most every [`WARN_EVERY`], with how often it happened.
#[derive(Default)]
struct Warning {
    last: Option<Instant>,
    times: u64,
}

impl Warning {
    fn note(&mut self, log: impl FnOnce(u64)) {
        self.times += 1;
        if self.last.is_none_or(|last| last.elapsed() >= WARN_EVERY) {
            log(self.times);
            self.last = Some(Instant::now());
            self.times = 0;
        }
    }
}

/// What the accept loop and the connection tasks share.
struct Shared {
    limits: Limits,
    /// Times in the trackers are milliseconds since this.
    epoch: Instant,
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    /// Open connections not being closed by us.
    live: AtomicUsize,
    /// A connection closed or went idle (the accept loop may be waiting for that).
    changed: Notify,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The open connection with no request in flight that went idle first.
    fn longest_idle(&self) -> Option<Arc<Tracker>> {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connections
            .iter()
            .filter(|(_, t)| t.is_idle() && !t.evicted.load(Ordering::Relaxed))
            // Ties (the same millisecond) go to the one accepted first.
            .min_by_key(|(id, t)| (t.idle_since.load(Ordering::Relaxed), **id))
            .map(|(_, t)| t.clone())
    }
}

/// One connection's state, updated by its I/O, its requests and the accept loop.
struct Tracker {
    shared: Arc<Shared>,
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte after going idle arrived, or [`NONE`].
    head_since: AtomicU64,
    /// HTTP/2: bytes between requests are frames, not a request head.
    http2: AtomicBool,
    /// Requests begun so far.
    requests: AtomicU64,
    /// Being closed: no longer counted against the cap.
    evicted: AtomicBool,
    /// The server is shutting down.
    stopping: AtomicBool,
    /// Wakes the connection's task to look at the state again.
    wake: Notify,
}

impl Tracker {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Bytes arrived: with no request in flight they begin a request head.
    fn on_read(&self) {
        if self.is_idle()
            && !self.http2.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NONE
            && self
                .head_since
                .compare_exchange(NONE, self.shared.now(), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// A request (its head complete) goes to the application.
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Closes the connection soon (it has no request in flight).
    fn evict(&self) {
        if !self.evicted.swap(true, Ordering::AcqRel) {
            self.shared.live.fetch_sub(1, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// When the connection is to be closed and why; `None` while a request is
    /// in flight.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        if !self.is_idle() {
            return None;
        }
        // Due already (any instant in the past will do).
        if self.stopping.load(Ordering::Relaxed) {
            return Some((self.shared.epoch, "shutting down"));
        }
        if self.evicted.load(Ordering::Acquire) {
            return Some((self.shared.epoch, "connection limit reached"));
        }
        let limits = &self.shared.limits;
        let idle = (
            self.shared.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle_timeout,
            "idle timeout",
        );
        let head_since = self.head_since.load(Ordering::Relaxed);
        if head_since == NONE || self.http2.load(Ordering::Relaxed) {
            return Some(idle);
        }
        let head = (
            self.shared.at(head_since) + limits.header_read_timeout,
            "header read timeout",
        );
        Some(if head.0 < idle.0 { head } else { idle })
    }
}

/// A request in flight on a connection, until its response body is dropped.
struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let tracker = &self.0;
        if tracker.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            tracker
                .idle_since
                .store(tracker.shared.now(), Ordering::Relaxed);
            tracker.head_since.store(NONE, Ordering::Relaxed);
            tracker.wake.notify_one();
            tracker.shared.changed.notify_one();
        }
    }
}

/// A connection's entry in [`Shared::connections`], removed on drop.
struct Registration {
    id: u64,
    tracker: Arc<Tracker>,
}

impl Registration {
    fn new(shared: &Arc<Shared>) -> Self {
        let tracker = Arc::new(Tracker {
            shared: shared.clone(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(shared.now()),
            head_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.live.fetch_add(1, Ordering::Relaxed);
        shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tracker.clone());
        Self { id, tracker }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let shared = &self.tracker.shared;
        shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        if !self.tracker.evicted.swap(true, Ordering::AcqRel) {
            shared.live.fetch_sub(1, Ordering::Relaxed);
        }
        shared.changed.notify_one();
    }
}

/// Serves one connection, closing it when its deadline passes or it is
/// evicted, and finishing gracefully when the server stops.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    address: SocketAddr,
    app: App,
    registration: Registration,
    stop: CancellationToken,
    _drained: watch::Receiver<()>,
) {
    let tracker = registration.tracker.clone();
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        tracker: tracker.clone(),
    });
    let service = ConnectionService {
        app,
        address,
        tracker: tracker.clone(),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let first = tracker.deadline().map_or_else(far_future, |(at, _)| at);
    let sleep = tokio::time::sleep_until(first);
    tokio::pin!(sleep);
    let mut graceful = false;
    // Since when we have been closing it, and how many requests it had had then.
    let mut closing: Option<(Instant, u64)> = None;
    loop {
        tokio::select! {
            biased;
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!(client = %address, error = %e, "connection ended");
                }
                break;
            }
            () = stop.cancelled(), if !tracker.stopping.load(Ordering::Relaxed) => {
                // In-flight requests finish; the rest close now, or are dropped
                // after a grace period if they do not (hyper keeps waiting for a
                // first request head that has begun).
                tracker.stopping.store(true, Ordering::Relaxed);
                if !graceful {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
                let now = Instant::now();
                closing = Some((now, tracker.requests.load(Ordering::Acquire)));
                sleep.as_mut().reset(now + CLOSE_GRACE);
            }
            () = tracker.wake.notified() => {
                if let Some((at, _)) = tracker.deadline() {
                    sleep.as_mut().reset(at);
                }
            }
            () = &mut sleep => {
                let now = Instant::now();
                match tracker.deadline() {
                    None => sleep.as_mut().reset(far_future()),
                    Some((at, _)) if at > now => sleep.as_mut().reset(at),
                    Some((_, why)) => {
                        let requests = tracker.requests.load(Ordering::Acquire);
                        match closing {
                            // No request since it was asked to close: it had its
                            // chance to close cleanly (a request since may still
                            // be flushing, so that one starts the grace anew).
                            Some((since, seen)) if seen == requests => {
                                if now >= since + CLOSE_GRACE {
                                    break;
                                }
                                sleep.as_mut().reset(since + CLOSE_GRACE);
                            }
                            _ => {
                                if closing.is_none() {
                                    tracing::debug!(client = %address, reason = why, "closing connection");
                                }
                                closing = Some((now, requests));
                                if !graceful {
                                    graceful = true;
                                    conn.as_mut().graceful_shutdown();
                                }
                                sleep.as_mut().reset(now + CLOSE_GRACE);
                            }
                        }
                    }
                }
            }
        }
    }
    drop(registration);
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(24 * 3600)
}

/// The application for one connection: records requests in flight and hands
/// each request the client address.
#[derive(Clone)]
struct ConnectionService {
    app: App,
    address: SocketAddr,
    tracker: Arc<Tracker>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedResponse<tower::util::Oneshot<App, Request<axum::body::Body>>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.tracker.begin(request.version());
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(self.address));
        TrackedResponse {
            inner: self.app.clone().oneshot(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The application's response future; its body carries the in-flight mark.
    struct TrackedResponse<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> Future for TrackedResponse<F>
where
    F: Future<Output = Result<Response<axum::body::Body>, Infallible>>,
{
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _in_flight: in_flight,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until hyper drops it.
    struct TrackedBody {
        #[pin]
        inner: axum::body::Body,
        _in_flight: Option<InFlight>,
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = <axum::body::Body as hyper::body::Body>::Data;
    type Error = <axum::body::Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the tracker when bytes arrive.
struct WatchedIo {
    inner: TcpStream,
    tracker: Arc<Tracker>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.on_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_room_for_the_databases_and_has_a_ceiling() {
        assert_eq!(default_max_connections(256), 192);
        assert_eq!(default_max_connections(1024), 960);
        assert_eq!(default_max_connections(100), 50);
        assert_eq!(default_max_connections(1), 1);
        assert_eq!(default_max_connections(1 << 20), MAX_CONNECTIONS_CEILING);
        assert_eq!(default_max_connections(u64::MAX), MAX_CONNECTIONS_CEILING);
    }
}
