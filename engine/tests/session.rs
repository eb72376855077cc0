//! The session lifecycle (issue 5): every transition of the table, every refused one, expiry
//! at exactly 120 s, pause and resume.

mod common;

use std::time::{Duration, Instant};

use tandem_engine::session::{
    DEFAULT_TTL, Lifecycle, Next, Party, Phase, Session, SessionError, TRANSITIONS, Trigger, next,
};
use tandem_protocol::message::EndReason;

/// A session brought to `phase` at `t0`.
fn session_in(phase: Phase, t0: Instant) -> Session {
    let (mut s, _) = match phase {
        Phase::Invited | Phase::Live | Phase::Paused => Session::invited(t0, DEFAULT_TTL),
        Phase::Waiting => Session::waiting(t0, DEFAULT_TTL),
        Phase::Closed => unreachable!("no row starts in Closed"),
    };
    if matches!(phase, Phase::Live | Phase::Paused) {
        s.handle(Trigger::Accept, t0).unwrap();
    }
    if phase == Phase::Paused {
        s.handle(Trigger::Pause, t0).unwrap();
    }
    assert_eq!(s.phase(), phase);
    s
}

/// An answer or a join that arrives at the expiry time or later finds the session expired
/// (spec §13.1): refused, unchanged, and closed by the timeout.
#[test]
fn a_trigger_at_or_after_expiry_finds_it_expired() {
    let t0 = Instant::now();
    for (phase, trigger) in [
        (Phase::Invited, Trigger::Accept),
        (Phase::Waiting, Trigger::Join),
    ] {
        let mut s = session_in(phase, t0);
        assert_eq!(
            s.clone().handle(trigger, t0 + DEFAULT_TTL),
            Err(SessionError::Expired {
                late: Duration::ZERO
            })
        );
        assert_eq!(
            s.clone()
                .handle(trigger, t0 + DEFAULT_TTL + Duration::from_secs(3)),
            Err(SessionError::Expired {
                late: Duration::from_secs(3)
            })
        );
        assert!(
            s.clone()
                .handle(trigger, t0 + DEFAULT_TTL - Duration::from_nanos(1))
                .is_ok()
        );
        assert_eq!(
            s.handle_timeout(t0 + DEFAULT_TTL),
            Some(Lifecycle::Ended {
                reason: "expired".into()
            })
        );
    }
}

#[test]
fn every_listed_transition_happens_and_every_other_is_refused() {
    let t0 = Instant::now();
    let later = t0 + DEFAULT_TTL;
    for phase in [Phase::Invited, Phase::Waiting, Phase::Live, Phase::Paused] {
        for trigger in Trigger::ALL {
            let mut s = session_in(phase, t0);
            let before = s.clone();
            // Expiry is reported at its time; everything else comes while the session is open.
            let at = if trigger == Trigger::Expire {
                later
            } else {
                t0 + Duration::from_secs(1)
            };
            let got = s.handle(trigger, at);
            match next(phase, trigger) {
                Some(Next::Phase(p)) => {
                    assert!(got.is_ok(), "{phase:?} {trigger:?}");
                    assert_eq!(s.phase(), p);
                }
                Some(Next::Closed(reason)) => {
                    assert_eq!(
                        got,
                        Ok(Lifecycle::Ended {
                            reason: tandem_engine::session::reason_name(reason).into()
                        })
                    );
                    assert_eq!((s.phase(), s.end_reason()), (Phase::Closed, Some(reason)));
                    // Closed is final.
                    for t in Trigger::ALL {
                        assert_eq!(
                            s.clone().handle(t, later),
                            Err(SessionError::Closed(reason))
                        );
                    }
                }
                None => {
                    assert_eq!(
                        got,
                        Err(SessionError::NotAllowed { phase, trigger }),
                        "{phase:?} {trigger:?}"
                    );
                    assert_eq!(s, before, "a refused trigger changes nothing");
                }
            }
        }
    }
    assert_eq!(TRANSITIONS.len(), 19);
}

#[test]
fn every_end_reason_is_reachable() {
    let reasons: Vec<EndReason> = TRANSITIONS
        .iter()
        .filter_map(|(_, _, n)| match n {
            Next::Closed(r) => Some(*r),
            _ => None,
        })
        .collect();
    for r in [
        EndReason::Declined,
        EndReason::Cancelled,
        EndReason::Expired,
        EndReason::EndedByConsumer,
        EndReason::EndedByAgent,
        EndReason::ConnectionLost,
    ] {
        assert!(reasons.contains(&r), "{r:?}");
    }
}

