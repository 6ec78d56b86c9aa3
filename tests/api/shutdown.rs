//! Graceful shutdown: requests in flight when the stop comes are answered; new
//! connections are not accepted afterwards.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use printworks_common::server;
use reqwest::StatusCode;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::helpers::client;

#[tokio::test]
async fn in_flight_requests_finish_after_shutdown_begins() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (entered, release) = (entered.clone(), release.clone());
        Router::new().route(
            "/work",
            get(move || async move {
                entered.notify_one();
                release.notified().await;
                "done"
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let (finished_tx, finished_rx) = oneshot::channel();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let r = server::serve(listener, app, stop, Duration::from_secs(30)).await;
            let _ = finished_tx.send(r.is_ok());
        });
    }

    let request = tokio::spawn(client().get(format!("http://{addr}/work")).send());
    entered.notified().await;
    stop.cancel();

    // The request in flight is answered in full when it completes (a server that
    // stopped at once would have cut it) ...
    release.notify_one();
    let res = request.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "done");
    // ... and then the server stops and takes no new connections.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), finished_rx)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
