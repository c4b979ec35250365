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
//!   A request is in flight while the application works on it: from its head
//!   to the last frame of its response body (not until hyper has written it
//!   out and dropped the body), so a client that does not read its responses
//!   (HTTP/2 with no flow-control window, say) leaves an idle connection.
//! - **Write timeout**: a connection whose socket has taken no byte for
//!   [`Limits::idle_timeout`] while we had some to write is dropped, requests
//!   in flight or not, and while it is being closed too.
//! - **Header-read timeout**: from the first byte of a request head, the whole
//!   head must be in within [`Limits::header_read_timeout`] (HTTP/1; HTTP/2
//!   for its first request), however steadily it trickles.
//! - **Connection cap**: at most [`Limits::max_connections`] client sockets
//!   are open, counted until each is really closed. A new connection at the
//!   cap has the one idle the longest (no request in flight) dropped at once,
//!   then gets in. Only when every connection is busy does the loop stop
//!   accepting: the connection just accepted waits (the one socket beyond the
//!   cap), and later ones wait in the kernel's backlog, holding no descriptor
//!   of ours, until one closes or goes idle. Reaching the cap is logged at
//!   most every 10 s. By default the cap follows the open-file limit
//!   ([`default_max_connections`]), which is first raised to the hard limit as
//!   far as needed.
//! - **HTTP/2**: at most [`MAX_CONCURRENT_STREAMS`] streams per connection,
//!   with at most [`MAX_SEND_BUF_SIZE`] of response buffered per stream.
//!
//! Both timeouts are ours rather than hyper's `http1().header_read_timeout`:
//! hyper (1.x) starts that timer as soon as a connection waits for a request
//! head, that is right after each response, so it doubles as a keep-alive
//! timeout of the same length; it never sees a connection that sent nothing,
//! since the auto builder first waits for 24 bytes to tell HTTP/1 from HTTP/2;
//! nor HTTP/2. Each connection's task watches its state (requests in flight,
//! when it went idle, when a head began, since when a write has been waiting)
//! and closes it on time: gracefully (HTTP/2 GOAWAY), then dropped if it has
//! not closed a second after its last response (longer while that response is
//! still being written, up to the idle timeout). The task does not hear of
//! every request: it wakes at the earliest deadline or after the shorter
//! timeout, whichever comes first, and no deadline that starts later can fall
//! before that, so requests cost no timer updates or wake-ups.
//!
//! Graceful shutdown is as `axum::serve`'s: stop accepting, let in-flight
//! requests finish and their responses be written, close the other
//! connections, wait for all. One difference: a connection whose first request
//! head has begun but not ended (which hyper would wait for, and `axum::serve`
//! with it, for ever) is dropped after a second. Each request carries the
//! client address as `ConnectInfo<SocketAddr>` in its extensions, where axum's
//! extractor looks for it.

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

/// Streams one HTTP/2 connection may have open at once (hyper's default is
/// 200); each holds a request in the application.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// Response bytes HTTP/2 buffers per stream beyond what has been written
/// (hyper's default is 400 KiB); our responses are far smaller.
pub const MAX_SEND_BUF_SIZE: usize = 64 * 1024;

/// How long a connection being closed (timed out or at shutdown) may take to
/// say goodbye (HTTP/2 GOAWAY) after its last response before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The most often a connection's task looks at its deadlines.
const MIN_CHECK: Duration = Duration::from_millis(100);

/// How often reaching the cap (or an accept error) is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// "None" in the millisecond times of [`Tracker`]; also "never".
const NONE: u64 = u64::MAX;

