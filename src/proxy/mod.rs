//! The request path: route, pick, forward, stream back.
//!
//! - [`client_conn`]: one client connection: HTTP/1.1 or HTTP/2, served until closed or drained.
//! - [`http1`]: the HTTP/1.1 server for client connections (HTTP/2 is hyper's).
//! - [`client_body`]: the request body and protocol switch, from either server.
//! - [`forward`]: one request from routing to response, with connect retries and timeouts.
//! - [`header_maps`]: a per-thread stock of emptied header maps, reused by both sides.
//! - [`headers`]: hop-by-hop stripping and forwarding headers.
//! - [`body`]: the response body wrapper that counts a request in flight until its body ends.
//! - [`upstream`]: per-worker pools of HTTP/1.1 connections to replicas.
//! - [`tls`]: rustls server config from PEM files.

pub mod body;
pub mod client_body;
pub mod client_conn;
pub mod forward;
pub mod header_maps;
pub mod headers;
pub mod http1;
pub mod tls;
pub mod upstream;

pub use forward::{ConnInfo, ProxyContext};
