//! The client address behind a load balancer: `X-Forwarded-For` read right to left,
//! skipping only configured trusted hops, or the PROXY protocol (v1 text, v2 binary)
//! from a trusted hop.
//!
//! A hop that is not trusted cannot change the address: its `X-Forwarded-For` is ignored
//! and a PROXY header it sends is not parsed at all (it reaches HTTP as garbage and is
//! answered 400).
//!
//! ```
//! use bsk_sidecar::guard::{ip::AllowList, proxy::client_from_forwarded};
//! let mut trusted = AllowList::default();
//! trusted.push_str("10.0.0.0/8").unwrap();
//! let xff: &[u8] = b"198.51.100.9, 203.0.113.7, 10.1.1.1";
//! // The load balancer 10.0.0.2 appended 10.1.1.1 (another trusted hop) after 203.0.113.7.
//! assert_eq!(client_from_forwarded("10.0.0.2".parse().unwrap(), [xff], &trusted),
//!            "203.0.113.7".parse::<std::net::IpAddr>().unwrap());
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderName;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::ip::{canonical, AllowList};

/// The field a trusted proxy names the client in.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client for a request that arrived from `peer`: when `peer` is a trusted proxy,
/// the right-most entry of the request's `X-Forwarded-For` fields (`forwarded`, their
/// values in order) that is not itself a trusted proxy; otherwise `peer`. An unparseable
/// entry stops the walk at the last trusted hop.
pub fn client_from_forwarded<'a, F>(peer: IpAddr, forwarded: F, trusted: &AllowList) -> IpAddr
where
    F: IntoIterator<Item = &'a [u8]>,
    F::IntoIter: DoubleEndedIterator,
{
    let mut client = canonical(peer);
    if !trusted.contains_address(client) {
        return client;
    }
    // Several header lines are one list, in order (RFC 9110 §5.3). A value that is not
    // text is an entry that cannot be read, as any other: the walk stops there, and does
    // not go on to the lines before it, which hops further out wrote.
    for value in forwarded.into_iter().rev() {
        let Ok(text) = std::str::from_utf8(value) else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !trusted.contains_address(ip) {
                return ip;
            }
        }
    }
    client
}

/// `203.0.113.7`, `2001:db8::1`, `203.0.113.7:5555` or `[2001:db8::1]:5555`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(canonical)
}

/// What a PROXY header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Relayed for this client.
    Proxied(SocketAddr),
    /// The proxy's own connection (health check), or an unknown family: the socket's
    /// peer stands.
    Local,
}

/// A malformed PROXY header.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Neither signature: the hop did not send a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// The connection ended before the header was complete.
    #[error("connection closed inside the PROXY header")]
    Truncated,
}

// Hand-written rather than the `ppp` crate: the parser is ~110 lines over a small, fixed
// grammar, and what matters here is around it — refusing a v1 line past 107 bytes and a v2
// block declaring more than `V2_MAX_LEN` before reading it, strict v1 ports and address
// families, the three outcomes `read_header` needs (more bytes / not PROXY / malformed) —
// which the hostile tests pin. `ppp` would parse TLVs we skip and its errors would still
// need mapping onto these rules, so it would replace little and add a dependency.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 lines are at most 107 bytes (the spec's bound).
const V1_MAX: usize = 107;
/// v2 address block plus TLVs we are willing to skip.
const V2_MAX_LEN: usize = 2048;

