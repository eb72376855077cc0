//! Deterministic simulation of a whole session (issue 5): the consumer's engine, the relay's
//! decisions and the agent's engine, on a virtual clock, exchanging encoded frames over a
//! simulated link (one-way delay per hop, in order, like a QUIC stream). No sockets, no sleeps,
//! no wall-clock: every instant is `T0 + something`, so expiry at exactly 120 s is checked to
//! the nanosecond.
//!
//! ```text
//!  Consumer (engine Consumer + Authority) ──150 ms──► Relay (SessionTable + Session machine)
//!                                          ◄──150 ms──            │ ▲
//!                                                          150 ms ▼ │ 150 ms
//!                                                     Agent (engine Agent)
//! ```
//!
//! The relay here is the reference relay's sans-IO core (`relay::state`) driving one engine
//! [`Session`] per session, exactly as the tokio relay does; each test scripts the people.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tandem_engine::hands::{Authority, HandsConfig, Verdict};
use tandem_engine::session::{DEFAULT_TTL, Lifecycle, Party, Phase, Session, TRANSITIONS, Trigger};
use tandem_engine::{Agent, Consumer, LivePage, parse_html};
use tandem_peers::relay::state::{
    self, ControlAction, JoinRefusal, Outcome, PeerInfo, SessionTable, Side, TableConfig,
};
use tandem_protocol::message::{
    Click, Credential, End, EndReason, InvitationRef, Invite, Join, RefusalCode, SessionOpen,
};
use tandem_protocol::{FrameType, Limits, Message, frame};

const HOP: Duration = Duration::from_millis(150);
const PAGE: &str = "<main><h1>Order NW-1</h1><ul id=u><li>one<li>two</ul>\
    <form><input name=city value=Amsterdam><button>Save</button></form></main>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Consumer,
    Relay,
    Agent,
}

/// A frame in flight: delivered to `to` at `at`; `from` says which link it came over.
type Flight = Reverse<(Instant, u64, Node, Node, Vec<u8>)>;

