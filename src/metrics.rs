//! Metrics: the counters and gauges every stage updates, exposed in Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Cheap to clone: every metric is an `Arc` inside.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_opened: Counter,
    connections_closed: Family<Labels, Counter>,
    pub events_received: Counter,
    pub events_delivered: Counter,
    pub events_replayed: Counter,
    resets: Family<Labels, Counter>,
    pub slow_client_disconnects: Counter,
    streams_cut: Family<Labels, Counter>,
    pub catch_ups: Counter,
    auth_failures: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    pub payloads_dropped: Counter,
    pub payloads_forged: Counter,
    pub payloads_stale: Counter,
    pub history_changes: Counter,
    pub pg_reconnects: Counter,
    pub pg_listening: Gauge,
    db_timeouts: Family<Labels, Counter>,
    pub listen_lag_seconds: Gauge<f64, AtomicU64>,
    pub notify_queue_usage: Gauge<f64, AtomicU64>,
    pub jwks_keys: Gauge,
    pub jwks_fetch_failures: Gauge,
    pub retention_pruned_rows: Counter,
    pub retention_failures: Counter,
    pub relay_mode: Gauge,
    pub relay_leader: Gauge,
    pub relay_rounds: Counter,
    pub relay_transactions: Counter,
    pub relay_events: Counter,
    pub relay_probes: Counter,
    pub relay_asleep: Gauge,
    pub relay_wakeups: Counter,
    pub notify_lock_waiters: Gauge,
    tcp_open: Family<Labels, Gauge>,
    tcp_refused: Family<Labels, Counter>,
}

