//! QUIC endpoints for Tandem (DESIGN.md "Transport mapping"): quinn over real UDP sockets,
//! TLS 1.3 only with the *ring* provider, ALPN `tandem/1`, and a self-signed relay certificate
//! that clients pin by its SHA-256 fingerprint.
//!
//! ```text
//!  relay:  Identity::load_or_generate ─► server_endpoint(listen, &identity)
//!          identity.fingerprint()  ──── printed, handed to clients out of band ───┐
//!  client: client_endpoint(pin) ─► connect(&endpoint, relay_addr) ─► Connection  ◄┘
//! ```
//!
//! The transport parameters are tuned for slow, lossy links (300 ms RTT, 750 kbit/s, 1–5 %
//! loss): Cubic congestion control with a cap that keeps the bottleneck's queue short
//! ([`crate::congestion`]), no MTU probing, keep-alives well inside the idle timeout and
//! small datagram buffers so that stale pointer positions are dropped rather than queued.
//! Every datagram is made as short as it can be: the relay's connection IDs are
//! [`RELAY_CID_LEN`] bytes, a client's none ([`CLIENT_CID_LEN`]), and each side asks its peer to
//! acknowledge every [`ACK_ELICITING_THRESHOLD`] + 1 packets (spec §3.4).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, TransportConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tandem_protocol::message::Role;

use crate::congestion::ShallowQueueConfig;

/// The ALPN protocol identifier of Tandem over QUIC, version 1.
pub const ALPN: &[u8] = b"tandem/1";

/// The TLS server name clients ask for. The relay's certificate is pinned by fingerprint, so the
/// name is never checked; it is also one of the names in a generated certificate.
pub const SERVER_NAME: &str = "tandem-relay";

/// Keep-alive interval: well inside the idle timeout, and frequent enough to keep NAT bindings.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A connection with no traffic for this long is considered lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes a connection may have in flight unacknowledged (all streams together).
pub const SEND_WINDOW: u64 = 2 * 1024 * 1024;

/// Bytes a new connection may send in its first round trip (Cubic's initial window). A
/// snapshot of a typical page is 20–100 KB compressed; quinn's default of 14,720 bytes takes
/// three or four round trips of slow start to send it, which at 600 ms each is most of the
/// time to first render. 40 datagrams (about 48 KB) sends most snapshots in one or two.
pub const INITIAL_WINDOW: u64 = 40 * 1200;

/// Length of the connection IDs a relay issues, which every QUIC packet a client sends carries
/// (RFC 9000 §5.1). Eight bytes, quinn's default, buy routing through a stateless load balancer,
/// which one relay process does not have; four tell apart 4.3 × 10⁹ connections, and quinn draws
/// again on a collision. They are not secrets: a packet under a guessed ID still has to decrypt.
/// At 750 kbit/s each byte cut from every datagram of the customer's upload is a byte of the
/// page.
pub const RELAY_CID_LEN: usize = 4;

/// Length of a client's connection IDs: none. A client endpoint holds one connection to one
/// relay ([`client_endpoint`]), so it tells the relay's packets apart by their source address,
/// and every packet the relay sends is eight bytes shorter than with quinn's default. The
/// relay still finds a client that moved (NAT rebinding) by its own, non-empty, IDs.
pub const CLIENT_CID_LEN: usize = 0;

/// How many ack-eliciting packets a peer may receive before it must acknowledge (the
/// ACK_FREQUENCY extension, draft-ietf-quic-ack-frequency; quinn offers it on both sides):
/// every eighth packet, or [`ACK_DELAY`] after the first one unacknowledged, whichever comes
/// first. With RFC 9000's every second packet, an agent receiving a 64 KB snapshot at
/// 750 kbit/s sent 41 datagrams, most of them acknowledgements; now 24. Packets out of order
/// are acknowledged at once, so loss is detected as fast as before. The cost: a sender in slow
/// start learns of delivered data later (that snapshot completes 25 ms later).
pub const ACK_ELICITING_THRESHOLD: u32 = 7;

/// The longest a peer may hold an acknowledgement back (the ACK_FREQUENCY extension's
/// `max_ack_delay`; RFC 9000's default is 25 ms).
pub const ACK_DELAY: Duration = Duration::from_millis(50);

