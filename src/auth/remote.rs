//! A JWK set fetched from a URL (e.g. Better Auth's `/api/auth/jwks`), cached and refreshed.
//!
//! Fetched at start and every refresh period; a token whose `kid` is unknown triggers an early
//! refetch (at most once per `DEFAULT_JWKS_MIN_REFETCH`, so a flood of bad tokens cannot turn
//! into a flood of requests). When the URL is down, the keys already fetched keep working.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::jwks;
use super::keys::KeySet;
use crate::defaults::DEFAULT_JWKS_MIN_REFETCH;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWK set larger than this is not a JWK set.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Status {
    last_attempt: Option<Instant>,
    /// When an unknown `kid` last caused a fetch (rate-limited apart from scheduled fetches, so
    /// a rotation right after one is still picked up at once).
    last_kid_fetch: Option<Instant>,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    failures: u64,
}

pub struct RemoteJwks {
    url: String,
    keys: RwLock<Arc<KeySet>>,
    status: Mutex<Status>,
    /// One fetch at a time; callers that find one running wait for it instead.
    fetching: tokio::sync::Mutex<()>,
    client: reqwest::Client,
    pub refresh: Duration,
}

impl RemoteJwks {
    pub(crate) fn new(url: String, refresh: Duration) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?} must be an http:// or https:// URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("pgsse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            url,
            keys: RwLock::new(Arc::new(KeySet::from_keys(Vec::new()))),
            status: Mutex::new(Status::default()),
            fetching: tokio::sync::Mutex::new(()),
            client,
            refresh,
        })
    }

    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches now. On failure the cached keys stay in use.
    pub async fn fetch(&self) -> Result<usize, String> {
        let _one = self.fetching.lock().await;
        self.status().last_attempt = Some(Instant::now());
        let result = self.download().await;
        let mut st = self.status();
        match result {
            Ok(set) => {
                let n = set.len();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                Ok(n)
            }
            Err(e) => {
                st.failures += 1;
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<KeySet, String> {
        let resp = self.client.get(&self.url).send().await.map_err(|e| format!("fetching the JWKS failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the JWKS URL answered {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| format!("reading the JWKS failed: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_string())?;
        let loaded = jwks::load(text)?;
        for skipped in &loaded.skipped {
            tracing::debug!(url = %self.url, "skipping JWK: {skipped}");
        }
        Ok(KeySet::from_keys(loaded.keys))
    }

    /// Refetches for an unknown `kid`, at most once per `DEFAULT_JWKS_MIN_REFETCH`. Returns
    /// whether it did.
    pub async fn fetch_if_allowed(&self) -> bool {
        {
            let mut st = self.status();
            if st.last_kid_fetch.is_some_and(|t| t.elapsed() < DEFAULT_JWKS_MIN_REFETCH) {
                return false;
            }
            st.last_kid_fetch = Some(Instant::now());
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(url = %self.url, error = %e, "JWKS refetch for an unknown kid failed; keeping cached keys");
        }
        true
    }

    /// For `/readyz` and metrics.
    pub fn describe(&self) -> serde_json::Value {
        let st = self.status();
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        serde_json::json!({
            "url": self.url,
            "keys": self.current().len(),
            "lastSuccess": st.last_success.map(ms),
            "lastError": st.last_error,
            "failures": st.failures,
        })
    }

    /// True once a fetch succeeded (keys may be stale if later ones failed).
    pub fn has_keys(&self) -> bool {
        !self.current().is_empty()
    }

    pub fn failures(&self) -> u64 {
        self.status().failures
    }
}

/// Fetches at start, then every refresh period, until `stop`.
pub async fn keep_fresh(
    remote: Arc<RemoteJwks>,
    metrics: crate::metrics::Metrics,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match remote.fetch().await {
            Ok(n) => tracing::debug!(url = %remote.url, keys = n, "JWKS fetched"),
            Err(e) => tracing::warn!(url = %remote.url, error = %e, "JWKS fetch failed; keeping cached keys"),
        }
        metrics.jwks_keys.set(remote.current().len() as i64);
        metrics.jwks_fetch_failures.set(remote.failures() as i64);
        // After a failure, retry sooner than the full period.
        let wait = if remote.has_keys() && remote.status().last_error.is_none() {
            remote.refresh
        } else {
            DEFAULT_JWKS_MIN_REFETCH.min(remote.refresh)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
