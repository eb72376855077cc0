//! Invitations at the relay (spec §7.7–§7.10, §13.1): an agent asks a customer who waits with
//! an open session, the customer answers, and the relay pairs them or tells the agent no.
//!
//! ```text
//!  agent task                       consumer task (wait_for_agent)               customer
//!  INVITE ─► table.invite ─► Arrival::Invited ─► deliver: INVITE ──────────────► shown
//!                                    │ owns the agent's connection now
//!            ◄── ACCEPT ─────────────┤◄─────────────────────────────────────── ACCEPT
//!            ◄── JOINED (run_session)┘        or DECLINE / CANCEL / END / expiry / loss:
//!                                              the invitation closes, the agent goes back
//!                                              to its own task, the customer waits on
//! ```
//!
//! Each invitation's lifecycle is an engine [`Session`] in the `Invited` phase: every answer is
//! a [`Trigger`] it judges, so the relay enforces exactly the transitions of the spec's table,
//! including expiry at its time and not a moment later, and its lifecycle events are the ones
//! the session machine returns. One customer is asked one invitation at a time (the session
//! table's rule), and an agent whose invitation is pending has no other: any `INVITE` or
//! `JOIN` it sends meanwhile is refused with `SessionBusy`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_engine::session::{Lifecycle, Party, Session, Trigger};
use tandem_protocol::message::{End, EndReason, ErrorReport, InvitationRef, Invite};
use tandem_protocol::{ErrorCode, FrameType, Message, RawFrame};
use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::state::{self, Consumed, ControlAction, JoinRefusal, SessionId, Side, error_frame};
use super::{
    Arrival, Peer, Refused, RelayEvent, Shared, Stop, agent_task, ended, finish_owned, refusal,
    refuse, send_error,
};
use crate::framed::{FramedError, write_message, write_raw};

/// The inviting agent's side, as the cause of a close.
const AGENT: Option<Side> = Some(Side::Agent);

/// An invitation on its way to, or shown to, a customer. Owns the inviting agent's connection.
pub(super) struct Pending {
    /// The invitation's id inside the relay (its events, and the session's if accepted).
    id: SessionId,
    /// The customer's waiting session.
    consumer_session: SessionId,
    /// The agent's invitation id (`INVITE.invitation`), which the answers name.
    number: u64,
    /// The inviting agent.
    agent: Peer,
    /// The agent's address.
    remote: SocketAddr,
    /// The `INVITE` shown to the customer, with the relay's expiry.
    frame: RawFrame,
    /// The invitation's lifecycle.
    life: Session,
    /// When it expires unanswered.
    expires_at: Instant,
}

/// The agent's side: registers the invitation with the session table and hands it, with the
/// agent's connection, to the customer's task. Refusals (unknown customer, a customer being
/// asked already, too many wrong targets) are answered with `ERROR` as for `JOIN`.
pub(super) async fn place(
    shared: &Arc<Shared>,
    mut peer: Peer,
    remote: SocketAddr,
    mut invite: Invite,
) -> Result<(), Refused> {
    peer.info.label = invite.agent_label.clone();
    let now = Instant::now();
    let ttl = Duration::from_millis(invite.expires_ms.into());
    let placed = shared.table().invite(now, remote.ip(), &invite.target, ttl);
    let refused = match placed {
        Ok(invitation) => {
            let lifetime = invitation.expires_at.saturating_duration_since(now);
            // The customer sees the deadline the relay enforces.
            invite.expires_ms = u32::try_from(lifetime.as_millis()).unwrap_or(u32::MAX);
            let number = invite.invitation;
            let mut body = Vec::new();
            let _ = Message::Invite(invite).encode_body(&mut body);
            let (life, _) = Session::invited(now, lifetime);
            let pending = Pending {
                id: invitation.id,
                consumer_session: invitation.consumer_session,
                number,
                agent: peer,
                remote,
                frame: RawFrame {
                    ty: FrameType::INVITE,
                    body,
                },
                life,
                expires_at: invitation.expires_at,
            };
            match invitation
                .waiter
                .try_send(Arrival::Invited(Box::new(pending)))
            {
                Ok(()) => return Ok(()),
                Err(
                    mpsc::error::TrySendError::Closed(back) | mpsc::error::TrySendError::Full(back),
                ) => {
                    // The customer went away between the table's check and now.
                    shared.table().close_invitation(invitation.consumer_session);
                    let Arrival::Invited(back) = back else {
                        return Ok(());
                    };
                    peer = back.agent;
                    JoinRefusal::NotFound
                }
            }
        }
        Err(refused) => refused,
    };
    Err(refuse(shared, peer, remote, refused).await)
}

