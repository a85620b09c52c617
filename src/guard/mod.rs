//! Cheap checks that refuse a request before any crypto runs: who may connect
//! ([`ip`]) and how often ([`rate`]).

pub mod fresh;
pub mod ip;
pub mod rate;
pub mod replay;
