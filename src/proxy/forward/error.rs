//! Every way a request can fail on its way to a replica, and the one place each becomes a
//! response: status, body text, `x-switchyard-deployment` tag, metrics and log line.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use tracing::field;

use super::local;
use crate::metrics::UpstreamErrorKind;
use crate::proxy::body::ProxyBody;
use crate::proxy::headers;
use crate::proxy::upstream::{ConnectError, UpstreamError};
use crate::routing::snapshot::RouteError;
use crate::routing::Pool;

/// Why a request got no response from a replica.
pub(super) enum ForwardError {
    /// The host and path name no model, environment or deployment (404).
    NoRoute(RouteError),
    /// The environment gives every deployment a weight of zero (503).
    NoTraffic {
        environment: Arc<str>,
        model: Arc<str>,
    },
    /// The request cannot be put in a form a replica accepts (400).
    BadRequest(&'static str),
    /// The client's own request body broke: it went away or sent bad framing (400). Not the
    /// replica's fault, so neither counted against the deployment nor tagged with it.
    ClientBody {
        pool: Arc<Pool>,
        error: UpstreamError,
    },
    /// The deployment has no replica that passed readiness and is not ejected (503).
    NoReplica { pool: Arc<Pool> },
    /// The last replica tried could not be connected to (502).
    Connect {
        pool: Arc<Pool>,
        replica: SocketAddr,
        error: ConnectError,
        /// This failure took the replica out of rotation.
        ejected: bool,
    },
    /// No response head within the response-header timeout (504).
    HeaderTimeout {
        pool: Arc<Pool>,
        replica: SocketAddr,
        after: Duration,
    },
    /// The replica broke the exchange after the request went out, or answered nonsense (502).
    Upstream {
        pool: Arc<Pool>,
        replica: SocketAddr,
        error: UpstreamError,
    },
    /// A 101 the client did not ask for (RFC 9110 15.2.2 forbids it): nothing can be
    /// tunnelled, and the socket now speaks an unknown protocol (502).
    UnaskedSwitch {
        pool: Arc<Pool>,
        replica: SocketAddr,
    },
    /// A 101 while the request body was still uploading: the socket cannot change protocols.
    SwitchedEarly {
        pool: Arc<Pool>,
        replica: SocketAddr,
    },
}

impl ForwardError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoRoute(_) => StatusCode::NOT_FOUND,
            ForwardError::ClientBody {
                error: UpstreamError::ClientBodyTimeout(_),
                ..
            } => StatusCode::REQUEST_TIMEOUT,
            ForwardError::BadRequest(_) | ForwardError::ClientBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            ForwardError::NoTraffic { .. } | ForwardError::NoReplica { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::HeaderTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::Connect { .. }
            | ForwardError::Upstream { .. }
            | ForwardError::UnaskedSwitch { .. }
            | ForwardError::SwitchedEarly { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `switchyard_upstream_errors_total` kind this failure counts as, if any.
    pub(super) fn kind(&self) -> Option<UpstreamErrorKind> {
        match self {
            ForwardError::Connect { .. } => Some(UpstreamErrorKind::Connect),
            ForwardError::HeaderTimeout { .. } => Some(UpstreamErrorKind::HeaderTimeout),
            ForwardError::Upstream { .. } | ForwardError::UnaskedSwitch { .. } => {
                Some(UpstreamErrorKind::Protocol)
            }
            _ => None,
        }
    }

    /// The deployment the error response speaks for: its metrics count the response, and the
    /// response carries its tag. `None` for the proxy's own answers.
    fn deployment(&self) -> Option<&Pool> {
        match self {
            ForwardError::NoRoute(_)
            | ForwardError::NoTraffic { .. }
            | ForwardError::BadRequest(_)
            | ForwardError::ClientBody { .. } => None,
            ForwardError::NoReplica { pool }
            | ForwardError::Connect { pool, .. }
            | ForwardError::HeaderTimeout { pool, .. }
            | ForwardError::Upstream { pool, .. }
            | ForwardError::UnaskedSwitch { pool, .. }
            | ForwardError::SwitchedEarly { pool, .. } => Some(pool),
        }
    }

    /// Counts the failure in its deployment's error metric and logs it. Called once per
    /// failure: by [`Self::into_response`], and by the connect stage for each failed attempt
    /// it retries elsewhere.
    pub(super) fn record(&self) {
        if let (Some(pool), Some(kind)) = (self.deployment(), self.kind()) {
            pool.metrics.count_error(kind);
        }
        if let ForwardError::ClientBody {
            pool,
            error: UpstreamError::ClientBodyTimeout(_),
        } = self
        {
            // Not the replica's fault, but worth seeing: clients holding slots with stalled
            // uploads.
            pool.metrics
                .count_error(UpstreamErrorKind::ClientBodyTimeout);
        }
        match self {
            ForwardError::NoRoute(_)
            | ForwardError::NoTraffic { .. }
            | ForwardError::BadRequest(_)
            | ForwardError::SwitchedEarly { .. } => {}
            ForwardError::ClientBody { pool, error } => tracing::debug!(
                deployment = field::display(&pool.deployment),
                error = field::display(error),
                "request body failed"
            ),
            ForwardError::NoReplica { pool } => {
                tracing::warn!(
                    deployment = field::display(&pool.deployment),
                    "no ready replica"
                )
            }
            ForwardError::Connect {
                pool,
                replica,
                error,
                ejected,
            } => tracing::warn!(
                deployment = field::display(&pool.deployment),
                replica = field::display(replica),
                error = field::display(error),
                ejected,
                "cannot connect to replica"
            ),
            ForwardError::HeaderTimeout {
                pool,
                replica,
                after,
            } => tracing::warn!(
                deployment = field::display(&pool.deployment),
                replica = field::display(replica),
                timeout = field::debug(after),
                "no response headers from replica in time"
            ),
            ForwardError::Upstream {
                pool,
                replica,
                error,
            } => tracing::warn!(
                deployment = field::display(&pool.deployment),
                replica = field::display(replica),
                error = field::display(error),
                "replica failed the request"
            ),
            ForwardError::UnaskedSwitch { pool, replica } => tracing::warn!(
                deployment = field::display(&pool.deployment),
                replica = field::display(replica),
                "replica switched protocols without being asked"
            ),
        }
    }

    /// Records the failure and answers the client with a short text body saying what failed;
    /// a deployment's failures are counted in its response metrics and tagged with it.
    pub(super) fn into_response(self, tag: bool) -> Response<ProxyBody> {
        self.record();
        let status = self.status();
        let mut resp = local(status, self.to_string());
        if let Some(pool) = self.deployment() {
            pool.metrics.count_response(status);
            if tag {
                resp.headers_mut()
                    .insert(&headers::X_SWITCHYARD_DEPLOYMENT, pool.header_value.clone());
            }
        }
        resp
    }
}

/// The response body: what failed, naming the deployment and replica where there is one.
impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::NoRoute(e) => write!(f, "{e}"),
            ForwardError::NoTraffic { environment, model } => write!(
                f,
                "environment {environment:?} of model {model:?} sends no traffic to any deployment"
            ),
            ForwardError::BadRequest(msg) => f.write_str(msg),
            ForwardError::ClientBody { error, .. } => write!(f, "{error}"),
            ForwardError::NoReplica { pool } => {
                write!(f, "deployment {:?} has no ready replica", pool.deployment)
            }
            ForwardError::Connect {
                pool,
                replica,
                error,
                ..
            } => write!(
                f,
                "no replica of deployment {:?} could be reached (last tried {replica}: {error})",
                pool.deployment
            ),
            ForwardError::HeaderTimeout {
                pool,
                replica,
                after,
            } => write!(
                f,
                "deployment {:?} replica {replica} sent no response headers within {after:?}",
                pool.deployment
            ),
            ForwardError::Upstream {
                pool,
                replica,
                error,
            } => write!(
                f,
                "deployment {:?} replica {replica} failed the request: {error}",
                pool.deployment
            ),
            ForwardError::UnaskedSwitch { pool, replica } => write!(
                f,
                "deployment {:?} replica {replica} switched protocols without being asked",
                pool.deployment
            ),
            ForwardError::SwitchedEarly { pool, replica } => write!(
                f,
                "deployment {:?} replica {} switched protocols before the request body was sent",
                pool.deployment, replica
            ),
        }
    }
}
