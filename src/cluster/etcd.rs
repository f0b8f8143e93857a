//! A small etcd v3 client over the `etcdv3client` crate's generated gRPC code: one lazily
//! connected channel per endpoint, every call bounded by a timeout (connecting by 2 s at most), and the next endpoint tried
//! when one fails (a stopped member must not stop the instance).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcdv3client::grpc::{CredentialInterceptor, TonicClient};
use etcdv3client::pb;
use etcdv3client::Client;

type EtcdClient = Client<CredentialInterceptor<TonicClient>>;

/// What a failed etcd call tells its caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unavailable ({0})")]
    Unavailable(String),
    #[error("etcd: {0}")]
    Other(String),
}

pub struct Etcd {
    /// The endpoints, for messages.
    names: Vec<String>,
    channels: Vec<tonic::transport::Channel>,
    /// One client per endpoint; rebuilt with a token by [`Etcd::authenticate`].
    clients: std::sync::RwLock<Vec<EtcdClient>>,
    credential: Option<(String, String)>,
    /// The endpoint tried first: the last one that answered.
    current: AtomicUsize,
    timeout: Duration,
}

/// A key and its value as read or watched.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<pb::KeyValue> for Entry {
    fn from(kv: pb::KeyValue) -> Entry {
        Entry {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Entry),
    Delete(String),
}

