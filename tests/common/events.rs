//! Rows of the demo `notifications` table, and the SSE events they become.

use super::{connect, describe_pg_error, exec, SseEvent};

/// An event's data, parsed.
pub fn json(e: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("event data is not JSON ({err}): {:?}", e.data))
}

/// The title of the row a `notification` event carries.
pub fn title(e: &SseEvent) -> String {
    json(e)["notification"]["title"]
        .as_str()
        .unwrap_or_else(|| panic!("a notification without a title: {e:?}"))
        .to_string()
}

/// Inserts one row for `user` (its own transaction).
pub async fn insert(db: &str, user: &str, title: &str) {
    exec(db, &format!("INSERT INTO notifications (user_id, title) VALUES ('{user}', '{title}')")).await;
}

/// Inserts one row per title for `user`, each in its own transaction.
pub async fn insert_rows<T: AsRef<str>>(db: &str, user: &str, titles: &[T]) {
    let c = connect(db).await;
    for t in titles {
        let t = t.as_ref();
        c.execute("INSERT INTO notifications (user_id, title) VALUES ($1, $2)", &[&user, &t])
            .await
            .unwrap_or_else(|e| panic!("insert {t:?} on {db}: {}", describe_pg_error(&e)));
    }
}

/// `<history>.<horizon>` or `<history>.<horizon>-<log id>` (history: 8 lowercase hex digits);
/// returns the horizon and the log id.
pub fn split_id(id: &str) -> (u64, Option<i64>) {
    let (history, position) = id.split_once('.').unwrap_or_else(|| panic!("event id {id:?} without a history"));
    assert!(
        history.len() == 8 && history.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "event id {id:?}: the history is not 8 lowercase hex digits"
    );
    let (h, l) = match position.split_once('-') {
        Some((h, l)) => (h, Some(l)),
        None => (position, None),
    };
    let h = h.parse().unwrap_or_else(|_| panic!("event id {id:?} does not start with a horizon"));
    (h, l.map(|l| l.parse().unwrap_or_else(|_| panic!("event id {id:?}: bad log id"))))
}

/// The log id of a row event (`id: <history>.<H>-<log id>`).
pub fn log_id(e: &SseEvent) -> i64 {
    let id = e.id.as_deref().unwrap_or_else(|| panic!("event without id: {e:?}"));
    split_id(id).1.unwrap_or_else(|| panic!("row event id without a log id: {id}"))
}