impl Metrics {
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn reset(&self, reason: &'static str) {
        self.resets.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// A stream dropped without a graceful end, by `hub::CloseReason::as_str`.
    pub fn stream_cut(&self, reason: &'static str) {
        self.streams_cut.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// A stream request turned away before it opened (limits, draining, not ready).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// A database round trip overran `--db-timeout` on `conn` (listen, marker or pool).
    pub fn db_timeout(&self, conn: &'static str) {
        self.db_timeouts.get_or_create(&vec![("conn", conn)]).inc();
    }

    /// Connections open on a listener (`main` or `metrics`).
    pub fn tcp_open(&self, listener: &'static str) -> Gauge {
        self.tcp_open.get_or_create(&vec![("listener", listener)]).clone()
    }

    /// A connection closed at accept because its listener was at its cap.
    pub fn tcp_refused(&self, listener: &'static str) {
        self.tcp_refused.get_or_create(&vec![("listener", listener)]).inc();
    }

    /// The Prometheus/OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut r = Registry::with_prefix("pgsse");
        r.register("connections_open", "Open event streams", self.connections_open.clone());
        r.register("connections_opened", "Event streams opened", self.connections_opened.clone());
        r.register("connections_closed", "Event streams closed, by reason", self.connections_closed.clone());
        r.register("events_received", "Events received from Postgres", self.events_received.clone());
        r.register("events_delivered", "Events queued to streams (one per stream)", self.events_delivered.clone());
        r.register("events_replayed", "Events replayed to resuming streams", self.events_replayed.clone());
        r.register("resets", "Resets sent to resuming streams, by reason", self.resets.clone());
        r.register(
            "slow_client_disconnects",
            "Streams closed because the client fell behind",
            self.slow_client_disconnects.clone(),
        );
        r.register(
            "streams_cut",
            "Streams dropped without a graceful end, by reason (slow_client: took nothing within \
             --slow-client-timeout; upload; catch_up_failed; not_reading_at_close)",
            self.streams_cut.clone(),
        );
        r.register(
            "catch_ups",
            "Times a stream went over --max-queue-bytes and read its events back from the log",
            self.catch_ups.clone(),
        );
        r.register("auth_failures", "Stream requests refused by authentication, by reason", self.auth_failures.clone());
        r.register("refused", "Stream requests refused before opening, by reason", self.refused.clone());
        r.register(
            "payloads_dropped",
            "NOTIFY payloads on the pgsse channel that were ignored",
            self.payloads_dropped.clone(),
        );
        r.register("payloads_forged", "NOTIFY payloads whose signature did not verify", self.payloads_forged.clone());
        r.register(
            "payloads_stale",
            "Signed NOTIFY payloads ignored as re-sent: below the horizon, already handled, or of another history",
            self.payloads_stale.clone(),
        );
        r.register(
            "history_changes",
            "Times the database's history changed under the gateway (failover, restore): every stream was reset",
            self.history_changes.clone(),
        );
        r.register("pg_reconnects", "Reconnects of the LISTEN connection", self.pg_reconnects.clone());
        r.register(
            "db_timeouts",
            "Database round trips that overran --db-timeout (the connection was dropped), by connection",
            self.db_timeouts.clone(),
        );
        r.register("pg_listening", "1 while the LISTEN connection is up and caught up", self.pg_listening.clone());
        r.register(
            "listen_lag_seconds",
            "Round trip of the last horizon marker through NOTIFY",
            self.listen_lag_seconds.clone(),
        );
        r.register(
            "notify_queue_usage",
            "pg_notification_queue_usage() (0..1) of the database",
            self.notify_queue_usage.clone(),
        );
        r.register("jwks_keys", "Keys currently held from --jwks-url", self.jwks_keys.clone());
        r.register("jwks_fetch_failures", "Failed fetches of --jwks-url since start", self.jwks_fetch_failures.clone());
        r.register(
            "retention_pruned_rows",
            "Rows of pgsse.events deleted by retention",
            self.retention_pruned_rows.clone(),
        );
        r.register(
            "retention_failures",
            "Retention rounds that failed (pgsse.events is not pruned meanwhile)",
            self.retention_failures.clone(),
        );
        r.register("relay_mode", "1 in relay mode (writers only log rows), 0 in commit mode", self.relay_mode.clone());
        r.register("relay_leader", "1 while this replica is the relay", self.relay_leader.clone());
        r.register("relay_rounds", "Relay rounds run by this replica", self.relay_rounds.clone());
        r.register(
            "relay_transactions",
            "Transactions announced by this replica's relay rounds",
            self.relay_transactions.clone(),
        );
        r.register("relay_events", "Events announced by this replica's relay rounds", self.relay_events.clone());
        r.register(
            "relay_probes",
            "Probes for anything new between this replica's relay rounds",
            self.relay_probes.clone(),
        );
        r.register(
            "relay_asleep",
            "1 while this replica's relay sleeps (idle: a writer wakes it, no polling)",
            self.relay_asleep.clone(),
        );
        r.register("relay_wakeups", "Times a writer woke this replica's sleeping relay", self.relay_wakeups.clone());
        r.register(
            "notify_lock_waiters",
            "Sessions waiting on PostgreSQL's NOTIFY commit lock (sampled every second)",
            self.notify_lock_waiters.clone(),
        );
        r.register("tcp_connections_open", "TCP connections open, by listener", self.tcp_open.clone());
        r.register(
            "tcp_connections_refused",
            "Connections closed at accept because the listener was at its cap (--max-tcp-connections, --metrics-max-connections)",
            self.tcp_refused.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_every_metric() {
        let m = Metrics::default();
        m.connections_opened.inc();
        m.connection_closed("client");
        m.auth_failure("expired");
        m.db_timeout("marker");
        let text = m.encode();
        assert!(text.contains("pgsse_connections_opened_total 1"), "{text}");
        assert!(text.contains("pgsse_connections_closed_total{reason=\"client\"} 1"), "{text}");
        assert!(text.contains("pgsse_auth_failures_total{reason=\"expired\"} 1"), "{text}");
        assert!(text.contains("pgsse_db_timeouts_total{conn=\"marker\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