/// Outgoing datagram queue: small, so that a newer pointer position pushes out an older one.
pub const DATAGRAM_SEND_BUFFER: usize = 16 * 1024;

/// Incoming datagram queue: datagrams not read in time are dropped, oldest first.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// QUIC application error code used when closing a connection normally.
pub const CLOSE_OK: u32 = 0;

/// Errors of setting up or using the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A socket could not be bound, or a certificate file could not be read or written.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate or key file exists but does not hold what it should.
    #[error("bad PEM in {path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// Only one of the certificate and key files exists.
    #[error(
        "certificate and key must both exist or both be absent ({present} exists, {missing} does not)"
    )]
    HalfIdentity {
        /// The file that exists.
        present: String,
        /// The file that does not.
        missing: String,
    },
    /// The self-signed certificate could not be generated.
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),
    /// rustls refused the TLS configuration (for example a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("TLS configuration unusable for QUIC: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A fingerprint given by the user is not 64 hex digits.
    #[error("bad fingerprint {0:?}: expected 64 hex digits (SHA-256 of the relay certificate)")]
    BadFingerprint(String),
    /// The connection attempt could not start (bad address, endpoint closed).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The server's certificate is not the pinned one: this is not the relay you asked for.
    #[error("relay certificate does not match the pinned fingerprint: {detail}")]
    PinMismatch {
        /// What the TLS layer reported, including the fingerprint that was presented.
        detail: String,
    },
    /// The handshake or connection failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A certificate fingerprint (SHA-256 of the DER certificate). Displays as 64 lowercase hex
/// digits without separators; parses from hex in either case, with or without colons.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Self(fingerprint(cert_der))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TransportError::BadFingerprint(s.to_owned());
        let digits: Vec<u8> = s.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A server's certificate and private key.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256) for `tandem-relay` and `localhost`.
    pub fn generate() -> Result<Self, TransportError> {
        let (identity, _, _) = Self::generate_pem()?;
        Ok(identity)
    }

    fn generate_pem() -> Result<(Self, String, String), TransportError> {
        let ck = rcgen::generate_simple_self_signed(vec![
            SERVER_NAME.to_owned(),
            "localhost".to_owned(),
        ])?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.signing_key.serialize_pem();
        let identity = Self {
            cert: ck.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
        };
        Ok((identity, cert_pem, key_pem))
    }

    /// Reads a certificate and its private key from PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TransportError> {
        let cert_pem = std::fs::read(cert_path)?;
        let key_pem = std::fs::read(key_path)?;
        let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TransportError::Pem {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let cert = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| pem_err(cert_path, e))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_err(key_path, e))?;
        Ok(Self { cert, key })
    }

    /// Loads the identity from `cert_path` and `key_path` when both exist; when neither exists,
    /// generates one and saves it there (the key file readable by its owner only), so that a
    /// relay keeps its fingerprint across restarts.
    pub fn load_or_generate(cert_path: &Path, key_path: &Path) -> Result<Self, TransportError> {
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(cert_path, key_path),
            (false, false) => {
                let (identity, cert_pem, key_pem) = Self::generate_pem()?;
                write_private(key_path, key_pem.as_bytes())?;
                std::fs::write(cert_path, cert_pem)?;
                Ok(identity)
            }
            (true, false) => Err(TransportError::HalfIdentity {
                present: cert_path.display().to_string(),
                missing: key_path.display().to_string(),
            }),
            (false, true) => Err(TransportError::HalfIdentity {
                present: key_path.display().to_string(),
                missing: cert_path.display().to_string(),
            }),
        }
    }

    /// The DER certificate.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate's fingerprint, which clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The *ring* crypto provider; Tandem never uses aws-lc.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The initial RTT of a connection to a relay this client knows nothing of (RFC 9002's is
/// 333 ms). The first probe timeout is three times the initial RTT: 1.5 s, above the round trip
/// of the slowest link Tandem is built for (600 ms each way, 1.28 s with a padded datagram's
/// serialization at 256 kbit/s), so a first flight is not sent twice before the relay's answer
/// can arrive. After such a spurious probe a client keeps the doubled timeout for the rest of
/// the handshake (RFC 9002 §6.2.1): on that link, one lost handshake datagram then held the
/// join 11.5 s instead of 2.6 s. The cost: a first flight that is really lost goes again after
/// 1.5 s instead of 1 s.
pub const INITIAL_RTT: Duration = Duration::from_millis(500);

