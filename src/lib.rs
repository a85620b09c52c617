//! bsk-sidecar: a reverse-proxy security sidecar for the BSK API Integration spec.
//!
//! It sits in front of an unmodified legacy application. A request from the network is
//! checked by the ingress [`pipeline`] — allowlist, rate limits, body limits, then the
//! route's [`envelope`] layers (passcode, HS256 JWT, AES-256-CBC) — and only then is the
//! opened JSON forwarded, byte for byte, to the application on loopback ([`forward`]).
//! Every refusal is a JSON answer from one place ([`error`]); every stage counts what it
//! refuses ([`metrics`]). The other direction — the application's own pushes sealed for a
//! remote peer, a durable outbox, and the API-7 journal — is [`egress`].
//!
//! Dependencies point one way (`tests/architecture.rs` checks it):
//! - the [`server`] owns sockets, timeouts and drain; beside it run the [`admin`]
//!   listener, the [`background`] loops, [`reload`] (SIGHUP swaps the whole runtime) and
//!   the [`status`] page;
//! - the [`pipeline`] runs one request through its stages on a [`runtime`];
//! - `Runtime::build` in [`runtime`] is the only place live objects are made from the
//!   validated [`config`] (plain values) or carried over a reload;
//! - below that: [`egress`], [`config`], [`error`], [`envelope`], [`fleet`] (state shared by
//!   replicas on Redis), [`guard`] (the checks), [`tls`], [`forward`], and plain values
//!   ([`secret`], [`metrics`], [`state_dir`], [`systemd`]).
//!
//! Integration tools: [`demo`] runs the sidecar on an embedded config, [`probe`] checks a
//! counterparty's endpoint for conformance, [`portal_sim`] stands in for the BSK portal,
//! [`online`] checks what the config names from where it runs.
#![forbid(unsafe_code)]
// No panic reachable from input: every slice, index and unwrap in the request path is a
// checked access instead. A reasoned `allow` marks the few start-up-only exceptions.
#![cfg_attr(
    not(test),
    deny(
        clippy::string_slice,
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

/// Implements `tokio::io::AsyncWrite` for a wrapper `$ty<S>` by forwarding every call to
/// its `inner: S` field — for stream wrappers that only watch or rewind reads.
#[macro_export]
#[doc(hidden)]
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<S: ::tokio::io::AsyncWrite + Unpin> ::tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

pub mod admin;
pub mod allocator;
pub mod background;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod demo;
pub mod egress;
pub mod envelope;
pub mod error;
pub mod fleet;
pub mod forward;
pub mod guard;
pub mod logbatch;
pub mod logfmt;
pub mod logwrite;
pub mod metrics;
pub mod online;
pub mod pipeline;
pub mod portal_sim;
pub mod probe;
pub mod reload;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod state_dir;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod words;
pub mod workers;