/// The end of a key range covering every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// Builds the channels; nothing is connected until the first call.
    pub fn new(
        endpoints: &[String],
        credential: Option<(String, String)>,
        tls: Option<&super::settings::StoreTls>,
        timeout: Duration,
    ) -> Result<Etcd, String> {
        let tls_config = tls.map(client_tls).transpose()?;
        let (mut names, mut channels) = (Vec::new(), Vec::new());
        for ep in endpoints {
            let ep = match &tls_config {
                Some(_) => ep.replacen("http://", "https://", 1),
                None => ep.clone(),
            };
            let mut endpoint = tonic::transport::Endpoint::from_shared(ep.clone())
                .map_err(|e| format!("{ep}: {e}"))?
                .connect_timeout(timeout.min(Duration::from_secs(2)))
                .timeout(timeout)
                .tcp_nodelay(true);
            if let Some(c) = &tls_config {
                endpoint = endpoint
                    .tls_config(c.clone())
                    .map_err(|e| format!("{ep}: TLS: {e}"))?;
            }
            names.push(ep.clone());
            channels.push(endpoint.connect_lazy());
        }
        if names.is_empty() {
            return Err("no etcd endpoint".into());
        }
        let clients = channels
            .iter()
            .map(|c| client_for(c, credential.clone(), None))
            .collect();
        Ok(Etcd {
            names,
            channels,
            clients: std::sync::RwLock::new(clients),
            credential,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    /// With a user and password: gets a token from any member and gives it to every client
    /// (the interceptor renews it when etcd says it expired). Nothing to do without one.
    pub async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((name, password)) = self.credential.clone() else {
            return Ok(());
        };
        let mut last = String::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let mut plain = client_for(ch, None, None);
            let req = pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            };
            match tokio::time::timeout(self.timeout, plain.auth.authenticate(req)).await {
                Ok(Ok(resp)) => {
                    let token: tonic::metadata::AsciiMetadataValue = resp
                        .token
                        .parse()
                        .map_err(|_| EtcdError::Other("etcd sent an unusable token".into()))?;
                    let clients = self
                        .channels
                        .iter()
                        .map(|c| client_for(c, self.credential.clone(), Some(token.clone())))
                        .collect();
                    *self.clients.write().unwrap_or_else(|e| e.into_inner()) = clients;
                    return Ok(());
                }
                Ok(Err(e)) if !is_transport(&e) => {
                    return Err(EtcdError::Other(format!(
                        "authentication as {name:?} failed: {}",
                        short(&e)
                    )))
                }
                Ok(Err(e)) => last = format!("{}: {}", self.names[i], short(&e)),
                Err(_) => last = format!("{}: no answer within {:?}", self.names[i], self.timeout),
            }
        }
        Err(EtcdError::Unavailable(last))
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.names.join(",")
    }

    fn client(&self, attempt: usize) -> (usize, EtcdClient) {
        let i = (self.current.load(Ordering::Relaxed) + attempt) % self.names.len();
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        (i, clients[i].clone())
    }

    /// Runs `f` against the current endpoint, then each other one while they fail. Only for
    /// calls that may safely run twice (reads, lease calls, puts of the same value).
    async fn any<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(EtcdClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcdv3client::Error>>,
    {
        let mut last = String::new();
        for attempt in 0..self.names.len() {
            let (i, c) = self.client(attempt);
            match tokio::time::timeout(self.timeout, f(c)).await {
                Ok(Ok(v)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    if !is_transport(&e) {
                        return Err(EtcdError::Other(short(&e)));
                    }
                    last = format!("{}: {}", self.names[i], short(&e));
                }
                Err(_) => last = format!("{}: no answer within {:?}", self.names[i], self.timeout),
            }
        }
        // Start from the next endpoint next time.
        self.current.fetch_add(1, Ordering::Relaxed);
        Err(EtcdError::Unavailable(last))
    }

    /// Every key under `prefix` and the store revision they were read at.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Entry>), EtcdError> {
        let req = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        let resp = self
            .any(|mut c| {
                let req = req.clone();
                async move { c.kv.range(req).await }
            })
            .await?;
        let rev = resp.header.map_or(0, |h| h.revision);
        Ok((rev, resp.kvs.into_iter().map(Entry::from).collect()))
    }

    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), EtcdError> {
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        };
        self.any(|mut c| {
            let req = req.clone();
            async move { c.kv.put(req).await }
        })
        .await
        .map(|_| ())
    }

    /// A transaction. It may not be safe to repeat, so it goes to another member only when
    /// it never reached one (the connection was refused); the endpoint is rotated on any
    /// failure so the next call tries another member.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        let mut last = String::new();
        for attempt in 0..self.names.len() {
            let (i, mut c) = self.client(attempt);
            let name = &self.names[i];
            match tokio::time::timeout(self.timeout, c.kv.txn(req.clone())).await {
                Ok(Ok(r)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(r);
                }
                Ok(Err(e)) if never_sent(&e) => last = format!("{name}: {}", short(&e)),
                Ok(Err(e)) => {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(if is_transport(&e) {
                        EtcdError::Unavailable(format!("{name}: {}", short(&e)))
                    } else {
                        EtcdError::Other(short(&e))
                    });
                }
                Err(_) => {
                    self.current.store(i + 1, Ordering::Relaxed);
                    return Err(EtcdError::Unavailable(format!(
                        "{name}: no answer within {:?}",
                        self.timeout
                    )));
                }
            }
        }
        self.current.fetch_add(1, Ordering::Relaxed);
        Err(EtcdError::Unavailable(last))
    }

    /// A new lease of `ttl` seconds.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let resp = self
            .any(|mut c| async move {
                c.lease
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
            })
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Other(resp.error));
        }
        Ok(resp.id)
    }

    /// Renews a lease once; answers the seconds it has left (0: it is gone).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.any(|mut c| async move {
            let req = pb::LeaseKeepAliveRequest { id: lease };
            let stream = futures_util::stream::iter(vec![req]);
            let mut inbound = c.lease.lease_keep_alive(stream).await?;
            match inbound.message().await? {
                Some(r) => Ok(r.ttl),
                None => Ok(0),
            }
        })
        .await
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.any(|mut c| async move {
            c.lease
                .lease_revoke(pb::LeaseRevokeRequest { id: lease })
                .await
        })
        .await
        .map(|_| ())
    }

    /// Watches every key under `prefix` from revision `from`. Each item is a batch of changes
    /// with the revision they bring the reader to. The stream ends (or yields an error) when
    /// the member goes away or the revision was compacted: the caller reads afresh.
    pub async fn watch(&self, prefix: &str, from: i64) -> Result<Watch, EtcdError> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: from,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
        let _ = tx.send(create).await;
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let (i, mut c) = self.client(0);
        match tokio::time::timeout(self.timeout, c.watch.watch(requests)).await {
            Ok(Ok(inbound)) => Ok(Watch {
                _requests: tx,
                inbound,
            }),
            Ok(Err(e)) => {
                self.current.store(i + 1, Ordering::Relaxed);
                Err(EtcdError::Unavailable(format!(
                    "{}: {}",
                    self.names[i],
                    short(&e)
                )))
            }
            Err(_) => {
                self.current.store(i + 1, Ordering::Relaxed);
                Err(EtcdError::Unavailable(format!(
                    "{}: no answer within {:?}",
                    self.names[i], self.timeout
                )))
            }
        }
    }
}

