//! Source-address allowlist: CIDR blocks and single addresses, IPv4 and IPv6, and DNS
//! names. The list is a plain value (it is part of the validated config); what a name
//! resolves to lives in the runtime's [`Names`] table, which [`super::dns`] keeps fresh.
//!
//! ```
//! use bsk_sidecar::guard::{dns::Names, ip::AllowList};
//! let mut list = AllowList::default();
//! list.push_str("203.0.113.0/28").unwrap();
//! let resolved = Names::default();
//! assert!(list.contains("203.0.113.5".parse().unwrap(), &resolved));
//! assert!(!list.contains("203.0.113.16".parse().unwrap(), &resolved));
//! ```

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::dns::{canonical_name, is_host_name, Names};

/// Networks a peer may connect from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<IpNet>,
    /// Host names, lower case without a trailing dot; their addresses are in [`Names`].
    names: Vec<String>,
}

impl AllowList {
    /// Adds `203.0.113.0/28`, `2001:db8::/32`, a single address, or a DNS name.
    pub fn push_str(&mut self, entry: &str) -> Result<(), String> {
        let entry = entry.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            self.nets.push(net.trunc());
            return Ok(());
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            self.nets.push(IpNet::from(ip));
            return Ok(());
        }
        if is_host_name(entry) {
            let name = canonical_name(entry);
            if !self.names.contains(&name) {
                self.names.push(name);
            }
            return Ok(());
        }
        Err(format!(
            "`{entry}` is not an IP address, CIDR block or DNS name (like 203.0.113.0/28, 2001:db8::/32 or bsk.wb.gov.in)"
        ))
    }

    pub fn extend(&mut self, other: &AllowList) {
        for n in &other.nets {
            if !self.nets.contains(n) {
                self.nets.push(*n);
            }
        }
        for n in &other.names {
            if !self.names.contains(n) {
                self.names.push(n.clone());
            }
        }
    }

    /// The DNS names on the list.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `ip` is inside any listed network or is a current address of a listed
    /// name (as `resolved` knows it; a name not resolved yet allows nobody). An IPv4
    /// client seen on an IPv6 socket (`::ffff:a.b.c.d`) is matched as the IPv4 address
    /// it is.
    pub fn contains(&self, ip: IpAddr, resolved: &Names) -> bool {
        let ip = canonical(ip);
        self.in_nets(ip) || self.names.iter().any(|n| resolved.contains(n, ip))
    }

    /// Whether `ip` is inside a listed network, names not counted: for a list the
    /// config lets hold no names (`trusted_proxies` — a proxy must not follow DNS).
    pub fn contains_address(&self, ip: IpAddr) -> bool {
        self.in_nets(canonical(ip))
    }

    fn in_nets(&self, canonical_ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&canonical_ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty() && self.names.is_empty()
    }
}

/// Folds IPv4-mapped IPv6 addresses to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The network of `ip` (canonical) at prefix length `v4` or `v6`: the key that groups
/// addresses one holder controls together, for per-address limits.
///
/// ```
/// use bsk_sidecar::guard::ip::prefix_of;
/// let a = prefix_of("2001:db8:1:2:aaaa::1".parse().unwrap(), 32, 64);
/// let b = prefix_of("2001:db8:1:2:bbbb::9".parse().unwrap(), 32, 64);
/// assert_eq!(a, b);
/// assert_eq!(prefix_of("::ffff:192.0.2.7".parse().unwrap(), 32, 64), "192.0.2.7".parse::<std::net::IpAddr>().unwrap());
/// ```
pub fn prefix_of(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    let ip = canonical(ip);
    let len = if ip.is_ipv4() { v4 } else { v6 };
    ipnet::IpNet::new(ip, len).map_or(ip, |n| n.network())
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        for (i, n) in self.names.iter().enumerate() {
            if i > 0 || !self.nets.is_empty() {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `l` admits `ip` with no name resolved.
    fn has(l: &AllowList, ip: &str) -> bool {
        l.contains(ip.parse().unwrap(), &Names::default())
    }

    fn list(entries: &[&str]) -> AllowList {
        let mut l = AllowList::default();
        for e in entries {
            l.push_str(e).unwrap();
        }
        l
    }

    #[test]
    fn cidr_edges_v4() {
        let l = list(&["203.0.113.0/28"]);
        assert!(has(&l, "203.0.113.0"));
        assert!(has(&l, "203.0.113.15"));
        assert!(!has(&l, "203.0.113.16"));
        assert!(!has(&l, "203.0.112.255"));
    }

    #[test]
    fn single_addresses_and_v6() {
        let l = list(&["127.0.0.2", "2001:db8::/32"]);
        assert!(has(&l, "127.0.0.2"));
        assert!(!has(&l, "127.0.0.3"));
        assert!(has(&l, "2001:db8:1::5"));
        assert!(!has(&l, "2001:db9::1"));
    }

    #[test]
    fn v4_mapped_v6_matches_v4_entry() {
        let l = list(&["127.0.0.2/32"]);
        assert!(has(&l, "::ffff:127.0.0.2"));
        assert!(!has(&l, "::ffff:127.0.0.3"));
    }

    #[test]
    fn host_bits_are_ignored_not_widened() {
        // "10.0.0.5/24" means the /24; the entry is normalised, not rejected.
        let l = list(&["10.0.0.5/24"]);
        assert!(has(&l, "10.0.0.200"));
        assert!(!has(&l, "10.0.1.1"));
        assert_eq!(l.to_string(), "[10.0.0.0/24]");
    }

    #[test]
    fn garbage_is_refused_with_the_entry_named() {
        let mut l = AllowList::default();
        let err = l.push_str("10.0.0.0/33").unwrap_err();
        assert!(err.contains("10.0.0.0/33"));
        assert!(l.push_str("bsk..wb").is_err());
        assert!(l.push_str("10.0.0.300").is_err());
        assert!(l.is_empty());
    }

    #[test]
    fn dns_names_allow_nobody_until_resolved_then_their_addresses() {
        let l = list(&["10.0.0.0/8", "bsk.wb.gov.in", "BSK.wb.gov.in."]);
        assert_eq!(l.names(), ["bsk.wb.gov.in"]);
        assert_eq!(l.to_string(), "[10.0.0.0/8, bsk.wb.gov.in]");
        let mut union = AllowList::default();
        union.extend(&l);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let names = Names::new(l.names().iter().map(String::as_str), None);
        assert!(!union.contains(ip, &names));
        names.set_for_test("bsk.wb.gov.in", vec![ip]);
        // Both lists name it, and both see its resolution.
        assert!(union.contains(ip, &names));
        assert!(l.contains(ip, &names));
        assert!(!l.contains("203.0.113.8".parse().unwrap(), &names));
    }
}
