//! Leaf value parsers of the configuration: durations, sizes, rates, addresses, secrets
//! (literal, `env`, `file`, systemd `credential`) and relative paths. Each turns one raw
//! value into a plain one, recording any problem at its field path in the `Check`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawBytes, RawDuration, RawRate, RawSecret, RawSecretSource, RawSecrets};
use super::Check;
use crate::guard::rate::RateSpec;
use crate::secret::Secret;

/// A path from the config: relative paths are relative to the config file's directory.
pub(super) fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    match raw {
        RawDuration::Seconds(n) => Ok(Duration::from_secs(*n)),
        RawDuration::Text(t) => humantime::parse_duration(t.trim())
            .map_err(|e| format!("`{t}` is not a duration like 30s or 10m ({e})")),
    }
}

pub fn parse_bytes(raw: &RawBytes) -> Result<usize, String> {
    let n: u64 = match raw {
        RawBytes::Count(n) => *n,
        RawBytes::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let num: u64 = num
                .parse()
                .map_err(|_| format!("`{t}` is not a size like 65536, 64KiB or 1MiB"))?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "KB" | "kB" => 1000,
                "KiB" => 1024,
                "MB" => 1000 * 1000,
                "MiB" => 1024 * 1024,
                "GB" => 1000 * 1000 * 1000,
                "GiB" => 1024 * 1024 * 1024,
                other => {
                    return Err(format!(
                        "unknown size unit `{other}` (use B, KiB, MiB, GiB)"
                    ))
                }
            };
            num.checked_mul(mult)
                .ok_or_else(|| format!("`{t}` is too large"))?
        }
    };
    usize::try_from(n).map_err(|_| "size too large".to_string())
}

pub(super) fn rate(check: &mut Check<'_>, path: &str, raw: Option<RawRate>) -> Option<RateSpec> {
    let raw = raw?;
    match (NonZeroU32::new(raw.per_second), NonZeroU32::new(raw.burst)) {
        (Some(p), Some(b)) => Some(RateSpec::new(p, b)),
        _ => {
            check.err(path, "per_second and burst must both be at least 1");
            None
        }
    }
}

/// Reads a secret from where the config says. `base` resolves relative file paths.
pub fn load_secret(raw: &RawSecret, base: &Path) -> Result<Secret, String> {
    match raw {
        RawSecret::Literal(s) => Ok(Secret::new(s.as_bytes().to_vec())),
        RawSecret::From(RawSecretSource {
            env: Some(name),
            file: None,
            credential: None,
            ..
        }) => std::env::var(name)
            .map(|v| Secret::new(v.into_bytes()))
            .map_err(|_| format!("environment variable `{name}` is not set")),
        RawSecret::From(RawSecretSource {
            env: None,
            file: None,
            credential: Some(name),
            ..
        }) => credential(name),
        RawSecret::From(RawSecretSource {
            env: None,
            file: Some(file),
            credential: None,
            ..
        }) => {
            let path = resolve(base, file);
            let mut bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
            // `echo secret > file` leaves a newline that is not part of the secret.
            while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                bytes.pop();
            }
            Ok(Secret::new(bytes))
        }
        RawSecret::From(_) => {
            Err("write exactly one of `env: NAME`, `file: PATH` or `credential: NAME`".into())
        }
    }
}

pub(super) fn secret(
    check: &mut Check<'_>,
    path: &str,
    raw: &RawSecret,
    base: &Path,
) -> Option<Secret> {
    if let RawSecret::From(RawSecretSource { kid: Some(_), .. }) = raw {
        check.err(path, "`kid` names JWT secrets only (jwt.secret)");
        return None;
    }
    match load_secret(raw, base) {
        Ok(s) if s.is_empty() => {
            check.err(path, "secret is empty");
            None
        }
        Ok(s) => Some(s),
        Err(e) => {
            check.err(path, e);
            None
        }
    }
}

/// `passcode` or `jwt.secret`: one secret, or a list during a rotation (the first seals,
/// all are accepted). `kids`: whether entries may carry a `kid` (JWT secrets).
pub(super) fn secrets(
    check: &mut Check<'_>,
    path: &str,
    raw: &RawSecrets,
    base: &Path,
    kids: bool,
) -> Option<Secret> {
    let list: Vec<(String, &RawSecret)> = match raw {
        RawSecrets::One(one) => vec![(path.to_owned(), one)],
        RawSecrets::Many(many) => many
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("{path}[{i}]"), r))
            .collect(),
    };
    if list.is_empty() {
        check.err(path, "list at least one secret");
        return None;
    }
    let mut loaded = Vec::new();
    let mut seen_kids = std::collections::BTreeSet::new();
    for (at, raw) in list {
        let kid = match raw {
            RawSecret::From(RawSecretSource { kid: Some(kid), .. }) => {
                if !kids {
                    check.err(&at, "`kid` names JWT secrets only (jwt.secret)");
                    continue;
                }
                if kid.is_empty() || !seen_kids.insert(kid.clone()) {
                    check.err(&at, format!("kid `{kid}` is empty or used twice"));
                    continue;
                }
                Some(kid.clone())
            }
            _ => None,
        };
        let plain = match raw {
            RawSecret::From(src) => RawSecret::From(RawSecretSource {
                kid: None,
                ..src.clone()
            }),
            other => other.clone(),
        };
        if let Some(s) = secret(check, &at, &plain, base) {
            loaded.push(match kid {
                Some(k) => s.with_kid(k),
                None => s,
            });
        }
    }
    let duplicate = loaded
        .iter()
        .enumerate()
        .any(|(i, a)| loaded.iter().skip(i + 1).any(|b| a.matches(b.expose())));
    if duplicate {
        check.err(path, "the same secret is listed twice");
    }
    Secret::rotating(loaded)
}

/// A systemd credential (`LoadCredential=NAME:/path` in the unit): the file NAME in
/// `$CREDENTIALS_DIRECTORY`, with a trailing newline dropped.
pub fn credential(name: &str) -> Result<Secret, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("`{name}` is not a credential name"));
    }
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        format!("credential `{name}`: $CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential={name}:...)")
    })?;
    let path = Path::new(&dir).join(name);
    let mut bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read credential {}: {e}", path.display()))?;
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(Secret::new(bytes))
}

/// A duration that must be longer than 0s, or `None` with the problem recorded.
pub(super) fn positive(check: &mut Check<'_>, path: String, raw: &RawDuration) -> Option<Duration> {
    match parse_duration(raw) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            check.err(path, "must be longer than 0s");
            None
        }
        Err(e) => {
            check.err(path, e);
            None
        }
    }
}

pub(super) fn socket_addr(check: &mut Check<'_>, path: &str, s: &str) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            check.err(
                path,
                format!("`{s}` is not an address like 127.0.0.1:8443 or [::1]:8443"),
            );
            None
        }
    }
}
