//! Load-test bodies: N distinct `[token, jwt, aes]` messages for the bench peer, one per
//! line, each a fresh token (`iat` now, `exp` in five minutes, its own `applicationNo`), so
//! a route with freshness and replay protection accepts every one exactly once.
//!
//!   cargo run --release --features bench-tools --bin load-bodies -- COUNT > bodies.txt

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use bsk_sidecar::envelope::aes::AesKey;
use bsk_sidecar::envelope::jwt::JwtKey;
use bsk_sidecar::envelope::{self, BodyShape, Layer, PeerKeys};
use bsk_sidecar::secret::Secret;

/// Must match the peer in `benches/load/run.sh`.
const PASSCODE: &str = "376423";
const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef";
const AES_KEY: &[u8] = b"IP16TDW0L5AQB41V6S6J8QLTPLRXBV2W";
const AES_IV: &[u8] = b"V0ZMZO6WZ45KY2PL";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .nth(1)
        .ok_or("usage: load-bodies COUNT")?
        .parse()?;
    let keys = PeerKeys {
        agid: "BSK".to_owned(),
        passcode: Some(Secret::new(PASSCODE)),
        jwt: Some(JwtKey::new(Secret::new(JWT_SECRET))),
        aes: vec![AesKey::new(AES_KEY, AES_IV)?],
    };
    let layers = [Layer::Token, Layer::Jwt, Layer::Aes];
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for n in 0..count {
        let plain = format!(
            r#"{{"userid":9054233544,"ticketNo":20220811130723,"serviceCode":"AMD/003","applicationNo":"{n}"}}"#
        );
        let sealed = envelope::seal_timed(
            &layers,
            &keys,
            plain.as_bytes(),
            BodyShape::Json,
            Some((now, now + 300)),
        )
        .map_err(|e| e.to_string())?;
        out.write_all(&sealed.body)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