/// Parses a PROXY header at the start of `buf`. `Ok(None)`: more bytes needed.
/// `Ok(Some((header, n)))`: the header took `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if V2_SIG.starts_with(buf.get(..V2_SIG.len()).unwrap_or(buf)) {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    if b"PROXY ".starts_with(buf.get(..6).unwrap_or(buf)) {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(ProxyError::Malformed("v1 line too long"));
    }
    let line = buf
        .get(..end)
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(ProxyError::Malformed("v1 not ASCII"))?;
    let mut parts = line.split(' ');
    parts.next(); // "PROXY"
    let header = match parts.next() {
        Some("UNKNOWN") => ProxyHeader::Local,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields.as_slice() else {
                return Err(ProxyError::Malformed("v1 needs 4 fields"));
            };
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 destination"))?;
            if src.is_ipv4() != (fam == "TCP4") || dst.is_ipv4() != (fam == "TCP4") {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let port = |p: &str| -> Result<u16, ProxyError> {
                // Decimal without leading zeros, as the spec writes them.
                if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                    return Err(ProxyError::Malformed("v1 port"));
                }
                p.parse().map_err(|_| ProxyError::Malformed("v1 port"))
            };
            let sport = port(sport)?;
            port(dport)?;
            ProxyHeader::Proxied(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyError::Malformed("v1 protocol")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(&[ver_cmd, fam, len_hi, len_lo]) = buf.get(12..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    if len > V2_MAX_LEN {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    let total = 16 + len;
    let Some(body) = buf.get(16..total) else {
        return Ok(None);
    };
    let header = match ver_cmd & 0x0f {
        0 => ProxyHeader::Local,
        1 => match fam {
            // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
            0x11 => {
                let Some(&[a, b, c, d, _, _, _, _, p1, p2, _, _]) = body.get(..12) else {
                    return Err(ProxyError::Malformed("v2 IPv4 block"));
                };
                ProxyHeader::Proxied(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                    u16::from_be_bytes([p1, p2]),
                ))
            }
            // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
            0x21 => {
                let octets: Option<[u8; 16]> = body.get(..16).and_then(|b| b.try_into().ok());
                let (Some(octets), Some(&[p1, p2])) = (octets, body.get(32..34)) else {
                    return Err(ProxyError::Malformed("v2 IPv6 block"));
                };
                ProxyHeader::Proxied(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(octets)),
                    u16::from_be_bytes([p1, p2]),
                ))
            }
            // UNSPEC: the receiver must use the real connection endpoints.
            0x00 => ProxyHeader::Local,
            _ => return Err(ProxyError::Malformed("v2 family not TCP")),
        },
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((header, total)))
}