struct World {
    t0: Instant,
    now: Instant,
    seq: u64,
    net: BinaryHeap<Flight>,
    limits: Limits,
    // The relay.
    table: SessionTable<()>,
    session: Option<u64>,
    life: Option<Session>,
    events: Vec<(Duration, Lifecycle)>,
    // The consumer.
    consumer: Consumer,
    hands: Authority,
    live: LivePage,
    code: Option<String>,
    /// How the customer answers an invitation: accept, decline, or not at all (`None`).
    answer_invites: Option<bool>,
    consumer_got: Vec<Message>,
    // The agent.
    agent: Agent,
    agent_got: Vec<Message>,
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        let limits = Limits::DEFAULT;
        let config = TableConfig {
            code_ttl: DEFAULT_TTL,
            invitation_ttl: DEFAULT_TTL,
            ..TableConfig::default()
        };
        World {
            t0,
            now: t0,
            seq: 0,
            net: BinaryHeap::new(),
            limits,
            table: SessionTable::new(config),
            session: None,
            life: None,
            events: Vec::new(),
            consumer: Consumer::new(parse_html(PAGE, limits), "https://shop.example/", limits),
            hands: Authority::new(HandsConfig::default(), "https://shop.example/"),
            live: LivePage::new(7),
            code: None,
            answer_invites: Some(true),
            consumer_got: Vec::new(),
            agent: Agent::new(limits),
            agent_got: Vec::new(),
        }
    }

    fn at(&self, t: Duration) -> Instant {
        self.t0 + t
    }

    fn send(&mut self, from: Node, to: Node, msg: &Message) {
        let bytes = frame::to_frame(msg, &self.limits).expect("encodes");
        self.seq += 1;
        self.net
            .push(Reverse((self.now + HOP, self.seq, from, to, bytes)));
    }

    /// Delivers everything due up to `t` (and what that causes), then sets the clock to `t`.
    fn run_until(&mut self, t: Instant) {
        while let Some(Reverse((at, ..))) = self.net.peek() {
            if *at > t {
                break;
            }
            let Some(Reverse((at, _, from, to, bytes))) = self.net.pop() else {
                break;
            };
            self.now = at;
            // The relay's timers fire at their time, before what arrives at that instant.
            self.relay_timers();
            let msg = frame::decode_exact(&bytes, &self.limits).expect("decodes");
            match to {
                Node::Relay => self.relay_receives(from, msg),
                Node::Consumer => self.consumer_receives(msg),
                Node::Agent => self.agent_receives(msg),
            }
        }
        self.now = t;
        self.relay_timers();
    }

    fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    fn lifecycle(&mut self, trigger: Trigger) -> Option<Lifecycle> {
        let life = self.life.as_mut()?;
        let event = life.handle(trigger, self.now).ok()?;
        self.events.push((self.now - self.t0, event.clone()));
        Some(event)
    }

    fn relay_timers(&mut self) {
        if let Some(life) = self.life.as_mut()
            && let Some(event) = life.handle_timeout(self.now)
        {
            self.events.push((self.now - self.t0, event));
            if let Some(id) = self.session {
                self.table.expire(id, self.now);
                self.table.close_invitation(id);
            }
            let end = Message::End(End {
                reason: EndReason::Expired,
            });
            self.send(Node::Relay, Node::Consumer, &end);
            self.send(Node::Relay, Node::Agent, &end);
        }
    }

    fn relay_receives(&mut self, from: Node, msg: Message) {
        let side = if from == Node::Consumer {
            Side::Consumer
        } else {
            Side::Agent
        };
        let other = if from == Node::Consumer {
            Node::Agent
        } else {
            Node::Consumer
        };
        let source: IpAddr = [10, 0, 0, 2].into();
        match msg {
            Message::SessionOpen(open) => {
                let info = PeerInfo {
                    label: open.label,
                    ..PeerInfo::default()
                };
                let mut n = 0u8;
                let opened = self
                    .table
                    .open(self.now, info, (), &mut |b: &mut [u8]| {
                        for x in b.iter_mut() {
                            n = n.wrapping_add(37);
                            *x = n;
                        }
                        Ok(())
                    })
                    .expect("opens");
                self.session = Some(opened.id);
                let (life, event) = Session::waiting(self.now, DEFAULT_TTL);
                self.life = Some(life);
                self.events.push((self.now - self.t0, event));
                let created = Message::SessionCreated(tandem_protocol::message::SessionCreated {
                    code: opened.code,
                    token: opened.token,
                    expires_ms: 120_000,
                });
                self.send(Node::Relay, Node::Consumer, &created);
            }
            Message::Join(join) => match self.table.join(self.now, source, &join.credential) {
                Ok(_) => {
                    self.lifecycle(Trigger::Join);
                    let (c, a) = state::joined_messages(&PeerInfo::default(), &PeerInfo::default());
                    self.send(Node::Relay, Node::Consumer, &Message::Joined(c));
                    self.send(Node::Relay, Node::Agent, &Message::Joined(a));
                }
                Err(e) => {
                    let err = Message::Error(tandem_protocol::message::ErrorReport {
                        code: e.code(),
                        message: e.to_string(),
                    });
                    self.send(Node::Relay, Node::Agent, &err);
                }
            },
            Message::Invite(inv)
                if side == Side::Agent && self.life_phase() != Some(Phase::Live) =>
            {
                match self
                    .table
                    .invite(self.now, source, &inv.target, DEFAULT_TTL)
                {
                    Ok(_) => {
                        let (life, event) = Session::invited(self.now, DEFAULT_TTL);
                        self.life = Some(life);
                        self.events.push((self.now - self.t0, event));
                        self.send(Node::Relay, Node::Consumer, &Message::Invite(inv));
                    }
                    Err(e) => {
                        let err = Message::Error(tandem_protocol::message::ErrorReport {
                            code: e.code(),
                            message: e.to_string(),
                        });
                        self.send(Node::Relay, Node::Agent, &err);
                    }
                }
            }
            Message::Accept(r) => {
                if self.lifecycle(Trigger::Accept).is_some() {
                    let id = self.session.expect("a session");
                    self.table.close_invitation(id);
                    self.send(Node::Relay, Node::Agent, &Message::Accept(r));
                    let (c, a) = state::joined_messages(&PeerInfo::default(), &PeerInfo::default());
                    self.send(Node::Relay, Node::Consumer, &Message::Joined(c));
                    self.send(Node::Relay, Node::Agent, &Message::Joined(a));
                }
            }
            Message::Decline(r) => {
                if self.lifecycle(Trigger::Decline).is_some() {
                    self.send(Node::Relay, Node::Agent, &Message::Decline(r));
                }
            }
            Message::Cancel(r) => {
                if self.lifecycle(Trigger::Cancel).is_some() {
                    self.send(Node::Relay, Node::Consumer, &Message::Cancel(r));
                }
            }
            Message::End(end) => {
                let party = if side == Side::Consumer {
                    Party::Consumer
                } else {
                    Party::Agent
                };
                if self.lifecycle(Trigger::End(party)).is_some() {
                    let plan = state::teardown(&Outcome::Ended {
                        side,
                        reason: end.reason,
                    });
                    for m in plan.to(side.other()).to_vec() {
                        self.send(Node::Relay, other, &m);
                    }
                }
            }
            m => {
                let ty = m.frame_type();
                match state::classify_control(side, ty) {
                    ControlAction::Forward => {
                        if ty == FrameType::PAUSE {
                            self.lifecycle(Trigger::Pause);
                        } else if ty == FrameType::RESUME {
                            self.lifecycle(Trigger::Resume);
                        }
                        self.send(Node::Relay, other, &m);
                    }
                    ControlAction::Refuse(code) => {
                        let err = Message::Error(tandem_protocol::message::ErrorReport {
                            code,
                            message: String::new(),
                        });
                        self.send(Node::Relay, from, &err);
                    }
                    other => panic!("unexpected {other:?} for {ty:?}"),
                }
            }
        }
    }

    fn life_phase(&self) -> Option<Phase> {
        self.life.as_ref().map(Session::phase)
    }

    fn consumer_receives(&mut self, msg: Message) {
        self.consumer_got.push(msg.clone());
        match &msg {
            Message::SessionCreated(c) => self.code = Some(c.code.clone()),
            Message::Joined(_) => self.consumer_flush(),
            Message::Invite(inv) => {
                let r = InvitationRef {
                    invitation: inv.invitation,
                };
                match self.answer_invites {
                    Some(true) => self.send(Node::Consumer, Node::Relay, &Message::Accept(r)),
                    Some(false) => self.send(Node::Consumer, Node::Relay, &Message::Decline(r)),
                    None => {}
                }
            }
            Message::Ack(_) | Message::Resync(_) => {
                self.consumer.handle_message(&msg).expect("a good ACK");
                self.consumer_flush();
            }
            Message::Click(_) | Message::Input(_) | Message::Highlight(_) => {
                let verdict =
                    self.hands
                        .handle(&msg, self.consumer.dom(), &self.consumer, self.now);
                if let Verdict::Refuse(r) = verdict {
                    self.send(Node::Consumer, Node::Relay, &Message::Refused(r));
                }
            }
            _ => {}
        }
    }

    /// Sends what the consumer has queued (snapshot, patches) unless sharing is paused.
    fn consumer_flush(&mut self) {
        if self.hands.is_paused() {
            return;
        }
        self.consumer.flush();
        while let Some(m) = self.consumer.poll_message() {
            self.send(Node::Consumer, Node::Relay, &m);
        }
    }

    /// The page changes: a batch of the live generator's changes.
    fn page_changes(&mut self, n: usize) {
        self.live
            .step(&mut self.consumer, n)
            .expect("changes apply");
        self.consumer_flush();
    }

    fn agent_receives(&mut self, msg: Message) {
        self.agent_got.push(msg.clone());
        if matches!(msg, Message::Snapshot(_) | Message::Patch(_)) {
            self.agent.handle_message(msg).expect("applies");
            while let Some(reply) = self.agent.poll_message() {
                self.send(Node::Agent, Node::Relay, &reply);
            }
        }
    }

    fn agent_said(&self, f: impl Fn(&Message) -> bool) -> bool {
        self.agent_got.iter().any(f)
    }

    fn consumer_said(&self, f: impl Fn(&Message) -> bool) -> bool {
        self.consumer_got.iter().any(f)
    }

    fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(_, e)| match e {
                Lifecycle::Ended { reason } => format!("ended:{reason}"),
                other => format!("{other:?}").to_lowercase(),
            })
            .collect()
    }

    fn consumer_opens(&mut self) {
        let open = Message::SessionOpen(SessionOpen {
            label: "visitor-1".into(),
        });
        self.send(Node::Consumer, Node::Relay, &open);
    }

    fn agent_joins(&mut self) {
        let code = self.code.clone().expect("the customer read the code out");
        let join = Message::Join(Join {
            credential: Credential::Code(code),
            label: "Alex".into(),
        });
        self.send(Node::Agent, Node::Relay, &join);
    }

    fn agent_invites(&mut self) {
        let invite = Message::Invite(Invite {
            invitation: 1,
            target: "visitor-1".into(),
            agent_label: "Alex".into(),
            expires_ms: 120_000,
        });
        self.send(Node::Agent, Node::Relay, &invite);
    }

    fn hashes_match(&mut self) -> bool {
        self.agent.tree_hash() == Some(self.consumer.tree_hash())
    }
}

