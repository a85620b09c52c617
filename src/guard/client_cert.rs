//! A peer bound to its client certificate: on an mTLS listener, any certificate the CA
//! issued passes the handshake, so a peer's `tls_client` says which one is *this* peer's —
//! by subject name (CN or DNS SAN) and/or by the SHA-256 of its public key (SPKI pin).
//! A request on that peer's routes with another certificate is refused (403
//! `client_cert_denied`), so department A's certificate cannot send as department B.
//!
//! The pin is what `openssl x509 -in cert.pem -pubkey -noout | openssl pkey -pubin
//! -outform der | openssl dgst -sha256 -binary | base64` prints.

use base64::Engine;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a connection's client certificate says about its holder: computed once per TLS
/// connection and carried to each request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresentedCert {
    /// Subject CN(s) and DNS SANs, lower-cased.
    pub names: Vec<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl PresentedCert {
    /// `None` when the DER does not parse (the handshake already verified it, so only a
    /// certificate our parser cannot read gets here; it then matches no binding).
    pub fn from_der(der: &[u8]) -> Option<PresentedCert> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if let GeneralName::DNSName(d) = n {
                    names.push(d.to_ascii_lowercase());
                }
            }
        }
        let spki_sha256 = Sha256::digest(cert.public_key().raw).into();
        Some(PresentedCert { names, spki_sha256 })
    }
}

/// A peer's `tls_client`: every list given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertBinding {
    /// Accepted subject names (lower-cased); empty: names are not checked.
    pub names: Vec<String>,
    /// Accepted SPKI SHA-256 pins; empty: keys are not checked.
    pub spki_sha256: Vec<[u8; 32]>,
}

/// The connection's certificate is not the one bound to the route's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertDenied {
    #[error("no client certificate on this connection")]
    Missing,
    #[error("client certificate names no name bound to this peer")]
    Name,
    #[error("client certificate's key is not pinned for this peer")]
    Key,
}

impl CertBinding {
    pub fn check(&self, presented: Option<&PresentedCert>) -> Result<(), CertDenied> {
        let cert = presented.ok_or(CertDenied::Missing)?;
        if !self.names.is_empty() && !cert.names.iter().any(|n| self.names.contains(n)) {
            return Err(CertDenied::Name);
        }
        if !self.spki_sha256.is_empty() && !self.spki_sha256.contains(&cert.spki_sha256) {
            return Err(CertDenied::Key);
        }
        Ok(())
    }

    /// Parses one `spki_sha256` pin: base64 (standard, padded or not) of 32 bytes.
    pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
        let t = pin.trim().trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("`{pin}` is not the base64 of a SHA-256 digest (44 characters)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], pin: u8) -> PresentedCert {
        PresentedCert {
            names: names.iter().map(|s| s.to_string()).collect(),
            spki_sha256: [pin; 32],
        }
    }

    #[test]
    fn names_and_pins_each_must_match() {
        let by_name = CertBinding {
            names: vec!["dept-a".into()],
            spki_sha256: vec![],
        };
        assert_eq!(by_name.check(Some(&cert(&["dept-a"], 1))), Ok(()));
        assert_eq!(by_name.check(Some(&cert(&["x", "dept-a"], 1))), Ok(()));
        assert_eq!(
            by_name.check(Some(&cert(&["dept-b"], 1))),
            Err(CertDenied::Name)
        );
        assert_eq!(by_name.check(None), Err(CertDenied::Missing));
        let both = CertBinding {
            names: vec!["dept-a".into()],
            spki_sha256: vec![[7; 32]],
        };
        assert_eq!(both.check(Some(&cert(&["dept-a"], 7))), Ok(()));
        assert_eq!(
            both.check(Some(&cert(&["dept-a"], 8))),
            Err(CertDenied::Key)
        );
        assert_eq!(
            both.check(Some(&cert(&["dept-b"], 7))),
            Err(CertDenied::Name)
        );
    }

    #[test]
    fn pins_are_base64_sha256() {
        let pin = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(CertBinding::parse_pin(&pin), Ok([9; 32]));
        assert_eq!(
            CertBinding::parse_pin(pin.trim_end_matches('=')),
            Ok([9; 32])
        );
        assert!(CertBinding::parse_pin("c2hvcnQ=").is_err());
        assert!(CertBinding::parse_pin("not base64!").is_err());
    }

    #[test]
    fn reads_cn_dns_sans_and_the_key_of_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["Dept-A.example.in".into()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Dept-A");
        let c = p.self_signed(&key).unwrap();
        let got = PresentedCert::from_der(c.der()).unwrap();
        assert_eq!(got.names, ["dept-a", "dept-a.example.in"]);
        let want: [u8; 32] =
            Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
        assert_eq!(got.spki_sha256, want);
        assert_eq!(PresentedCert::from_der(b"not a certificate"), None);
    }
}
