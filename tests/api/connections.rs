//! Slow and idle clients must not exhaust the server (src/http/serve.rs): the
//! header-read and idle timeouts close the connections that hold descriptors
//! without asking anything, the connection cap makes room for new clients, and
//! a real `keyledger serve` under a low open-file limit keeps answering while
//! hundreds of idle and trickling sockets are open. These test the HTTP layer,
//! not the store: SQLite only.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{start, token, Backend, TestApp, TestStore, SECRET};

async fn server(adjust: impl FnOnce(&mut keyledger::Config)) -> TestApp {
    let store = TestStore::new(Backend::Sqlite).await.expect("sqlite store");
    start(store, adjust).await
}

fn socket_address(app: &TestApp) -> SocketAddr {
    app.address
        .trim_start_matches("http://")
        .parse()
        .expect("socket address")
}

/// Reads until the server closes the connection (end of stream or reset);
/// returns how long that took and what arrived before. Panics after `bound`.
async fn closed_within(
    reader: &mut (impl AsyncRead + Unpin),
    bound: Duration,
) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = bound.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Err(_) => panic!(
                "the server did not close the connection within {bound:?} (received {} bytes: {:?})",
                received.len(),
                String::from_utf8_lossy(&received[..received.len().min(200)])
            ),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> StatusCode {
    sender.ready().await.expect("connection still usable");
    let request = hyper::Request::get(path)
        .header("host", "keyledger")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    response.into_body().collect().await.expect("body");
    StatusCode::from_u16(status.as_u16()).expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickling_in_is_cut_off_after_the_header_read_timeout() {
    let app = server(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let stream = TcpStream::connect(socket_address(&app))
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // Steady progress, a header line every 250 ms, does not extend the timeout:
    // it bounds the whole head.
    let trickler = tokio::spawn(async move {
        if writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyledger\r\n")
            .await
            .is_err()
        {
            return;
        }
        for n in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let line = format!("X-Slow-{n}: 1\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let (after, received) = closed_within(&mut reader, Duration::from_secs(10)).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the header-read timeout"
    );
    assert!(
        received.is_empty(),
        "no answer to an incomplete head: {:?}",
        String::from_utf8_lossy(&received)
    );
    trickler.abort();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout() {
    let app = server(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(socket_address(&app))
        .await
        .expect("connect");
    let (after, received) = closed_within(&mut stream, Duration::from_secs(10)).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the idle timeout"
    );
    assert!(received.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_outlives_the_header_read_timeout_and_closes_after_the_idle_timeout(
) {
    let app = server(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(4);
    })
    .await;
    let stream = TcpStream::connect(socket_address(&app))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let mut conn = tokio::spawn(conn);
    assert_eq!(get(&mut sender, "/healthz").await, StatusCode::OK);
    // Longer than the header-read timeout, shorter than the idle timeout: the
    // header-read timeout runs from a head's first byte, not from the last response.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&mut sender, "/healthz").await, StatusCode::OK);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), &mut conn)
        .await
        .expect("the idle keep-alive connection was not closed within 15 s")
        .expect("connection task")
        .expect("connection closed cleanly");
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_secs(3),
        "closed {after:?} after the last response, before the idle timeout"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_served_and_an_idle_http2_connection_is_closed() {
    let app = server(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(socket_address(&app))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    let mut conn = tokio::spawn(conn);
    let request = hyper::Request::get(app.url("/healthz"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("HTTP/2 response");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    response.into_body().collect().await.expect("body");
    tokio::time::timeout(Duration::from_secs(10), &mut conn)
        .await
        .expect("the idle HTTP/2 connection was not closed within 10 s")
        .expect("connection task")
        .expect("connection closed cleanly");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room_for_a_new_client() {
    let app = server(|c| c.max_connections = Some(3)).await;
    let address = socket_address(&app);
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(address).await.expect("connect"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let r = client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("a new client is served at the cap");
    assert_eq!(r.status(), StatusCode::OK);
    closed_within(&mut idle[0], Duration::from_secs(5)).await;
    let mut buf = [0u8; 16];
    for stream in &mut idle[1..] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf))
                .await
                .is_err(),
            "only the longest-idle connection is closed"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_client_waits_until_one_frees() {
    let app = server(|c| c.max_connections = Some(2)).await;
    let address = socket_address(&app);
    let body = r#"{"key": "kl_live_nothing_to_see_here"}"#;
    let (first, rest) = body.split_at(10);
    let head = format!(
        "POST /v1/keys/verify HTTP/1.1\r\nHost: keyledger\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{first}",
        body.len()
    );
    // Two requests in flight, each waiting for the rest of its body.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let url = app.url("/healthz");
    let mut waiting = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    if let Ok(early) = tokio::time::timeout(Duration::from_secs(1), &mut waiting).await {
        panic!("a new client is not served while every connection is busy: {early:?}");
    }
    busy[0].write_all(rest.as_bytes()).await.expect("write");
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served within 5 s once a connection went idle")
        .expect("task")
        .expect("healthz");
    assert_eq!(status, StatusCode::OK);
    // The freed connection got its answer, then made room.
    let (_, response) = closed_within(&mut busy[0], Duration::from_secs(5)).await;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    drop(busy);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_the_request_in_flight_and_does_not_wait_for_idle_or_trickling_clients() {
    let app = server(|c| {
        c.header_read_timeout = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let address = socket_address(&app);
    let mut idle = TcpStream::connect(address).await.expect("connect");
    let mut trickler = TcpStream::connect(address).await.expect("connect");
    trickler
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyledger\r\n")
        .await
        .expect("write");
    let body = r#"{"key": "kl_live_nothing_to_see_here"}"#;
    let (first, rest) = body.split_at(10);
    let head = format!(
        "POST /v1/keys/verify HTTP/1.1\r\nHost: keyledger\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{first}",
        body.len()
    );
    let mut busy = TcpStream::connect(address).await.expect("connect");
    busy.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the server waits for the request in flight"
    );
    busy.write_all(rest.as_bytes()).await.expect("write");
    let (_, response) = closed_within(&mut busy, Duration::from_secs(10)).await;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "the request in flight is answered: {}",
        String::from_utf8_lossy(&response)
    );
    let _store = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within 10 s with an idle and a trickling connection open")
        .expect("stop");
    closed_within(&mut idle, Duration::from_secs(1)).await;
    closed_within(&mut trickler, Duration::from_secs(1)).await;
}

/// A real `keyledger serve` whose open-file limit (soft and hard) is `limit`.
struct Serve {
    child: Child,
    address: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    fn start(limit: u32, data_dir: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_keyledger"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_clear()
            .env("KEYLEDGER_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyledger serve");
        let pipe = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let captured = log.clone();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                captured
                    .lock()
                    .expect("lock")
                    .push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let address = rest.split_whitespace().next().expect("address");
                        break address.parse().expect("socket address");
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "no `listening on` line within 30 s ({e}):\n{}",
                        log.lock().expect("lock")
                    );
                }
            }
        };
        Serve {
            child,
            address,
            log,
            reader: Some(reader),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// SIGTERM, then wait (bounded) for the exit; returns its status and the log.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "keyledger did not exit within 30 s of SIGTERM:\n{}",
                self.log.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("log reader");
        }
        let log = self.log.lock().expect("lock").clone();
        (status, log)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Only reached when a test fails before `terminate`.
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_file_limit_idle_and_trickling_clients_do_not_lock_out_real_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(256, &dir.path().join("data"), &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let created = client
        .post(server.url("/v1/keys"))
        .bearer_auth(token("acme", "alice"))
        .json(&json!({"name": "flood", "permissions": ["keys:read"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_string();

    // 300 sockets that never send a byte: more than the 256 descriptors the
    // process may open.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            TcpStream::connect(server.address)
                .await
                .expect("connect idle"),
        );
    }
    // And some that send a header line every 4 s, never finishing the head.
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.address)
            .await
            .expect("connect trickler");
        tricklers.push(tokio::spawn(async move {
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: keyledger\r\n")
                .await
                .is_err()
            {
                return;
            }
            for n in 0..5 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let line = format!("X-Slow-{n}: 1\r\n");
                if stream.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    for round in 0..2 {
        // A client of its own each time: a new connection has to get in.
        let other = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let started = Instant::now();
        let health = other
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: /healthz did not answer within 5 s: {e}"));
        assert_eq!(health.status(), StatusCode::OK);
        let verified = other
            .post(server.url("/v1/keys/verify"))
            .json(&json!({ "key": key }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: verify did not answer within 5 s: {e}"));
        assert_eq!(verified.status(), StatusCode::OK);
        let verified: Value = verified.json().await.expect("json");
        assert_eq!(verified["code"], "VALID");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round {round} took {:?}",
            started.elapsed()
        );
        if round == 0 {
            // Let the tricklers send another line.
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
    }

    let (status, log) = server.terminate();
    for trickler in tricklers {
        trickler.abort();
    }
    drop(idle);
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}:\n{log}"
    );
    assert!(
        log.contains("connection limit reached"),
        "reaching the cap is logged:\n{log}"
    );
    assert!(
        log.matches("connection limit reached").count() <= 3,
        "the cap warning is rate-limited:\n{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
}

/// A connection whose receive buffer is as small as the kernel allows, so that
/// a client that does not read fills it (and the server's send buffer) quickly.
async fn connect_with_small_receive_buffer(address: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(address).await.expect("connect")
}

/// Writes `count` pipelined `GET path` requests, then holds the write half
/// open (closing it would tell the server the client is done).
fn pipeline(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    path: &'static str,
    count: usize,
) -> tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf> {
    tokio::spawn(async move {
        let request = format!("GET {path} HTTP/1.1\r\nHost: keyledger\r\n\r\n");
        let all = request.repeat(count);
        let _ = writer.write_all(all.as_bytes()).await;
        writer
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_that_never_reads_is_closed_and_does_not_hold_a_slot() {
    let app = server(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.max_connections = Some(1);
    })
    .await;
    let address = socket_address(&app);
    // Well over what the kernel buffers on both sides and hyper's write buffer
    // hold: the server ends up with a response it cannot write and a request
    // waiting behind it, for as long as the client does not read.
    let stream = connect_with_small_receive_buffer(address).await;
    let (mut reader, writer) = stream.into_split();
    let writer = pipeline(writer, "/openapi.json", 600);
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The only slot is taken by that connection: a new client gets in only once
    // the server gives up on it (it makes no write progress for the idle timeout).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let started = Instant::now();
    let r = client.get(app.url("/healthz")).send().await.expect(
        "a new client is served once the connection that never reads has been closed \
         (it held the only slot)",
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served after {:?}",
        started.elapsed()
    );
    // Closed: reading now gives what the kernel had buffered, then the end.
    closed_within(&mut reader, Duration::from_secs(5)).await;
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped within 10 s");
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The start of an HTTP/2 connection (prior knowledge) whose streams allow the
/// server `window` bytes each; above the default, the connection's window is
/// opened as wide as it goes too.
fn h2_preface(window: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: INITIAL_WINDOW_SIZE (0x4).
    let mut settings = vec![0, 0x4];
    settings.extend_from_slice(&window.to_be_bytes());
    out.extend(h2_frame(0x4, 0, 0, &settings));
    if window > 65_535 {
        let increment: u32 = 0x7fff_ffff - 65_535;
        out.extend(h2_frame(0x8, 0, 0, &increment.to_be_bytes()));
    }
    out
}

/// A request head (HEADERS with END_HEADERS, and END_STREAM when it has no
/// body). HPACK: :method and :scheme indexed, the rest literals without
/// indexing (indexed names: :path 4, :authority 1, content-type 31).
fn h2_request(stream: u32, method: &str, path: &str) -> Vec<u8> {
    let post = method == "POST";
    let mut block = vec![if post { 0x83 } else { 0x82 }, 0x86, 0x04];
    block.push(u8::try_from(path.len()).expect("short path"));
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"keyledger");
    if post {
        block.extend_from_slice(&[0x0f, 16, 16]);
        block.extend_from_slice(b"application/json");
    }
    h2_frame(0x1, if post { 0x4 } else { 0x5 }, stream, &block)
}

fn h2_data(stream: u32, data: &[u8], end_stream: bool) -> Vec<u8> {
    h2_frame(0x0, u8::from(end_stream), stream, data)
}

/// The frames in what arrived, as (type, flags, stream), and how many bytes of
/// an incomplete frame are left at the end.
fn h2_frames(mut bytes: &[u8]) -> (Vec<(u8, u8, u32)>, usize) {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        frames.push((bytes[3], bytes[4], stream));
        bytes = &bytes[9 + len..];
    }
    (frames, bytes.len())
}

/// An HTTP/2 client (raw frames) that allows the server no window at all
/// (SETTINGS_INITIAL_WINDOW_SIZE = 0) and asks `GET /healthz` on `streams`
/// streams: the server can send the response heads but no body byte.
async fn h2_client_with_no_window(address: SocketAddr, streams: u32) -> TcpStream {
    let mut out = h2_preface(0);
    for n in 0..streams {
        out.extend(h2_request(2 * n + 1, "GET", "/healthz"));
    }
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(&out).await.expect("write");
    stream
}

const VERIFY_BODY: &str = r#"{"key": "kl_live_nothing_to_see_here"}"#;

/// An HTTP/2 client (raw frames, wide windows) that begins `POST
/// /v1/keys/verify` on stream 1 (its body not finished: a request in flight),
/// then asks `GET path` on `gets` more streams and does not read. The rest of
/// the body goes out when `finish` fires.
fn h2_in_flight_and_flooding(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    path: &'static str,
    gets: u32,
    finish: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf> {
    tokio::spawn(async move {
        let (first, rest) = VERIFY_BODY.split_at(10);
        let mut out = h2_preface(0x7fff_ffff);
        out.extend(h2_request(1, "POST", "/v1/keys/verify"));
        out.extend(h2_data(1, first.as_bytes(), false));
        for n in 1..=gets {
            out.extend(h2_request(2 * n + 1, "GET", path));
        }
        if writer.write_all(&out).await.is_err() {
            return writer;
        }
        if finish.await.is_ok() {
            let _ = writer.write_all(&h2_data(1, rest.as_bytes(), true)).await;
        }
        writer
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_cannot_be_written_is_closed_even_with_a_request_in_flight() {
    let app = server(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.max_connections = Some(1);
        c.body_read_timeout = Duration::from_secs(60);
    })
    .await;
    let address = socket_address(&app);
    let stream = connect_with_small_receive_buffer(address).await;
    let (mut reader, writer) = stream.into_split();
    let (_finish, finishing) = tokio::sync::oneshot::channel();
    let writer = h2_in_flight_and_flooding(writer, "/console/console.js", 400, finishing);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Its request in flight (waiting for a body that does not come) kept it
    // from ever being idle; its writes have made no progress for the idle
    // timeout, so it is closed and the new client gets the only slot.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let started = Instant::now();
    let r = client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("a new client is served once the stalled connection is closed");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served after {:?}",
        started.elapsed()
    );
    closed_within(&mut reader, Duration::from_secs(5)).await;
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_that_ends_late_is_answered_whole_http2() {
    let app = server(|c| {
        c.idle_timeout = Duration::from_secs(30);
        c.body_read_timeout = Duration::from_secs(60);
    })
    .await;
    let address = socket_address(&app);
    let stream = connect_with_small_receive_buffer(address).await;
    let (mut reader, writer) = stream.into_split();
    let (finish, finishing) = tokio::sync::oneshot::channel();
    let writer = h2_in_flight_and_flooding(writer, "/console/console.js", 100, finishing);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stopping = tokio::spawn(app.stop());
    // The request in flight ends longer after shutdown began than the grace a
    // closing connection gets, and its answer queues behind megabytes the
    // client has not read yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !stopping.is_finished(),
        "the server waits for the request in flight"
    );
    finish.send(()).expect("writer");
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not closed within 60 s"
        );
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Err(_) => panic!("no byte within 10 s"),
            Ok(Ok(0)) => break "end of stream".to_string(),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break format!("error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let (frames, left) = h2_frames(&received);
    let answered = frames
        .iter()
        .any(|&(kind, flags, stream)| stream == 1 && kind <= 1 && flags & 0x1 != 0);
    assert!(
        answered,
        "stream 1 was not answered whole ({} frames, {left} bytes of a frame cut off, then {ended})",
        frames.len()
    );
    assert_eq!(left, 0, "a frame cut off ({ended})");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within 10 s of the last response")
        .expect("stop");
    drop(writer.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_opens_no_window_is_closed_and_does_not_hold_a_slot() {
    let app = server(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.max_connections = Some(1);
    })
    .await;
    let address = socket_address(&app);
    // Alone, it is closed by the idle timeout: the responses are written as far
    // as the client lets them, nothing is left for the application to do.
    let mut alone = h2_client_with_no_window(address, 50).await;
    let (after, _) = closed_within(&mut alone, Duration::from_secs(8)).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the idle timeout"
    );
    // At the cap it makes room for a new client at once.
    let mut blocking = h2_client_with_no_window(address, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    let r = client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("a new client is served at the cap");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "served after {:?}: the stalled connection was not evicted but waited out",
        started.elapsed()
    );
    closed_within(&mut blocking, Duration::from_secs(5)).await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped within 10 s");
}

/// Splits what arrived on an HTTP/1.1 connection into responses (each with a
/// Content-Length); returns how many were complete and the bytes left over.
fn split_responses(mut bytes: &[u8]) -> (usize, usize) {
    let mut complete = 0;
    loop {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (complete, bytes.len());
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().expect("content-length"))
            .expect("a content-length");
        let total = end + 4 + length;
        if bytes.len() < total {
            return (complete, bytes.len());
        }
        complete += 1;
        bytes = &bytes[total..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_still_being_written_at_shutdown_is_received_whole_http1() {
    let app = server(|c| c.idle_timeout = Duration::from_secs(30)).await;
    let address = socket_address(&app);
    let stream = connect_with_small_receive_buffer(address).await;
    let (mut reader, writer) = stream.into_split();
    // Few enough requests for hyper to read in one go (none left unread in the
    // kernel, which would turn the close into a reset), enough responses to fill
    // every buffer: a response is left half-written while the client does not read.
    let writer = pipeline(writer, "/console/console.js", 100);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stopping = tokio::spawn(app.stop());
    // Longer than the grace a closing connection gets.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped_early = stopping.is_finished();
    // Now read, slowly: the response takes a while to write.
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not closed within 60 s"
        );
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Err(_) => panic!("no byte within 10 s"),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("connection reset after {} bytes: {e}", received.len()),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (complete, left) = split_responses(&received);
    assert!(complete >= 1, "no response received");
    assert_eq!(
        left, 0,
        "after {complete} whole responses, the next was cut off after {left} bytes"
    );
    assert!(
        !stopped_early,
        "the server waits for the response being written"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within 10 s of the last response")
        .expect("stop");
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_too_long_to_add_to_an_instant_mean_never() {
    let app = server(|c| {
        c.idle_timeout = Duration::MAX;
        c.header_read_timeout = Duration::from_secs(u64::MAX);
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let r = client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("served (the connection task does not panic)");
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped within 10 s");
}

/// Sockets open in process `pid`.
fn open_sockets(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_evicted_at_the_cap_do_not_keep_their_sockets_open() {
    const CAP: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(256, &dir.path().join("data"), &["--max-connections", "8"]);
    let pid = server.child.id();
    let baseline = open_sockets(pid);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(open_sockets(pid));
                std::thread::sleep(Duration::from_millis(1));
            }
            most
        })
    };
    // A burst of clients each sending 30 bytes of a head: each new one evicts
    // the longest idle, whose socket must be closed before another is let in.
    let mut clients = Vec::new();
    for _ in 0..400 {
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: k").await;
        clients.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let health = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("served after the burst");
    assert_eq!(health.status(), StatusCode::OK);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().expect("sampler");
    drop(clients);
    drop(client);
    let (status, log) = server.terminate();
    assert!(
        most <= baseline + CAP + 1,
        "{most} sockets open at most ({baseline} before the burst), cap {CAP} (+1 being admitted)"
    );
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(!log.contains("Too many open files"), "{log}");
}