/// The whole life of a code session: open, join at 30 s, the page changes, a pause during which
/// the agent's click is refused and changes fold into one patch, resume, and the agent ends.
#[test]
fn a_code_session_lives_pauses_resumes_and_ends() {
    let mut w = World::new();
    w.consumer_opens();
    w.run_until(w.at(Duration::from_secs(30)));
    w.agent_joins();
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.life_phase(), Some(Phase::Live));
    assert!(w.hashes_match(), "the snapshot arrived");

    for _ in 0..5 {
        w.page_changes(4);
        w.run_for(Duration::from_millis(200));
    }
    w.run_for(Duration::from_secs(1));
    assert!(w.hashes_match());
    let patches_before = w
        .agent_got
        .iter()
        .filter(|m| matches!(m, Message::Patch(_)))
        .count();

    // The customer pauses: the relay sees it, the agent's click is refused with Paused.
    w.hands.pause();
    w.send(Node::Consumer, Node::Relay, &Message::Pause(()));
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.life_phase(), Some(Phase::Paused));
    let button = w
        .consumer
        .dom()
        .preorder(0)
        .find(|&id| {
            w.consumer
                .dom()
                .node(id)
                .and_then(|n| n.element())
                .is_some_and(|e| e.name == "button")
        })
        .expect("a button");
    let click = Message::Click(Click {
        id: 9,
        node: button,
        x: 10,
        y: 10,
        button: 0,
        modifiers: 0,
    });
    w.send(Node::Agent, Node::Relay, &click);
    for _ in 0..5 {
        w.page_changes(4);
        w.run_for(Duration::from_millis(200));
    }
    w.run_for(Duration::from_secs(1));
    assert!(
        w.agent_said(
            |m| matches!(m, Message::Refused(r) if r.id == 9 && r.code == RefusalCode::Paused)
        ),
        "{:?}",
        w.agent_got
    );
    let patches_paused = w
        .agent_got
        .iter()
        .filter(|m| matches!(m, Message::Patch(_)))
        .count();
    assert_eq!(
        patches_paused, patches_before,
        "nothing is sent while paused"
    );
    assert!(!w.hashes_match(), "the agent is behind while paused");

    // Resume: everything that changed travels as one patch, and the trees agree again.
    w.hands.resume();
    w.send(Node::Consumer, Node::Relay, &Message::Resume(()));
    w.consumer_flush();
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.life_phase(), Some(Phase::Live));
    let patches_after = w
        .agent_got
        .iter()
        .filter(|m| matches!(m, Message::Patch(_)))
        .count();
    assert_eq!(
        patches_after,
        patches_paused + 1,
        "one patch for the whole pause"
    );
    assert!(w.hashes_match());

    // The agent ends it: the consumer gets END EndedByAgent and CLOSE.
    w.send(
        Node::Agent,
        Node::Relay,
        &Message::End(End {
            reason: EndReason::EndedByAgent,
        }),
    );
    w.run_for(Duration::from_secs(1));
    assert!(
        w.consumer_said(|m| matches!(m, Message::End(e) if e.reason == EndReason::EndedByAgent))
    );
    assert_eq!(
        w.event_names(),
        [
            "opened",
            "connected",
            "paused",
            "resumed",
            "ended:ended_by_agent"
        ]
    );
}