/// The customer's side: shows the `INVITE` to the customer. Returns the pending invitation, or
/// `None` when it could not be taken (the customer is being asked already, which the table
/// prevents; the agent is refused `SessionBusy`). A write failure is the customer's loss.
pub(super) async fn deliver(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    mut inv: Box<Pending>,
    busy: bool,
) -> Result<Option<Box<Pending>>, Stop> {
    if busy {
        let _ = send_error(
            shared,
            &mut inv.agent,
            ErrorCode::SessionBusy,
            "the customer is answering another invitation",
        )
        .await;
        release(shared, *inv);
        return Ok(None);
    }
    if let Err(e) = write_raw(&mut consumer.send, &inv.frame).await {
        shared.table().close_invitation(inv.consumer_session);
        unanswered(
            shared,
            *inv,
            Some(Side::Consumer),
            EndReason::ConnectionLost,
        )
        .await;
        return Err(e.into());
    }
    shared.emit(RelayEvent::Invited {
        session: inv.id,
        consumer_label: consumer.info.label.clone(),
        agent_label: inv.agent.info.label.clone(),
        remote: inv.remote,
    });
    Ok(Some(inv))
}

/// What happened on the pending invitation's side.
pub(super) enum Event {
    /// A control frame from the inviting agent, or its end.
    Frame(Result<Option<RawFrame>, FramedError>),
    /// The invitation's expiry time came.
    Expired,
}

/// The next frame from the inviting agent or the invitation's expiry; never returns while no
/// invitation is pending.
pub(super) async fn next_event(inv: &mut Option<Box<Pending>>) -> Event {
    match inv {
        None => std::future::pending().await,
        Some(p) => tokio::select! {
            frame = p.agent.recv.next_raw() => Event::Frame(frame),
            _ = sleep_until(p.expires_at.into()) => Event::Expired,
        },
    }
}

/// Whether an invitation is still pending after an event.
pub(super) enum Still {
    /// Still waiting for the customer.
    Pending(Box<Pending>),
    /// Closed (the agent was told and let go).
    Closed,
}

