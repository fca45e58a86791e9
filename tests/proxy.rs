//! The fault-injection proxy itself: raw TCP behaviour against a local echo server, and
//! lapin against the real broker through it.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use support::proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Bound on every wait that is expected to succeed.
const BOUND: Duration = Duration::from_secs(5);

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<FaultProxy>();
};

// ---------------------------------------------------------------------------------------
// Raw TCP helpers
// ---------------------------------------------------------------------------------------

/// A local echo server counting the connections it accepted; stopped on drop.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    fn upstream(&self) -> String {
        self.addr.to_string()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = timeout(BOUND, TcpStream::connect(proxy.addr()))
        .await
        .expect("connect to the proxy in time")
        .expect("connect to the proxy");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Sends `msg` and reads the echo back, returning the round-trip time.
async fn ping(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    timeout(BOUND, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
    start.elapsed()
}

/// Whether the peer closed the connection (EOF or reset) within the bound.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 64];
    match timeout(BOUND, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("expected the connection closed, read {n} bytes"),
        Err(_) => false,
    }
}

/// Asserts nothing arrives (no data, no EOF) within `wait`.
async fn assert_silent(stream: &mut TcpStream, wait: Duration) {
    let mut buf = [0; 64];
    match timeout(wait, stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(0)) => panic!("connection closed, expected it silent"),
        Ok(Ok(n)) => panic!("read {n} bytes, expected silence"),
        Ok(Err(e)) => panic!("connection failed ({e}), expected it silent"),
    }
}