/// One day in milliseconds: the farthest a task's timer is set.
const DAY: u64 = 24 * 3600 * 1000;
/// The limits the accept loop enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// With no request in flight (including before the first byte); also the
    /// longest a write to the socket may wait for the client to read.
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
        timeouts: Timeouts::new(&limits),
        epoch: Instant::now(),
        connections: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        open: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        waiting: AtomicBool::new(false),
        changed: Notify::new(),
    });
    // No hyper timer: our tasks keep the time (see the module docs), and with a
    // timer hyper would start its own 30 s header-read timeout.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(MAX_SEND_BUF_SIZE);
    let builder = Arc::new(builder);
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
        // Room for it: close the connection idle the longest and wait for its
        // socket to be closed or, when every connection is busy, wait
        // (accepting no more) until one closes or goes idle.
        if shared.open() >= limits.max_connections {
            // Connections tell `changed` only while this is set; set before
            // looking, so that a change after the look is not missed.
            shared.waiting.store(true, Ordering::SeqCst);
            let stopping = loop {
                if shared.open() < limits.max_connections {
                    break false;
                }
                // Those being evicted make room once closed: evict no more.
                if shared.live() >= limits.max_connections {
                    if let Some(idle) = shared.longest_idle() {
                        idle.evict();
                        evicting.note(|times| {
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                times,
                                "connection limit reached: closing the longest-idle connections \
                                 to admit new ones (raise --max-connections or `ulimit -n` if \
                                 this is real load)"
                            );
                        });
                    } else {
                        holding.note(|times| {
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                times,
                                "connection limit reached and every connection is busy: not \
                                 accepting until one frees (raise --max-connections or \
                                 `ulimit -n` if this is real load)"
                            );
                        });
                    }
                }
                tokio::select! {
                    () = &mut shutdown => break true,
                    () = shared.changed.notified() => {}
                }
            };
            shared.waiting.store(false, Ordering::SeqCst);
            if stopping {
                break 'accept;
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
    tracing::debug!(open = shared.open(), "not accepting; draining connections");
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(NONE)
}

/// The limits' durations in milliseconds (any length: sums saturate, and a
/// deadline past the end of time is never).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    header_read: u64,
    idle: u64,
    /// How long a task may sleep without looking: no deadline that starts
    /// while it sleeps can fall earlier than that.
    check: u64,
}

impl Timeouts {
    fn new(limits: &Limits) -> Self {
        let header_read = millis(limits.header_read_timeout);
        let idle = millis(limits.idle_timeout);
        Self {
            header_read,
            idle,
            check: header_read.min(idle).max(millis(MIN_CHECK)),
        }
    }
}

/// What the accept loop and the connection tasks share.
struct Shared {
    timeouts: Timeouts,
    /// Times in the trackers are milliseconds since this.
    epoch: Instant,
    connections: Mutex<HashMap<u64, Arc<Tracker>>>,
    next_id: AtomicU64,
    /// Client sockets open: accepted and not yet closed.
    open: AtomicUsize,
    /// Those of them not being evicted.
    live: AtomicUsize,
    /// The accept loop is waiting for `changed` (to avoid a notification per
    /// request the rest of the time).
    waiting: AtomicBool,
    /// A connection closed or went idle.
    changed: Notify,
}

impl Shared {
    fn now(&self) -> u64 {
        millis(self.epoch.elapsed()).min(NONE - 1)
    }

