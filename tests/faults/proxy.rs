//! A TCP proxy the tests can cut: while disabled it has closed its port (new
//! connections are refused) and dropped every open connection, as a database
//! that went away would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct Proxy {
    pub address: SocketAddr,
    upstream: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = probe.local_addr().expect("address");
        drop(probe);
        let proxy = Self {
            address,
            upstream,
            acceptor: Mutex::new(None),
            connections: Arc::default(),
        };
        proxy.enable();
        proxy
    }

    /// Opens the port and forwards connections.
    pub fn enable(&self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.address).expect("bind proxy port");
        let listener = socket.listen(128).expect("listen");
        let (upstream, conns) = (self.upstream, self.connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().expect("lock").push(task.abort_handle());
            }
        });
        *self.acceptor.lock().expect("lock") = Some(task);
    }

    /// Closes the port and cuts every connection.
    pub fn disable(&self) {
        if let Some(t) = self.acceptor.lock().expect("lock").take() {
            t.abort();
        }
        for c in self.connections.lock().expect("lock").drain(..) {
            c.abort();
        }
    }
}

/// Puts a proxy between `store`'s node and its PostgreSQL database: the
/// store's URL is rewritten to go through it. Returns the proxy and the
/// database's own URL (to look at it behind the node's back).
pub async fn between(store: &mut crate::helpers::TestStore) -> (Proxy, String) {
    let direct = store.database_url.clone().expect("postgres url");
    let mut url = url::Url::parse(&direct).expect("url");
    let upstream = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().unwrap_or(5432)
    );
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .expect("resolve")
        .next()
        .expect("address");
    let proxy = Proxy::start(upstream).await;
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(proxy.address.port())).expect("port");
    store.database_url = Some(url.to_string());
    (proxy, direct)
}
