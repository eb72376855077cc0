//! A paired session in the relay: both sides are told `JOINED`, then everything is forwarded
//! until one side ends the session, breaks the protocol or goes away (spec §3.2), and each side
//! is told what [`state::teardown`] says.
//!
//! ## Resumption (spec §3.5)
//!
//! In a session with `RESUME` each side holds a *seat*: its connection, its control stream (kept
//! across rounds: [`FrameRecv`](crate::framed::FrameRecv) is cancel-safe, so no frame is lost when
//! a round's tasks stop) and the single writer of its control stream. The forwarding tasks of one
//! pair of connections form a *round*. When a side's connection is lost, the round stops and the
//! session waits up to the table's `resume_grace` for that side to come back with its resume token;
//! the other side is not read meanwhile (what it sends waits in flow control). The side that comes
//! back gets `JOINED` with a new token, the other side `REJOINED`, and a new round starts. A side
//! that comes back while the relay still holds its old connection replaces it.
//!
//! ```text
//!  round: control ⇄ control, uni streams, datagrams ──Lost(side)──► wait ≤ grace
//!    ▲                                                               │ JOIN(Resume) on a
//!    └────────── JOINED to it, REJOINED to the other ◄───────────────┘ new connection
//! ```

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, VarInt};
use tandem_protocol::message::{Capabilities, Joined, Rejoined, Role};
use tandem_protocol::{ErrorCode, Message, RawFrame};
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::meter::SendMeter;

use super::state::{self, ControlAction, Outcome, PeerInfo, SessionId, Side};
use super::{
    Arrival, Peer, RelayEvent, SessionResources, Shared, close_after, consumed, ended,
    finish_owned, forward_control, forward_datagrams, forward_uni_streams, frame_bytes, outcome_of,
    reason_name, refusal, spawn_writer, violation,
};
use crate::resources::Transit;

/// One side's place in a live session.
struct Seat {
    conn: Connection,
    /// The side's control stream, read by the round's forwarder.
    recv: Arc<AsyncMutex<crate::framed::FrameRecv>>,
    /// The queue of the control stream's single writer.
    out: mpsc::Sender<Bytes>,
    writer: JoinHandle<()>,
    info: PeerInfo,
}

impl Seat {
    /// Seats `peer`; `joined` is the first thing its control stream carries.
    fn new(peer: Peer, joined: &Joined, shared: &Shared) -> Seat {
        let (out, writer) = spawn_writer(peer.send);
        // The queue is empty: the JOINED goes first without waiting.
        let _ = out.try_send(frame_bytes(
            &Message::Joined(joined.clone()),
            &shared.limits,
        ));
        Seat {
            conn: peer.conn,
            recv: Arc::new(AsyncMutex::new(peer.recv)),
            out,
            writer,
            info: peer.info,
        }
    }
}

fn index(side: Side) -> usize {
    match side {
        Side::Consumer => 0,
        Side::Agent => 1,
    }
}

/// What stopped a round.
enum Stopped {
    /// The session's outcome, unless it is a loss that can be waited out.
    Outcome(Outcome),
    /// A side came back on a new connection while its old one still looked alive.
    Back(Side, Box<Peer>),
}

