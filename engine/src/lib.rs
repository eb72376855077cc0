//! # tandem-engine: the Tandem co-browsing engine, without I/O
//!
//! The engine keeps the page's tree on both sides and moves it across as snapshots and patches
//! of wire format v1 (`tandem-protocol`). It never opens a socket, reads a clock or asks the OS
//! for randomness: callers pass bytes, messages and seeds in and drain what it produces, so a
//! vendor can embed it in any transport and a test can run it in virtual time.
//!
//! ## Model
//!
//! ```text
//!   page (HTML or change records)                                  agent console
//!        │                                                              ▲
//!        ▼                                                              │ to_html()
//!   Consumer ── Dom (ids, Merkle hashes) ── SNAPSHOT / PATCH ──►  Agent ── Dom
//!        ▲                                   (spec §7.14, §7.15)        │
//!        └──────────────── ACK / RESYNC (spec §7.16, §7.17) ◄───────────┘
//! ```
//!
//! * [`Dom`] is an arena indexed by consumer-assigned node ids (spec §6.1) with a blake3 Merkle
//!   hash per element (texts and other leaves are hashed inline in their parent), recomputed
//!   only along dirty paths (spec §6.3). A snapshot's or an insert's subtree is hashed as it is
//!   built, while its records are at hand. Element and attribute names are [`Name`]s, which
//!   borrow the entries of the static string table instead of allocating a copy per element.
//! * [`parse_html`] imports a page with html5ever into the script-free tree (spec §6.4);
//!   [`to_html`] writes a tree back as HTML.
//! * [`Consumer`] records changes and emits a snapshot, then patches that carry the hash of the
//!   tree they produce; [`Agent`] applies them and checks every hash. Divergence is never
//!   silent: it becomes [`AgentEvent::Diverged`] and a `RESYNC`, answered by a new snapshot.
//!   A sender takes the consumer's output as frames ([`Consumer::poll_frame`]): snapshot
//!   parts are written straight from the tree into their frames when queued, with no owned
//!   record per node; [`Consumer::poll_message`] gives the same as messages.
//! * [`MaskPolicy`] (module [`mask`], spec §12) masks sensitive content as it enters the
//!   consumer — automatic rules for passwords, card and one-time-code fields and hidden
//!   inputs, marker attributes, configured selectors, private-by-default mode — so no encoder
//!   ever sees it; [`Consumer::check_action`] refuses agent input into masked fields.
//! * [`LivePage`] makes seeded random page changes for demos and tests.
//! * Module [`resource`] (spec §14) moves stylesheets, images, fonts and large texts by
//!   blake3 content address: [`Resources`] rewrites the consumer's masked tree so that it
//!   refers to `tandem:blake3:` URIs (given to [`Consumer::with_resources`]),
//!   [`ResourceSender`](resource::ResourceSender) and
//!   [`ResourceReceiver`](resource::ResourceReceiver) move the blobs as `RESOURCE` pieces
//!   after `HAVE`/`WANT`, checking each against its address, a
//!   [`RelayCache`](resource::RelayCache) shares public ones across sessions, and
//!   [`resolve_page`](resource::resolve_page) writes the agent's page with them.
//!
//! ## Example
//!
//! ```
//! use tandem_engine::{Agent, AgentEvent, Consumer, LivePage, parse_html};
//! use tandem_protocol::Limits;
//!
//! let page = parse_html("<!DOCTYPE html><body><p>Order <b>42</b> shipped</p></body>", Limits::DEFAULT);
//! let mut consumer = Consumer::new(page, "https://shop.example/", Limits::DEFAULT);
//! let mut agent = Agent::new(Limits::DEFAULT);
//! let mut live = LivePage::new(7);
//! for _ in 0..10 {
//!     live.step(&mut consumer, 5).unwrap();
//!     consumer.flush();
//!     while let Some(msg) = consumer.poll_message() {
//!         agent.handle_message(msg).unwrap();
//!     }
//!     while let Some(ack) = agent.poll_message() {
//!         consumer.handle_message(&ack).unwrap();
//!     }
//! }
//! assert_eq!(agent.tree_hash(), Some(consumer.tree_hash()));
//! assert!(matches!(agent.poll_event(), Some(AgentEvent::Rendered { .. })));
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod consumer;
pub mod diff;
pub mod dom;
pub mod error;
pub mod hands;
pub mod hash;
pub mod html;
pub mod live;
pub mod mask;
pub mod patch;
pub mod resource;
pub mod session;
pub mod snapshot;
mod wide;

pub use agent::{Agent, AgentEvent};
pub use consumer::{Consumer, DomFrame, DomFrameKind, Resumption};
pub use dom::{Dom, Element, Name, Node, NodeKind};
pub use error::EngineError;
pub use html::{parse_html, to_html};
pub use live::LivePage;
pub use mask::{MaskLength, MaskPolicy};
pub use resource::{Address, BlobStore, Resources};
