//! The relay's pacing, and the snapshots and news it reads.

use super::*;

#[test]
fn a_busy_relay_runs_fewer_larger_rounds() {
    let db = tokio_postgres::Config::new();
    let ms = Duration::from_millis;
    let r = Relay::new(db.clone(), Metrics::default(), ms(10), ms(250)).with_busy_interval(ms(25));
    assert_eq!(
        (r.every(0, false), r.every(BUSY_ROUND - 1, false), r.every(BUSY_ROUND, false), r.every(5000, false)),
        (ms(10), ms(10), ms(25), ms(25))
    );
    assert_eq!(r.every(0, true), ms(10), "a quiet relay that sleeps: the interval until it does");
    let one = Relay::new(db.clone(), Metrics::default(), ms(40), ms(250)).with_busy_interval(ms(25));
    assert_eq!(one.every(5000, false), ms(40), "never shorter than the interval");
    let polls = Relay::new(db, Metrics::default(), ms(10), ms(250)).with_quiet_interval(Some(ms(100)));
    assert_eq!((polls.every(0, true), polls.every(0, false)), (ms(100), ms(10)), "quiet, it polls less often");
}

#[test]
fn snapshots_parse_as_postgres_writes_them() {
    assert_eq!(Snapshot::parse("10:20:12,15"), Some(Snapshot { xmax: 20, xip: vec![12, 15] }));
    assert_eq!(Snapshot::parse("20:20:"), Some(Snapshot { xmax: 20, xip: vec![] }));
    assert_eq!(Snapshot::parse("20:20"), None);
    assert_eq!(Snapshot::parse("a:b:"), None);
}

#[test]
fn news_is_a_visible_row_past_the_position_or_a_finished_in_progress_transaction() {
    let pos = Snapshot::parse("10:20:12,15").unwrap();
    let same = Snapshot::parse("12:21:12,15").unwrap();
    assert!(!news(&pos, None, &same), "an empty log");
    assert!(!news(&pos, Some(19), &same), "nothing logged since");
    assert!(news(&pos, Some(20), &same), "a row at the position's xmax");
    assert!(news(&pos, Some(3), &Snapshot::parse("15:21:15").unwrap()), "12 finished");
    assert!(!news(&pos, Some(3), &Snapshot::parse("12:30:12,15,25").unwrap()), "both still running");
}

#[test]
fn a_pause_never_runs_past_the_lease_renewal() {
    let ms = Duration::from_millis;
    let now = Instant::now();
    assert!(pause(ms(400), now, Some(now - ms(350))) <= ms(50), "the renewal is due in 50 ms");
    assert!(pause(ms(400), now, Some(now - ms(500))) == Duration::ZERO, "the renewal is overdue");
    assert!(pause(ms(10), now, Some(now)) <= ms(10), "the interval when it is shorter");
    assert!(pause(ms(10), now, None) <= ms(10), "no round yet");
}