/// Runs a paired session (see the module docs). `table_id` is the session's entry in the
/// table, `id` the id its events carry; `pending` holds the consumer's control frames sent
/// before the agent joined.
pub(super) async fn run_session(
    shared: Arc<Shared>,
    (table_id, id): (SessionId, SessionId),
    consumer: Peer,
    agent: Peer,
    pending: Vec<RawFrame>,
) {
    shared.emit(RelayEvent::Connected {
        session: id,
        consumer_label: consumer.info.label.clone(),
        agent_label: agent.info.label.clone(),
        remote: agent.conn.remote_address(),
    });
    let limits = shared.limits;
    let capabilities = consumer
        .info
        .capabilities
        .intersect(agent.info.capabilities);
    let resumable = capabilities.contains(Capabilities::RESUME);
    let (resume_tx, mut resume_rx) = mpsc::channel::<Arrival>(1);
    let joined = |side: Side, consumer: &PeerInfo, agent: &PeerInfo| {
        let mut j = state::joined_for(side, consumer, agent);
        if resumable {
            j.resume_token = issue_token(&shared, table_id, side, &resume_tx);
        }
        j
    };
    let (consumer_info, agent_info) = (consumer.info.clone(), agent.info.clone());
    let mut seats = [
        Seat::new(
            consumer,
            &joined(Side::Consumer, &consumer_info, &agent_info),
            &shared,
        ),
        Seat::new(
            agent,
            &joined(Side::Agent, &consumer_info, &agent_info),
            &shared,
        ),
    ];
    for frame in pending {
        let _ = seats[1].out.send(Bytes::from(frame.to_bytes())).await;
    }
    // With RESOURCES, the consumer's resource streams feed the shared cache, and the agent's
    // WANTs are answered from it first (spec §14.7).
    let with_resources = capabilities.contains(Capabilities::RESOURCES);
    let resources_for = |agent: &Connection| {
        with_resources.then(|| SessionResources {
            cache: shared.cache.clone(),
            uplink: Arc::new(shared.cache.uplink(agent.clone())),
            transit: Transit::new(),
        })
    };
    let mut resources = resources_for(&seats[1].conn);
    let grace = shared.table().config().resume_grace;

    let outcome = loop {
        // Control frames the surviving side sent while the other was away.
        let mut held_for_back = Vec::new();
        let stopped = run_round(&shared, id, &seats, resources.clone(), &mut resume_rx).await;
        let (side, peer) = match stopped {
            Stopped::Outcome(Outcome::Lost(side)) if resumable => {
                shared.emit(RelayEvent::Disconnected {
                    session: id,
                    side: side.name().to_owned(),
                });
                let survivor = &seats[index(side.other())];
                match wait_back(&shared, side, survivor, &mut resume_rx, grace).await {
                    Ok((peer, held)) => {
                        held_for_back = held;
                        (side, peer)
                    }
                    Err(outcome) => break outcome,
                }
            }
            Stopped::Outcome(outcome) => break outcome,
            Stopped::Back(side, peer) => {
                // The loss went unnoticed until the side came back; report it all the same.
                shared.emit(RelayEvent::Disconnected {
                    session: id,
                    side: side.name().to_owned(),
                });
                seats[index(side)]
                    .conn
                    .close(VarInt::from_u32(0), b"resumed on a new connection");
                (side, peer)
            }
        };
        // The side is back: its new connection takes the seat, with a fresh token. The
        // session's capabilities stay those of the first JOINED.
        let (c, a) = match side {
            Side::Consumer => (&peer.info, &seats[1].info),
            Side::Agent => (&seats[0].info, &peer.info),
        };
        let mut joined_again = joined(side, c, a);
        joined_again.capabilities = capabilities;
        let old = std::mem::replace(
            &mut seats[index(side)],
            Seat::new(*peer, &joined_again, &shared),
        );
        drop(old.out);
        old.writer.abort();
        for frame in held_for_back {
            let _ = seats[index(side)].out.send(frame).await;
        }
        let rejoined = Message::Rejoined(Rejoined {
            peer_role: match side {
                Side::Consumer => Role::Consumer,
                Side::Agent => Role::Agent,
            },
        });
        let _ = seats[index(side.other())]
            .out
            .send(frame_bytes(&rejoined, &limits))
            .await;
        if side == Side::Agent {
            resources = resources_for(&seats[1].conn);
        }
        tracing::info!(session = id, side = side.name(), "resumed");
        shared.emit(RelayEvent::Reconnected {
            session: id,
            side: side.name().to_owned(),
        });
    };
    // The last handle to the session's uplink: its streams to the agent stop here.
    drop(resources);
    shared.table().remove(table_id);

    let plan = state::teardown(&outcome);
    let (by, detail) = match &outcome {
        Outcome::Ended { side, .. } | Outcome::Lost(side) => (Some(*side), None),
        Outcome::Violation { side, detail, .. } => (Some(*side), Some(detail.clone())),
        Outcome::Shutdown => (None, Some("relay shutting down".to_owned())),
    };
    tracing::info!(session = id, ?outcome, "session ended");
    shared.emit(ended(id, &reason_name(plan.reason), by, detail));

    let [consumer, agent] = seats;
    let close_consumer = close_after(
        &shared,
        consumer.conn,
        consumer.out,
        consumer.writer,
        plan.to(Side::Consumer),
    );
    let close_agent = close_after(
        &shared,
        agent.conn,
        agent.out,
        agent.writer,
        plan.to(Side::Agent),
    );
    tokio::join!(close_consumer, close_agent);
}

/// A new resume token for `side` (spec §3.5), or an empty one when the table cannot issue it
/// (the side then cannot resume; the session goes on).
fn issue_token(
    shared: &Shared,
    table_id: SessionId,
    side: Side,
    resume_tx: &mpsc::Sender<Arrival>,
) -> String {
    let mut random = shared.random();
    let issued = shared
        .table()
        .issue_resume(table_id, side, resume_tx.clone(), &mut random);
    match issued {
        Ok(Some(token)) => token,
        Ok(None) => String::new(),
        Err(_) => {
            tracing::warn!("random source failed; the session cannot be resumed");
            String::new()
        }
    }
}

