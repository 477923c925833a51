//! The history check on every connect: is the database still on the history of the gateway's positions?

use super::Source;
use crate::pg::payload::{self, Verifier};
use crate::pg::{within, PgError};

impl Source {
    /// Takes the key, and checks that the database is still on the history the gateway's
    /// positions belong to. Returns the channel to LISTEN on.
    pub(super) async fn on_setup(
        &mut self,
        client: &tokio_postgres::Client,
        row: &tokio_postgres::Row,
    ) -> Result<String, PgError> {
        let key: Vec<u8> = row.try_get(0)?;
        let channel: String = row.try_get(1)?;
        let history: String = row.try_get(2)?;
        let xmax = crate::pg::parse_xid(row.try_get(3)?)?;
        if !channel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PgError::Protocol(format!("pgsse.secret.channel {channel:?} is not a plain identifier")));
        }
        let mut history = payload::parse_history(&history)
            .ok_or_else(|| PgError::Protocol(format!("pgsse.history() returned {history:?}")))?;
        self.verifier = Some(Verifier::new(&key));
        if let Some(h) = self.state.horizon().filter(|h| self.state.history() == Some(history) && xmax < *h) {
            // Same history, yet the database has not reached positions the gateway handed out: it
            // was restored from a backup without a new timeline. Start a new history, durably, so
            // every position taken before is recognised as foreign by every replica.
            tracing::error!(
                horizon = h,
                database_xmax = xmax,
                "the database is behind positions already handed out (restored from a backup?); starting a new history"
            );
            let t = self.timeout;
            let renew = client.batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 UPDATE pgsse.meta SET history = md5(gen_random_uuid()::text); COMMIT",
            );
            within("listen", t, renew).await?;
            let row = within("listen", t, client.query_one("SELECT pgsse.history()", &[])).await?;
            let text: String = row.try_get(0)?;
            history = payload::parse_history(&text)
                .ok_or_else(|| PgError::Protocol(format!("pgsse.history() returned {text:?}")))?;
        }
        match self.state.history() {
            Some(old) if old != history => {
                tracing::warn!(
                    old = format_args!("{old:08x}"),
                    new = format_args!("{history:08x}"),
                    "the database's history changed (failover or restore): every stream gets reset"
                );
                self.metrics.history_changes.inc();
                self.seen.clear();
                self.resync = true;
                self.state.set_history(history);
            }
            Some(_) => {}
            None => self.state.set_history(history),
        }
        Ok(channel)
    }
}