/// Handles an [`Event`] of the pending invitation `inv` of the customer `consumer`: the agent's
/// `CANCEL`, `END` or loss, hop messages, expiry. A message only the relay sends, or a second
/// `HELLO`, is a violation, closed with `CLOSE UnexpectedMessage` as in every other state
/// (spec §9). Nothing else has a receiver before the customer accepts: the relay refuses it
/// with `ERROR` (`SessionBusy` for `INVITE` and `JOIN`, `UnexpectedMessage` otherwise), the
/// connection staying open. Every frame is recognised first, those the relay consumes
/// (`PING`, `PONG`, `ERROR`, `END`, `CLOSE`) as those it answers or refuses, and one that does
/// not decode is the agent's violation (spec §4.5), not a request it refuses. An error is a
/// failure to write to the customer.
pub(super) async fn on_agent_event(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    _consumer_session: SessionId,
    mut inv: Box<Pending>,
    event: Event,
) -> Result<Still, Stop> {
    let now = Instant::now();
    let frame = match event {
        Event::Expired => {
            return match inv.life.handle_timeout(now) {
                Some(life) => close(shared, consumer, *inv, life, None, Fate::Release).await,
                // The timer fired a moment early: the invitation is not expired yet.
                None => Ok(Still::Pending(inv)),
            };
        }
        Event::Frame(Ok(Some(frame))) => frame,
        Event::Frame(Ok(None)) => {
            return close_by(shared, consumer, *inv, Trigger::ConnectionLost, AGENT).await;
        }
        Event::Frame(Err(e)) => return broke(shared, consumer, *inv, e).await,
    };
    let number = inv.number;
    let reply = if Consumed::is_consumed(frame.ty) {
        // Recognised before the relay acts on it (spec §4.5).
        match state::consume(&frame, &shared.limits) {
            Ok(Consumed::Ping(pong)) => Some(pong),
            Ok(Consumed::Ignored) => None,
            Ok(Consumed::End(_)) => {
                let trigger = Trigger::End(Party::Agent);
                return close_by(shared, consumer, *inv, trigger, AGENT).await;
            }
            Ok(Consumed::Close(_)) => {
                return close_by(shared, consumer, *inv, Trigger::ConnectionLost, AGENT).await;
            }
            Err(e) => return broke(shared, consumer, *inv, e.into()).await,
        }
    } else if frame.ty == FrameType::CANCEL {
        // Recognised before the relay acts on it (spec §4.5): one that does not decode names no
        // invitation, and is the agent's violation.
        match frame.decode(&shared.limits) {
            Err(e) => return broke(shared, consumer, *inv, e.into()).await,
            Ok(Message::Cancel(InvitationRef { invitation })) if invitation == number => {
                return close_by(shared, consumer, *inv, Trigger::Cancel, AGENT).await;
            }
            Ok(_) => Some(error_frame(
                ErrorCode::UnexpectedMessage,
                "CANCEL names no pending invitation of yours",
            )),
        }
    } else {
        // Nothing else has a receiver before the customer accepts: the relay refuses it, once
        // recognised (spec §4.5): one that does not decode is the agent's violation, not a
        // wrong request.
        let (code, message) = match state::classify_control(Side::Agent, frame.ty) {
            // A message only the relay sends, or a second HELLO, is not refused but is a
            // violation (spec §4.3, §9), closed as in every other state.
            ControlAction::Violation => {
                let report = ErrorReport {
                    code: ErrorCode::UnexpectedMessage,
                    message: format!("{} is not allowed here", frame.ty),
                };
                return violated(shared, consumer, *inv, report).await;
            }
            ControlAction::Refuse(ErrorCode::SessionBusy) => (
                ErrorCode::SessionBusy,
                "your invitation is pending; CANCEL it first".to_owned(),
            ),
            _ => (
                ErrorCode::UnexpectedMessage,
                format!("{} is not allowed before the customer accepts", frame.ty),
            ),
        };
        match state::refuse(&frame, &shared.limits, code, &message) {
            Ok(error) => Some(error),
            Err(e) => return broke(shared, consumer, *inv, e.into()).await,
        }
    };
    if let Some(reply) = reply
        && write_raw(&mut inv.agent.send, &reply).await.is_err()
    {
        return close_by(shared, consumer, *inv, Trigger::ConnectionLost, AGENT).await;
    }
    Ok(Still::Pending(inv))
}

/// The outcome of the customer's `ACCEPT` or `DECLINE`.
pub(super) enum Answered {
    /// Accepted: pair the customer with this agent; the session's events carry `event_id`.
    Accepted {
        /// The agent.
        agent: Box<Peer>,
        /// The invitation's id.
        event_id: SessionId,
    },
    /// Not accepted (declined, or an answer to no pending invitation, which the customer is
    /// told with `ERROR`); the invitation still pending, if any.
    Still(Option<Box<Pending>>),
}

