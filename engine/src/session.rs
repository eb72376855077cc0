//! The session lifecycle (spec §13.1): how a co-browsing session is set up, paused, resumed and
//! ended, as a state machine without I/O. Time is passed in; the relay (which enforces it) and
//! both peers (which show it) drive the same machine from the messages they see.
//!
//! ## Model
//!
//! ```text
//!                     Accept                      Pause
//!   INVITE ─► Invited ───────┐            ┌──────────────────┐
//!               │ Decline,   ▼            │                  ▼
//!               │ Cancel,  Live ◄─────────┘◄──────────── Paused
//!               │ expiry     ▲   Resume
//!               ▼            │ Join
//!            Closed ◄── Waiting ◄── SESSION_OPEN (code + token)
//!        (with a reason)  expiry, End
//! ```
//!
//! A session is born either from an agent's invitation ([`Session::invited`], answered by the
//! customer within the invitation's lifetime, 120 s by default) or from a customer who opens a
//! session and reads out its code ([`Session::waiting`], joined by an agent within the code's
//! lifetime). Once live, the customer may pause sharing and resume it without a new code; either
//! side may end it; a lost connection ends it. Every session ends exactly once, with an
//! [`EndReason`]. [`TRANSITIONS`] is the whole table; anything it does not list is refused with
//! a typed [`SessionError`] and changes nothing.

use std::time::{Duration, Instant};

use tandem_protocol::message::{EndReason, Mode};

/// How long an invitation or an unused session code lives (spec §7.4, §7.7).
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);

/// Who caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The customer's side.
    Consumer,
    /// The support agent.
    Agent,
    /// The relay (expiry, a lost connection).
    Relay,
}

/// The phase a session is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// An agent invited the customer; no answer yet.
    Invited,
    /// The customer opened a session and holds a code; no agent has joined yet.
    Waiting,
    /// Both sides are connected and the page is shared.
    Live,
    /// Both sides are connected; the customer paused sharing.
    Paused,
    /// The session is over (see [`Session::end_reason`]).
    Closed,
}

/// What happens to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The customer accepts the invitation (`ACCEPT`).
    Accept,
    /// The customer declines the invitation (`DECLINE`).
    Decline,
    /// The agent withdraws the invitation (`CANCEL`).
    Cancel,
    /// An agent joins with the session's code or token (`JOIN`).
    Join,
    /// The customer pauses sharing (`PAUSE`).
    Pause,
    /// The customer resumes sharing (`RESUME`).
    Resume,
    /// A side ends the session (`END`).
    End(Party),
    /// A peer's connection was lost for good.
    ConnectionLost,
    /// The invitation or code reached its expiry time.
    Expire,
}

impl Trigger {
    /// Every trigger, for exhaustive tests.
    pub const ALL: [Trigger; 11] = [
        Trigger::Accept,
        Trigger::Decline,
        Trigger::Cancel,
        Trigger::Join,
        Trigger::Pause,
        Trigger::Resume,
        Trigger::End(Party::Consumer),
        Trigger::End(Party::Agent),
        Trigger::End(Party::Relay),
        Trigger::ConnectionLost,
        Trigger::Expire,
    ];

    /// Who may cause the trigger.
    pub fn party(self) -> Party {
        match self {
            Trigger::Accept | Trigger::Decline | Trigger::Pause | Trigger::Resume => {
                Party::Consumer
            }
            Trigger::Cancel | Trigger::Join => Party::Agent,
            Trigger::End(p) => p,
            Trigger::ConnectionLost | Trigger::Expire => Party::Relay,
        }
    }
}

/// Where a transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Next {
    /// Into another open phase.
    Phase(Phase),
    /// Closed, for this reason.
    Closed(EndReason),
}

