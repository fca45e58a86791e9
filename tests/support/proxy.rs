//! A TCP fault-injection proxy for the integration tests.
//!
//! [`FaultProxy`] listens on `127.0.0.1:0` and forwards every accepted connection to an
//! upstream address (normally the broker). At any time a test can cut every connection,
//! turn the proxy into a black hole, add latency, or heal it back to normal forwarding.
//!
//! Design: one accept-loop task owns a [`JoinSet`] of connection tasks, so aborting the
//! accept loop (on drop) aborts every connection too. The fault mode lives in a
//! [`watch`] channel; each connection remembers the *generation* it was accepted in and
//! ends (dropping both sockets) as soon as the generation moves on (`cut_all`, or
//! `heal` after a black hole). Each connection runs two pumps, one per direction, that
//! read a chunk, sleep for the current latency, and write it; they park while the proxy
//! is a black hole. Pumps only use cancel-safe `read`/`write` calls, so no byte is lost
//! or reordered when a mode change interrupts them. EOF or an error on either side closes
//! the whole connection (half-close is not proxied), which is what AMQP needs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// Size of the buffer each pump reads into.
const CHUNK: usize = 16 * 1024;

/// The fault mode shared by every connection task.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    /// Bumped to close every connection accepted before the bump.
    generation: u64,
    /// Stop forwarding; hold new connections without connecting them upstream.
    black_hole: bool,
    /// Delay before forwarding each chunk, in both directions.
    latency: Duration,
}

/// A TCP proxy that can cut, black-hole or slow down the connections it forwards.
///
/// Dropping it stops the listener and aborts every connection task (clients see their
/// connection closed). Not `Clone`: the proxy lives exactly as long as this handle.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    open: Arc<AtomicUsize>,
    accept_task: AbortHandle,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to `upstream`
    /// (`"host:port"`, resolved on every connection).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fault proxy: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy: local addr");
        let (mode, mode_rx) = watch::channel(Mode::default());
        let open = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::from(upstream),
            mode_rx,
            Arc::clone(&open),
        ))
        .abort_handle();
        FaultProxy {
            addr,
            mode,
            open,
            accept_task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An AMQP URL for the default vhost through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Closes every current connection (both sockets are dropped: the client sees EOF or a
    /// reset). The mode is unchanged: in normal mode new connections are forwarded, while
    /// a black hole keeps holding them. "Current" means accepted by the proxy: a client
    /// whose connection is still in the kernel's accept backlog is not cut (once
    /// [`connections`](Self::connections) counts it, it is).
    pub fn cut_all(&self) {
        self.mode.send_modify(|m| m.generation += 1);
    }

    /// Stops forwarding bytes in both directions on existing connections (they stay open,
    /// silently) and holds new connections without ever connecting them upstream.
    pub fn black_hole(&self) {
        self.mode.send_modify(|m| m.black_hole = true);
    }

    /// Delays each chunk by `latency` before forwarding it, in both directions
    /// (`Duration::ZERO` for none). Byte order is preserved per direction. The delay is
    /// per chunk and sequential, so it also throttles throughput.
    pub fn set_latency(&self, latency: Duration) {
        self.mode.send_modify(|m| m.latency = latency);
    }

    /// Back to normal forwarding: clears the black hole and the latency. If the proxy was a
    /// black hole, every current connection is closed (as by [`cut_all`](Self::cut_all))
    /// so clients reconnect cleanly; connections that were only slowed down stay open.
    pub fn heal(&self) {
        self.mode.send_modify(|m| {
            if m.black_hole {
                m.generation += 1;
            }
            m.black_hole = false;
            m.latency = Duration::ZERO;
        });
    }

    /// Number of client connections currently open on the proxy, including connections
    /// held by a black hole. Closing is asynchronous: after a cut, poll until it drops.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept loop owns the JoinSet of connection tasks: aborting it drops the
        // listener and aborts every connection. Dropping `mode` also wakes every pump.
        self.accept_task.abort();
    }
}

