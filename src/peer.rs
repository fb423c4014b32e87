//! The connection's peer address in each request's extensions.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::Request;
use periscope_context::PeerAddr;
use tower_service::Service;

/// Puts the connection's peer address in each request's extensions, as
/// [`PeerAddr`] (the access log's `peer`) and, with the `axum` feature, as axum's
/// `ConnectInfo<SocketAddr>`, which the `ConnectInfo` extractor (and the rate limiters built on
/// it) read: what `into_make_service_with_connect_info` gives under `axum::serve`.
#[derive(Clone, Debug)]
pub(crate) struct WithPeer<S> {
    inner: S,
    peer: SocketAddr,
}

impl<S> WithPeer<S> {
    pub(crate) fn new(inner: S, peer: SocketAddr) -> Self {
        Self { inner, peer }
    }
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let extensions = request.extensions_mut();
        extensions.insert(PeerAddr(self.peer));
        #[cfg(feature = "axum")]
        extensions.insert(axum::extract::ConnectInfo(self.peer));
        self.inner.call(request)
    }
}
