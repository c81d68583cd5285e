//! Who may connect, as the HTTP handlers and the shared state both need it: the API key and
//! token verifier (`auth.rs`: `Auth`, `Identity`) and the per-IP and per-key admission quotas
//! (`quotas.rs`: `Quotas`).
//!
//! Built from validated config sections; no HTTP here. The middleware, the token endpoint and the
//! 401/403/429 answers are `http`'s.

mod auth;
mod quotas;

pub(crate) use auth::{Auth, Identity};
pub(crate) use quotas::{QuotaRefusal, Quotas};
