//! The client leaving where hyper cannot see it: an unread upload closed or
//! reset, a pipelined request, a half-close, keep-alive between requests,
//! HTTP/2 beside it, and no false abort.

use super::*;

#[tokio::test]
async fn a_client_that_closes_during_an_unread_upload_is_aborted_at_once() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/wait"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream); // FIN: nothing was sent to the client
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    server.done.assert_none();
}

#[tokio::test]
async fn a_client_that_resets_during_an_unread_upload_is_aborted_at_once() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/wait"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream); // RST
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn a_handler_reading_the_body_when_the_client_closes_is_aborted() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/read"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn a_client_that_closes_while_an_open_body_waits_is_aborted_in_the_body() {
    // The upload is unread, so hyper cannot see the close: the watch wakes
    // the waiting body, which ends as an abort.
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server
        .send(&upload("/trickle"), &some_of_the_upload())
        .await;
    read_until(&mut stream, "first\r\n").await;
    drop(stream);
    assert_aborted(&server.done.next().await, Phase::Body);
    server.done.assert_none();
}

#[tokio::test]
async fn a_client_that_resets_a_body_that_never_waited_is_aborted() {
    // The body is always ready, so nothing ever started the watcher: hyper
    // sees the client leave first (a write fails), and the watched stream
    // it wrote through tells the layer so.
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server.get("/stream").await;
    let mut buf = [0; 1024];
    let n = within("the response", stream.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream); // RST
    assert_aborted(&server.done.next().await, Phase::Body);
}

#[tokio::test]
async fn a_close_behind_a_pipelined_request_is_seen() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let second = "GET /ok HTTP/1.1\r\nhost: x\r\n\r\n";
    let stream = server
        .send("GET /wait HTTP/1.1\r\nhost: x\r\n\r\n", second.as_bytes())
        .await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn keep_alive_idle_and_a_close_between_requests_is_no_abort() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let (mut client, conn) = Client::connect(server.addr, Proto::Http1).await;
    for _ in 0..3 {
        let res = within("a response", client.send(common::get("/ok")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, "ok");
        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    }
    drop(client);
    within("the connection to close", conn).await.unwrap();
    // An abort would have been reported by now: the close was seen (the
    // client's connection task ended) and nothing was in flight.
    let res = Client::connect(server.addr, Proto::Http1)
        .await
        .0
        .send(common::get("/ok"))
        .await;
    assert_eq!(common::read_all(res.unwrap()).await, "ok");
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    server.done.assert_none();
}

#[tokio::test]
async fn the_watch_stops_between_waits_and_comes_back_for_the_next() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server.get("/pause").await;
    read_until(&mut stream, "paused").await;
    // Data with nothing waiting: the watcher stops watching.
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut stream, "ok").await;
    // The next request that waits brings it back: its client's close is
    // seen while hyper is not reading.
    stream.write_all(upload("/wait").as_bytes()).await.unwrap();
    stream.write_all(&some_of_the_upload()).await.unwrap();
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    for _ in 0..2 {
        assert_eq!(server.done.next().await.status(), ConnectionStatus::NORMAL);
    }
    assert_aborted(&server.done.next().await, Phase::Handler);
    server.done.assert_none();
}

#[tokio::test]
async fn a_half_close_is_a_goodbye_by_default() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server.get("/wait").await;
    let lifecycle = server.started().await;
    stream.shutdown().await.unwrap(); // FIN, still reading
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    // Nothing is delivered: the layer shut the connection down.
    assert_eq!(read_to_close(&mut stream).await, b"");
}

#[tokio::test]
async fn reset_only_keeps_a_half_closed_client_and_sees_its_reset() {
    let mut server = Server::start(Leaving::ResetOnly, |l| l).await;
    // A half-closed client still gets its answer.
    let mut stream = server.get("/keep").await;
    let lifecycle = server.started().await;
    stream.shutdown().await.unwrap();
    // The handler waits for an abort that does not come: the client is
    // reset later, which is then the abort.
    let mut probe = server
        .send(
            "GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            b"",
        )
        .await;
    let answer = read_to_close(&mut probe).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let done = server.done.next().await;
    assert_eq!(
        done.status(),
        ConnectionStatus::NORMAL,
        "the probe: {done:?}"
    );
    assert!(!lifecycle.is_aborted(), "a half-close is not an abort here");
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert!(matches!(server.event().await, Event::Finished));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert!(done.continued(), "{done:?}");
}

#[tokio::test]
async fn http2_streams_on_a_watched_connection_end_one_by_one() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let (client, conn) = Client::connect(server.addr, Proto::Http2).await;
    let Client::Http2(send) = client else {
        unreachable!()
    };
    // One stream waits; the client cancels it.
    let mut waiting = send.clone();
    let pending = tokio::spawn(async move { waiting.send_request(common::get("/wait")).await });
    let lifecycle = server.started().await;
    // Others complete meanwhile.
    for _ in 0..5 {
        let mut send = send.clone();
        let res = within("a response", send.send_request(common::get("/ok")))
            .await
            .unwrap();
        assert_eq!(common::read_all(res).await, "ok");
        let done = server.done.next().await;
        assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    }
    pending.abort();
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
    assert!(!conn.is_finished(), "the connection is still open");
    server.done.assert_none();
}

#[tokio::test]
async fn an_http2_client_that_closes_during_an_upload_is_aborted() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
    let req = Request::post("http://x/wait").body(body).unwrap();
    let call = tokio::spawn(async move { send.send_request(req).await });
    tx.send_data(Bytes::from(some_of_the_upload()))
        .await
        .unwrap();
    let lifecycle = server.started().await;
    call.abort();
    conn.abort();
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&server.done.next().await, Phase::Handler);
}

#[tokio::test]
async fn watching_a_socket_the_client_already_reset_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    // Wait until the reset arrived: the accepted socket reads an error.
    within("the reset", accepted.readable()).await.unwrap();
    let err = Watched::new(accepted).expect_err("a reset socket cannot be watched");
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
}

#[tokio::test]
async fn a_large_upload_read_to_its_end_is_no_abort() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    const SIZE: usize = 8 * 1024 * 1024;
    let head = format!(
        "POST /count HTTP/1.1\r\nhost: x\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
    );
    let mut stream = server.send(&head, &vec![b'u'; SIZE]).await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.ends_with(SIZE.to_string().as_bytes()),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
    server.done.assert_none();
}
