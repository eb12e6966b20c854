//! `scientist serve`'s router on a real socket (127.0.0.1, OS-chosen port) over an SQLite
//! store, for the HTTP tests. Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::StatusCode;
use scientist::server::{self, AppState, Tokens};
use scientist::store::{SqliteStore, Store};
use serde_json::Value;

/// A server on an OS-chosen port; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    client: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A server that accepts these full-access tokens (none: open, as on loopback).
    pub async fn start(tokens: &[&str]) -> TestServer {
        Self::with_tokens(Tokens::new(tokens.iter().map(|t| t.to_string()).collect())).await
    }

    pub async fn with_tokens(tokens: Tokens) -> TestServer {
        Self::listening(tokens, "127.0.0.1:0".parse().expect("address")).await
    }

    /// A server on `addr`, e.g. where a client was told to send before it existed.
    pub async fn listening(tokens: Tokens, addr: SocketAddr) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open store"));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(listener, AppState::new(store.clone(), tokens), async {
            let _ = stopped.await;
        }));
        TestServer { addr, store, client: reqwest::Client::new(), stop, serving, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request` and returns its status and JSON body (`Null` when not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).header("content-type", content_type).body(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    /// Shuts the server down as `serve` does on SIGTERM and waits until it has stopped.
    pub async fn shut_down(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.serving.await.expect("server task")
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The directory holding the server's store file (`store.sqlite`).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}