/// Forwards between the two seats until something stops the round; the round's tasks are
/// stopped before this returns.
async fn run_round(
    shared: &Arc<Shared>,
    id: SessionId,
    seats: &[Seat; 2],
    resources: Option<SessionResources>,
    resume_rx: &mut mpsc::Receiver<Arrival>,
) -> Stopped {
    let limits = shared.limits;
    let (outcome_tx, mut outcome_rx) = mpsc::channel::<Outcome>(16);
    let mut tasks = JoinSet::new();
    for side in [Side::Consumer, Side::Agent] {
        let (me, other) = (&seats[index(side)], &seats[index(side.other())]);
        let res = match side {
            Side::Agent => resources.clone(),
            Side::Consumer => None,
        };
        tasks.spawn(forward_control(
            (shared.clone(), id),
            side,
            me.recv.clone(),
            (me.out.clone(), other.out.clone()),
            res,
            outcome_tx.clone(),
        ));
        let cache = match side {
            Side::Consumer => resources
                .as_ref()
                .map(|r| (r.cache.clone(), r.transit.clone())),
            Side::Agent => None,
        };
        // One meter for every stream forwarded into the other connection: together they keep
        // to its pacing rate and leave room in its window for the datagrams that go beside
        // them (`crate::meter`).
        tasks.spawn(forward_uni_streams(
            side,
            me.conn.clone(),
            (other.conn.clone(), SendMeter::new(other.conn.clone())),
            (limits, cache),
            outcome_tx.clone(),
        ));
        tasks.spawn(forward_datagrams(
            side,
            me.conn.clone(),
            other.conn.clone(),
            other.out.clone(),
            limits,
            outcome_tx.clone(),
        ));
        let (conn, outcome_tx) = (me.conn.clone(), outcome_tx.clone());
        tasks.spawn(async move {
            conn.closed().await;
            let _ = outcome_tx.try_send(Outcome::Lost(side));
        });
    }
    drop(outcome_tx);
    let stopped = loop {
        tokio::select! {
            o = outcome_rx.recv() => break Stopped::Outcome(o.unwrap_or(Outcome::Shutdown)),
            arrival = resume_rx.recv() => match arrival {
                Some(Arrival::Resumed(side, peer)) => break Stopped::Back(side, peer),
                // Only resuming peers arrive here.
                Some(_) | None => continue,
            },
            _ = shared.shutting_down() => break Stopped::Outcome(Outcome::Shutdown),
        }
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    stopped
}

/// Most control bytes the surviving side may send while the other is away; past it, the rest
/// waits in flow control.
const HELD_BUDGET: usize = 256 * 1024;

/// Waits up to `grace` for `side` to come back (spec §3.5). Meanwhile the surviving side's
/// control stream is read: its end-to-end frames are held for the side that comes back (up to
/// [`HELD_BUDGET`]), a `PING` is answered, a request is refused, and its `END` or `CLOSE`, or a
/// violation (a frame the relay consumes or refuses that does not decode among them, spec
/// §4.5), ends the session at once.
/// Ends the session when `side` does not come back, when the other side goes too, or when the
/// relay shuts down.
async fn wait_back(
    shared: &Arc<Shared>,
    side: Side,
    survivor: &Seat,
    resume_rx: &mut mpsc::Receiver<Arrival>,
    grace: std::time::Duration,
) -> Result<(Box<Peer>, Vec<Bytes>), Outcome> {
    let deadline = tokio::time::Instant::from_std(Instant::now() + grace);
    let other = side.other();
    let mut recv = survivor.recv.lock().await;
    let limits = *recv.limits();
    let (mut held, mut held_bytes) = (Vec::new(), 0usize);
    loop {
        tokio::select! {
            arrival = resume_rx.recv() => match arrival {
                Some(Arrival::Resumed(s, peer)) if s == side => return Ok((peer, held)),
                Some(Arrival::Resumed(_, peer)) => {
                    // The other side's token, while that side is still here: it cannot be
                    // in two places; the newcomer is turned away.
                    let busy = refusal(ErrorCode::SessionBusy, "that side is connected");
                    tokio::spawn(finish_owned(shared.clone(), *peer, busy));
                }
                Some(_) | None => {}
            },
            frame = recv.next_raw(), if held_bytes < HELD_BUDGET => {
                let frame = match frame {
                    Ok(Some(frame)) => frame,
                    // The surviving side is gone as well.
                    Ok(None) => return Err(Outcome::Lost(side)),
                    Err(e) => return Err(outcome_of(other, e)),
                };
                match state::classify_control(other, frame.ty) {
                    ControlAction::Forward => {
                        held_bytes += frame.body.len();
                        held.push(Bytes::from(frame.to_bytes()));
                    }
                    ControlAction::End
                    | ControlAction::Close
                    | ControlAction::Ping
                    | ControlAction::Ignore => {
                        if let Some(pong) = consumed(other, &frame, &limits)? {
                            let _ = survivor.out.send(Bytes::from(pong.to_bytes())).await;
                        }
                    }
                    ControlAction::Refuse(code) => {
                        let message = format!("{} is not allowed in a live session", frame.ty);
                        let error = state::refuse(&frame, &limits, code, &message)
                            .map_err(|e| outcome_of(other, e.into()))?;
                        let _ = survivor.out.send(Bytes::from(error.to_bytes())).await;
                    }
                    ControlAction::Violation => return Err(violation(other, frame.ty)),
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Err(Outcome::Lost(side)),
            _ = survivor.conn.closed() => return Err(Outcome::Lost(side)),
            _ = shared.shutting_down() => return Err(Outcome::Shutdown),
        }
    }
}