/// A code lives exactly 120 s: a join that reaches the relay a nanosecond before pairs, one
/// that reaches it at 120 s finds nothing (and the customer gets END Expired).
#[test]
fn a_code_expires_at_exactly_120_s() {
    for (arrival, pairs) in [
        (DEFAULT_TTL - Duration::from_nanos(1), true),
        (DEFAULT_TTL, false),
    ] {
        let mut w = World::new();
        w.consumer_opens();
        w.run_until(w.at(HOP));
        let opened_at = w.now;
        // The JOIN is sent one hop before it should arrive.
        w.run_until(opened_at + arrival - HOP - Duration::from_nanos(if pairs { 0 } else { 1 }));
        w.run_until(opened_at + arrival - HOP);
        w.agent_joins();
        w.run_until(opened_at + arrival);
        assert_eq!(
            w.life_phase() == Some(Phase::Live),
            pairs,
            "join arriving at {arrival:?}: {:?}",
            w.events
        );
        w.run_for(Duration::from_secs(1));
        if pairs {
            assert!(w.hashes_match());
        } else {
            assert!(
                w.consumer_said(|m| matches!(m, Message::End(e) if e.reason == EndReason::Expired))
            );
            assert!(w.agent_said(
                |m| matches!(m, Message::Error(e) if e.code == JoinRefusal::NotFound.code())
            ));
            let (when, last) = w.events.last().expect("events").clone();
            assert_eq!(
                last,
                Lifecycle::Ended {
                    reason: "expired".into()
                }
            );
            assert_eq!(
                w.t0 + when,
                opened_at + DEFAULT_TTL,
                "expired at exactly 120 s"
            );
        }
    }
}