/// Handles the customer's `ACCEPT` or `DECLINE` (`frame`) of the pending invitation `inv` of
/// the waiting session `consumer_session`. An answer at or after the expiry time finds the
/// invitation expired (spec §13.1). An answer that does not decode is the customer's violation
/// (spec §4.5): the pending invitation closes as lost (the agent is told `END ConnectionLost`)
/// and the error is the customer's stop.
pub(super) async fn on_answer(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    consumer_session: SessionId,
    inv: Option<Box<Pending>>,
    frame: RawFrame,
) -> Result<Answered, Stop> {
    let now = Instant::now();
    let number = match frame.decode(&shared.limits) {
        Ok(Message::Accept(r) | Message::Decline(r)) => r.invitation,
        // Frames of these types always decode to these messages.
        Ok(_) => return Ok(Answered::Still(inv)),
        // The customer broke the protocol (spec §4.5): its session is lost, and so is the
        // invitation, which the agent is told like any other loss of the customer.
        Err(e) => {
            consumer_gone(shared, inv).await;
            return Err(FramedError::from(e).into());
        }
    };
    let mut inv = match inv {
        Some(p) if p.number == number => p,
        other => {
            let reply = error_frame(
                ErrorCode::UnexpectedMessage,
                &format!("no pending invitation {number}"),
            );
            write_raw(&mut consumer.send, &reply).await?;
            return Ok(Answered::Still(other));
        }
    };
    if let Some(life) = inv.life.handle_timeout(now) {
        return close(shared, consumer, *inv, life, None, Fate::Release)
            .await
            .map(|_| Answered::Still(None));
    }
    if frame.ty == FrameType::DECLINE {
        return close_by(
            shared,
            consumer,
            *inv,
            Trigger::Decline,
            Some(Side::Consumer),
        )
        .await
        .map(|_| Answered::Still(None));
    }
    if inv.life.handle(Trigger::Accept, now).is_err()
        || write_raw(&mut inv.agent.send, &frame).await.is_err()
    {
        return close_by(
            shared,
            consumer,
            *inv,
            Trigger::ConnectionLost,
            Some(Side::Agent),
        )
        .await
        .map(|_| Answered::Still(None));
    }
    if !shared.table().accept_invitation(consumer_session, inv.id) {
        // The table always holds the pending invitation of a waiting session; should it not,
        // the customer is no longer waiting and the agent is let go.
        release(shared, *inv);
        return Ok(Answered::Still(None));
    }
    Ok(Answered::Accepted {
        event_id: inv.id,
        agent: Box::new(inv.agent),
    })
}

/// Closes the invitation after a lifecycle transition that the session machine allowed (or,
/// should it have refused, as lost): tells each side what the reason calls for.
async fn close_by(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    mut inv: Pending,
    trigger: Trigger,
    by: Option<Side>,
) -> Result<Still, Stop> {
    let life = settle(&mut inv.life, trigger);
    close(shared, consumer, inv, life, by, Fate::of(by, trigger)).await
}

/// Reading the inviting agent's control stream failed with `e`. When the agent broke the
/// protocol (a frame that does not decode, a header over the limits: spec §4.5, §9), it is
/// [`violated`] with the violation's code, as in every other state. When its link is gone, the
/// invitation closes as lost.
async fn broke(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    inv: Pending,
    e: FramedError,
) -> Result<Still, Stop> {
    let report = match Stop::from(e) {
        Stop::Refuse(report) => report,
        Stop::Gone => {
            return close_by(shared, consumer, inv, Trigger::ConnectionLost, AGENT).await;
        }
    };
    violated(shared, consumer, inv, report).await
}

/// The inviting agent broke the protocol (spec §9): the invitation closes as lost (the customer
/// is told `CANCEL` and keeps waiting), and the agent is told nothing but `CLOSE` with
/// `report` before its connection closes.
async fn violated(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    mut inv: Pending,
    report: ErrorReport,
) -> Result<Still, Stop> {
    let (code, message) = (report.code, &report.message);
    tracing::debug!(?code, %message, "the inviting agent broke the protocol");
    let life = settle(&mut inv.life, Trigger::ConnectionLost);
    close(shared, consumer, inv, life, AGENT, Fate::Violated(report)).await
}

/// Feeds `trigger` to the invitation's lifecycle and returns where it ends. A trigger at or
/// after the expiry time finds the invitation expired (spec §13.1); one the machine refuses
/// ends it as lost.
fn settle(life: &mut Session, trigger: Trigger) -> Lifecycle {
    let now = Instant::now();
    match life.handle(trigger, now) {
        Ok(life) => life,
        Err(_) => life.handle_timeout(now).unwrap_or(Lifecycle::Ended {
            reason: "connection_lost".to_owned(),
        }),
    }
}