/// The transition table (spec §13.1): (phase, trigger, next). Anything not listed is refused.
pub const TRANSITIONS: &[(Phase, Trigger, Next)] = &[
    (Phase::Invited, Trigger::Accept, Next::Phase(Phase::Live)),
    (
        Phase::Invited,
        Trigger::Decline,
        Next::Closed(EndReason::Declined),
    ),
    (
        Phase::Invited,
        Trigger::End(Party::Consumer),
        Next::Closed(EndReason::Declined),
    ),
    (
        Phase::Invited,
        Trigger::Cancel,
        Next::Closed(EndReason::Cancelled),
    ),
    (
        Phase::Invited,
        Trigger::End(Party::Agent),
        Next::Closed(EndReason::Cancelled),
    ),
    (
        Phase::Invited,
        Trigger::Expire,
        Next::Closed(EndReason::Expired),
    ),
    (
        Phase::Invited,
        Trigger::ConnectionLost,
        Next::Closed(EndReason::ConnectionLost),
    ),
    (Phase::Waiting, Trigger::Join, Next::Phase(Phase::Live)),
    (
        Phase::Waiting,
        Trigger::End(Party::Consumer),
        Next::Closed(EndReason::EndedByConsumer),
    ),
    (
        Phase::Waiting,
        Trigger::Expire,
        Next::Closed(EndReason::Expired),
    ),
    (
        Phase::Waiting,
        Trigger::ConnectionLost,
        Next::Closed(EndReason::ConnectionLost),
    ),
    (Phase::Live, Trigger::Pause, Next::Phase(Phase::Paused)),
    (
        Phase::Live,
        Trigger::End(Party::Consumer),
        Next::Closed(EndReason::EndedByConsumer),
    ),
    (
        Phase::Live,
        Trigger::End(Party::Agent),
        Next::Closed(EndReason::EndedByAgent),
    ),
    (
        Phase::Live,
        Trigger::ConnectionLost,
        Next::Closed(EndReason::ConnectionLost),
    ),
    (Phase::Paused, Trigger::Resume, Next::Phase(Phase::Live)),
    (
        Phase::Paused,
        Trigger::End(Party::Consumer),
        Next::Closed(EndReason::EndedByConsumer),
    ),
    (
        Phase::Paused,
        Trigger::End(Party::Agent),
        Next::Closed(EndReason::EndedByAgent),
    ),
    (
        Phase::Paused,
        Trigger::ConnectionLost,
        Next::Closed(EndReason::ConnectionLost),
    ),
];

/// The row of [`TRANSITIONS`] for `phase` and `trigger`, if any.
pub fn next(phase: Phase, trigger: Trigger) -> Option<Next> {
    TRANSITIONS
        .iter()
        .find(|(p, t, _)| *p == phase && *t == trigger)
        .map(|&(_, _, n)| n)
}

/// Why a trigger was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session is over; nothing changes it any more.
    #[error("the session has ended ({0:?})")]
    Closed(EndReason),
    /// The trigger does not apply in this phase (an `ACCEPT` of a live session, a `PAUSE`
    /// before anyone joined, an `END` of an invitation by the relay).
    #[error("{trigger:?} is not allowed while {phase:?}")]
    NotAllowed {
        /// The phase.
        phase: Phase,
        /// The refused trigger.
        trigger: Trigger,
    },
    /// An expiry was reported before the expiry time.
    #[error("expiry reported {early:?} early")]
    NotYetExpired {
        /// How long before the expiry time.
        early: Duration,
    },
    /// The invitation or code reached its expiry time before this trigger (an answer that
    /// arrives at the expiry time or later finds it closed, spec §13.1): nothing changed;
    /// [`Session::handle_timeout`] closes it.
    #[error("the session expired {late:?} before this trigger")]
    Expired {
        /// How long after the expiry time the trigger came.
        late: Duration,
    },
}

/// A lifecycle event for integrations (spec §13.5): what the relay writes as a JSON line and
/// posts to a webhook, so a contact centre can show "co-browse connected / ended".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Lifecycle {
    /// An agent invited a customer.
    Invited,
    /// A customer opened a session with a code.
    Opened,
    /// Both sides are connected.
    Connected,
    /// The session's mode changed.
    ModeChanged {
        /// The new mode, by name.
        mode: String,
    },
    /// The customer paused sharing.
    Paused,
    /// The customer resumed sharing.
    Resumed,
    /// The session ended.
    Ended {
        /// Why, by name (`declined`, `cancelled`, `expired`, `ended_by_consumer`,
        /// `ended_by_agent`, `connection_lost`).
        reason: String,
    },
}