/// Reads a PROXY header from `s`; returns it and any bytes read past it (the start of
/// the TLS or HTTP stream).
pub async fn read_header<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(ProxyHeader, Vec<u8>), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|_| ProxyError::Truncated)?;
        if n == 0 {
            return Err(ProxyError::Truncated);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some((h, used)) = parse(&buf)? {
            return Ok((h, buf.split_off(used)));
        }
        if buf.len() > 16 + V2_MAX_LEN {
            return Err(ProxyError::Malformed("header too long"));
        }
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Vec<u8>) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// Bytes given back to be read before the stream's own.
    pub fn has_prefix(&self) -> bool {
        self.pos < self.prefix.len()
    }

    /// Gives `bytes` back: they are read next, before what was already given back.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let rest = self.prefix.get(self.pos..).unwrap_or_default();
        self.prefix = [bytes, rest].concat();
        self.pos = 0;
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.prefix.get(self.pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::delegate_async_write!(Rewind);

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &[&str]) -> AllowList {
        let mut l = AllowList::default();
        for e in entries {
            l.push_str(e).unwrap();
        }
        l
    }

    /// The values of a request's `X-Forwarded-For` fields, in order.
    fn xff<'a>(values: &[&'a str]) -> Vec<&'a [u8]> {
        values.iter().map(|v| v.as_bytes()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn bytes_given_back_are_read_first_in_order() {
        use tokio::io::AsyncReadExt;
        let mut r = Rewind::new(&b"stream"[..], b"prefix-".to_vec());
        let mut first = [0u8; 3];
        r.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"pre");
        assert!(r.has_prefix());
        r.unread(b"again-");
        let mut all = String::new();
        r.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "again-fix-stream");
        assert!(!r.has_prefix());
    }

    #[test]
    fn untrusted_hop_cannot_spoof() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["127.0.0.9"]);
        assert_eq!(
            client_from_forwarded(ip("198.51.100.1"), h.clone(), &t),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn right_to_left_skipping_only_trusted_hops() {
        let t = trusted(&["10.0.0.0/8"]);
        // The client forged "1.2.3.4"; the LB appended the real client 203.0.113.7.
        let h = xff(&["1.2.3.4, 203.0.113.7"]);
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), h.clone(), &t),
            ip("203.0.113.7")
        );
        // Several header lines, several trusted hops.
        let h = xff(&["1.2.3.4", "203.0.113.7, 10.9.9.9", "10.1.1.1"]);
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), h.clone(), &t),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn garbage_or_absence_stops_at_the_last_trusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.7, bogus, 10.1.1.1"]);
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), h.clone(), &t),
            ip("10.1.1.1")
        );
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), xff(&[]), &t),
            ip("10.0.0.2")
        );
        // A line that is not text stops the walk too: the line before it is not read.
        let lines: [&[u8]; 3] = [b"198.51.100.9", b"\xff\xfe", b"10.1.1.1"];
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), lines, &t),
            ip("10.1.1.1")
        );
        let lines: [&[u8]; 3] = [b"198.51.100.9", "192.0.2.\u{e9}".as_bytes(), b"10.1.1.1"];
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), lines, &t),
            ip("10.1.1.1")
        );
        // All hops trusted: the left-most is as far as the chain can be followed.
        let h = xff(&["10.5.5.5, 10.1.1.1"]);
        assert_eq!(
            client_from_forwarded(ip("10.0.0.2"), h.clone(), &t),
            ip("10.5.5.5")
        );
    }

    #[test]
    fn ports_and_mapped_addresses() {
        let t = trusted(&["127.0.0.1/32"]);
        let h = xff(&["[2001:db8::7]:443, ::ffff:203.0.113.8, 127.0.0.1:9"]);
        assert_eq!(
            client_from_forwarded(ip("::ffff:127.0.0.1"), h.clone(), &t),
            ip("203.0.113.8")
        );
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let b = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(
            parse(b).unwrap(),
            Some((
                ProxyHeader::Proxied("203.0.113.7:56324".parse().unwrap()),
                43
            ))
        );
        let b = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n";
        assert_eq!(
            parse(b).unwrap().unwrap().0,
            ProxyHeader::Proxied("[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Some((ProxyHeader::Local, 15))
        );
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 5").unwrap(), None);
        assert_eq!(parse(b"PRO").unwrap(), None);
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 2\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(parse(&[b'P'; 200]).is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend_from_slice(&[b'1'; 120]);
        assert!(parse(&long).is_err());
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1, 0xdc, 0x04, 1, 187];
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV to skip
        let mut b = v2(1, 0x11, &body);
        b.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&b).unwrap(),
            Some((
                ProxyHeader::Proxied("203.0.113.7:56324".parse().unwrap()),
                16 + 16
            ))
        );
        let mut body6 = vec![0u8; 36];
        body6[0] = 0x20;
        body6[1] = 0x01;
        body6[15] = 7;
        body6[32] = 0;
        body6[33] = 80;
        assert_eq!(
            parse(&v2(1, 0x21, &body6)).unwrap().unwrap().0,
            ProxyHeader::Proxied("[2001::7]:80".parse().unwrap())
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])).unwrap(),
            Some((ProxyHeader::Local, 16))
        );
        // Incomplete: more bytes needed.
        assert_eq!(parse(&b[..20]).unwrap(), None);
        assert_eq!(parse(&b[..9]).unwrap(), None);
    }

    #[test]
    fn v2_malformed() {
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err());
        assert!(parse(&v2(1, 0x12, &[0; 12])).is_err()); // UDP
        assert!(parse(&v2(5, 0x11, &[0; 12])).is_err());
        let mut b = v2(1, 0x11, &[0; 12]);
        b[12] = 0x11; // version 1 in the binary format
        assert!(parse(&b).is_err());
        let mut b = v2(1, 0x11, &[0; 12]);
        b[14] = 0xff; // declared length beyond the cap
        assert!(parse(&b).is_err());
    }

    #[tokio::test]
    async fn read_header_keeps_what_follows() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\n";
        let (h, rest) = read_header(&mut input).await.unwrap();
        assert_eq!(h, ProxyHeader::Proxied("203.0.113.7:1".parse().unwrap()));
        let mut r = Rewind::new(input, rest);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "GET / HTTP/1.1\r\n");
        let mut short: &[u8] = b"PROXY TCP4 203.0.113.7";
        assert_eq!(read_header(&mut short).await, Err(ProxyError::Truncated));
    }
}