/// Tells both sides that the invitation closed with the reason in `life` (spec §7.7–§7.10):
/// the customer gets `CANCEL` unless it declined itself; the agent gets `DECLINE` when the
/// customer declined, `END` with the reason otherwise unless it cancelled itself. The customer's
/// session waits again and the agent goes back to its own task.
async fn close(
    shared: &Arc<Shared>,
    consumer: &mut Peer,
    mut inv: Pending,
    life: Lifecycle,
    by: Option<Side>,
    fate: Fate,
) -> Result<Still, Stop> {
    let reason = match &life {
        Lifecycle::Ended { reason } => reason.clone(),
        _ => "connection_lost".to_owned(),
    };
    shared.table().close_invitation(inv.consumer_session);
    let named = InvitationRef {
        invitation: inv.number,
    };
    let to_agent = match reason.as_str() {
        "declined" => Some(Message::Decline(named)),
        "cancelled" => None,
        "expired" => Some(Message::End(End {
            reason: EndReason::Expired,
        })),
        _ => Some(Message::End(End {
            reason: EndReason::ConnectionLost,
        })),
    };
    // An agent whose connection is gone hears nothing; one that broke the protocol hears only
    // its CLOSE.
    let agent_told = !matches!(fate, Fate::Gone | Fate::Violated(_));
    if let Some(msg) = to_agent
        && agent_told
    {
        let _ = write_message(&mut inv.agent.send, &msg, &shared.limits).await;
    }
    shared.emit(ended(inv.id, &reason, by, None));
    let told = if reason == "declined" {
        Ok(())
    } else {
        write_message(&mut consumer.send, &Message::Cancel(named), &shared.limits)
            .await
            .map_err(Stop::from)
    };
    match fate {
        Fate::Gone => inv.agent.conn.close(quinn::VarInt::from_u32(0), b""),
        Fate::Release => release(shared, inv),
        Fate::Finish => {
            let stop = refusal(ErrorCode::NoError, "invitation withdrawn");
            tokio::spawn(finish_owned(shared.clone(), inv.agent, stop));
        }
        Fate::Violated(report) => {
            tokio::spawn(finish_owned(
                shared.clone(),
                inv.agent,
                Stop::Refuse(report),
            ));
        }
    }
    told.map(|()| Still::Closed)
}

/// What becomes of the inviting agent's connection when its invitation closes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Back to its own task: it may invite again or join by code.
    Release,
    /// It ended (`END`): told `CLOSE` and let go.
    Finish,
    /// Its connection is gone.
    Gone,
    /// It broke the protocol: told this `CLOSE` and let go.
    Violated(ErrorReport),
}

impl Fate {
    /// The fate that goes with a close caused by `by`'s `trigger`.
    fn of(by: Option<Side>, trigger: Trigger) -> Fate {
        match (by, trigger) {
            (Some(Side::Agent), Trigger::ConnectionLost) => Fate::Gone,
            (Some(Side::Agent), Trigger::End(_)) => Fate::Finish,
            _ => Fate::Release,
        }
    }
}

/// The customer's side went away or ended while `inv` was pending: the invitation closes with
/// `reason` (`Declined` for an `END`, `ConnectionLost` for a loss) and the agent is told.
pub(super) async fn unanswered(
    shared: &Arc<Shared>,
    mut inv: Pending,
    by: Option<Side>,
    reason: EndReason,
) {
    let trigger = match reason {
        EndReason::Declined => Trigger::End(Party::Consumer),
        _ => Trigger::ConnectionLost,
    };
    let _ = inv.life.handle(trigger, Instant::now());
    shared.table().close_invitation(inv.consumer_session);
    let msg = match reason {
        EndReason::Declined => Message::Decline(InvitationRef {
            invitation: inv.number,
        }),
        other => Message::End(End { reason: other }),
    };
    let _ = write_message(&mut inv.agent.send, &msg, &shared.limits).await;
    shared.emit(ended(
        inv.id,
        tandem_engine::session::reason_name(reason),
        by,
        None,
    ));
    release(shared, inv);
}

/// The customer's connection is gone while `inv` may be pending.
pub(super) async fn consumer_gone(shared: &Arc<Shared>, inv: Option<Box<Pending>>) {
    if let Some(inv) = inv {
        unanswered(
            shared,
            *inv,
            Some(Side::Consumer),
            EndReason::ConnectionLost,
        )
        .await;
    }
}

/// Gives the agent back its own task: it may invite again or join by code.
fn release(shared: &Arc<Shared>, inv: Pending) {
    tokio::spawn(agent_task(shared.clone(), inv.agent, inv.remote));
}