/// An invitation also lives exactly 120 s: an ACCEPT that reaches the relay at 120 s finds it
/// expired; one a millisecond earlier opens the session.
#[test]
fn an_invitation_expires_at_exactly_120_s() {
    for (answer_at, accepted) in [
        (DEFAULT_TTL - Duration::from_millis(1), true),
        (DEFAULT_TTL, false),
    ] {
        let mut w = World::new();
        w.consumer_opens();
        w.run_for(Duration::from_secs(1));
        w.answer_invites = None;
        w.agent_invites();
        w.run_until(w.now + HOP);
        let invited_at = w.now;
        assert_eq!(w.life_phase(), Some(Phase::Invited));
        // The customer answers so that the ACCEPT reaches the relay at `answer_at`.
        w.run_until(invited_at + answer_at - HOP);
        w.send(
            Node::Consumer,
            Node::Relay,
            &Message::Accept(InvitationRef { invitation: 1 }),
        );
        w.run_until(invited_at + answer_at);
        w.run_for(Duration::from_secs(1));
        let live = w.life_phase() == Some(Phase::Live);
        assert_eq!(live, accepted, "{:?}", w.events);
        if accepted {
            assert!(w.hashes_match(), "the page is shared over the invitation");
        } else {
            assert!(
                w.agent_said(|m| matches!(m, Message::End(e) if e.reason == EndReason::Expired))
            );
            assert_eq!(
                w.event_names().last().map(String::as_str),
                Some("ended:expired")
            );
        }
    }
}

