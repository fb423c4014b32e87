//! A socket address as text on the stack, for the access line's `peer`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// The longest text of a socket address: `[` an IPv6 address with a zone `%` `]:65535`.
const MAX_LEN: usize = 64;

/// A socket address as text, written by hand for IPv4 (nearly every peer): formatting it
/// through `Display` cost over two thousand instructions a line.
pub(crate) struct PeerText {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl PeerText {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match addr {
            SocketAddr::V4(v4) => {
                text.push_v4(*v4.ip());
                text.push(b':');
                text.push_number(u32::from(v4.port()));
            }
            SocketAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                // Fits: the longest address with a scope id is under `MAX_LEN`.
                let _ = write!(cursor, "{v6}");
                text.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
        text
    }

    /// An address without a port, for the access line's `client`.
    pub(crate) fn ip(addr: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match addr {
            IpAddr::V4(v4) => text.push_v4(v4),
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                // Fits: an IPv6 address is at most 45 characters.
                let _ = write!(cursor, "{v6}");
                text.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
        text
    }

    fn push_v4(&mut self, ip: std::net::Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.push_number(u32::from(octet));
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons, brackets and hex are written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    /// A number under 100,000 (an octet or a port) in decimal.
    fn push_number(&mut self, number: u32) {
        let mut digits = [0u8; 5];
        let mut n = number;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &digit in digits[..count].iter().rev() {
            self.push(digit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_display_writes_them() {
        for addr in [
            "127.0.0.1:51234",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.3.7:8",
            "[::1]:443",
            "[2001:db8::ff00:42:8329]:65535",
            "[fe80::1%4294967295]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(PeerText::new(addr).as_str(), addr.to_string());
            assert_eq!(PeerText::ip(addr.ip()).as_str(), addr.ip().to_string());
        }
    }
}
