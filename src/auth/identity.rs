//! The principal: who an authenticated request speaks for, whichever method proved it.

use std::sync::Arc;

use super::session::SessionKey;

/// Who a verified token or session cookie speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Arc<str>,
    /// `exp` in unix seconds.
    pub expires_at: Option<u64>,
    /// Set when a session cookie authenticated the request: the session's key, so revoking the
    /// session closes the stream.
    pub session: Option<SessionKey>,
}