/// An agent has one session or pending invitation at a time; a customer is asked one
/// invitation at a time and cannot be joined by code meanwhile.
#[test]
fn one_session_per_agent() {
    // In a live session, the relay refuses an agent's JOIN and INVITE with SessionBusy.
    for ty in [FrameType::JOIN, FrameType::INVITE] {
        assert_eq!(
            state::classify_control(Side::Agent, ty),
            ControlAction::Refuse(tandem_protocol::ErrorCode::SessionBusy)
        );
    }
    let mut w = World::new();
    w.consumer_opens();
    w.run_for(Duration::from_secs(1));
    w.answer_invites = None;
    w.agent_invites();
    // A second agent's INVITE and a JOIN by code reach the relay while the first is pending.
    let (t, src) = (w.now + HOP * 2, IpAddr::from([10, 0, 0, 3]));
    w.run_until(t);
    let id = w.session.expect("a session");
    assert!(matches!(
        w.table.invite(t, src, "visitor-1", DEFAULT_TTL),
        Err(JoinRefusal::Busy)
    ));
    let code = Credential::Code(w.code.clone().expect("a code"));
    assert!(matches!(
        w.table.join(t, src, &code),
        Err(JoinRefusal::Busy)
    ));
    // Closed unanswered, the customer's code works again.
    assert!(w.table.close_invitation(id));
    assert!(w.table.join(t, src, &code).is_ok());
}

/// Wrong codes are limited per source: five wrong codes in a minute and even the right one is
/// refused from there, while another source is unaffected; a minute later it works again.
#[test]
fn wrong_codes_are_rate_limited_per_source() {
    let mut table: SessionTable<()> = SessionTable::new(TableConfig::default());
    let t0 = Instant::now();
    let mut n = 1u8;
    let opened = table
        .open(t0, PeerInfo::default(), (), &mut |b: &mut [u8]| {
            b.fill(n);
            n += 1;
            Ok(())
        })
        .expect("opens");
    let right = Credential::Code(opened.code.clone());
    let attacker: IpAddr = [192, 0, 2, 1].into();
    let neighbour: IpAddr = "2001:db8::1".parse().unwrap();
    let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
    for i in 0..5 {
        let t = t0 + Duration::from_secs(i * 10);
        // Each source tries codes of its own (a code is also limited on its own, see below).
        let wrong = |base: u64| {
            let c = format!("{:06}", base + i);
            assert_ne!(c, opened.code);
            Credential::Code(c)
        };
        assert!(matches!(
            table.join(t, attacker, &wrong(900_000)),
            Err(JoinRefusal::NotFound)
        ));
        assert!(matches!(
            table.join(t, neighbour, &wrong(800_000)),
            Err(JoinRefusal::NotFound)
        ));
    }
    let t = t0 + Duration::from_secs(45);
    assert!(matches!(
        table.join(t, attacker, &right),
        Err(JoinRefusal::RateLimited)
    ));
    assert!(
        matches!(
            table.join(t, same_64, &right),
            Err(JoinRefusal::RateLimited)
        ),
        "an IPv6 /64 counts as one source"
    );
    // The oldest failure ages out at 60 s: one more attempt is allowed from then.
    let t = t0 + Duration::from_secs(60);
    assert!(table.join(t, attacker, &right).is_ok());
}

/// Wrong codes are limited per code too: one code tried wrongly five times, from five sources,
/// is refused to everyone for the window, and no new session is given it meanwhile.
#[test]
fn a_code_hammered_from_many_sources_is_locked() {
    let mut table: SessionTable<()> = SessionTable::new(TableConfig::default());
    let t0 = Instant::now();
    let target = Credential::Code("424242".into());
    for i in 0..5u8 {
        let from: IpAddr = [198, 51, 100, i].into();
        let t = t0 + Duration::from_secs(u64::from(i));
        assert!(matches!(
            table.join(t, from, &target),
            Err(JoinRefusal::NotFound)
        ));
    }
    let fresh: IpAddr = [203, 0, 113, 9].into();
    let t = t0 + Duration::from_secs(10);
    assert!(matches!(
        table.join(t, fresh, &target),
        Err(JoinRefusal::RateLimited)
    ));
    // A random source that would draw 424242 first: the table skips the locked code.
    let mut draws = [424_242u32, 7].into_iter().cycle();
    let opened = table
        .open(t, PeerInfo::default(), (), &mut |b: &mut [u8]| {
            if b.len() == 4 {
                b.copy_from_slice(&draws.next().unwrap_or(0).to_le_bytes());
            } else {
                b.fill(1);
            }
            Ok(())
        })
        .expect("opens");
    assert_eq!(opened.code, "000007");
    // Other codes from the fresh source are unaffected; after the window the code is free.
    let right = Credential::Code(opened.code.clone());
    assert!(table.join(t, fresh, &right).is_ok());
    let later = t0 + Duration::from_secs(65);
    assert!(matches!(
        table.join(later, fresh, &target),
        Err(JoinRefusal::NotFound)
    ));
}