impl Lifecycle {
    /// The event of a mode change.
    pub fn mode_changed(mode: Mode) -> Lifecycle {
        Lifecycle::ModeChanged {
            mode: mode_name(mode).to_owned(),
        }
    }
}

/// A mode's name in events and on the command line.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Follow => "follow",
        Mode::View => "view",
        Mode::Guide => "guide",
        Mode::Full => "full",
        _ => "unknown",
    }
}

/// An end reason's name in events.
pub fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Declined => "declined",
        EndReason::Cancelled => "cancelled",
        EndReason::Expired => "expired",
        EndReason::EndedByConsumer => "ended_by_consumer",
        EndReason::EndedByAgent => "ended_by_agent",
        EndReason::ConnectionLost => "connection_lost",
        _ => "unknown",
    }
}

/// One session's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    phase: Phase,
    expires_at: Option<Instant>,
    end: Option<EndReason>,
    since: Instant,
}

impl Session {
    /// An agent's invitation, sent at `now`, that expires after `ttl`.
    pub fn invited(now: Instant, ttl: Duration) -> (Session, Lifecycle) {
        (Session::open(Phase::Invited, now, ttl), Lifecycle::Invited)
    }

    /// A customer's session with a code, opened at `now`, that expires after `ttl` unless an
    /// agent joins.
    pub fn waiting(now: Instant, ttl: Duration) -> (Session, Lifecycle) {
        (Session::open(Phase::Waiting, now, ttl), Lifecycle::Opened)
    }

    fn open(phase: Phase, now: Instant, ttl: Duration) -> Session {
        Session {
            phase,
            expires_at: now.checked_add(ttl),
            end: None,
            since: now,
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end
    }

    /// Whether the session is live or paused (both sides connected).
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Live | Phase::Paused)
    }

    /// When the phase began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// When the invitation or code expires, while the session waits for its second side.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Invited | Phase::Waiting => self.expires_at,
            _ => None,
        }
    }

    /// Expires the session if its time is up at `now` (exactly at the expiry time, not a
    /// moment later). Returns the event when it did.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Lifecycle> {
        match self.poll_timeout() {
            Some(at) if now >= at => self.handle(Trigger::Expire, now).ok(),
            _ => None,
        }
    }

    /// Applies `trigger` at `now`. On success returns the lifecycle event; on refusal the
    /// session is unchanged.
    pub fn handle(&mut self, trigger: Trigger, now: Instant) -> Result<Lifecycle, SessionError> {
        if let Some(reason) = self.end {
            return Err(SessionError::Closed(reason));
        }
        if let Some(at) = self.poll_timeout() {
            if trigger == Trigger::Expire && now < at {
                return Err(SessionError::NotYetExpired { early: at - now });
            }
            if trigger != Trigger::Expire && now >= at {
                return Err(SessionError::Expired { late: now - at });
            }
        }
        let next = next(self.phase, trigger).ok_or(SessionError::NotAllowed {
            phase: self.phase,
            trigger,
        })?;
        let from = self.phase;
        self.since = now;
        Ok(match next {
            Next::Phase(p) => {
                self.phase = p;
                match (from, p) {
                    (Phase::Live, Phase::Paused) => Lifecycle::Paused,
                    (Phase::Paused, Phase::Live) => Lifecycle::Resumed,
                    _ => Lifecycle::Connected,
                }
            }
            Next::Closed(reason) => {
                self.phase = Phase::Closed;
                self.end = Some(reason);
                Lifecycle::Ended {
                    reason: reason_name(reason).to_owned(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_phase_and_trigger() {
        for (i, (p, t, _)) in TRANSITIONS.iter().enumerate() {
            assert!(
                TRANSITIONS[i + 1..]
                    .iter()
                    .all(|(p2, t2, _)| (p2, t2) != (p, t)),
                "{p:?} {t:?} twice"
            );
            assert_ne!(*p, Phase::Closed, "no way out of Closed");
        }
    }
}
