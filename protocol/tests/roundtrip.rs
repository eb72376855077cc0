//! Round trip of every message type (spec §4.4, STYLE.md 10): for messages built from proptest
//! strategies, encode → decode gives the same value, and re-encoding the decoded value gives
//! the same bytes. Random and mutated byte streams go through the frame oracle, which must
//! never panic.
//!
//! With `--features arbitrary`, the `arbitrary`-built messages of the fuzz target are run too.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use tandem_protocol::message::{
    Ack, Addresses, Capabilities, Click, Coding, Compressed, Credential, End, EndReason,
    ErrorReport, Hello, Highlight, Input, InputValue, InvitationRef, Invite, Join, Joined, Mode,
    ModeChange, ModeOp, Navigate, Patch, Ping, Platform, Pointer, RefusalCode, Refused, Rejoined,
    Resource, Resync, ResyncReason, Role, Scroll, SessionCreated, SessionOpen, Snapshot, Status,
    UnknownFrame, Viewport, ViewportChange, Welcome,
};
use tandem_protocol::patch_coder::{PatchDecoder, PatchEncoder};
use tandem_protocol::strings::MAX_SYM_INDEX;
use tandem_protocol::{
    Attr, ErrorCode, FrameType, Limits, Message, NodeRecord, NodeRun, Ns, PatchOp, Place, REGISTRY,
    Sym, TextEdit, frame, fuzzing,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ./:#=-]{0,12}",
        // Any characters, multi-byte ones included.
        ".{0,8}",
    ]
}

/// A wire enum value: mostly named ones, sometimes one this version does not know.
fn wire<T: From<u32> + std::fmt::Debug>() -> impl Strategy<Value = T> {
    prop_oneof![4 => 0u32..8, 1 => any::<u32>()].prop_map(T::from)
}

fn sym() -> impl Strategy<Value = Sym> {
    prop_oneof![
        prop_oneof![0u32..400, 0..=MAX_SYM_INDEX].prop_map(Sym::Static),
        prop_oneof![0u32..40, 0..=MAX_SYM_INDEX].prop_map(Sym::Ref),
        text().prop_map(Sym::New),
        text().prop_map(Sym::Lit),
    ]
}

fn record() -> impl Strategy<Value = NodeRecord> {
    prop_oneof![
        (wire::<Ns>(), sym(), vec((sym(), sym()), 0..4), any::<u32>()).prop_map(
            |(ns, name, attrs, children)| NodeRecord::Element {
                ns,
                name,
                attrs: attrs
                    .into_iter()
                    .map(|(name, value)| Attr { name, value })
                    .collect(),
                children,
            }
        ),
        sym().prop_map(|text| NodeRecord::Text { text }),
        sym().prop_map(|text| NodeRecord::Comment { text }),
        (sym(), sym(), sym()).prop_map(|(name, public_id, system_id)| NodeRecord::Doctype {
            name,
            public_id,
            system_id
        }),
    ]
}

fn node() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, any::<u64>()]
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        (0u64..1 << 63).prop_map(Place::After),
        (0u64..1 << 63).prop_map(Place::First),
        any::<u64>().prop_map(Place::from_wire),
    ]
}

fn patch_op() -> impl Strategy<Value = PatchOp> {
    prop_oneof![
        (place(), node(), vec(record(), 0..5)).prop_map(|(at, first, nodes)| PatchOp::Insert {
            at,
            first,
            nodes
        }),
        node().prop_map(|node| PatchOp::Remove { node }),
        (node(), place()).prop_map(|(node, at)| PatchOp::Move { node, at }),
        // Ids are below 2^63 (spec §6.1), which keeps every difference an i64.
        (place(), vec(prop_oneof![0u64..300, 0u64..1 << 63], 1..6)).prop_map(|(at, nodes)| {
            PatchOp::MoveRun {
                at,
                nodes: NodeRun(nodes),
            }
        }),
        (node(), sym(), sym()).prop_map(|(node, name, value)| PatchOp::SetAttr {
            node,
            name,
            value
        }),
        (node(), sym()).prop_map(|(node, name)| PatchOp::RemoveAttr { node, name }),
        (node(), sym()).prop_map(|(node, text)| PatchOp::SetText { node, text }),
        (node(), vec((any::<u32>(), any::<u32>(), text()), 0..4)).prop_map(|(node, edits)| {
            PatchOp::EditText {
                node,
                edits: edits
                    .into_iter()
                    .map(|(keep, delete, insert)| TextEdit {
                        keep,
                        delete,
                        insert,
                    })
                    .collect(),
            }
        }),
    ]
}