/// Every row of the transition table (spec §13.1), driven through the simulated peers and
/// relay: after the trigger the relay's session is where the table says, and the side that did
/// not cause an END hears about it.
#[test]
fn every_transition_of_the_table_happens_in_the_simulation() {
    for &(phase, trigger, next) in TRANSITIONS {
        let mut w = World::new();
        w.consumer_opens();
        w.run_for(Duration::from_secs(1));
        match phase {
            Phase::Waiting => {}
            Phase::Invited => {
                w.answer_invites = None;
                w.agent_invites();
                w.run_until(w.now + HOP);
            }
            Phase::Live | Phase::Paused => {
                w.agent_joins();
                w.run_for(Duration::from_secs(1));
                if phase == Phase::Paused {
                    w.hands.pause();
                    w.send(Node::Consumer, Node::Relay, &Message::Pause(()));
                    w.run_for(Duration::from_secs(1));
                }
            }
            Phase::Closed => unreachable!("no row starts from Closed"),
        }
        assert_eq!(w.life_phase(), Some(phase), "set up {phase:?}");
        let (by, msg) = match trigger {
            Trigger::Accept => (
                Node::Consumer,
                Some(Message::Accept(InvitationRef { invitation: 1 })),
            ),
            Trigger::Decline => (
                Node::Consumer,
                Some(Message::Decline(InvitationRef { invitation: 1 })),
            ),
            Trigger::Cancel => (
                Node::Agent,
                Some(Message::Cancel(InvitationRef { invitation: 1 })),
            ),
            Trigger::Join => {
                w.agent_joins();
                (Node::Agent, None)
            }
            Trigger::Pause => (Node::Consumer, Some(Message::Pause(()))),
            Trigger::Resume => (Node::Consumer, Some(Message::Resume(()))),
            Trigger::End(Party::Consumer) => (
                Node::Consumer,
                Some(Message::End(End {
                    reason: EndReason::EndedByConsumer,
                })),
            ),
            Trigger::End(_) => (
                Node::Agent,
                Some(Message::End(End {
                    reason: EndReason::EndedByAgent,
                })),
            ),
            Trigger::Expire => {
                w.run_until(w.t0 + Duration::from_secs(300));
                (Node::Relay, None)
            }
            Trigger::ConnectionLost => {
                // The relay gives up on a connection: the pump calls the machine directly.
                w.lifecycle(Trigger::ConnectionLost);
                (Node::Relay, None)
            }
        };
        if let Some(m) = msg {
            w.send(by, Node::Relay, &m);
        }
        w.run_for(Duration::from_secs(2));
        match next {
            tandem_engine::session::Next::Phase(p) => {
                assert_eq!(w.life_phase(), Some(p), "{phase:?} {trigger:?}")
            }
            tandem_engine::session::Next::Closed(reason) => {
                assert_eq!(w.life_phase(), Some(Phase::Closed), "{phase:?} {trigger:?}");
                assert_eq!(
                    w.life.as_ref().and_then(Session::end_reason),
                    Some(reason),
                    "{phase:?} {trigger:?}"
                );
                assert_eq!(
                    w.event_names().last().map(String::as_str),
                    Some(format!("ended:{}", tandem_engine::session::reason_name(reason)).as_str())
                );
            }
        }
        if matches!(trigger, Trigger::End(_)) && matches!(phase, Phase::Live | Phase::Paused) {
            let (told, reason) = if by == Node::Consumer {
                (&w.agent_got, EndReason::EndedByConsumer)
            } else {
                (&w.consumer_got, EndReason::EndedByAgent)
            };
            assert!(
                told.iter()
                    .any(|m| matches!(m, Message::End(e) if e.reason == reason)),
                "{phase:?} {trigger:?}: the other side hears END"
            );
        }
    }
    // Sanity: the table has the spec's 19 rows.
    assert_eq!(TRANSITIONS.len(), 19);
}