/// Counts an open client connection for as long as it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Open(Arc::clone(count))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Arc<str>,
    mode: watch::Receiver<Mode>,
    open: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    // The connection belongs to the generation current when it is
                    // accepted, so a `cut_all` issued after this point closes it even if
                    // its task has not started yet. Counted after that, so a test that
                    // sees the count and then cuts always cuts this connection.
                    let generation = mode.borrow().generation;
                    let guard = Open::new(&open);
                    connections.spawn(serve(
                        client,
                        Arc::clone(&upstream),
                        mode.clone(),
                        generation,
                        guard,
                    ));
                }
                // E.g. too many open files: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections (a panicking one only ends itself).
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a guarded operation did not complete.
enum Stop {
    /// The connection was cut (or the proxy dropped): close it.
    Cut,
    /// The proxy became a black hole: park, then retry.
    Paused,
}

/// The mode as it is now, or `Err(Cut)` if the connection of `generation` has been cut.
fn current(mode: &mut watch::Receiver<Mode>, generation: u64) -> Result<Mode, Stop> {
    let m = *mode.borrow_and_update();
    if m.generation == generation {
        Ok(m)
    } else {
        Err(Stop::Cut)
    }
}

/// Waits while the proxy is a black hole; `Err(Cut)` if this connection is cut meanwhile.
async fn wait_open(mode: &mut watch::Receiver<Mode>, generation: u64) -> Result<Mode, Stop> {
    loop {
        let m = current(mode, generation)?;
        if !m.black_hole {
            return Ok(m);
        }
        if mode.changed().await.is_err() {
            return Err(Stop::Cut);
        }
    }
}

/// Runs `fut` until it completes, or until this connection is cut (`Err(Cut)`) or, if
/// `pausable`, the proxy becomes a black hole (`Err(Paused)`). `fut` is then dropped, so it
/// must be cancel-safe.
async fn guarded<F: Future>(
    mode: &mut watch::Receiver<Mode>,
    generation: u64,
    pausable: bool,
    fut: F,
) -> Result<F::Output, Stop> {
    tokio::pin!(fut);
    loop {
        if current(mode, generation)?.black_hole && pausable {
            return Err(Stop::Paused);
        }
        tokio::select! {
            biased;
            changed = mode.changed() => {
                if changed.is_err() {
                    return Err(Stop::Cut);
                }
            }
            out = &mut fut => return Ok(out),
        }
    }
}

/// One proxied connection: hold it while black-holed, connect upstream, pump both ways.
async fn serve(
    client: TcpStream,
    upstream: Arc<str>,
    mut mode: watch::Receiver<Mode>,
    generation: u64,
    _open: Open,
) {
    let server = loop {
        // A connection accepted during a black hole is held here, unanswered, until heal
        // or cut closes it.
        if wait_open(&mut mode, generation).await.is_err() {
            return;
        }
        match guarded(&mut mode, generation, true, TcpStream::connect(&*upstream)).await {
            Ok(Ok(server)) => break server,
            // Upstream refused: close the client like an unreachable server would.
            Ok(Err(_)) | Err(Stop::Cut) => return,
            Err(Stop::Paused) => continue,
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, mode.clone(), generation);
    let down = pump(server_read, client_write, mode, generation);
    // EOF or an error on either side, or a cut, closes the whole connection: half-close is
    // not proxied. Bytes read before an EOF have been delivered when its pump ends.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Forwards one direction until EOF (`Ok`, after a `shutdown` of the writer), an I/O error
/// or a cut (`Err`).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    generation: u64,
) -> Result<(), Stop> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Read a chunk, but not while black-holed (the bytes stay in the kernel).
        let n = loop {
            wait_open(&mut mode, generation).await?;
            match guarded(&mut mode, generation, true, from.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Ok(Ok(n)) => break n,
                Ok(Err(_)) => return Err(Stop::Cut),
                Err(Stop::Paused) => continue,
                Err(Stop::Cut) => return Err(Stop::Cut),
            }
        };
        // Latency as it is when the chunk is read; a cut interrupts the wait.
        let latency = current(&mut mode, generation)?.latency;
        if !latency.is_zero() {
            guarded(&mut mode, generation, false, tokio::time::sleep(latency)).await?;
        }
        // Write it all, parking (with the chunk) while black-holed.
        let mut written = 0;
        while written < n {
            wait_open(&mut mode, generation).await?;
            match guarded(&mut mode, generation, true, to.write(&buf[written..n])).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Stop::Cut),
                Ok(Ok(k)) => written += k,
                Err(Stop::Paused) => continue,
                Err(Stop::Cut) => return Err(Stop::Cut),
            }
        }
    }
}