/// Transport parameters for slow, lossy links, shared by both sides.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.initial_rtt(INITIAL_RTT);
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(INITIAL_WINDOW);
    t.congestion_controller_factory(Arc::new(ShallowQueueConfig::new(cubic)))
        .mtu_discovery_config(None)
        .keep_alive_interval(Some(KEEP_ALIVE))
        // 30 s fits in a QUIC varint of milliseconds by a wide margin.
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("30 s is a valid idle timeout"),
        ))
        .send_window(SEND_WINDOW)
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    t
}

/// An endpoint configuration whose connections are identified by IDs of `cid_len` bytes
/// ([`RELAY_CID_LEN`], [`CLIENT_CID_LEN`]).
pub fn endpoint_config(cid_len: usize) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.cid_generator(move || Box::new(quinn_proto::RandomConnectionIdGenerator::new(cid_len)));
    config
}

/// Resumption tickets a relay keeps (two per connection, the oldest forgotten first): enough
/// for a few thousand clients to come back with 0-RTT, at a few hundred bytes each.
pub const SESSION_TICKETS: usize = 8192;

/// A quinn server configuration presenting `identity`: TLS 1.3 only, ALPN `tandem/1`.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT for clients coming back (spec §3.5): quinn takes early data only with this value.
    // rustls accepts early data only on tickets kept in this in-memory store (never on
    // stateless ones) and takes a ticket out when a client presents it: each ticket admits
    // early data once, so a replayed flight is never acted on (RFC 8446 §8.1). The relay acts
    // on HELLO and JOIN in early data and on nothing else before the handshake completes.
    tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_TICKETS);
    tls.max_early_data_size = u32::MAX;
    let quic = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A quinn client configuration that accepts only the server certificate whose fingerprint is
/// `pin`: TLS 1.3 only, ALPN `tandem/1`. One configuration is built per pin and role and
/// process, and shared by every endpoint of that role: its TLS session tickets and QUIC
/// address tokens let a later connection to the same relay resume with 0-RTT (spec §3.5).
/// Keyed by role too because a process that runs both a consumer and an agent (the demo, the
/// tests) stands for two machines: what one of them earned from the relay is not the other's.
pub fn client_config(pin: Fingerprint, role: Role) -> Result<quinn::ClientConfig, TransportError> {
    client_entry(pin, role).map(|(config, _)| config)
}

/// Bounds of the initial RTT a remembered round trip gives a new connection (see
/// [`client_config_for_rtt`]): on a loopback, a fraction of a millisecond would make the first
/// probe timeout fire before a busy relay answers.
pub const INITIAL_RTT_BOUNDS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(1));