/// Polls `cond` every 10 ms until it holds, panicking after the bound.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Raw TCP tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_a_large_stream_in_order_both_ways() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let stream = connect(&proxy).await;
    let (mut r, mut w) = stream.into_split();

    // 2 MiB of a non-repeating pattern in chunks of varying size.
    let data: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        for size in [1usize, 7, 100, 1500, 65_536, 3, 200_000].iter().cycle() {
            if offset == sent.len() {
                break;
            }
            let end = (offset + size).min(sent.len());
            w.write_all(&sent[offset..end]).await.unwrap();
            offset = end;
        }
        w
    });
    let mut received = vec![0; data.len()];
    timeout(Duration::from_secs(20), r.read_exact(&mut received))
        .await
        .expect("echo of the whole stream in time")
        .expect("read the echo");
    let w = writer.await.unwrap();
    assert!(received == data, "bytes reordered or corrupted");
    assert_eq!(proxy.connections(), 1);

    // The client closing ends the proxied connection.
    drop((r, w));
    eventually("the connection to end", || proxy.connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_closes_the_client() {
    // An upstream that says goodbye and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(b"bye").await.unwrap();
    });
    let proxy = FaultProxy::start(&upstream).await;
    let mut client = connect(&proxy).await;
    let mut got = Vec::new();
    timeout(BOUND, client.read_to_end(&mut got))
        .await
        .expect("EOF in time")
        .expect("clean EOF");
    assert_eq!(got, b"bye");
    server.await.unwrap();
    // The client still holds its socket, but the proxy closed its side.
    eventually("the connection to end", || proxy.connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_direction_and_keeps_order() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let mut stream = connect(&proxy).await;
    assert!(ping(&mut stream, b"warm-up").await < Duration::from_millis(100));

    proxy.set_latency(Duration::from_millis(100));
    // One hop each way: at least twice the latency.
    let rtt = ping(&mut stream, b"slow").await;
    assert!(rtt >= Duration::from_millis(200), "round trip took {rtt:?}");

    // Many small writes under latency still come back complete and in order.
    proxy.set_latency(Duration::from_millis(20));
    let (mut r, mut w) = stream.into_split();
    let messages: Vec<u8> = (0..400u32).flat_map(|i| i.to_be_bytes()).collect();
    let sent = messages.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(4) {
            w.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        w
    });
    let mut back = vec![0; messages.len()];
    timeout(Duration::from_secs(20), r.read_exact(&mut back))
        .await
        .expect("all messages in time")
        .unwrap();
    assert_eq!(back, messages);
    let w = writer.await.unwrap();

    // Back to fast.
    proxy.set_latency(Duration::ZERO);
    let mut stream = r.reunite(w).unwrap();
    let rtt = ping(&mut stream, b"fast").await;
    assert!(rtt < Duration::from_millis(100), "round trip took {rtt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_all_closes_current_connections_only() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let mut a = connect(&proxy).await;
    let mut b = connect(&proxy).await;
    ping(&mut a, b"a").await;
    ping(&mut b, b"b").await;
    assert_eq!(proxy.connections(), 2);

    proxy.cut_all();
    assert!(closed(&mut a).await, "a was not closed");
    assert!(closed(&mut b).await, "b was not closed");
    eventually("the cut connections to be gone", || {
        proxy.connections() == 0
    })
    .await;

    // New connections are forwarded as before.
    let mut c = connect(&proxy).await;
    ping(&mut c, b"after the cut").await;
    assert_eq!(proxy.connections(), 1);
    assert_eq!(echo.accepted(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_silences_and_holds_then_heal_closes_them() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let mut old = connect(&proxy).await;
    ping(&mut old, b"before").await;

    proxy.black_hole();
    // Existing connection: bytes are not forwarded, and it is not closed either.
    old.write_all(b"into the void").await.unwrap();
    assert_silent(&mut old, Duration::from_millis(300)).await;
    // New connection: accepted, held silently, never connected upstream.
    let mut held = connect(&proxy).await;
    held.write_all(b"hello?").await.unwrap();
    assert_silent(&mut held, Duration::from_millis(300)).await;
    eventually("the held connection to be counted", || {
        proxy.connections() == 2
    })
    .await;
    assert_eq!(echo.accepted(), 1, "a held connection reached upstream");

    // A cut during the black hole closes both; the proxy stays a black hole.
    let mut held2 = connect(&proxy).await;
    eventually("the second held connection", || proxy.connections() == 3).await;
    proxy.cut_all();
    assert!(
        closed(&mut held2).await,
        "cut did not close a held connection"
    );
    assert!(
        closed(&mut held).await,
        "cut did not close a held connection"
    );
    assert!(
        closed(&mut old).await,
        "cut did not close a silenced connection"
    );
    let mut held3 = connect(&proxy).await;
    assert_silent(&mut held3, Duration::from_millis(300)).await;

    proxy.heal();
    assert!(
        closed(&mut held3).await,
        "heal did not close a held connection"
    );
    eventually("the black-holed connections to be gone", || {
        proxy.connections() == 0
    })
    .await;
    assert_eq!(echo.accepted(), 1, "a held connection reached upstream");

    let mut fresh = connect(&proxy).await;
    ping(&mut fresh, b"healed").await;
    assert_eq!(echo.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heal_closes_silenced_connections_and_clears_latency() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let mut slow = connect(&proxy).await;
    proxy.set_latency(Duration::from_millis(100));
    ping(&mut slow, b"slow").await;
    // Healing latency alone keeps the connection, and it is fast again.
    proxy.heal();
    let rtt = ping(&mut slow, b"fast").await;
    assert!(rtt < Duration::from_millis(100), "round trip took {rtt:?}");

    // Healing a black hole closes the silenced connection.
    proxy.set_latency(Duration::from_millis(100));
    proxy.black_hole();
    slow.write_all(b"lost").await.unwrap();
    assert_silent(&mut slow, Duration::from_millis(300)).await;
    proxy.heal();
    assert!(closed(&mut slow).await, "heal did not close it");
    let mut fresh = connect(&proxy).await;
    let rtt = ping(&mut fresh, b"fresh").await;
    assert!(
        rtt < Duration::from_millis(100),
        "latency survived heal: {rtt:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_closes_the_client() {
    // A port that is bound but not listening refuses connections, and no other test can
    // take it while `reserved` lives.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = reserved.local_addr().unwrap().to_string();
    let proxy = FaultProxy::start(&upstream).await;
    let mut client = connect(&proxy).await;
    assert!(closed(&mut client).await);
    eventually("the failed connection to be gone", || {
        proxy.connections() == 0
    })
    .await;
    drop(reserved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_stops_the_listener_and_closes_connections() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(&echo.upstream()).await;
    let addr = proxy.addr();
    let mut forwarded = connect(&proxy).await;
    ping(&mut forwarded, b"x").await;
    proxy.black_hole();
    let mut held = connect(&proxy).await;
    eventually("the held connection", || proxy.connections() == 2).await;

    drop(proxy);
    assert!(closed(&mut forwarded).await, "drop left a connection open");
    assert!(closed(&mut held).await, "drop left a held connection open");
    let deadline = Instant::now() + BOUND;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
            // Reached the backlog as the listener closed.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            // Connected just as the listener closed. The kernel may drop such a
            // never-accepted connection without telling a client that only reads, so
            // send a byte to provoke the reset.
            Ok(mut late) => {
                let _ = late.write_all(b"?").await;
                assert!(closed(&mut late).await, "a late connection stayed open");
            }
            Err(e) => panic!("unexpected connect error: {e}"),
        }
        assert!(Instant::now() < deadline, "the listener is still up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// lapin through the proxy, against the real broker
// ---------------------------------------------------------------------------------------

async fn amqp_connect(proxy: &FaultProxy) -> Connection {
    timeout(
        BOUND,
        Connection::connect(&proxy.amqp_url(), ConnectionProperties::default()),
    )
    .await
    .expect("AMQP connect through the proxy in time")
    .expect("AMQP connect through the proxy")
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    }
}

/// Declares, then deletes, a unique exclusive queue: a full round trip that must work.
async fn declare_and_delete(channel: &Channel) {
    let queue = support::unique("proxy");
    timeout(
        BOUND,
        channel.queue_declare(queue.as_str().into(), exclusive(), FieldTable::default()),
    )
    .await
    .expect("declare in time")
    .expect("declare");
    let deleted = timeout(
        BOUND,
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete in time")
    .expect("delete");
    assert_eq!(deleted, 0);
}

/// Time a queue declaration (and then the deletion) takes through `channel`.
async fn timed_declare(channel: &Channel) -> Duration {
    let queue = support::unique("proxy");
    let start = Instant::now();
    timeout(
        BOUND,
        channel.queue_declare(queue.as_str().into(), exclusive(), FieldTable::default()),
    )
    .await
    .expect("declare in time")
    .expect("declare");
    let elapsed = start.elapsed();
    timeout(
        BOUND,
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete in time")
    .expect("delete");
    elapsed
}

async fn wait_disconnected(connection: &Connection) {
    let deadline = Instant::now() + BOUND;
    while connection.status().connected() {
        assert!(
            Instant::now() < deadline,
            "the connection still looks connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn close(connection: Connection) {
    let _ = timeout(BOUND, connection.close(200, "test done".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_through_the_proxy() {
    require_broker!();
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let connection = amqp_connect(&proxy).await;
    assert_eq!(proxy.connections(), 1);
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = support::unique("proxy");
    channel
        .queue_declare(queue.as_str().into(), exclusive(), FieldTable::default())
        .await
        .unwrap();

    let confirmation = timeout(BOUND, async {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"through the proxy",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
    })
    .await
    .expect("confirm in time");
    assert!(confirmation.is_ack(), "not acked: {confirmation:?}");

    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the published message");
    assert_eq!(message.delivery.data, b"through the proxy");

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    close(connection).await;
    eventually("the proxied connection to end", || proxy.connections() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_notices_cut_all_and_reconnects() {
    require_broker!();
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let connection = amqp_connect(&proxy).await;
    let channel = connection.create_channel().await.unwrap();
    declare_and_delete(&channel).await;

    proxy.cut_all();
    wait_disconnected(&connection).await;
    let queue = support::unique("proxy");
    let after = timeout(
        BOUND,
        channel.queue_declare(queue.as_str().into(), exclusive(), FieldTable::default()),
    )
    .await
    .expect("a failure, not a hang");
    assert!(after.is_err(), "declared on a cut connection");

    let connection = amqp_connect(&proxy).await;
    let channel = connection.create_channel().await.unwrap();
    declare_and_delete(&channel).await;
    close(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_hangs_in_a_black_hole_and_a_new_connection_works_after_heal() {
    require_broker!();
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let connection = amqp_connect(&proxy).await;
    let channel = connection.create_channel().await.unwrap();
    declare_and_delete(&channel).await;

    proxy.black_hole();
    let queue = support::unique("proxy");
    let start = Instant::now();
    let stuck = timeout(
        Duration::from_millis(500),
        channel.queue_declare(queue.as_str().into(), exclusive(), FieldTable::default()),
    )
    .await;
    assert!(stuck.is_err(), "queue.declare completed in a black hole");
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert!(
        connection.status().connected(),
        "a black hole must not close the connection"
    );
    let stuck = timeout(
        Duration::from_millis(500),
        Connection::connect(&proxy.amqp_url(), ConnectionProperties::default()),
    )
    .await;
    assert!(stuck.is_err(), "connected through a black hole");

    proxy.heal();
    wait_disconnected(&connection).await;
    let connection = amqp_connect(&proxy).await;
    let channel = connection.create_channel().await.unwrap();
    declare_and_delete(&channel).await;
    close(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_round_trips_take_the_latency_until_heal() {
    require_broker!();
    let proxy = FaultProxy::start(&support::broker_addr()).await;
    let connection = amqp_connect(&proxy).await;
    let channel = connection.create_channel().await.unwrap();
    timed_declare(&channel).await;

    proxy.set_latency(Duration::from_millis(200));
    let slow = timed_declare(&channel).await;
    assert!(slow >= Duration::from_millis(200), "declare took {slow:?}");

    proxy.heal();
    let fast = timed_declare(&channel).await;
    assert!(fast < Duration::from_millis(200), "declare took {fast:?}");
    assert!(connection.status().connected());
    close(connection).await;
}
