//! A TCP proxy for tests that can make the network go silent: `blackhole()` stops forwarding on
//! every connection open at that moment, in both directions, without closing either side (as a
//! failover to a new address, a dead NAT entry or a hung server does), while connections accepted
//! afterwards forward normally.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    target: Mutex<SocketAddr>,
    /// Bumped by `blackhole()`; each connection watches it from the value it was accepted under.
    cut: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared { target: Mutex::new(target), cut: watch::channel(0).0 });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, accept }
    }

    /// Every connection open now stops forwarding, forever; both sockets stay open.
    pub fn blackhole(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Connections accepted from now on go to `target`.
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// `url` (a `postgres://` URL naming the target's port) rewritten to go through this proxy.
    pub fn url(&self, url: &str, target_port: u16) -> String {
        let via = url.replacen(&format!(":{target_port}/"), &format!(":{}/", self.addr.port()), 1);
        assert_ne!(via, url, "{url} does not name port {target_port}");
        via
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else { continue };
        let target = *shared.target.lock().unwrap_or_else(|e| e.into_inner());
        let cut = shared.cut.subscribe();
        conns.spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else { return };
            forward(client, server, cut).await;
        });
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, mut cut: watch::Receiver<u64>) {
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {
            // Black-holed: hold both sockets open and never touch them again.
            std::future::pending::<()>().await;
        }
    }
}