/// [`client_config`] for a relay whose round trip `rtt` this client measured on an earlier
/// connection, as one that comes back after a loss does (spec §3.5): the new connection starts
/// from half that round trip (RFC 9002 §6.2.2 lets a client use what it knows of the path),
/// within [`INITIAL_RTT_BOUNDS`], instead of [`INITIAL_RTT`].
///
/// The first probe timeout is three times the initial RTT, so half the round trip makes it
/// fire when the relay's answer is half a round trip late. With the default, on a path whose
/// round trip is above 1.5 s, it fires before the answer can arrive: the client sends its
/// first flight twice and, not yet sure the relay validated its address, keeps the doubled
/// timeout for the rest of the handshake (RFC 9002 §6.2.1), so a handshake packet lost later
/// waits twice as long. The whole round trip would stop that too, but a first flight that is
/// really lost would then be sent again only after three round trips.
pub fn client_config_for_rtt(
    pin: Fingerprint,
    role: Role,
    rtt: Duration,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut config = client_config(pin, role)?;
    let mut t = transport_config();
    let (low, high) = INITIAL_RTT_BOUNDS;
    t.initial_rtt((rtt / 2).clamp(low, high));
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// How many TLS session tickets this process has received from the relay whose certificate is
/// `pin`, as a client in `role`: the value changes as each arrives. A client holding one can
/// send its next `HELLO` and `JOIN` to that relay in 0-RTT data (spec §3.5). The relay sends its
/// tickets after the handshake, so a client that leaves at once, or whose ticket was lost and
/// is still to be sent again, has none yet; wait on the receiver to know.
pub fn session_tickets(
    pin: Fingerprint,
    role: Role,
) -> Result<tokio::sync::watch::Receiver<u64>, TransportError> {
    client_entry(pin, role).map(|(_, tickets)| tickets.subscribe())
}

/// The count behind [`session_tickets`], shared by a client configuration's ticket store.
type TicketCounter = Arc<tokio::sync::watch::Sender<u64>>;

/// The client configuration of `pin` and `role` ([`client_config`]) and its ticket counter.
fn client_entry(
    pin: Fingerprint,
    role: Role,
) -> Result<(quinn::ClientConfig, TicketCounter), TransportError> {
    type Configs = std::collections::HashMap<([u8; 32], u32), (quinn::ClientConfig, TicketCounter)>;
    static CONFIGS: std::sync::OnceLock<std::sync::Mutex<Configs>> = std::sync::OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    let mut configs = configs.lock().unwrap_or_else(|e| e.into_inner());
    let key = (pin.0, u32::from(role));
    if let Some(entry) = configs.get(&key) {
        return Ok(entry.clone());
    }
    // Bounded: one entry per relay pin and role this process talks to.
    if configs.len() >= 64 {
        configs.clear();
    }
    let tickets = Arc::new(tokio::sync::watch::Sender::new(0));
    let config = build_client_config(pin, Arc::clone(&tickets))?;
    configs.insert(key, (config.clone(), Arc::clone(&tickets)));
    Ok((config, tickets))
}

/// Session tickets held in rustls's in-memory cache, counted as they arrive
/// ([`session_tickets`]).
#[derive(Debug)]
struct CountedTickets {
    cache: rustls::client::ClientSessionMemoryCache,
    received: TicketCounter,
}

impl rustls::client::ClientSessionStore for CountedTickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.cache.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.cache.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.cache.set_tls12_session(server_name, value);
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.cache.insert_tls13_ticket(server_name, value);
        self.received.send_modify(|n| *n += 1);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache.take_tls13_ticket(server_name)
    }
}

/// Server names a client configuration's ticket cache holds: one, since a configuration talks
/// to one relay, always as [`SERVER_NAME`] (rustls keeps up to eight tickets per name).
const TICKET_CACHE_SERVERS: usize = 1;

