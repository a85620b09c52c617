//! Who may make the sidecar sign as the department: an egress listener accepts a push only
//! from its `callers` (CIDR blocks; default loopback's own addresses, 127.0.0.1 and ::1)
//! and, when `caller_token` is set, only with that token in `X-Sidecar-Token`. Anything
//! else is refused (403 `caller_denied`) before the body is read or anything is sealed.
//!
//! ```
//! use bsk_sidecar::guard::caller::Callers;
//! let callers = Callers::default();
//! assert!(callers.check("127.0.0.1".parse().unwrap(), None).is_ok());
//! // The rest of 127.0.0.0/8 is other local software, not the application.
//! assert!(callers.check("127.0.0.200".parse().unwrap(), None).is_err());
//! ```

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::ip::canonical;
use crate::secret::Secret;

/// The header the application sends `caller_token` in; never forwarded to the peer.
pub const TOKEN_HEADER: http::HeaderName = http::HeaderName::from_static("x-sidecar-token");

/// An egress listener's `callers` and `caller_token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callers {
    pub nets: Vec<IpNet>,
    pub token: Option<Secret>,
}

impl Default for Callers {
    fn default() -> Self {
        Callers {
            nets: vec![
                IpNet::from(IpAddr::from([127, 0, 0, 1])),
                IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            token: None,
        }
    }
}

/// The caller is not the application this egress listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallerDenied {
    #[error("caller address is not in the listener's `callers`")]
    Address,
    #[error("missing or wrong X-Sidecar-Token")]
    Token,
}

impl Callers {
    /// `client` is the connection's peer; `presented` the `X-Sidecar-Token` header.
    pub fn check(&self, client: IpAddr, presented: Option<&[u8]>) -> Result<(), CallerDenied> {
        let client = canonical(client);
        if !self.nets.iter().any(|n| n.contains(&client)) {
            return Err(CallerDenied::Address);
        }
        match (&self.token, presented) {
            (None, _) => Ok(()),
            (Some(t), Some(p)) if t.matches(p) => Ok(()),
            (Some(_), _) => Err(CallerDenied::Token),
        }
    }

    /// Parses one `callers` entry: an address or a CIDR block (never a DNS name: who may
    /// sign must not follow a resolver).
    pub fn parse_entry(entry: &str) -> Result<IpNet, String> {
        let e = entry.trim();
        e.parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("`{entry}` is not an address or CIDR block like 127.0.0.1/32"))
    }
}

impl fmt::Display for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nets: Vec<String> = self.nets.iter().map(|n| n.to_string()).collect();
        write!(f, "[{}]", nets.join(", "))?;
        if self.token.is_some() {
            f.write_str(" caller_token")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_is_loopbacks_own_address_only() {
        let c = Callers::default();
        assert_eq!(c.check(ip("127.0.0.1"), None), Ok(()));
        assert_eq!(c.check(ip("::1"), None), Ok(()));
        assert_eq!(c.check(ip("::ffff:127.0.0.1"), None), Ok(()));
        for other in ["127.0.0.200", "127.0.0.2", "10.0.0.1", "::2"] {
            assert_eq!(
                c.check(ip(other), None),
                Err(CallerDenied::Address),
                "{other}"
            );
        }
        assert_eq!(c.to_string(), "[127.0.0.1/32, ::1/128]");
    }

    #[test]
    fn token_when_configured_is_required_and_exact() {
        let c = Callers {
            nets: vec![Callers::parse_entry("10.1.0.0/16").unwrap()],
            token: Some(Secret::new("app-token")),
        };
        assert_eq!(c.check(ip("10.1.2.3"), Some(b"app-token")), Ok(()));
        assert_eq!(c.check(ip("10.1.2.3"), None), Err(CallerDenied::Token));
        assert_eq!(
            c.check(ip("10.1.2.3"), Some(b"app-toke")),
            Err(CallerDenied::Token)
        );
        assert_eq!(
            c.check(ip("10.1.2.3"), Some(b"app-token ")),
            Err(CallerDenied::Token)
        );
        // The right token from the wrong address is still refused.
        assert_eq!(
            c.check(ip("10.2.0.1"), Some(b"app-token")),
            Err(CallerDenied::Address)
        );
        assert_eq!(c.to_string(), "[10.1.0.0/16] caller_token");
    }

    #[test]
    fn entries_are_addresses_or_blocks_never_names() {
        assert_eq!(
            Callers::parse_entry("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(
            Callers::parse_entry("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(Callers::parse_entry("app.local").is_err());
        assert!(Callers::parse_entry("").is_err());
    }
}