/// An open watch.
pub struct Watch {
    /// Kept open: etcd ends a watch whose client closed its side.
    _requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    inbound: tonic::codec::Streaming<pb::WatchResponse>,
}

/// What a watch delivers next.
pub enum WatchItem {
    /// Changes, and the revision the reader is at after them.
    Changes(i64, Vec<Change>),
    /// The watch is over: read afresh (compaction, a member gone, a cancel).
    Ended(String),
}

impl Watch {
    pub async fn next(&mut self) -> WatchItem {
        loop {
            let msg = match self.inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return WatchItem::Ended("the watch stream closed".into()),
                Err(e) => return WatchItem::Ended(e.to_string()),
            };
            if msg.canceled || msg.compact_revision > 0 {
                return WatchItem::Ended(format!(
                    "the watch was canceled ({}; compacted at {})",
                    msg.cancel_reason, msg.compact_revision
                ));
            }
            if msg.created && msg.events.is_empty() {
                continue;
            }
            let rev = msg.header.map_or(0, |h| h.revision);
            let changes = msg
                .events
                .into_iter()
                .filter_map(|ev| {
                    let kv = ev.kv?;
                    Some(if ev.r#type == pb::event::EventType::Delete as i32 {
                        Change::Delete(String::from_utf8_lossy(&kv.key).into_owned())
                    } else {
                        Change::Put(kv.into())
                    })
                })
                .collect();
            return WatchItem::Changes(rev, changes);
        }
    }
}

/// A client on `channel`, authenticating with `credential` (and `token`, when one was got).
fn client_for(
    channel: &tonic::transport::Channel,
    credential: Option<(String, String)>,
    token: Option<tonic::metadata::AsciiMetadataValue>,
) -> EtcdClient {
    Client::with_service(CredentialInterceptor::new(
        credential,
        token,
        TonicClient::new(channel.clone()),
    ))
}

/// The TLS settings as tonic takes them; errors name the file.
fn client_tls(t: &super::settings::StoreTls) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("{flag} {}: cannot read it: {e}", p.display()))
    };
    let ca = read("--store-ca", &t.ca)?;
    let mut c = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some((cert, key)) = &t.identity {
        c = c.identity(tonic::transport::Identity::from_pem(
            read("--store-cert", cert)?,
            read("--store-key", key)?,
        ));
    }
    Ok(c)
}

/// The gist of a gRPC error ("connection refused", the status message) rather than its
/// nested debug form.
fn short(e: &etcdv3client::Error) -> String {
    let s = e.to_string();
    if s.contains("ConnectionRefused") {
        return "connection refused".into();
    }
    if let Some(rest) = s.split("message: \"").nth(1) {
        if let Some(m) = rest.split('"').next() {
            if !m.is_empty() {
                return m.to_owned();
            }
        }
    }
    s
}

/// Whether a request failed before any member could have received it.
fn never_sent(e: &etcdv3client::Error) -> bool {
    let s = e.to_string();
    s.contains("ConnectionRefused") || s.contains("tcp connect error")
}

/// Whether an error means the member could not be reached (so another may answer).
fn is_transport(e: &etcdv3client::Error) -> bool {
    let s = e.to_string().to_ascii_lowercase();
    s.contains("transport")
        || s.contains("unavailable")
        || s.contains("connect")
        || s.contains("not ready")
        || s.contains("deadline")
        || s.contains("timed out")
        || s.contains("broken pipe")
        || s.contains("leader")
        || s.contains("cancel")
}

// Compare and request builders for transactions.

pub fn compare_create_revision(key: &str, rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
    }
}

/// Holds when the key exists (its version is above 0).
pub fn compare_exists(key: &str) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Greater as i32,
        target: pb::compare::CompareTarget::Version as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(pb::compare::TargetUnion::Version(0)),
    }
}

pub fn op_put(key: &str, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn op_delete(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

pub fn op_get(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_the_prefix_and_nothing_after() {
        assert_eq!(prefix_end("/switchyard/"), b"/switchyard0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