fn build_client_config(
    pin: Fingerprint,
    tickets: TicketCounter,
) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = PinnedServerCert {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    tls.resumption = rustls::client::Resumption::store(Arc::new(CountedTickets {
        cache: rustls::client::ClientSessionMemoryCache::new(TICKET_CACHE_SERVERS),
        received: tickets,
    }));
    let quic = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A server endpoint on a UDP socket bound to `listen` (port 0 picks a free port; read it back
/// with `local_addr`). Must be called inside a tokio runtime.
pub fn server_endpoint(
    listen: SocketAddr,
    identity: &Identity,
) -> Result<Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(listen)?;
    Ok(Endpoint::new(
        endpoint_config(RELAY_CID_LEN),
        Some(server_config(identity)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A client endpoint on an ephemeral IPv4 UDP port whose connections pin the server
/// certificate to `pin`, for a client in `role` ([`client_config`]). Use [`client_endpoint_on`]
/// to reach an IPv6 relay. Must be called inside a tokio runtime.
///
/// The endpoint's connection IDs are empty ([`CLIENT_CID_LEN`]): it tells connections apart by
/// the relay's address, so use it for one connection to a relay at a time (a new endpoint per
/// connection, as [`crate::client`] does).
pub fn client_endpoint(pin: Fingerprint, role: Role) -> Result<Endpoint, TransportError> {
    client_endpoint_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), pin, role)
}

/// Like [`client_endpoint`], bound to `bind`.
pub fn client_endpoint_on(
    bind: SocketAddr,
    pin: Fingerprint,
    role: Role,
) -> Result<Endpoint, TransportError> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let mut endpoint = Endpoint::new(
        endpoint_config(CLIENT_CID_LEN),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client_config(pin, role)?);
    Ok(endpoint)
}

/// The unspecified address of the same family as `addr`, port 0: where a client should bind to
/// reach `addr`.
pub fn bind_address_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Connects `endpoint` (made by [`client_endpoint`]) to the relay at `addr` and completes the
/// handshake. A relay whose certificate is not the pinned one fails with
/// [`TransportError::PinMismatch`].
pub async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Connection, TransportError> {
    let connecting = endpoint.connect(addr, SERVER_NAME)?;
    connecting.await.map_err(connection_error)
}

/// A failed connection attempt as a [`TransportError`]: [`TransportError::PinMismatch`] when
/// the relay's certificate is not the pinned one.
pub fn connection_error(e: quinn::ConnectionError) -> TransportError {
    match e {
        // Our verifier is the only thing on the client that rejects a certificate, and it does
        // so only when the fingerprint differs; rustls reports `CertificateError::Other` as a
        // certificate_unknown alert.
        quinn::ConnectionError::TransportError(ref te)
            if te.code == quinn::TransportErrorCode::crypto(CERTIFICATE_UNKNOWN_ALERT) =>
        {
            TransportError::PinMismatch {
                detail: te.reason.clone(),
            }
        }
        other => TransportError::Connection(other),
    }
}

/// The TLS `certificate_unknown` alert (RFC 8446 §6.2).
const CERTIFICATE_UNKNOWN_ALERT: u8 = 46;

/// Accepts exactly the server certificate whose SHA-256 is the pin, and still checks that the
/// server holds its key by verifying the TLS 1.3 handshake signature.
#[derive(Debug)]
struct PinnedServerCert {
    pin: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinError {
                    expected: self.pin,
                    got,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration allows TLS 1.3 only, so rustls never asks.
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why the pinned verifier refused a certificate. Its `Debug` is its `Display`, because rustls
/// puts the `Debug` form in the handshake error the user sees.
struct PinError {
    expected: Fingerprint,
    got: Fingerprint,
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint {} is not the pinned {}",
            self.got, self.expected
        )
    }
}

impl fmt::Debug for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256 of the empty input.
        assert_eq!(
            Fingerprint::of(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn fingerprint_parses_its_display_and_colon_form() {
        let fp = Identity::generate().unwrap().fingerprint();
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    /// A client that pins the right certificate but speaks another ALPN is refused (spec §3.1).
    #[tokio::test]
    async fn other_alpn_is_refused() {
        let identity = Identity::generate().unwrap();
        let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });

        let provider = provider();
        let verifier = PinnedServerCert {
            pin: identity.fingerprint(),
            algorithms: provider.signature_verification_algorithms,
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"other/1".to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let result = client
            .connect_with(config, addr, SERVER_NAME)
            .unwrap()
            .await;
        assert!(result.is_err(), "handshake with another ALPN must fail");

        // The same client with the right ALPN connects.
        let mut client = client;
        client
            .set_default_client_config(client_config(identity.fingerprint(), Role::Agent).unwrap());
        let conn = connect(&client, addr).await.unwrap();
        conn.close(0u32.into(), b"");
        accept.abort();
    }

    #[test]
    fn identity_persists_across_loads() {
        let dir = std::env::temp_dir().join(format!(
            "tandem-identity-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
        let first = Identity::load_or_generate(&cert, &key).unwrap();
        let second = Identity::load_or_generate(&cert, &key).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        server_config(&second).unwrap();
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            Identity::load_or_generate(&cert, &key),
            Err(TransportError::HalfIdentity { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The connection IDs of a long-header packet (RFC 9000 §17.2): destination then source.
    fn long_header_cids(datagram: &[u8]) -> Option<(usize, usize)> {
        if datagram.first()? & 0x80 == 0 {
            return None;
        }
        let dcid = usize::from(*datagram.get(5)?);
        let scid = usize::from(*datagram.get(6 + dcid)?);
        Some((dcid, scid))
    }

    /// Forwards datagrams between one client and `server`, keeping the first datagram of each
    /// direction. Returns the address clients connect to and the two datagrams once both came.
    async fn tap(server: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Receiver<[Vec<u8>; 2]>) {
        let near = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let far = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        far.connect(server).await.unwrap();
        let addr = near.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut up, mut down) = (None, None);
            let mut tx = Some(tx);
            let mut client = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            loop {
                tokio::select! {
                    Ok((n, from)) = near.recv_from(&mut a) => {
                        client = Some(from);
                        up.get_or_insert_with(|| a[..n].to_vec());
                        let _ = far.send(&a[..n]).await;
                    }
                    Ok(n) = far.recv(&mut b) => {
                        down.get_or_insert_with(|| b[..n].to_vec());
                        if let Some(client) = client {
                            let _ = near.send_to(&b[..n], client).await;
                        }
                    }
                }
                if let (Some(up), Some(down)) = (&up, &down)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send([up.clone(), down.clone()]);
                }
            }
        });
        (addr, rx)
    }

    /// A relay names its connections with [`RELAY_CID_LEN`]-byte IDs and a client with none
    /// (spec §3.4), as the first packets of a handshake show; a client issues no further IDs.
    #[tokio::test]
    async fn connection_ids_are_short_on_the_relay_and_empty_on_the_client() {
        let identity = Identity::generate().unwrap();
        let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let (addr, first) = tap(server.local_addr().unwrap()).await;
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut stream = conn.accept_uni().await.unwrap();
            stream.read_to_end(1 << 20).await.unwrap();
            conn
        });
        let client = client_endpoint(identity.fingerprint(), Role::Agent).unwrap();
        let conn = connect(&client, addr).await.unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(b"x").await.unwrap();
        stream.finish().unwrap();
        let relay_side = accept.await.unwrap();
        let [up, down] = first.await.unwrap();
        // The client's Initial: to a random initial ID (RFC 9000 §7.2: at least 8 bytes), from
        // its own empty one; the relay's: to the client's empty ID, from a 4-byte one.
        let (initial, client_cid) = long_header_cids(&up).unwrap();
        assert!(initial >= 8);
        assert_eq!(client_cid, CLIENT_CID_LEN);
        assert_eq!(
            long_header_cids(&down),
            Some((CLIENT_CID_LEN, RELAY_CID_LEN))
        );
        assert_eq!(conn.stats().frame_tx.new_connection_id, 0);
        assert!(relay_side.stats().frame_tx.new_connection_id > 0);
    }

    /// A peer acknowledges a long transfer every [`ACK_ELICITING_THRESHOLD`] + 1 packets, not
    /// every second one, once the sender asked it to (spec §3.4).
    #[tokio::test]
    async fn the_receiver_acknowledges_less_often_when_asked() {
        let identity = Identity::generate().unwrap();
        let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let addr = server.local_addr().unwrap();
        let payload = vec![7u8; 600_000];
        let sent = payload.clone();
        let sender = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let mut stream = conn.open_uni().await.unwrap();
            stream.write_all(&sent).await.unwrap();
            stream.finish().unwrap();
            stream.stopped().await.unwrap();
            conn
        });
        let client = client_endpoint(identity.fingerprint(), Role::Agent).unwrap();
        let conn = connect(&client, addr).await.unwrap();
        let mut stream = conn.accept_uni().await.unwrap();
        assert_eq!(stream.read_to_end(1 << 20).await.unwrap(), payload);
        let relay_side = sender.await.unwrap();
        let stats = conn.stats();
        assert!(relay_side.stats().frame_tx.ack_frequency >= 1);
        assert!(stats.frame_rx.ack_frequency >= 1);
        // Quinn's default, acknowledging every second packet, would send about half as many
        // ACK frames as it received datagrams; the extension leaves fewer than a quarter.
        assert!(
            stats.frame_tx.acks * 4 < stats.udp_rx.datagrams,
            "{} ACK frames for {} datagrams",
            stats.frame_tx.acks,
            stats.udp_rx.datagrams
        );
    }

    /// A relay's session tickets are counted for the pin and role that received them, and for
    /// no other.
    #[tokio::test]
    async fn session_tickets_are_counted_per_relay_and_role() {
        let identity = Identity::generate().unwrap();
        let pin = identity.fingerprint();
        let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            conn.closed().await;
        });
        let mut agent = session_tickets(pin, Role::Agent).unwrap();
        let consumer = session_tickets(pin, Role::Consumer).unwrap();
        assert_eq!(*agent.borrow_and_update(), 0);
        let client = client_endpoint(pin, Role::Agent).unwrap();
        let conn = connect(&client, addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), agent.wait_for(|&n| n > 0))
            .await
            .expect("the relay sends a ticket after the handshake")
            .unwrap();
        assert_eq!(*consumer.borrow(), 0);
        conn.close(CLOSE_OK.into(), b"");
        accept.await.unwrap();
    }
}
