//! Cheap checks that refuse a request before any crypto runs: who may connect
//! ([`ip`]) and how often ([`rate`]).

pub mod admin_access;
pub mod bounds;
pub mod caller;
pub mod client_cert;
pub mod dns;
pub mod fields;
pub mod fresh;
pub mod ip;
pub mod log_budget;
pub mod payload;
pub mod proxy;
pub mod rate;
pub mod replay;
pub mod schema;
