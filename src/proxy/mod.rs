//! The request path: route, pick, forward, stream back.
//!
//! - [`client_conn`]: one client connection: HTTP/1.1 or HTTP/2, served until closed or drained.
//! - [`forward`]: one request from routing to response, with connect retries and timeouts.
//! - [`headers`]: hop-by-hop stripping and forwarding headers.
//! - [`body`]: the response body wrapper that counts a request in flight until its body ends.
//! - [`upstream`]: per-worker pools of HTTP/1.1 connections to replicas.
//! - [`tls`]: rustls server config from PEM files.

pub mod body;
pub mod client_conn;
pub mod forward;
pub mod headers;
pub mod tls;
pub mod upstream;

pub use forward::{ConnInfo, ProxyContext};