fn viewport() -> impl Strategy<Value = Viewport> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(width, height, dpr_percent)| Viewport {
        width,
        height,
        dpr_percent,
    })
}

fn platform() -> impl Strategy<Value = Platform> {
    (text(), text(), viewport(), text()).prop_map(|(browser, os, viewport, language)| Platform {
        browser,
        os,
        viewport,
        language,
    })
}

fn caps() -> impl Strategy<Value = Capabilities> {
    any::<u64>().prop_map(Capabilities)
}

fn hash16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

fn resource() -> impl Strategy<Value = Resource> {
    (
        any::<[u8; 32]>(),
        vec(any::<u8>(), 0..64),
        any::<u64>(),
        0u64..1000,
        text(),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(
            |(address, data, extra, offset, content_type, cacheable, coding)| {
                // A valid piece: offset + len <= total_len (spec §7.20).
                let end = offset + data.len() as u64;
                let total_len = end.saturating_add(extra % 1000);
                Resource {
                    address,
                    total_len,
                    offset,
                    content_type,
                    cacheable,
                    // Named and unknown codings alike travel unchanged.
                    coding: Coding::from(coding % 3),
                    data,
                }
            },
        )
}

fn unknown() -> impl Strategy<Value = UnknownFrame> {
    (any::<u32>(), vec(any::<u8>(), 0..32)).prop_map(|(ty, body)| {
        let mut ty = ty;
        while FrameType(ty).name().is_some() {
            ty = ty.wrapping_add(0x100);
        }
        UnknownFrame {
            ty: FrameType(ty),
            body,
        }
    })
}

/// A strategy for every message of the registry, plus unknown frames.
fn message() -> impl Strategy<Value = Message> {
    let invitation = || any::<u64>().prop_map(|invitation| InvitationRef { invitation });
    let ping = || any::<u64>().prop_map(|nonce| Ping { nonce });
    let report =
        || (wire::<ErrorCode>(), text()).prop_map(|(code, message)| ErrorReport { code, message });
    let addresses = || vec(any::<[u8; 32]>(), 0..4).prop_map(|addresses| Addresses { addresses });
    Union::new(vec![
        (
            any::<u32>(),
            any::<u32>(),
            wire::<Role>(),
            caps(),
            platform(),
            text(),
        )
            .prop_map(
                |(min_version, max_version, role, capabilities, platform, software)| {
                    Message::Hello(Hello {
                        min_version,
                        max_version,
                        role,
                        capabilities,
                        platform,
                        software,
                    })
                },
            )
            .boxed(),
        (any::<u32>(), wire::<Role>(), caps(), text())
            .prop_map(|(version, role, capabilities, software)| {
                Message::Welcome(Welcome {
                    version,
                    role,
                    capabilities,
                    software,
                })
            })
            .boxed(),
        text()
            .prop_map(|label| Message::SessionOpen(SessionOpen { label }))
            .boxed(),
        (text(), text(), any::<u32>())
            .prop_map(|(code, token, expires_ms)| {
                Message::SessionCreated(SessionCreated {
                    code,
                    token,
                    expires_ms,
                })
            })
            .boxed(),
        (
            prop_oneof![
                text().prop_map(Credential::Code),
                text().prop_map(Credential::Token),
                text().prop_map(Credential::Resume)
            ],
            text(),
        )
            .prop_map(|(credential, label)| Message::Join(Join { credential, label }))
            .boxed(),
        (wire::<Role>(), text(), platform(), caps(), text())
            .prop_map(
                |(peer_role, peer_label, peer_platform, capabilities, resume_token)| {
                    Message::Joined(Joined {
                        peer_role,
                        peer_label,
                        peer_platform,
                        capabilities,
                        resume_token,
                    })
                },
            )
            .boxed(),
        wire::<Role>()
            .prop_map(|peer_role| Message::Rejoined(Rejoined { peer_role }))
            .boxed(),
        (any::<u64>(), text(), text(), any::<u32>())
            .prop_map(|(invitation, target, agent_label, expires_ms)| {
                Message::Invite(Invite {
                    invitation,
                    target,
                    agent_label,
                    expires_ms,
                })
            })
            .boxed(),
        invitation().prop_map(Message::Accept).boxed(),
        invitation().prop_map(Message::Decline).boxed(),
        invitation().prop_map(Message::Cancel).boxed(),
        Just(Message::Pause(())).boxed(),
        Just(Message::Resume(())).boxed(),
        wire::<EndReason>()
            .prop_map(|reason| Message::End(End { reason }))
            .boxed(),
        (
            any::<u32>(),
            any::<u32>(),
            text(),
            vec(record(), 0..8),
            proptest::option::of(hash16()),
        )
            .prop_map(|(epoch, part, url, nodes, hash)| {
                Message::Snapshot(Snapshot {
                    epoch,
                    part,
                    url,
                    nodes,
                    hash,
                })
            })
            .boxed(),
        (
            any::<u32>(),
            any::<u64>(),
            vec(patch_op(), 0..6),
            any::<[u8; 8]>(),
        )
            .prop_map(|(epoch, seq, ops, hash)| {
                Message::Patch(Patch {
                    epoch,
                    seq,
                    ops,
                    hash,
                })
            })
            .boxed(),
        (any::<u32>(), any::<u64>(), hash16())
            .prop_map(|(epoch, seq, hash)| Message::Ack(Ack { epoch, seq, hash }))
            .boxed(),
        (any::<u32>(), wire::<ResyncReason>())
            .prop_map(|(epoch, reason)| Message::Resync(Resync { epoch, reason }))
            .boxed(),
        vec(any::<u8>(), 0..40)
            .prop_map(|data| Message::Compressed(Compressed { data }))
            .boxed(),
        addresses().prop_map(Message::Have).boxed(),
        addresses().prop_map(Message::Want).boxed(),
        addresses().prop_map(Message::WantAgain).boxed(),
        resource().prop_map(Message::Resource).boxed(),
        (
            any::<u32>(),
            node(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(seq, node, x, y, visible)| {
                Message::Pointer(Pointer {
                    seq,
                    node,
                    x,
                    y,
                    visible,
                })
            })
            .boxed(),
        (any::<u32>(), node(), any::<i32>(), any::<i32>())
            .prop_map(|(seq, node, x, y)| Message::Scroll(Scroll { seq, node, x, y }))
            .boxed(),
        (any::<u32>(), node(), any::<u32>())
            .prop_map(|(id, node, duration_ms)| {
                Message::Highlight(Highlight {
                    id,
                    node,
                    duration_ms,
                })
            })
            .boxed(),
        (
            any::<u32>(),
            node(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<u8>(),
        )
            .prop_map(|(id, node, x, y, button, modifiers)| {
                Message::Click(Click {
                    id,
                    node,
                    x,
                    y,
                    button,
                    modifiers,
                })
            })
            .boxed(),
        (
            any::<u32>(),
            node(),
            prop_oneof![
                text().prop_map(InputValue::Text),
                any::<bool>().prop_map(InputValue::Checked),
                vec(any::<u32>(), 0..5).prop_map(InputValue::Selected),
            ],
        )
            .prop_map(|(id, node, value)| Message::Input(Input { id, node, value }))
            .boxed(),
        (any::<u32>(), text())
            .prop_map(|(id, url)| Message::Navigate(Navigate { id, url }))
            .boxed(),
        (wire::<ModeOp>(), wire::<Mode>())
            .prop_map(|(op, mode)| Message::Mode(ModeChange { op, mode }))
            .boxed(),
        (any::<u32>(), wire::<RefusalCode>(), text())
            .prop_map(|(id, code, detail)| Message::Refused(Refused { id, code, detail }))
            .boxed(),
        (any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(rtt_ms, loss_ppm, throughput_bps)| {
                Message::Status(Status {
                    rtt_ms,
                    loss_ppm,
                    throughput_bps,
                })
            })
            .boxed(),
        ping().prop_map(Message::Ping).boxed(),
        ping().prop_map(Message::Pong).boxed(),
        viewport()
            .prop_map(|viewport| Message::Viewport(ViewportChange { viewport }))
            .boxed(),
        report().prop_map(Message::Error).boxed(),
        report().prop_map(Message::Close).boxed(),
        unknown().prop_map(Message::Unknown).boxed(),
    ])
}

proptest! {
    // Each case sets up a coder's models (a few MB), so fewer cases.
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn coded_patches_round_trip(
        patches in vec((any::<u32>(), any::<u64>(), vec(patch_op(), 0..8), any::<[u8; 8]>()), 1..6),
        flip in any::<(usize, u8)>(),
    ) {
        let mut encoder = PatchEncoder::new();
        let mut decoder = PatchDecoder::new(Limits::DEFAULT);
        let mut coded = Vec::new();
        for (i, (epoch, seq, ops, hash)) in patches.into_iter().enumerate() {
            // Mostly the stream's own header, sometimes any.
            let (epoch, seq) = if i % 2 == 0 { (7, i as u64 + 1) } else { (epoch, seq) };
            let patch = Patch { epoch, seq, ops, hash };
            coded.clear();
            encoder.encode(&patch, &mut coded);
            prop_assert_eq!(decoder.decode(&coded).expect("decodes"), patch);
        }
        // A corrupted patch fails or decodes to something; it never panics.
        if !coded.is_empty() && flip.1 != 0 {
            let at = flip.0 % coded.len();
            coded[at] ^= flip.1;
            let _ = decoder.decode(&coded);
        }
    }

    #[test]
    fn coded_patch_garbage_never_panics(data in vec(any::<u8>(), 0..512)) {
        let mut decoder = PatchDecoder::new(Limits::DEFAULT);
        for piece in data.chunks(37) {
            if decoder.decode(piece).is_err() {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_message_round_trips(msg in message()) {
        let limits = Limits::DEFAULT;
        let bytes = frame::to_frame(&msg, &limits).expect("encodes");
        let back = frame::decode_exact(&bytes, &limits).expect("decodes");
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(frame::to_frame(&back, &limits).expect("re-encodes"), bytes);
        fuzzing::message_roundtrip(&msg);
    }

    #[test]
    fn streams_of_messages_split_anywhere(
        msgs in vec(message(), 1..6),
        step in 0u8..64,
        strict in any::<bool>(),
    ) {
        let mut data = vec![step | if strict { 0x80 } else { 0 }];
        for m in &msgs {
            frame::encode_frame(m, &mut data, &Limits::DEFAULT).expect("encodes");
        }
        fuzzing::frame_decode(&data);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
        fuzzing::frame_decode(&data);
    }

    #[test]
    fn mutated_frames_never_panic(
        msg in message(),
        flips in vec((any::<usize>(), any::<u8>()), 1..4),
        ctl in any::<u8>(),
    ) {
        let mut data = vec![ctl];
        frame::encode_frame(&msg, &mut data, &Limits::DEFAULT).expect("encodes");
        for (at, byte) in flips {
            let at = 1 + at % (data.len() - 1);
            data[at] ^= byte;
        }
        fuzzing::frame_decode(&data);
    }
}

#[test]
fn strategies_cover_the_registry() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5000 {
        let m = strategy.new_tree(&mut runner).expect("a value").current();
        seen.insert(m.frame_type());
    }
    for (ty, name, _) in REGISTRY {
        assert!(seen.contains(ty), "the strategies never built a {name}");
    }
}

/// The fuzz target's own construction: `arbitrary` over bytes from a seeded generator.
#[cfg(feature = "arbitrary")]
#[test]
fn arbitrary_messages_round_trip() {
    let mut state: u64 = 0x7a6e_6465_6d31;
    for len in (0..20_000).map(|i| i % 600) {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift64*: deterministic, no dependency.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        fuzzing::message_roundtrip_bytes(&bytes);
        fuzzing::frame_decode(&bytes);
    }
}
