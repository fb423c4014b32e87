//! The address of the client at the other end of a request's connection.

use std::net::SocketAddr;

/// The address the request's connection comes from, in the request's extensions:
/// `periscope::Server` puts it there, and the access log writes it as `peer`. Behind a proxy or
/// a load balancer it is theirs, not the client's: see [`TrustedProxies`](crate::TrustedProxies)
/// for the client's own, as the proxies tell it.
///
/// A server of your own puts it in each request's extensions the same way:
///
/// ```
/// use periscope_context::PeerAddr;
///
/// let mut request = http::Request::new(());
/// let peer: std::net::SocketAddr = "10.0.0.7:51234".parse().unwrap();
/// request.extensions_mut().insert(PeerAddr(peer));
/// assert_eq!(PeerAddr::of(&request), Some(peer));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The peer address of `request`, when its server put one in its extensions.
    pub fn of<B>(request: &http::Request<B>) -> Option<SocketAddr> {
        request.extensions().get::<Self>().map(|peer| peer.0)
    }
}