#[test]
fn invitations_and_codes_expire_at_exactly_120_seconds() {
    let t0 = Instant::now();
    for make in [Session::invited, Session::waiting] {
        let (mut s, _) = make(t0, DEFAULT_TTL);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        assert_eq!(s.handle_timeout(t0 + Duration::from_millis(119_999)), None);
        assert_eq!(
            s.handle(Trigger::Expire, t0 + Duration::from_millis(119_999)),
            Err(SessionError::NotYetExpired {
                early: Duration::from_millis(1)
            })
        );
        assert!(s.poll_timeout().is_some());
        assert_eq!(
            s.handle_timeout(t0 + Duration::from_secs(120)),
            Some(Lifecycle::Ended {
                reason: "expired".into()
            })
        );
        assert_eq!(s.end_reason(), Some(EndReason::Expired));
        assert_eq!(s.poll_timeout(), None);
    }
    // Answered in time: no expiry afterwards.
    let (mut s, _) = Session::invited(t0, DEFAULT_TTL);
    assert_eq!(
        s.handle(Trigger::Accept, t0 + Duration::from_secs(119)),
        Ok(Lifecycle::Connected)
    );
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(t0 + Duration::from_secs(500)), None);
    assert!(s.is_connected());
}

#[test]
fn pause_and_resume_keep_the_session() {
    let t0 = Instant::now();
    let (mut s, first) = Session::waiting(t0, DEFAULT_TTL);
    assert_eq!(first, Lifecycle::Opened);
    assert_eq!(s.handle(Trigger::Join, t0), Ok(Lifecycle::Connected));
    for i in 1..=3 {
        let t = t0 + Duration::from_secs(i * 600);
        assert_eq!(s.handle(Trigger::Pause, t), Ok(Lifecycle::Paused));
        assert_eq!(
            s.handle(Trigger::Pause, t),
            Err(SessionError::NotAllowed {
                phase: Phase::Paused,
                trigger: Trigger::Pause
            })
        );
        assert_eq!(s.handle(Trigger::Resume, t), Ok(Lifecycle::Resumed));
        assert!(s.is_connected());
    }
    assert_eq!(
        s.handle(Trigger::End(Party::Agent), t0),
        Ok(Lifecycle::Ended {
            reason: "ended_by_agent".into()
        })
    );
}

#[test]
fn lifecycle_events_serialize_as_json_lines() {
    let e = Lifecycle::Ended {
        reason: "declined".into(),
    };
    assert_eq!(
        serde_json_line(&e),
        r#"{"event":"ended","reason":"declined"}"#
    );
    let m = Lifecycle::mode_changed(tandem_protocol::message::Mode::Guide);
    assert_eq!(
        serde_json_line(&m),
        r#"{"event":"mode_changed","mode":"guide"}"#
    );
}

fn serde_json_line<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn the_spec_transition_table_is_the_code() {
    let rows = common::spec_table("### 13.1 Session lifecycle");
    let described: Vec<String> = TRANSITIONS
        .iter()
        .map(|(phase, trigger, next)| {
            let (name, by) = match trigger {
                Trigger::Accept => ("`ACCEPT`", "consumer"),
                Trigger::Decline => ("`DECLINE`", "consumer"),
                Trigger::Cancel => ("`CANCEL`", "agent"),
                Trigger::Join => ("`JOIN`", "agent"),
                Trigger::Pause => ("`PAUSE`", "consumer"),
                Trigger::Resume => ("`RESUME`", "consumer"),
                Trigger::End(Party::Consumer) => ("`END`", "consumer"),
                Trigger::End(Party::Agent) => ("`END`", "agent"),
                Trigger::End(Party::Relay) => ("`END`", "relay"),
                Trigger::ConnectionLost => ("connection lost", "relay"),
                Trigger::Expire => ("expiry", "relay"),
            };
            assert_eq!(format!("{:?}", trigger.party()).to_lowercase(), by);
            let next = match next {
                Next::Phase(p) => format!("{p:?}"),
                Next::Closed(r) => format!("Closed: `{r:?}`"),
            };
            format!("{phase:?} | {name} | {by} | {next}")
        })
        .collect();
    let in_spec: Vec<String> = rows.iter().map(|r| r.join(" | ")).collect();
    assert_eq!(in_spec, described);
}
