//! What the server side gains from the watch: a stalled reader cut at the
//! time limit (over HTTP/1.1; an HTTP/2 stream's limit leaves the
//! connection alone), ignore-abort for a client that left unseen, no socket kept
//! open by a handle, an outer layer's drop told from an abort, and the
//! watch under `axum::serve` and TLS.

use super::*;

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_time_limit() {
    let mut server = Server::start(Leaving::FinOrReset, |l| {
        l.time_limit(Duration::from_millis(300))
    })
    .await;
    let mut stream = server.get("/stream").await;
    // The client reads nothing; the layer cuts the connection at the limit
    // while the client is still there.
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::TIMEOUT, "{done:?}");
    assert_eq!(done.phase(), Phase::Body, "{done:?}");
    assert!(!done.cancelled(), "{done:?}");
    let got = read_to_close(&mut stream).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "the head was sent");
}

#[tokio::test]
async fn an_http2_stream_stalled_past_its_limit_leaves_its_connection_alone() {
    // Over HTTP/2 the watch never cuts the connection at one stream's
    // limit: the connection carries other streams.
    let mut server = Server::start(Leaving::FinOrReset, |l| {
        l.time_limit(Duration::from_millis(300))
    })
    .await;
    let (mut client, _conn) = Client::connect(server.addr, Proto::Http2).await;
    // A never-ending body the client does not read: once the flow control
    // windows fill, hyper stops polling it, so its own timer never fires.
    let stalled = within(
        "the stalled stream's head",
        client.send(common::get("/stream")),
    )
    .await
    .unwrap();
    assert_eq!(stalled.status(), http::StatusCode::OK);
    // A stream that answers well after the stalled one's limit.
    let late = within("the late stream's head", client.send(common::get("/late")))
        .await
        .expect("the connection outlives the stalled stream's limit");
    assert_eq!(common::read_all(late).await, "late");
    let done = server.done.next().await;
    assert_eq!(
        done.status(),
        ConnectionStatus::NORMAL,
        "the late one: {done:?}"
    );
    // The stalled stream ends when its client leaves, past its limit.
    drop((client, stalled));
    let done = server.done.next().await;
    assert!(
        done.status().contains(ConnectionStatus::ABORTED),
        "{done:?}"
    );
    assert_eq!(done.phase(), Phase::Body, "{done:?}");
}

#[tokio::test]
async fn ignore_abort_continues_a_handler_whose_client_left_unseen() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let stream = server.send(&upload("/keep"), &some_of_the_upload()).await;
    let lifecycle = server.started().await;
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert!(matches!(server.event().await, Event::Finished));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::ABORTED, "{done:?}");
    assert_eq!(done.phase(), Phase::Continued, "{done:?}");
    assert!(done.continued(), "{done:?}");
}

#[tokio::test]
async fn a_lifecycle_kept_in_a_task_does_not_keep_the_socket_open() {
    let mut server = Server::start(Leaving::FinOrReset, |l| l).await;
    let mut stream = server.get("/close").await;
    let got = read_to_close(&mut stream).await;
    assert!(got.ends_with(b"bye"), "{:?}", String::from_utf8_lossy(&got));
    let done = server.done.next().await;
    assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
}

#[tokio::test]
async fn an_outer_timeout_with_the_client_still_there_is_cancelled_not_aborted() {
    let (layer, mut done) = common::layer();
    let (svc, mut events) = app(layer);
    let svc = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
        // TimeoutLayer's own answer needs a body with a `Default`.
        .map_response(|res: Response<_>| res.map(BodyExt::boxed_unsync))
        .service(svc);
    let addr = serve_watched(svc, Leaving::FinOrReset).await;
    for proto in common::BOTH {
        let (mut client, _conn) = Client::connect(addr, proto).await;
        let res = within(
            "the outer timeout's answer",
            client.send(common::get("/wait")),
        )
        .await
        .unwrap();
        assert_eq!(res.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert!(matches!(
            within("the handler", events.recv()).await,
            Some(Event::Started(_))
        ));
        let done = done.next().await;
        match proto {
            // The client could only have left by closing the connection,
            // and the watch says it did not.
            Proto::Http1 => {
                assert_eq!(done.status(), ConnectionStatus::NORMAL, "{done:?}");
                assert!(done.cancelled(), "{done:?}");
            }
            // A stream the client cancels looks the same as this: taken
            // for an abort, as without a watch.
            Proto::Http2 => assert_aborted(&done, Phase::Handler),
        }
    }
}

#[tokio::test]
async fn axum_serve_with_the_watched_listener_sees_an_unread_upload_abandoned() {
    use axum::extract::ConnectInfo;
    use axum::routing::post;
    use tower_lifecycle::watch;

    let (layer, mut done) = common::layer();
    let (tx, mut started) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route(
            "/upload",
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>, lifecycle: Lifecycle| async move {
                    let _ = tx.send((peer, lifecycle));
                    std::future::pending::<()>().await
                },
            ),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(watch::Listener::new(listener), watch::make_service(app)).await
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(upload("/upload").as_bytes())
        .await
        .unwrap();
    stream.write_all(&some_of_the_upload()).await.unwrap();
    let (peer, lifecycle) = within("the handler", started.recv()).await.unwrap();
    assert_eq!(
        peer,
        stream.local_addr().unwrap(),
        "ConnectInfo<SocketAddr>"
    );
    drop(stream);
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&done.next().await, Phase::Handler);
}

#[tokio::test]
async fn under_tls_the_watch_made_before_the_handshake_sees_the_client_leave() {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config));

    let (layer, mut done) = common::layer();
    let (svc, mut events) = app(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The watch looks at the TCP socket: made before TLS wraps it.
        let watched = Watched::new(stream).unwrap();
        let watch = watched.watch();
        let tls = acceptor.accept(watched).await.unwrap();
        let svc = ServiceBuilder::new().layer(watch.layer()).service(svc);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(
                TokioIo::new(tls),
                hyper_util::service::TowerToHyperService::new(svc),
            )
            .await;
    });

    let mut roots = RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(upload("/wait").as_bytes()).await.unwrap();
    tls.write_all(&some_of_the_upload()).await.unwrap();
    let Some(Event::Started(lifecycle)) = within("the handler", events.recv()).await else {
        panic!("expected the handler to start");
    };
    drop(tls); // the TCP connection closes, no TLS close_notify needed
    within("aborted()", lifecycle.aborted()).await;
    assert_aborted(&done.next().await, Phase::Handler);
}
