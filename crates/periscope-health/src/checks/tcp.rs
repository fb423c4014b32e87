//! A TCP port accepting connections.

use crate::check::{Check, CheckError, CheckFuture};
use crate::checks::Connector;

/// Passes when a TCP connection to `addr` (`host:port`, `10.0.0.5:5432`, `[::1]:6379`) opens;
/// the connection is closed at once. A host name is resolved by the system's resolver, one
/// resolution at a time: while one is stuck past its run's timeout (a DNS server down), later
/// runs fail at once rather than leave a blocked thread each.
pub fn tcp(addr: impl Into<String>) -> TcpCheck {
    TcpCheck {
        addr: addr.into(),
        connector: Connector::default(),
    }
}

/// The check [`tcp`] builds.
#[derive(Clone, Debug)]
pub struct TcpCheck {
    addr: String,
    connector: Connector,
}

impl Check for TcpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            self.connector
                .connect(&self.addr, |error| {
                    CheckError::msg(format!("connect to {} failed: {error}", self.addr))
                })
                .await
                .map(drop)
        })
    }
}