    /// The instant of a time in milliseconds, at most a day from now.
    fn at(&self, millis: u64) -> Instant {
        let horizon = self.now().saturating_add(DAY);
        self.epoch + Duration::from_millis(millis.min(horizon))
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Tells the accept loop something changed, if it is waiting for that.
    fn notify_changed(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
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

/// One connection's state, updated by its I/O, its requests and the accept
/// loop; times are milliseconds since [`Shared::epoch`].
struct Tracker {
    shared: Arc<Shared>,
    /// Requests the application is working on.
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte after going idle arrived, or [`NONE`].
    head_since: AtomicU64,
    /// Since when a write to the socket has been waiting, or [`NONE`].
    write_waiting_since: AtomicU64,
    /// HTTP/2: bytes between requests are frames, not a request head.
    http2: AtomicBool,
    /// Dropped to make room: no longer counted as live.
    evicted: AtomicBool,
    /// Being closed (or evicted): the end of the last request in flight wakes
    /// the task.
    closing: AtomicBool,
    /// Wakes the connection's task to look at the state again.
    wake: Notify,
}

impl Tracker {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Bytes arrived: with no request in flight they begin a request head.
    fn on_read(&self) {
        if self.head_since.load(Ordering::Relaxed) == NONE
            && !self.http2.load(Ordering::Relaxed)
            && self.is_idle()
        {
            let _ = self.head_since.compare_exchange(
                NONE,
                self.shared.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A write to the socket returned: `waiting` if it could take nothing.
    fn on_write(&self, waiting: bool) {
        let since = self.write_waiting_since.load(Ordering::Relaxed);
        if waiting {
            if since == NONE {
                self.write_waiting_since
                    .store(self.shared.now(), Ordering::Relaxed);
            }
        } else if since != NONE {
            self.write_waiting_since.store(NONE, Ordering::Relaxed);
        }
    }

    /// A request (its head complete) goes to the application.
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(NONE, Ordering::Relaxed);
        InFlight {
            tracker: self.clone(),
            counted: true,
        }
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle_since.store(self.shared.now(), Ordering::Relaxed);
            self.head_since.store(NONE, Ordering::Relaxed);
            if self.closing.load(Ordering::SeqCst) {
                self.wake.notify_one();
            }
            self.shared.notify_changed();
        }
    }

    /// Drops the connection soon (it has no request in flight; should one
    /// begin first, once that one ends).
    fn evict(&self) {
        if !self.evicted.swap(true, Ordering::AcqRel) {
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
        }
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// What to do now, `closing` since when (if it is being closed).
    fn next(&self, closing: Option<u64>) -> Next {
        let state = State {
            now: self.shared.now(),
            in_flight: !self.is_idle(),
            idle_since: self.idle_since.load(Ordering::Relaxed),
            head_since: self.head_since.load(Ordering::Relaxed),
            http2: self.http2.load(Ordering::Relaxed),
            write_waiting_since: self.write_waiting_since.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Acquire),
            closing,
        };
        state.next(&self.shared.timeouts)
    }
}

/// A connection's state as its task sees it (milliseconds; [`NONE`] for none).
#[derive(Clone, Copy, Debug)]
struct State {
    now: u64,
    in_flight: bool,
    idle_since: u64,
    head_since: u64,
    http2: bool,
    write_waiting_since: u64,
    evicted: bool,
    /// Since when it has been closing (gracefully).
    closing: Option<u64>,
}

/// What a connection's task does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Look again at this time (or when woken).
    Wait(u64),
    /// Begin closing gracefully, for this reason.
    Close(&'static str),
    /// Drop the connection now, for this reason.
    Drop(&'static str),
}

impl State {
    fn next(&self, t: &Timeouts) -> Next {
        let mut wait = self.now.saturating_add(t.check);
        // A socket that takes nothing for the idle timeout, whatever the rest.
        if self.write_waiting_since != NONE {
            let stalled = self.write_waiting_since.saturating_add(t.idle);
            if self.now >= stalled {
                return Next::Drop("write timeout");
            }
            wait = wait.min(stalled);
        }
        if self.in_flight {
            // Its end wakes us if we are closing.
            return Next::Wait(wait);
        }
        if self.evicted {
            return Next::Drop("connection limit reached");
        }
        if let Some(since) = self.closing {
            // A second from the later of the close and the last response, for
            // it to be written and the goodbye said; then, while a write is
            // still waiting (the client reading slowly), up to the idle timeout
            // from the close.
            let grace = since
                .max(self.idle_since)
                .saturating_add(millis(CLOSE_GRACE));
            if self.now < grace {
                return Next::Wait(wait.min(grace));
            }
            if self.write_waiting_since != NONE {
                let flushing = since.saturating_add(t.idle);
                if self.now < flushing {
                    return Next::Wait(wait.min(flushing));
                }
            }
            return Next::Drop("not closed in time");
        }
        let mut due = (self.idle_since.saturating_add(t.idle), "idle timeout");
        if self.head_since != NONE && !self.http2 {
            let head = self.head_since.saturating_add(t.header_read);
            if head < due.0 {
                due = (head, "header read timeout");
            }
        }
        if self.now >= due.0 {
            Next::Close(due.1)
        } else {
            Next::Wait(wait.min(due.0))
        }
    }
}

/// A request in flight on a connection, until its response body has given
/// its last frame (or is dropped). A body between frames that hyper has not
/// asked for the next of (waiting to write the last) is not counted.
struct InFlight {
    tracker: Arc<Tracker>,
    counted: bool,
}

impl InFlight {
    fn pause(&mut self) {
        if self.counted {
            self.counted = false;
            self.tracker.end();
        }
    }

    fn resume(&mut self) {
        if !self.counted {
            self.counted = true;
            self.tracker.in_flight.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pause();
    }
}

/// A connection's entry in [`Shared::connections`] and its place in the
/// count of open sockets, both given up on drop: after the socket's (see
/// [`WatchedIo`]).
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
            write_waiting_since: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.open.fetch_add(1, Ordering::SeqCst);
        shared.live.fetch_add(1, Ordering::SeqCst);
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
            shared.live.fetch_sub(1, Ordering::SeqCst);
        }
        shared.open.fetch_sub(1, Ordering::SeqCst);
        shared.notify_changed();
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
    let shared = tracker.shared.clone();
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        registration,
    });
    let service = ConnectionService {
        app,
        address,
        tracker: tracker.clone(),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let sleep = tokio::time::sleep_until(shared.at(shared.now().saturating_add(DAY)));
    tokio::pin!(sleep);
    let mut stopping = false;
    // Since when we have been closing it.
    let mut closing: Option<u64> = None;
    loop {
        let mut next = tracker.next(closing);
        if let Next::Close(why) = next {
            tracing::debug!(client = %address, reason = why, "closing connection");
            closing = Some(shared.now());
            tracker.closing.store(true, Ordering::SeqCst);
            conn.as_mut().graceful_shutdown();
            next = tracker.next(closing);
        }
        match next {
            Next::Wait(at) => sleep.as_mut().reset(shared.at(at)),
            // (A closing connection is never told to close again.)
            Next::Drop(why) | Next::Close(why) => {
                tracing::debug!(client = %address, reason = why, "dropping connection");
                break;
            }
        }
        tokio::select! {
            biased;
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!(client = %address, error = %e, "connection ended");
                }
                break;
            }
            () = stop.cancelled(), if !stopping => {
                // In-flight requests finish; the rest close now, or are dropped
                // after a grace period if they do not (hyper keeps waiting for a
                // first request head that has begun).
                stopping = true;
                if closing.is_none() {
                    closing = Some(shared.now());
                    tracker.closing.store(true, Ordering::SeqCst);
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tracker.wake.notified() => {}
            () = &mut sleep => {}
        }
    }
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
            in_flight,
            ended: false,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight while hyper asks it
    /// for frames, until it has given the last.
    struct TrackedBody {
        #[pin]
        inner: axum::body::Body,
        in_flight: Option<InFlight>,
        ended: bool,
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = <axum::body::Body as hyper::body::Body>::Data;
    type Error = <axum::body::Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.ended {
            return this.inner.poll_frame(cx);
        }
        let in_flight = this.in_flight.as_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Pending => {
                // The application is producing it: in flight.
                if let Some(mark) = in_flight {
                    mark.resume();
                }
                return polled;
            }
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(_) => true,
        };
        *this.ended = ended;
        // A frame given: what is left is hyper's to write (for the last) or
        // to ask for (the next).
        if let Some(mark) = in_flight {
            mark.pause();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the tracker when bytes arrive and when writes wait;
/// its registration goes (and the accept loop counts one socket fewer) only
/// once the socket is closed.
struct WatchedIo {
    // Dropped first: fields drop in order.
    inner: TcpStream,
    registration: Registration,
}

impl WatchedIo {
    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.registration.tracker.on_write(polled.is_pending());
        polled
    }
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
            this.registration.tracker.on_read();
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
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A socket's flush and shutdown do not wait for the peer: only writes tell.
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

    fn limits(header_read_timeout: Duration, idle_timeout: Duration) -> Limits {
        Limits {
            header_read_timeout,
            idle_timeout,
            max_connections: 1,
        }
    }

    /// Header-read timeout 10 s, idle timeout 60 s.
    fn timeouts() -> Timeouts {
        Timeouts::new(&limits(Duration::from_secs(10), Duration::from_secs(60)))
    }

    /// Idle since 0, nothing else going on.
    fn idle(now: u64) -> State {
        State {
            now,
            in_flight: false,
            idle_since: 0,
            head_since: NONE,
            http2: false,
            write_waiting_since: NONE,
            evicted: false,
            closing: None,
        }
    }

    #[test]
    fn timeouts_too_long_for_an_instant_never_fall_due() {
        let limits = limits(Duration::MAX, Duration::from_secs(u64::MAX));
        let t = Timeouts::new(&limits);
        let state = State {
            head_since: 5,
            write_waiting_since: 7,
            ..idle(1_000_000)
        };
        let Next::Wait(at) = state.next(&t) else {
            panic!("{:?}", state.next(&t));
        };
        let shared = Shared {
            timeouts: t,
            epoch: Instant::now(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            changed: Notify::new(),
        };
        // At most a day away, without overflowing.
        assert!(shared.at(at) <= Instant::now() + Duration::from_secs(24 * 3600 + 1));
        assert!(shared.at(NONE) > Instant::now());
    }

    #[test]
    fn the_task_never_sleeps_past_a_deadline_that_can_begin_while_it_sleeps() {
        // A head, an idle period or a waiting write that begins at or after
        // `now` falls due no earlier than `now` + the shorter timeout: sleeping
        // until then at most, the task needs no wake-up when one begins.
        let t = timeouts();
        for now in [0, 1, 9_999, 10_000, 59_999, 123_456] {
            for state in [
                idle(now),
                State {
                    in_flight: true,
                    ..idle(now)
                },
                State {
                    idle_since: now,
                    ..idle(now)
                },
            ] {
                match state.next(&t) {
                    Next::Wait(at) => assert!(at <= now + 10_000, "{state:?}: {at}"),
                    other => assert!(now >= 60_000, "{state:?}: {other:?}"),
                }
            }
        }
        assert_eq!(idle(60_000).next(&t), Next::Close("idle timeout"));
        let head = State {
            head_since: 50_000,
            ..idle(55_000)
        };
        assert_eq!(head.next(&t), Next::Wait(60_000));
        let head = State {
            head_since: 45_000,
            ..idle(55_000)
        };
        assert_eq!(head.next(&t), Next::Close("header read timeout"));
    }

    #[test]
    fn a_write_waiting_for_the_idle_timeout_drops_the_connection_even_with_requests_in_flight() {
        let t = timeouts();
        let stalled = State {
            in_flight: true,
            write_waiting_since: 1_000,
            ..idle(61_000)
        };
        assert_eq!(stalled.next(&t), Next::Drop("write timeout"));
        let closing = State {
            closing: Some(0),
            ..stalled
        };
        assert_eq!(closing.next(&t), Next::Drop("write timeout"));
        let waiting = State {
            now: 60_999,
            ..stalled
        };
        assert_eq!(waiting.next(&t), Next::Wait(61_000));
    }

    #[test]
    fn an_evicted_connection_is_dropped_as_soon_as_it_has_no_request_in_flight() {
        let t = timeouts();
        let evicted = State {
            evicted: true,
            head_since: 10,
            ..idle(20)
        };
        assert_eq!(evicted.next(&t), Next::Drop("connection limit reached"));
        let busy = State {
            in_flight: true,
            ..evicted
        };
        assert!(matches!(busy.next(&t), Next::Wait(_)));
    }

    #[test]
    fn a_closing_connection_gets_its_grace_from_its_last_response_and_while_it_is_written() {
        let t = timeouts();
        // Closing since 0; the request in flight then ended at 1.5 s.
        let ended = State {
            idle_since: 1_500,
            closing: Some(0),
            ..idle(2_000)
        };
        assert_eq!(ended.next(&t), Next::Wait(2_500));
        assert_eq!(
            State {
                now: 2_500,
                ..ended
            }
            .next(&t),
            Next::Drop("not closed in time")
        );
        // Its response still being written (the client reads slowly): up to the
        // idle timeout from the close, as long as each write progresses.
        let writing = State {
            now: 30_000,
            write_waiting_since: 29_990,
            ..ended
        };
        assert_eq!(writing.next(&t), Next::Wait(40_000));
        assert_eq!(
            State {
                now: 60_000,
                write_waiting_since: 59_990,
                ..ended
            }
            .next(&t),
            Next::Drop("not closed in time")
        );
        // While requests are in flight it waits (their end wakes the task).
        let busy = State {
            in_flight: true,
            ..ended
        };
        assert_eq!(busy.next(&t), Next::Wait(12_000));
    }
}
