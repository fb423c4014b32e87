//! A TCP port accepting connections.

use tokio::net::TcpStream;

use crate::check::{Check, CheckError, CheckFuture};

/// Passes when a TCP connection to `addr` (`host:port`, `10.0.0.5:5432`, `[::1]:6379`) opens;
/// the connection is closed at once.
pub fn tcp(addr: impl Into<String>) -> TcpCheck {
    TcpCheck { addr: addr.into() }
}

/// The check [`tcp`] builds.
#[derive(Clone, Debug)]
pub struct TcpCheck {
    addr: String,
}

impl Check for TcpCheck {
    fn check(&self) -> CheckFuture<'_> {
        Box::pin(async move {
            TcpStream::connect(self.addr.as_str())
                .await
                .map(drop)
                .map_err(|error| {
                    CheckError::msg(format!("connect to {} failed: {error}", self.addr))
                })
        })
    }
}
