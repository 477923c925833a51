//! Authentication of stream requests: the front door ([`Authenticator`]) picks the method a
//! request uses and returns its [`Identity`]; JWTs ([`JwtVerifier`]) and Better Auth session
//! cookies ([`session`]) are the methods.

mod crypto;
mod door;
mod error;
mod extract;
mod identity;
mod jwks;
mod jwt;
mod keys;
mod mint;
mod pem;
pub mod remote;
pub mod session;
#[cfg(test)]
mod tests;
mod verifier;

pub use crypto::install as install_crypto;
pub use door::{Authenticator, SessionAuth, SessionLookup};
pub use error::{AuthError, Refusal, Setting, SetupError};
pub(crate) use extract::find_query_param;
pub use identity::Identity;
pub use mint::{mint_hs256, MintError};
pub use verifier::{JwtConfig, JwtVerifier};
