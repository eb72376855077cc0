//! Content-addressed resources (spec §14): stylesheets, images, fonts and large texts travel
//! once, by blake3 address, beside the DOM stream.
//!
//! ## Model
//!
//! ```text
//!  consumer                                relay                          agent
//!  ────────                                ─────                          ─────
//!  Resources::rewrite_tree ─ DOM with ─────────────────────────────────► ResourceReceiver::scan_dom
//!   (loader, masking first)  tandem:blake3: URIs                              │
//!                                                                             ▼
//!  ResourceSender::handle_want ◄── WANT (rest) ── RelayCache::answer_want ◄── WANT
//!        │                                           │ (serves what it holds)
//!        ▼ poll_transmit                             ▼
//!  RESOURCE pieces, one stream per blob ──► RelayCache::observe ──────► ResourceReceiver::handle_piece
//!                                          (cacheable blobs only)        (limits, order, blake3)
//! ```
//!
//! * [`Address`] is the blake3 hash of a blob's bytes, written in documents as the URI
//!   `tandem:blake3:<64 hex>` (spec §14.1).
//! * [`Resources`] is the consumer's part: after masking, it rewrites the references of the
//!   tree (spec §14.2) — `img src`/`srcset`, stylesheet and icon links, `url(...)` in style
//!   attributes, in `<style>` text and inside fetched stylesheets (recursively, `@import`
//!   included), `data:` URLs — into addresses, and turns large texts into blobs (spec §14.3).
//!   The bytes come from a [`ResourceLoader`] the caller chooses ([`FileLoader`] reads files
//!   under a root directory, [`NoLoader`] reads nothing); `data:` URLs are decoded without one.
//! * [`BlobStore`] holds verified blobs, bounded in bytes with LRU eviction; [`RelayCache`] is
//!   the relay's shared store, which only takes cacheable blobs (spec §14.7).
//! * [`ResourceSender`] decides what to send and in which order and cuts blobs into `RESOURCE`
//!   pieces, coded as one Zstandard frame when the blob is a text or another uncompressed
//!   format and the frame is smaller ([`Blob::coded`], spec §7.20); [`ResourceReceiver`]
//!   assembles them within the limits of spec §14.8, decoding coded pieces into exactly the
//!   announced length, checks every blob against its address and says what to `WANT`.
//! * [`resolve_page`] writes the agent's page as HTML with its resources, inline as `data:`
//!   URLs or as files named by address (spec §14.9).
//!
//! Nothing here performs I/O except [`FileLoader`], which a caller picks explicitly.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tandem_protocol::compress::{self, BlobCodingError, BlobDecoder};
use tandem_protocol::message::{Addresses, Coding, Resource};
use tandem_protocol::{DOCUMENT_ID, NodeId, Ns};

use crate::dom::{Dom, NodeKind};
use crate::mask::MaskPolicy;

/// The scheme and algorithm prefix of a resource URI (spec §14.1).
pub const URI_PREFIX: &str = "tandem:blake3:";

/// Length of a resource URI: the prefix and 64 hexadecimal digits.
pub const URI_LEN: usize = URI_PREFIX.len() + 64;

/// Texts of at least this many bytes become blobs by default (spec §14.3).
pub const DEFAULT_TEXT_THRESHOLD: usize = 4096;

/// Default size of the data of one `RESOURCE` piece.
pub const DEFAULT_PIECE_BYTES: usize = 16 * 1024;

/// Default byte budget of a consumer's or agent's [`BlobStore`].
pub const DEFAULT_STORE_BYTES: u64 = 128 * 1024 * 1024;

/// Nesting of stylesheets (`@import`) a consumer follows.
pub const MAX_IMPORT_DEPTH: u32 = 8;

/// A blob's content address: the blake3 hash of its bytes (spec §14.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 32]);

impl Address {
    /// The address of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Address(*blake3::hash(bytes).as_bytes())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        crate::error::hex(&self.0)
    }

    /// Parses 64 hexadecimal digits (lower case only, as spec §14.1 writes them).
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (lower_hex(pair[0])? << 4) | lower_hex(pair[1])?;
        }
        Some(Address(out))
    }

    /// The URI `tandem:blake3:<64 hex>` (spec §14.1).
    pub fn to_uri(&self) -> String {
        let mut s = String::with_capacity(URI_LEN);
        s.push_str(URI_PREFIX);
        s.push_str(&self.to_hex());
        s
    }

    /// Parses exactly a resource URI: the prefix (ASCII case-insensitive) and 64 lowercase
    /// hexadecimal digits, nothing around them.
    pub fn from_uri(s: &str) -> Option<Self> {
        if s.len() != URI_LEN || !s.is_char_boundary(URI_PREFIX.len()) {
            return None;
        }
        let (p, h) = s.split_at(URI_PREFIX.len());
        if !p.eq_ignore_ascii_case(URI_PREFIX) {
            return None;
        }
        Address::from_hex(h)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

impl From<[u8; 32]> for Address {
    fn from(b: [u8; 32]) -> Self {
        Address(b)
    }
}

impl From<Address> for [u8; 32] {
    fn from(a: Address) -> Self {
        a.0
    }
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Every resource URI in `text`, in order (URIs embedded in CSS, `srcset` or any string).
pub fn uris_in(text: &str) -> impl Iterator<Item = (usize, Address)> + '_ {
    let b = text.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        while from < b.len() {
            let rest = &text[from..];
            let at = from + find_ci(rest, URI_PREFIX)?;
            from = at + URI_PREFIX.len();
            if let Some(h) = text.get(from..from + 64)
                && let Some(a) = Address::from_hex(h)
                && text
                    .as_bytes()
                    .get(from + 64)
                    .is_none_or(|c| !c.is_ascii_hexdigit())
            {
                from += 64;
                return Some((at, a));
            }
        }
        None
    })
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.len() > h.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// A verified blob: bytes with the address they hash to, a MIME type and whether a relay may
/// cache it. Only [`Blob::new`] makes one, so a blob always matches its address.
///
/// Clones share the bytes and, once made, the coded form the blob travels in
/// ([`Blob::coded`]), so a relay serving one cached stylesheet to many agents codes it once.
#[derive(Clone)]
pub struct Blob {
    address: Address,
    bytes: Arc<[u8]>,
    content_type: Arc<str>,
    cacheable: bool,
    coded: Arc<OnceLock<Option<Arc<[u8]>>>>,
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        // Equal addresses mean equal bytes; the coded form follows from them.
        self.address == other.address
            && self.content_type == other.content_type
            && self.cacheable == other.cacheable
    }
}

impl Eq for Blob {}

impl Blob {
    /// A blob of `bytes`; computes the address.
    pub fn new(bytes: impl Into<Arc<[u8]>>, content_type: &str, cacheable: bool) -> Self {
        let bytes = bytes.into();
        Blob {
            address: Address::of(&bytes),
            bytes,
            content_type: content_type.into(),
            cacheable,
            coded: Arc::default(),
        }
    }

    /// The blob as one Zstandard frame, when it travels coded ([`Coding::Zstd`], spec §7.20):
    /// for types worth coding ([`compress::worth_coding`]) whose frame is smaller than the
    /// blob. Made on first use and kept; `None` when the blob travels as it is.
    pub fn coded(&self) -> Option<&[u8]> {
        self.coded
            .get_or_init(|| {
                if !compress::worth_coding(&self.content_type) {
                    return None;
                }
                // A coder that cannot start leaves the blob as it is: identity is always valid.
                compress::code_blob(&self.bytes)
                    .ok()
                    .flatten()
                    .map(Arc::from)
            })
            .as_deref()
    }

    /// The blob's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The MIME type.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Whether a relay may cache the blob (a public asset, spec §14.7).
    pub fn cacheable(&self) -> bool {
        self.cacheable
    }

    /// The same blob marked not cacheable.
    pub fn private(mut self) -> Self {
        self.cacheable = false;
        self
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("address", &self.address)
            .field("len", &self.bytes.len())
            .field("content_type", &self.content_type)
            .field("cacheable", &self.cacheable)
            .finish()
    }
}

/// Where a sender finds the blobs it is asked for.
pub trait BlobSource {
    /// The blob at `address`, if held.
    fn blob(&mut self, address: &Address) -> Option<Blob>;
}

/// A content-addressed store bounded in bytes; the least recently used blobs leave first.
///
/// ```
/// use tandem_engine::resource::{Blob, BlobStore};
///
/// let mut store = BlobStore::new(10);
/// let a = store.insert(Blob::new(&b"hello"[..], "text/plain", true)).unwrap();
/// let b = store.insert(Blob::new(&b"world"[..], "text/plain", true)).unwrap();
/// store.get(&a); // a is now the most recently used
/// store.insert(Blob::new(&b"again"[..], "text/plain", true)).unwrap();
/// assert!(store.contains(&a) && !store.contains(&b));
/// assert!(store.bytes() <= 10);
/// ```
#[derive(Debug, Clone)]
pub struct BlobStore {
    max_bytes: u64,
    bytes: u64,
    tick: u64,
    map: HashMap<Address, (Blob, u64)>,
    lru: BTreeMap<u64, Address>,
}

/// Why a store refused a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The blob alone is larger than the store.
    #[error("a blob of {len} bytes does not fit a store of {max} bytes")]
    TooLarge {
        /// The blob's length.
        len: u64,
        /// The store's budget.
        max: u64,
    },
    /// The relay's cache takes cacheable blobs only (spec §14.7).
    #[error("blob {0} is not cacheable")]
    NotCacheable(Address),
}

impl BlobStore {
    /// An empty store that holds at most `max_bytes` bytes of blobs.
    pub fn new(max_bytes: u64) -> Self {
        BlobStore {
            max_bytes,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
            lru: BTreeMap::new(),
        }
    }

    /// Adds `blob` (or refreshes it), evicting the least recently used blobs until it fits.
    pub fn insert(&mut self, blob: Blob) -> Result<Address, StoreError> {
        let a = blob.address();
        if blob.len() > self.max_bytes {
            return Err(StoreError::TooLarge {
                len: blob.len(),
                max: self.max_bytes,
            });
        }
        if let Some((old, _)) = self.map.get_mut(&a) {
            // Same bytes; a blob once private stays private.
            if !blob.cacheable() {
                old.cacheable = false;
            }
            self.touch(&a);
            return Ok(a);
        }
        while self.bytes + blob.len() > self.max_bytes {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            if let Some((b, _)) = self.map.remove(&victim) {
                self.bytes -= b.len();
            }
        }
        self.tick += 1;
        self.bytes += blob.len();
        self.lru.insert(self.tick, a);
        self.map.insert(a, (blob, self.tick));
        Ok(a)
    }

    fn touch(&mut self, a: &Address) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, t)) = self.map.get_mut(a) {
            self.lru.remove(t);
            *t = tick;
            self.lru.insert(tick, *a);
        }
    }

    /// The blob at `a`, marking it recently used.
    pub fn get(&mut self, a: &Address) -> Option<Blob> {
        let b = self.map.get(a)?.0.clone();
        self.touch(a);
        Some(b)
    }

    /// The blob at `a`, leaving the eviction order alone.
    pub fn peek(&self, a: &Address) -> Option<&Blob> {
        self.map.get(a).map(|(b, _)| b)
    }

    /// Whether the store holds `a`.
    pub fn contains(&self, a: &Address) -> bool {
        self.map.contains_key(a)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Addresses held, most recently used first.
    pub fn addresses(&self) -> impl Iterator<Item = Address> + '_ {
        self.lru.values().rev().copied()
    }

    /// Removes `a`.
    pub fn remove(&mut self, a: &Address) -> Option<Blob> {
        let (b, t) = self.map.remove(a)?;
        self.lru.remove(&t);
        self.bytes -= b.len();
        Some(b)
    }
}

impl BlobSource for BlobStore {
    fn blob(&mut self, address: &Address) -> Option<Blob> {
        self.get(address)
    }
}

// ───────────────────────────── loading ─────────────────────────────

/// Bytes a [`ResourceLoader`] found for a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The resource's bytes.
    pub bytes: Vec<u8>,
    /// Its MIME type (empty: guess from the URL's extension).
    pub content_type: String,
    /// Whether it is a public asset a relay may cache.
    pub cacheable: bool,
}

/// Why a resource could not be loaded; the reference is then left as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The loader does not handle this URL (another scheme or origin, no loader).
    #[error("not handled by this loader")]
    Unsupported,
    /// The URL names a path outside the loader's root directory.
    #[error("the path escapes the root directory")]
    Escapes,
    /// No such resource.
    #[error("not found")]
    NotFound,
    /// Larger than allowed.
    #[error("{len} bytes, more than {max}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A `data:` URL that does not decode.
    #[error("malformed data: URL")]
    BadDataUrl,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(String),
}

/// Supplies the bytes of a URL to the consumer (spec §14.2). `url` is absolute (resolved
/// against the page or stylesheet that refers to it); `data:` URLs never reach a loader.
pub trait ResourceLoader {
    /// The bytes at `url`, at most `max_len` of them.
    fn load(&mut self, url: &str, max_len: u64) -> Result<Loaded, LoadError>;
}

/// A loader that loads nothing: only `data:` URLs and large texts become blobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLoader;

impl ResourceLoader for NoLoader {
    fn load(&mut self, _url: &str, _max_len: u64) -> Result<Loaded, LoadError> {
        Err(LoadError::Unsupported)
    }
}

/// The reference loader: reads files under a root directory for URLs under a root URL, and
/// refuses paths that would leave the root (`..`, encoded separators, symbolic links out).
///
/// A URL `<root_url><path>?<query>#<fragment>` maps to the file `<root>/<path>` (query and
/// fragment dropped, percent-decoded). Everything it reads is a public asset (cacheable).
#[derive(Debug, Clone)]
pub struct FileLoader {
    root: PathBuf,
    root_url: String,
}

impl FileLoader {
    /// A loader for URLs under `root_url` (a directory URL; a `/` is added if missing) from
    /// files under `root`.
    pub fn new(root: impl Into<PathBuf>, root_url: &str) -> Self {
        let mut root_url = root_url.to_owned();
        if !root_url.ends_with('/') {
            root_url.push('/');
        }
        FileLoader {
            root: root.into(),
            root_url,
        }
    }

    /// A loader for the page at `page_url`, read from the file `page_path`: the page's
    /// directory is the root, on disk and as a URL.
    pub fn for_page(page_path: &Path, page_url: &str) -> Self {
        let dir = page_path.parent().unwrap_or(Path::new("."));
        let url = strip_query(page_url);
        let base = match url.rfind('/') {
            Some(i) => &url[..=i],
            None => url,
        };
        FileLoader::new(dir, base)
    }

    /// The file a URL maps to, or why it does not.
    pub fn path_of(&self, url: &str) -> Result<PathBuf, LoadError> {
        let url = strip_query(url);
        let Some(rest) = url.strip_prefix(self.root_url.as_str()) else {
            return Err(LoadError::Unsupported);
        };
        let rest = percent_decode(rest.as_bytes()).ok_or(LoadError::Escapes)?;
        let rest = String::from_utf8(rest).map_err(|_| LoadError::NotFound)?;
        if rest.is_empty() || rest.contains(['\\', '\0']) {
            return Err(LoadError::Escapes);
        }
        let rel = Path::new(&rest);
        for c in rel.components() {
            match c {
                Component::Normal(_) => {}
                Component::CurDir => {}
                _ => return Err(LoadError::Escapes),
            }
        }
        Ok(self.root.join(rel))
    }
}

impl ResourceLoader for FileLoader {
    fn load(&mut self, url: &str, max_len: u64) -> Result<Loaded, LoadError> {
        let path = self.path_of(url)?;
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound,
            _ => LoadError::Io(e.to_string()),
        };
        // Symbolic links must not lead out of the root either.
        let root = self.root.canonicalize().map_err(io)?;
        let real = path.canonicalize().map_err(io)?;
        if !real.starts_with(&root) {
            return Err(LoadError::Escapes);
        }
        let meta = std::fs::metadata(&real).map_err(io)?;
        if !meta.is_file() {
            return Err(LoadError::NotFound);
        }
        if meta.len() > max_len {
            return Err(LoadError::TooLarge {
                len: meta.len(),
                max: max_len,
            });
        }
        let bytes = std::fs::read(&real).map_err(io)?;
        if bytes.len() as u64 > max_len {
            return Err(LoadError::TooLarge {
                len: bytes.len() as u64,
                max: max_len,
            });
        }
        Ok(Loaded {
            bytes,
            content_type: String::new(),
            cacheable: true,
        })
    }
}

fn strip_query(url: &str) -> &str {
    match url.find(['?', '#']) {
        Some(i) => &url[..i],
        None => url,
    }
}

/// Decodes `%XX` escapes; `None` when one is malformed.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            let v = (hex_val(h[0])? << 4) | hex_val(h[1])?;
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes a `data:` URL (RFC 2397): its MIME type (`text/plain;charset=US-ASCII` when
/// absent) and bytes, base64 or percent-encoded. `None` when it is not a `data:` URL or
/// does not decode.
pub fn decode_data_url(url: &str) -> Option<(String, Vec<u8>)> {
    let url = url.trim();
    let head = url.get(..5)?;
    if !head.eq_ignore_ascii_case("data:") {
        return None;
    }
    let rest = &url[5..];
    let comma = rest.find(',')?;
    let (meta, data) = (&rest[..comma], &rest[comma + 1..]);
    let mut params: Vec<&str> = meta.split(';').map(str::trim).collect();
    let base64 = params
        .last()
        .is_some_and(|p| p.eq_ignore_ascii_case("base64"));
    if base64 {
        params.pop();
    }
    let mime = params.first().copied().unwrap_or("");
    let ty = if mime.is_empty() {
        "text/plain;charset=US-ASCII".to_owned()
    } else {
        let mut t = mime.to_ascii_lowercase();
        for p in &params[1..] {
            t.push(';');
            t.push_str(p);
        }
        t
    };
    let bytes = percent_decode(data.as_bytes())?;
    let bytes = if base64 {
        base64_decode(&bytes)?
    } else {
        bytes
    };
    Some((ty, bytes))
}

/// Decodes standard base64 (RFC 4648 §4), ignoring ASCII whitespace; padding optional.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut pad = 0;
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => continue,
            _ => return None,
        };
        if pad > 0 {
            // Data after padding.
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros and fewer than a byte.
    if bits >= 6 || pad > 2 || acc != 0 {
        return None;
    }
    Some(out)
}

/// A MIME type guessed from a URL's file extension.
pub fn content_type_of(url: &str) -> &'static str {
    let path = strip_query(url);
    let ext = match path.rsplit_once('.') {
        Some((_, e)) if !e.contains('/') => e.to_ascii_lowercase(),
        _ => String::new(),
    };
    match ext.as_str() {
        "css" => "text/css",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "txt" => "text/plain",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

/// Resolves `reference` against the absolute URL `base` (RFC 3986 §5.2, enough of it for
/// the references of a page). `None` for an empty or fragment-only reference, or a relative
/// one against a base that has no hierarchical path.
pub fn resolve_url(base: &str, reference: &str) -> Option<String> {
    let r = reference.trim_matches(|c: char| c.is_ascii_whitespace());
    if r.is_empty() || r.starts_with('#') {
        return None;
    }
    if scheme_end(r).is_some() {
        return Some(r.to_owned());
    }
    let se = scheme_end(base)?;
    let scheme = &base[..se];
    let after = &base[se + 1..];
    let (authority, path_q) = match after.strip_prefix("//") {
        Some(a) => {
            let end = a.find(['/', '?', '#']).unwrap_or(a.len());
            (Some(&a[..end]), &a[end..])
        }
        None => (None, after),
    };
    let base_path = strip_query(path_q);
    if !base_path.starts_with('/') {
        return None;
    }
    let prefix = match authority {
        Some(a) => format!("{scheme}://{a}"),
        None => format!("{scheme}:"),
    };
    if let Some(net) = r.strip_prefix("//") {
        return Some(format!("{scheme}://{net}"));
    }
    if r.starts_with('?') {
        return Some(format!("{prefix}{base_path}{r}"));
    }
    let (rpath, tail) = match r.find(['?', '#']) {
        Some(i) => (&r[..i], &r[i..]),
        None => (r, ""),
    };
    let merged = if rpath.starts_with('/') {
        rpath.to_owned()
    } else {
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{rpath}")
    };
    Some(format!("{prefix}{}{tail}", remove_dots(&merged)))
}

fn scheme_end(s: &str) -> Option<usize> {
    let i = s.find(':')?;
    let b = s.as_bytes();
    (i > 0
        && b[0].is_ascii_alphabetic()
        && b[..i]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c)))
    .then_some(i)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let n = segs.len();
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "." => {
                if i == n - 1 {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == n - 1 {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

// ───────────────────────────── CSS ─────────────────────────────

/// What kind of reference a CSS `url()` or string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CssRef {
    /// `@import`: a stylesheet.
    Import,
    /// Any other `url()`: fonts, images.
    Url,
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c >= 0x80
}

/// The end (index of the closing quote) of a CSS string opened at `open`; `None` at a newline
/// or the end of the text.
fn css_string_end(b: &[u8], open: usize) -> Option<usize> {
    let q = b[open];
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            c if c == q => return Some(i),
            b'\\' => i += 2,
            b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

/// Rewrites the references of a stylesheet (or of a `style` attribute): every `url(...)`
/// and every `@import "..."` string; `f` gets the reference as written and returns its
/// replacement, or `None` to leave it. Comments and other strings are left alone.
fn rewrite_css(css: &str, mut f: impl FnMut(&str, CssRef) -> Option<String>) -> String {
    let b = css.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut import = false;
    let mut i = 0;
    let mut replace = |out: &mut String, last: &mut usize, s: usize, e: usize, kind| {
        let inner = &css[s..e];
        if inner.contains('\\') {
            return;
        }
        if let Some(new) = f(inner, kind) {
            out.push_str(&css[*last..s]);
            out.push_str(&new);
            *last = e;
        }
    };
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = match css[i + 2..].find("*/") {
                Some(e) => i + 2 + e + 2,
                None => b.len(),
            };
            continue;
        }
        if c == b'"' || c == b'\'' {
            let Some(end) = css_string_end(b, i) else {
                i += 1;
                continue;
            };
            if import {
                replace(&mut out, &mut last, i + 1, end, CssRef::Import);
            }
            i = end + 1;
            continue;
        }
        if c == b'@'
            && b.len() >= i + 7
            && b[i + 1..i + 7].eq_ignore_ascii_case(b"import")
            && b.get(i + 7).is_none_or(|&n| !is_ident(n))
        {
            import = true;
            i += 7;
            continue;
        }
        if matches!(c, b';' | b'{' | b'}') {
            import = false;
        }
        if (c == b'u' || c == b'U')
            && b.len() >= i + 4
            && b[i..i + 4].eq_ignore_ascii_case(b"url(")
            && (i == 0 || !is_ident(b[i - 1]))
        {
            let mut k = i + 4;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            let kind = if import { CssRef::Import } else { CssRef::Url };
            if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
                if let Some(end) = css_string_end(b, k) {
                    replace(&mut out, &mut last, k + 1, end, kind);
                    i = end + 1;
                } else {
                    i = k + 1;
                }
                continue;
            }
            let start = k;
            while k < b.len() && b[k] != b')' && !b[k].is_ascii_whitespace() {
                if matches!(b[k], b'"' | b'\'' | b'(') {
                    break;
                }
                k += 1;
            }
            let end = k;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if k < b.len() && b[k] == b')' && end > start {
                replace(&mut out, &mut last, start, end, kind);
                i = k + 1;
            } else {
                i = start;
            }
            continue;
        }
        i += 1;
    }
    if last == 0 {
        return css.to_owned();
    }
    out.push_str(&css[last..]);
    out
}

/// Rewrites each candidate URL of a `srcset` value (HTML's srcset parsing: a URL is a run of
/// non-whitespace; descriptors follow up to a comma).
fn rewrite_srcset(v: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let b = v.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut end = i;
        let mut descriptors = true;
        while end > start && b[end - 1] == b',' {
            end -= 1;
            descriptors = false;
        }
        if end > start
            && let Some(new) = f(&v[start..end])
        {
            out.push_str(&v[last..start]);
            out.push_str(&new);
            last = end;
        }
        if descriptors {
            let mut depth = 0i32;
            while i < b.len() {
                match b[i] {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    b',' if depth <= 0 => break,
                    _ => {}
                }
                i += 1;
            }
        }
    }
    if last == 0 {
        return v.to_owned();
    }
    out.push_str(&v[last..]);
    out
}

// ───────────────────────────── consumer: rewriting ─────────────────────────────

/// How a consumer turns references into addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceConfig {
    /// Texts of at least this many bytes become blobs (spec §14.3).
    pub text_threshold: usize,
    /// Largest blob the consumer makes; larger resources keep their reference.
    pub max_blob: u64,
    /// Bytes the consumer's store holds.
    pub store_bytes: u64,
    /// Whether blobs decoded from `data:` URLs may be cached by a relay.
    pub data_urls_cacheable: bool,
    /// Whether large `<style>` texts (style sheets written into the page, spec §14.3) may be
    /// cached by a relay; other large texts never are.
    pub style_texts_cacheable: bool,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            text_threshold: DEFAULT_TEXT_THRESHOLD,
            max_blob: ResourceLimits::DEFAULT.max_blob,
            store_bytes: DEFAULT_STORE_BYTES,
            data_urls_cacheable: true,
            style_texts_cacheable: true,
        }
    }
}

/// How a reference is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A stylesheet: its own references are rewritten before it is hashed.
    Sheet,
    /// Anything else, as it is.
    Plain,
}

/// What to do at one node of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Element,
    Text { style: bool },
}

/// The consumer's resources (spec §14.2–§14.3): rewrites the references of its masked tree
/// into addresses, keeps the blobs it made in a [`BlobStore`] and reports the addresses the
/// tree came to reference.
///
/// Given to [`Consumer::with_resources`](crate::Consumer::with_resources), it rewrites the
/// whole page before the first snapshot and every changed or inserted node before each patch
/// is built, so the tree, its hash and everything sent carry addresses. Loads are remembered
/// by URL for the consumer's life ([`Resources::forget_urls`] clears that).
pub struct Resources {
    loader: Box<dyn ResourceLoader + Send>,
    config: ResourceConfig,
    store: BlobStore,
    urls: HashMap<String, Option<Address>>,
    announced: HashSet<Address>,
    new_refs: Vec<Address>,
    errors: VecDeque<(String, LoadError)>,
}

/// What [`Resources::rewrite_text`] made of a page text.
enum Rewritten {
    /// The whole text is now this blob reference.
    Blob(String),
    /// The text with its references rewritten (a style sheet), or unchanged.
    Text(String),
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resources")
            .field("config", &self.config)
            .field("store", &self.store)
            .field("urls", &self.urls.len())
            .finish_non_exhaustive()
    }
}

/// Load errors kept for [`Resources::poll_load_error`].
const MAX_KEPT_ERRORS: usize = 64;

impl Resources {
    /// Resources loaded with `loader`, configured by `config`.
    pub fn new(loader: impl ResourceLoader + Send + 'static, config: ResourceConfig) -> Self {
        Resources {
            loader: Box::new(loader),
            store: BlobStore::new(config.store_bytes),
            config,
            urls: HashMap::new(),
            announced: HashSet::new(),
            new_refs: Vec::new(),
            errors: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ResourceConfig {
        &self.config
    }

    /// The blobs this consumer can serve.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The blobs, mutably (a [`BlobSource`] for [`ResourceSender`]).
    pub fn store_mut(&mut self) -> &mut BlobStore {
        &mut self.store
    }

    /// Addresses the tree (or a stylesheet in it) came to reference since the last call, each
    /// once per consumer, nested ones after the stylesheet that holds them: what a pushing
    /// [`ResourceSender::offer`] takes.
    pub fn take_new_references(&mut self) -> Vec<Address> {
        std::mem::take(&mut self.new_refs)
    }

    /// The next reference that could not be loaded, with why (the last 64 are kept).
    pub fn poll_load_error(&mut self) -> Option<(String, LoadError)> {
        self.errors.pop_front()
    }

    /// Forgets which URLs were loaded, so that the next reference to each loads it again.
    pub fn forget_urls(&mut self) {
        self.urls.clear();
    }

    /// Rewrites the whole tree (spec §14.2): every reference of a node the policy leaves
    /// visible, and large texts. `base_url` is the page's URL. The tree must be masked.
    pub fn rewrite_tree(&mut self, dom: &mut Dom, policy: &MaskPolicy, base_url: &str) {
        let mut jobs = Vec::new();
        plan(dom, policy, DOCUMENT_ID, true, &|_| false, &mut jobs);
        self.run(dom, &jobs, base_url);
    }

    /// Rewrites what changed since `shadow` (the tree the agent holds): `touched` nodes
    /// (attributes or text set) and every node under `parents` that `shadow` does not hold.
    pub fn rewrite_changes(
        &mut self,
        dom: &mut Dom,
        shadow: &Dom,
        policy: &MaskPolicy,
        base_url: &str,
        touched: &HashSet<NodeId>,
        parents: &HashSet<NodeId>,
    ) {
        let mut jobs = Vec::new();
        let mut ps: Vec<NodeId> = parents.iter().copied().collect();
        ps.sort_unstable();
        let mut seen = HashSet::new();
        for p in ps {
            for &c in dom.children(p) {
                if !shadow.contains(c) && seen.insert(c) {
                    plan(dom, policy, c, true, &|n| shadow.contains(n), &mut jobs);
                }
            }
        }
        let mut ts: Vec<NodeId> = touched.iter().copied().collect();
        ts.sort_unstable();
        for t in ts {
            if shadow.contains(t) && dom.contains(t) {
                plan(dom, policy, t, false, &|_| false, &mut jobs);
            }
        }
        self.run(dom, &jobs, base_url);
    }

    fn run(&mut self, dom: &mut Dom, jobs: &[(NodeId, Job)], base_url: &str) {
        for &(n, job) in jobs {
            match job {
                Job::Element => {
                    let Some(el) = dom.node(n).and_then(|x| x.element()) else {
                        continue;
                    };
                    let el = el.clone();
                    for (k, v) in &el.attrs {
                        if let Some(new) = self.rewrite_attr(&el, k, v, base_url)
                            && new != *v
                        {
                            let _ = dom.set_attr(n, k, &new);
                        }
                    }
                }
                Job::Text { style } => {
                    // A reference this consumer wrote already; the page's own text is always
                    // looked at, even when it is exactly the URI of one of our blobs.
                    if dom.is_blob_reference(n) {
                        continue;
                    }
                    let Some(t) = dom.text(n) else { continue };
                    match self.rewrite_text(t, style, base_url) {
                        Some(Rewritten::Blob(uri)) => {
                            let _ = dom.set_blob_reference(n, &uri);
                        }
                        Some(Rewritten::Text(new)) if new != t => {
                            let _ = dom.set_text(n, &new);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// The new value of attribute `k` of `el`, when it holds references.
    fn rewrite_attr(
        &mut self,
        el: &crate::dom::Element,
        k: &str,
        v: &str,
        base: &str,
    ) -> Option<String> {
        let name = &*el.name;
        let lk = k.to_ascii_lowercase();
        if lk == "style" {
            return Some(self.rewrite_css_text(v, base, 0, &mut Vec::new()));
        }
        if el.ns == Ns::Svg {
            return (name == "image" && (lk == "href" || lk == "xlink:href"))
                .then(|| self.reference(v, base, Kind::Plain, 0, &mut Vec::new()));
        }
        if el.ns != Ns::Html {
            return None;
        }
        let kind = match (name, lk.as_str()) {
            ("img", "src") | ("video", "poster") => Kind::Plain,
            ("input", "src")
                if el
                    .attr("type")
                    .is_some_and(|t| t.eq_ignore_ascii_case("image")) =>
            {
                Kind::Plain
            }
            ("img" | "source", "srcset") | ("link", "imagesrcset") => {
                return Some(rewrite_srcset(v, |u| {
                    Some(self.reference(u, base, Kind::Plain, 0, &mut Vec::new()))
                }));
            }
            ("body" | "table" | "td" | "th", "background") => Kind::Plain,
            ("link", "href") => link_kind(el)?,
            _ => return None,
        };
        Some(self.reference(v, base, kind, 0, &mut Vec::new()))
    }

    /// A page text's new form: a stylesheet's references rewritten; then the whole text as a
    /// blob reference when it is large, or when it already looks like one (spec §14.3).
    fn rewrite_text(&mut self, t: &str, style: bool, base: &str) -> Option<Rewritten> {
        let uri = Address::from_uri(t);
        if !style && uri.is_none() && t.len() < self.config.text_threshold {
            return None;
        }
        let text = if style {
            self.rewrite_css_text(t, base, 0, &mut Vec::new())
        } else {
            t.to_owned()
        };
        let looks_like_uri = Address::from_uri(&text).is_some();
        if (text.len() >= self.config.text_threshold || looks_like_uri)
            && (text.len() as u64) <= self.config.max_blob
        {
            let ty = if style {
                "text/css"
            } else {
                "text/plain;charset=utf-8"
            };
            // A page's own text is never cacheable; a style sheet written into the page is a
            // public asset unless configured otherwise (spec §14.7).
            let cacheable = style && self.config.style_texts_cacheable;
            let blob = Blob::new(text.into_bytes(), ty, cacheable);
            let a = self.keep(blob)?;
            return Some(Rewritten::Blob(a.to_uri()));
        }
        Some(Rewritten::Text(text))
    }

    fn rewrite_css_text(
        &mut self,
        css: &str,
        base: &str,
        depth: u32,
        stack: &mut Vec<String>,
    ) -> String {
        rewrite_css(css, |u, r| {
            let kind = match r {
                CssRef::Import => Kind::Sheet,
                CssRef::Url => Kind::Plain,
            };
            let new = self.reference(u, base, kind, depth, stack);
            (new != u).then_some(new)
        })
    }

    /// The replacement of reference `r` (as written) found in a document or stylesheet at
    /// `base`: its URI, or `r` itself when it cannot be loaded.
    fn reference(
        &mut self,
        r: &str,
        base: &str,
        kind: Kind,
        depth: u32,
        stack: &mut Vec<String>,
    ) -> String {
        if Address::from_uri(r.trim()).is_some() {
            return r.to_owned();
        }
        let Some(url) = resolve_url(base, r) else {
            return r.to_owned();
        };
        if let Some(known) = self.urls.get(&url).copied() {
            return match known {
                Some(a) if self.store.contains(&a) => a.to_uri(),
                // Evicted since: load again below.
                Some(_) => self.load_uncached(&url, kind, depth, stack, r),
                None => r.to_owned(),
            };
        }
        self.load_uncached(&url, kind, depth, stack, r)
    }

    fn load_uncached(
        &mut self,
        url: &str,
        kind: Kind,
        depth: u32,
        stack: &mut Vec<String>,
        r: &str,
    ) -> String {
        if stack.iter().any(|s| s == url) || depth >= MAX_IMPORT_DEPTH {
            // A cycle of imports, or too deep: leave it.
            return r.to_owned();
        }
        let max = self.config.max_blob;
        let loaded = if url
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case("data:"))
        {
            match decode_data_url(url) {
                Some((ty, bytes)) if bytes.len() as u64 <= max => Ok(Loaded {
                    bytes,
                    content_type: ty,
                    cacheable: self.config.data_urls_cacheable,
                }),
                Some((_, bytes)) => Err(LoadError::TooLarge {
                    len: bytes.len() as u64,
                    max,
                }),
                None => Err(LoadError::BadDataUrl),
            }
        } else if url
            .get(..URI_PREFIX.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(URI_PREFIX))
        {
            Err(LoadError::Unsupported)
        } else {
            self.loader.load(url, max)
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                if e != LoadError::Unsupported {
                    if self.errors.len() >= MAX_KEPT_ERRORS {
                        self.errors.pop_front();
                    }
                    let label = if url.starts_with("data:") {
                        "data:…".to_owned()
                    } else {
                        url.to_owned()
                    };
                    self.errors.push_back((label, e));
                }
                self.urls.insert(url.to_owned(), None);
                return r.to_owned();
            }
        };
        let Loaded {
            bytes,
            content_type,
            cacheable,
        } = loaded;
        let (bytes, ty) = match kind {
            Kind::Sheet => {
                let bytes = match String::from_utf8(bytes) {
                    Ok(css) => {
                        stack.push(url.to_owned());
                        let css = self.rewrite_css_text(&css, url, depth + 1, stack);
                        stack.pop();
                        css.into_bytes()
                    }
                    // Not UTF-8: sent as it is.
                    Err(e) => e.into_bytes(),
                };
                (bytes, "text/css".to_owned())
            }
            Kind::Plain => {
                let ty = if content_type.is_empty() {
                    content_type_of(url).to_owned()
                } else {
                    content_type
                };
                (bytes, ty)
            }
        };
        if bytes.len() as u64 > max {
            self.urls.insert(url.to_owned(), None);
            return r.to_owned();
        }
        match self.keep(Blob::new(bytes, &ty, cacheable)) {
            Some(a) => {
                self.urls.insert(url.to_owned(), Some(a));
                a.to_uri()
            }
            None => r.to_owned(),
        }
    }

    /// Stores a blob the tree will reference and notes it as a new reference.
    fn keep(&mut self, blob: Blob) -> Option<Address> {
        let a = self.store.insert(blob).ok()?;
        if self.announced.insert(a) {
            self.new_refs.push(a);
        }
        Some(a)
    }
}

impl BlobSource for Resources {
    fn blob(&mut self, address: &Address) -> Option<Blob> {
        self.store.get(address)
    }
}

/// How a `<link>` is loaded, from its `rel` and `as`; `None` for links that are not resources.
fn link_kind(el: &crate::dom::Element) -> Option<Kind> {
    let rel = el.attr("rel")?.to_ascii_lowercase();
    let has = |t: &str| rel.split_ascii_whitespace().any(|x| x == t);
    if has("stylesheet") {
        return Some(Kind::Sheet);
    }
    if has("icon") || has("apple-touch-icon") {
        return Some(Kind::Plain);
    }
    if has("preload") {
        return match el.attr("as").map(str::to_ascii_lowercase).as_deref() {
            Some("style") => Some(Kind::Sheet),
            Some("font" | "image") => Some(Kind::Plain),
            _ => None,
        };
    }
    None
}

/// Appends the jobs for `root` (its subtree when `descend`, skipping nodes `skip` names):
/// elements and texts the policy leaves visible (spec §14.6). Masked, blocked and
/// placeholder content gets no job, so nothing it references is loaded.
fn plan(
    dom: &Dom,
    policy: &MaskPolicy,
    root: NodeId,
    descend: bool,
    skip: &dyn Fn(NodeId) -> bool,
    out: &mut Vec<(NodeId, Job)>,
) {
    let Some(node) = dom.node(root) else { return };
    let parent = dom.parent(root).unwrap_or(DOCUMENT_ID);
    let (base_chain, base_ctx) = if root == DOCUMENT_ID {
        (Vec::new(), policy.root_ctx())
    } else {
        policy.context(dom, parent)
    };
    let parent_is_style = dom
        .node(parent)
        .and_then(|p| p.element())
        .is_some_and(|e| e.ns == Ns::Html && e.name == "style");
    if !descend {
        match &node.kind {
            NodeKind::Element(el) => {
                if base_ctx.blocked {
                    return;
                }
                let m = policy.marks(el, &base_chain);
                let c = policy.inner(base_ctx, el, &m);
                if !(m.block || c.masked || c.blocked || el.attr(crate::mask::BLOCKED).is_some()) {
                    out.push((root, Job::Element));
                }
            }
            NodeKind::Text(_) if !base_ctx.masked && !base_ctx.blocked => {
                out.push((
                    root,
                    Job::Text {
                        style: parent_is_style,
                    },
                ));
            }
            _ => {}
        }
        return;
    }
    let mut chain = base_chain;
    let base_len = chain.len();
    let mut ctxs = vec![base_ctx];
    let roots: Vec<NodeId> = if root == DOCUMENT_ID {
        dom.children(DOCUMENT_ID).to_vec()
    } else {
        vec![root]
    };
    let mut stack: Vec<(NodeId, usize, bool)> = roots
        .iter()
        .rev()
        .map(|&r| (r, 0, parent_is_style))
        .collect();
    while let Some((n, d, in_style)) = stack.pop() {
        chain.truncate(base_len + d);
        ctxs.truncate(d + 1);
        let ctx = ctxs[d];
        let Some(node) = dom.node(n) else { continue };
        match &node.kind {
            NodeKind::Element(el) => {
                let m = policy.marks(el, &chain);
                if m.block || ctx.blocked || el.attr(crate::mask::BLOCKED).is_some() {
                    continue;
                }
                let c = policy.inner(ctx, el, &m);
                if c.masked {
                    // Nothing inside a masked element becomes a blob.
                    continue;
                }
                if !skip(n) {
                    out.push((n, Job::Element));
                }
                chain.push(el);
                ctxs.push(c);
                let style = el.ns == Ns::Html && el.name == "style";
                for &k in node.children().iter().rev() {
                    stack.push((k, d + 1, style));
                }
            }
            NodeKind::Text(_) if !ctx.masked && !skip(n) => {
                out.push((n, Job::Text { style: in_style }));
            }
            _ => {}
        }
    }
}

// ───────────────────────────── limits ─────────────────────────────

/// The resource limits a receiver enforces (spec §8, §14.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Largest `total_len` a receiver accepts.
    pub max_blob: u64,
    /// Most bytes announced by blobs being assembled at once.
    pub max_in_flight: u64,
    /// Most blobs being assembled at once.
    pub max_streams: usize,
    /// Longest `content_type`.
    pub max_content_type: usize,
}

impl ResourceLimits {
    /// The defaults of spec §8.
    pub const DEFAULT: ResourceLimits = ResourceLimits {
        max_blob: 16 * 1024 * 1024,
        max_in_flight: 64 * 1024 * 1024,
        max_streams: 256,
        max_content_type: 255,
    };
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

// ───────────────────────────── sender ─────────────────────────────

/// Whether a sender sends blobs before they are wanted (spec §14.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SendMode {
    /// Only answer `WANT` (the reference default: a relay's cache can then answer for the
    /// consumer, and nothing the agent holds is ever sent).
    #[default]
    Pull,
    /// Also send referenced blobs the receiver has not listed in `HAVE` as soon as they are
    /// offered (saves a round trip where no caching relay is in the path).
    Push,
}

/// One `RESOURCE` piece to write, and on which of the sender's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The sender's number for the blob's stream (one per blob sent, from 0); the transport
    /// opens a unidirectional stream the first time it sees a number.
    pub stream: u64,
    /// The piece.
    pub piece: Resource,
    /// This piece is the blob's last: finish the stream after it.
    pub fin: bool,
}

#[derive(Debug)]
struct Outgoing {
    blob: Blob,
    offset: u64,
    stream: Option<u64>,
}

/// The sending side of resources (consumer, or relay from its cache), sans I/O.
///
/// Order of calls: feed `HAVE` to [`ResourceSender::handle_have`] and `WANT` to
/// [`ResourceSender::handle_want`] as they arrive; in [`SendMode::Push`], pass the addresses
/// a snapshot or patch made referenced to [`ResourceSender::offer`]. Then drain
/// [`ResourceSender::poll_reset`] (streams to reset) and [`ResourceSender::poll_transmit`]
/// (pieces to write) while the link has room; resource streams go at lower priority than
/// the DOM stream (spec §14.5).
///
/// Stylesheets go first, then fonts, other texts, images and the rest, each class small
/// before large; a newly queued blob of a better class overtakes one half sent. A blob is
/// pushed at most once per session and re-sent on `WANT` at most `max_resends` times (a
/// receiver asks again after a corrupted copy).
#[derive(Debug)]
pub struct ResourceSender {
    mode: SendMode,
    piece_bytes: usize,
    max_resends: u8,
    have: HashSet<Address>,
    sent: HashMap<Address, u8>,
    queue: BTreeMap<(u8, u64, u64), Outgoing>,
    queued: HashMap<Address, (u8, u64, u64)>,
    resets: VecDeque<u64>,
    next_stream: u64,
    seq: u64,
    bytes_sent: u64,
}

impl ResourceSender {
    /// A sender in `mode` with pieces of [`DEFAULT_PIECE_BYTES`] and one resend.
    pub fn new(mode: SendMode) -> Self {
        ResourceSender {
            mode,
            piece_bytes: DEFAULT_PIECE_BYTES,
            max_resends: 1,
            have: HashSet::new(),
            sent: HashMap::new(),
            queue: BTreeMap::new(),
            queued: HashMap::new(),
            resets: VecDeque::new(),
            next_stream: 0,
            seq: 0,
            bytes_sent: 0,
        }
    }

    /// Whether this sender pushes blobs or only answers `WANT`.
    pub fn mode(&self) -> SendMode {
        self.mode
    }

    /// Sets the data bytes per piece (at least 1).
    pub fn set_piece_bytes(&mut self, n: usize) {
        self.piece_bytes = n.max(1);
    }

    /// Sets how often a blob is sent again when wanted again.
    pub fn set_max_resends(&mut self, n: u8) {
        self.max_resends = n;
    }

    /// Data bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Whether nothing is queued.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.resets.is_empty()
    }

    /// Whether the receiver said it holds `a`.
    pub fn receiver_has(&self, a: &Address) -> bool {
        self.have.contains(a)
    }

    /// The receiver holds these (`HAVE`, spec §7.18): never push them; cancel their sends.
    pub fn handle_have(&mut self, have: &Addresses) {
        for &a in &have.addresses {
            let a = Address(a);
            self.have.insert(a);
            self.cancel(&a);
        }
    }

    /// The receiver asks for these (`WANT`, spec §7.19): queue each one `source` holds.
    pub fn handle_want(&mut self, want: &Addresses, source: &mut dyn BlobSource) {
        for &a in &want.addresses {
            let a = Address(a);
            // It asks, so it does not hold it (any more).
            self.have.remove(&a);
            if self.queued.contains_key(&a) {
                continue;
            }
            let times = self.sent.get(&a).copied().unwrap_or(0);
            if times > self.max_resends {
                continue;
            }
            if let Some(b) = source.blob(&a) {
                self.enqueue(b);
            }
        }
    }

    /// Addresses a snapshot or patch made referenced; in [`SendMode::Push`], queues those
    /// the receiver does not hold and that were never sent. In [`SendMode::Pull`], nothing.
    pub fn offer(&mut self, addresses: &[Address], source: &mut dyn BlobSource) {
        if self.mode != SendMode::Push {
            return;
        }
        for a in addresses {
            if self.have.contains(a) || self.sent.contains_key(a) || self.queued.contains_key(a) {
                continue;
            }
            if let Some(b) = source.blob(a) {
                self.enqueue(b);
            }
        }
    }

    /// Queues `blob` unless it is queued already (a relay answering from its cache).
    pub fn queue_blob(&mut self, blob: Blob) {
        if !self.queued.contains_key(&blob.address()) {
            self.enqueue(blob);
        }
    }

    fn enqueue(&mut self, blob: Blob) {
        let a = blob.address();
        *self.sent.entry(a).or_insert(0) += 1;
        self.seq += 1;
        let key = (class_of(blob.content_type()), blob.len(), self.seq);
        self.queued.insert(a, key);
        self.queue.insert(
            key,
            Outgoing {
                blob,
                offset: 0,
                stream: None,
            },
        );
    }

    /// Stops sending `a`; a stream already opened for it is to be reset
    /// ([`ResourceSender::poll_reset`]).
    pub fn cancel(&mut self, a: &Address) {
        if let Some(key) = self.queued.remove(a)
            && let Some(o) = self.queue.remove(&key)
            && let Some(s) = o.stream
        {
            self.resets.push_back(s);
        }
    }

    /// The receiver stopped stream `stream` (`STOP_SENDING`): drop its blob.
    pub fn handle_stop(&mut self, stream: u64) {
        let found = self
            .queue
            .iter()
            .find(|(_, o)| o.stream == Some(stream))
            .map(|(k, o)| (*k, o.blob.address()));
        if let Some((k, a)) = found {
            self.queue.remove(&k);
            self.queued.remove(&a);
        }
    }

    /// The next stream to reset (`RESET_STREAM`): a cancelled blob's.
    pub fn poll_reset(&mut self) -> Option<u64> {
        self.resets.pop_front()
    }

    /// The next piece to write: from the best blob queued (spec §14.5).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let mut entry = self.queue.first_entry()?;
        let o = entry.get_mut();
        let stream = *o.stream.get_or_insert_with(|| {
            let s = self.next_stream;
            self.next_stream += 1;
            s
        });
        let first = o.offset == 0;
        let (coding, payload) = match o.blob.coded() {
            Some(coded) => (Coding::Zstd, coded),
            None => (Coding::Identity, o.blob.bytes()),
        };
        let start = o.offset as usize;
        let end = (start + self.piece_bytes).min(payload.len());
        let piece = Resource {
            address: o.blob.address().0,
            total_len: o.blob.len(),
            offset: o.offset,
            content_type: if first {
                o.blob.content_type().to_owned()
            } else {
                String::new()
            },
            cacheable: o.blob.cacheable(),
            coding,
            data: payload[start..end].to_vec(),
        };
        o.offset = end as u64;
        self.bytes_sent += (end - start) as u64;
        let fin = end == payload.len();
        if fin {
            let o = entry.remove();
            self.queued.remove(&o.blob.address());
        }
        Some(Transmit { stream, piece, fin })
    }
}

/// Sending order of a content type: stylesheets, fonts, other texts, images, the rest.
fn class_of(ty: &str) -> u8 {
    let t = ty.to_ascii_lowercase();
    if t.starts_with("text/css") {
        0
    } else if t.starts_with("font/") || t.contains("font") {
        1
    } else if t.starts_with("text/") {
        2
    } else if t.starts_with("image/") {
        3
    } else {
        4
    }
}

// ───────────────────────────── receiver ─────────────────────────────

/// Why a receiver refused a `RESOURCE` piece or a blob (spec §14.8). The stream is
/// forgotten and queued for `STOP_SENDING` ([`ResourceReceiver::poll_stop`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// `total_len` is above `max_blob`: refused before any byte is kept.
    #[error("resource.total_len: {total_len} bytes, more than {limit}")]
    TooLarge {
        /// The blob.
        address: Address,
        /// Its announced length.
        total_len: u64,
        /// The limit.
        limit: u64,
    },
    /// The blobs being assembled would announce more than `max_in_flight` bytes, or more
    /// than `max_streams` blobs.
    #[error("resource: in-flight budget exceeded ({field})")]
    Budget {
        /// Which budget: `resource.in_flight_bytes` or `resource.streams`.
        field: &'static str,
    },
    /// A piece does not start where the previous one ended (the first at 0).
    #[error("resource.offset: {offset}, expected {expected}")]
    OutOfOrder {
        /// Where the piece should start.
        expected: u64,
        /// Where it starts.
        offset: u64,
    },
    /// A later piece disagrees with the first (`address`, `total_len`, `cacheable`,
    /// `content_type`), or runs past `total_len`.
    #[error("{field}: disagrees with the blob's first piece")]
    Inconsistent {
        /// The field.
        field: &'static str,
    },
    /// The `content_type` is longer than allowed.
    #[error("resource.content_type: {len} bytes, more than {limit}")]
    ContentType {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The pieces name a coding this version does not define (spec §7.20).
    #[error("resource.coding: unknown coding {coding}")]
    UnknownCoding {
        /// The coding's wire value.
        coding: u32,
    },
    /// A coded blob's pieces do not decode to exactly `total_len` bytes (spec §7.20).
    #[error("resource.data: {0}")]
    Coding(#[from] BlobCodingError),
    /// The blob's bytes do not hash to its address: discarded, never used.
    #[error("blob {address} hashes to {actual}")]
    Mismatch {
        /// The announced address.
        address: Address,
        /// What the bytes hash to.
        actual: Address,
    },
}

/// What happened on the receiving side, drained with [`ResourceReceiver::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResourceEvent {
    /// A blob arrived whole, matched its address and is in the store.
    Complete {
        /// Its address.
        address: Address,
        /// Its length.
        len: u64,
    },
    /// A blob was discarded: its bytes did not match its address. `asked_again` says whether
    /// it is wanted again (once per address); the `WANT` is queued when the stream that
    /// brought the copy ends ([`ResourceReceiver::handle_stream_end`]).
    Corrupt {
        /// The address.
        address: Address,
        /// Whether it is wanted again.
        asked_again: bool,
    },
    /// A blob's stream ended or was reset before the blob was whole.
    Incomplete {
        /// The address.
        address: Address,
    },
}

#[derive(Debug)]
struct Partial {
    address: Address,
    total_len: u64,
    cacheable: bool,
    content_type: String,
    /// Bytes of the pieces so far (coded bytes under [`Coding::Zstd`]).
    received: u64,
    body: Body,
}

/// A blob being assembled: its bytes as they come, or the decoder of its coded pieces.
#[derive(Debug)]
enum Body {
    Identity(Vec<u8>),
    Zstd(BlobDecoder),
}

impl Body {
    /// A body for a blob of `total_len` bytes (checked against the limits: this allocates it).
    fn new(coding: Coding, total_len: u64) -> Result<Self, ResourceError> {
        match coding {
            Coding::Identity => {
                let mut data = Vec::new();
                data.reserve_exact(total_len as usize);
                Ok(Body::Identity(data))
            }
            Coding::Zstd => Ok(Body::Zstd(BlobDecoder::new(total_len as usize)?)),
            other => Err(ResourceError::UnknownCoding {
                coding: u32::from(other),
            }),
        }
    }

    /// The coding the blob's pieces use.
    fn coding(&self) -> Coding {
        match self {
            Body::Identity(_) => Coding::Identity,
            Body::Zstd(_) => Coding::Zstd,
        }
    }

    fn push(&mut self, data: &[u8]) -> Result<(), ResourceError> {
        match self {
            Body::Identity(v) => v.extend_from_slice(data),
            Body::Zstd(d) => d.push(data)?,
        }
        Ok(())
    }

    /// Whether the blob is whole, `end` being where the last piece ended.
    fn is_whole(&self, end: u64, total_len: u64) -> bool {
        match self {
            Body::Identity(_) => end == total_len,
            Body::Zstd(d) => d.is_done(),
        }
    }

    fn into_bytes(self) -> Result<Vec<u8>, ResourceError> {
        match self {
            Body::Identity(v) => Ok(v),
            Body::Zstd(d) => Ok(d.finish()?),
        }
    }
}

/// The receiving side of resources (agent, or relay for its cache), sans I/O: assembles the
/// pieces of each resource stream within [`ResourceLimits`], verifies every blob against its
/// address before it enters the store, and says which addresses to `WANT`.
///
/// Order of calls: feed each `RESOURCE` piece with its stream to
/// [`ResourceReceiver::handle_piece`], and the end or reset of a stream to
/// [`ResourceReceiver::handle_stream_end`]; after each snapshot or patch the agent applied,
/// call [`ResourceReceiver::scan_dom`]. Then drain [`ResourceReceiver::poll_want`] (send as
/// `WANT`), [`ResourceReceiver::poll_want_again`] (send as `WANT_AGAIN`),
/// [`ResourceReceiver::poll_stop`] (streams to stop) and
/// [`ResourceReceiver::poll_event`]. [`ResourceReceiver::have`] is the `HAVE` to send at the
/// start of a session.
#[derive(Debug)]
pub struct ResourceReceiver {
    limits: ResourceLimits,
    store: BlobStore,
    partial: HashMap<u64, Partial>,
    dead: HashSet<u64>,
    in_flight: u64,
    wanted: HashSet<Address>,
    retried: HashSet<Address>,
    /// Addresses to ask for again once the stream that brought a corrupted copy ends.
    retry_at_end: HashMap<u64, Address>,
    want_queue: Vec<Address>,
    /// Addresses whose corrupted copy's stream has ended: the next `WANT_AGAIN`.
    again_queue: Vec<Address>,
    stops: VecDeque<u64>,
    events: VecDeque<ResourceEvent>,
    max_list: usize,
}

impl ResourceReceiver {
    /// A receiver that keeps blobs in `store` (an agent's cache may outlive a session).
    pub fn new(store: BlobStore, limits: ResourceLimits) -> Self {
        ResourceReceiver {
            limits,
            store,
            partial: HashMap::new(),
            dead: HashSet::new(),
            in_flight: 0,
            wanted: HashSet::new(),
            retried: HashSet::new(),
            retry_at_end: HashMap::new(),
            want_queue: Vec::new(),
            again_queue: Vec::new(),
            stops: VecDeque::new(),
            events: VecDeque::new(),
            max_list: tandem_protocol::Limits::DEFAULT.max_list as usize,
        }
    }

    /// The blobs held.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// The blobs held, mutably.
    pub fn store_mut(&mut self) -> &mut BlobStore {
        &mut self.store
    }

    /// The store, for the next session.
    pub fn into_store(self) -> BlobStore {
        self.store
    }

    /// Bytes announced by blobs being assembled.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The `HAVE` to send (spec §7.18): the addresses held, most recently used first, at most
    /// `max_list`.
    pub fn have(&self) -> Addresses {
        Addresses {
            addresses: self
                .store
                .addresses()
                .take(self.max_list)
                .map(|a| a.0)
                .collect(),
        }
    }

    /// Notes every address `dom` refers to (attributes, large texts, and stylesheets held
    /// that it refers to, transitively); queues a `WANT` for those not held and not asked for.
    pub fn scan_dom(&mut self, dom: &Dom) {
        let mut refs = Vec::new();
        for id in dom.preorder(DOCUMENT_ID) {
            match dom.node(id).map(|n| &n.kind) {
                Some(NodeKind::Element(e)) => {
                    for (_, v) in &e.attrs {
                        refs.extend(uris_in(v).map(|(_, a)| a));
                    }
                }
                Some(NodeKind::Text(t)) => {
                    if let Some(a) = Address::from_uri(t) {
                        refs.push(a);
                    } else if dom
                        .parent(id)
                        .and_then(|p| dom.node(p))
                        .and_then(|p| p.element())
                        .is_some_and(|e| e.ns == Ns::Html && e.name == "style")
                    {
                        refs.extend(uris_in(t).map(|(_, a)| a));
                    }
                }
                _ => {}
            }
        }
        self.need(refs);
    }

    /// Queues `WANT`s for `refs` and what held blobs among them refer to.
    fn need(&mut self, refs: Vec<Address>) {
        let mut seen = HashSet::new();
        let mut todo = refs;
        while let Some(a) = todo.pop() {
            if !seen.insert(a) {
                continue;
            }
            if let Some(b) = self.store.peek(&a) {
                todo.extend(nested(b));
            } else if !self.wanted.contains(&a) && !self.assembling(&a) {
                self.wanted.insert(a);
                self.want_queue.push(a);
            }
        }
    }

    fn assembling(&self, a: &Address) -> bool {
        self.partial.values().any(|p| p.address == *a)
    }

    /// The connection under the resource streams was replaced (spec §3.5): blobs being
    /// assembled are dropped with their streams (stream numbers start again on the new
    /// connection), and every blob asked for and not received is asked for again.
    pub fn reconnected(&mut self) {
        self.partial.clear();
        self.in_flight = 0;
        self.dead.clear();
        self.stops.clear();
        // Their streams are gone with the connection, and so is every copy on its way: a
        // plain WANT of what is in `wanted` reaches a sender that has sent nothing on the new
        // connection.
        self.retry_at_end.clear();
        self.again_queue.clear();
        let mut again: Vec<Address> = self.wanted.iter().copied().collect();
        again.sort_unstable_by_key(|a| a.0);
        self.want_queue = again;
    }

    /// Addresses asked for and not yet received.
    pub fn wanted(&self) -> impl Iterator<Item = &Address> {
        self.wanted.iter()
    }

    /// The next `WANT` to send (at most `max_list` addresses).
    pub fn poll_want(&mut self) -> Option<Addresses> {
        take_list(&mut self.want_queue, self.max_list)
    }

    /// The next `WANT_AGAIN` to send (at most `max_list` addresses): blobs whose copy did not
    /// match its address, asked for once more after the stream that brought it ended (spec
    /// §7.37). Unlike a `WANT`, a sender answers it even while it still counts a copy of the
    /// blob as on its way.
    pub fn poll_want_again(&mut self) -> Option<Addresses> {
        take_list(&mut self.again_queue, self.max_list)
    }

    /// The next stream to stop (`STOP_SENDING`): refused, or a blob held already.
    pub fn poll_stop(&mut self) -> Option<u64> {
        self.stops.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ResourceEvent> {
        self.events.pop_front()
    }

    fn kill(&mut self, stream: u64) {
        if let Some(p) = self.partial.remove(&stream) {
            self.in_flight -= p.total_len;
        }
        if self.dead.len() >= self.limits.max_streams.saturating_mul(4) {
            self.dead.clear();
        }
        self.dead.insert(stream);
        self.stops.push_back(stream);
    }

    /// Handles one `RESOURCE` piece read from resource stream `stream` (spec §7.20, §14.8).
    /// On an error the stream is forgotten and queued to stop; later pieces of it are
    /// ignored.
    pub fn handle_piece(&mut self, stream: u64, piece: &Resource) -> Result<(), ResourceError> {
        if self.dead.contains(&stream) {
            return Ok(());
        }
        let r = self.accept(stream, piece);
        if r.is_err() {
            self.kill(stream);
        }
        r
    }

    fn accept(&mut self, stream: u64, piece: &Resource) -> Result<(), ResourceError> {
        let address = Address(piece.address);
        let end = piece
            .offset
            .checked_add(piece.data.len() as u64)
            .filter(|&e| e <= piece.total_len)
            .ok_or(ResourceError::Inconsistent {
                field: "resource.data",
            })?;
        if let Some(p) = self.partial.get_mut(&stream) {
            let field = if p.address != address {
                Some("resource.address")
            } else if p.total_len != piece.total_len {
                Some("resource.total_len")
            } else if p.cacheable != piece.cacheable {
                Some("resource.cacheable")
            } else if p.body.coding() != piece.coding {
                Some("resource.coding")
            } else if !piece.content_type.is_empty() {
                Some("resource.content_type")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(ResourceError::Inconsistent { field });
            }
            if piece.offset != p.received {
                return Err(ResourceError::OutOfOrder {
                    expected: p.received,
                    offset: piece.offset,
                });
            }
            p.body.push(&piece.data)?;
            p.received = end;
        } else {
            if piece.offset != 0 {
                return Err(ResourceError::OutOfOrder {
                    expected: 0,
                    offset: piece.offset,
                });
            }
            if piece.content_type.len() > self.limits.max_content_type {
                return Err(ResourceError::ContentType {
                    len: piece.content_type.len(),
                    limit: self.limits.max_content_type,
                });
            }
            if piece.total_len > self.limits.max_blob {
                return Err(ResourceError::TooLarge {
                    address,
                    total_len: piece.total_len,
                    limit: self.limits.max_blob,
                });
            }
            if self.store.contains(&address) || self.assembling(&address) {
                // Held or on its way already: not an error, just not needed.
                self.kill(stream);
                return Ok(());
            }
            if self.partial.len() >= self.limits.max_streams {
                return Err(ResourceError::Budget {
                    field: "resource.streams",
                });
            }
            if self.in_flight + piece.total_len > self.limits.max_in_flight {
                return Err(ResourceError::Budget {
                    field: "resource.in_flight_bytes",
                });
            }
            // Exactly the announced size, which the limits above allow.
            let mut body = Body::new(piece.coding, piece.total_len)?;
            body.push(&piece.data)?;
            self.in_flight += piece.total_len;
            self.partial.insert(
                stream,
                Partial {
                    address,
                    total_len: piece.total_len,
                    cacheable: piece.cacheable,
                    content_type: piece.content_type.clone(),
                    received: end,
                    body,
                },
            );
        }
        let whole = self
            .partial
            .get(&stream)
            .is_some_and(|p| p.body.is_whole(end, p.total_len));
        if whole {
            self.finish(stream)?;
        }
        Ok(())
    }

    fn finish(&mut self, stream: u64) -> Result<(), ResourceError> {
        let Some(p) = self.partial.remove(&stream) else {
            return Ok(());
        };
        self.in_flight -= p.total_len;
        let blob = Blob::new(p.body.into_bytes()?, &p.content_type, p.cacheable);
        if blob.address() != p.address {
            self.wanted.remove(&p.address);
            let asked_again = self.retried.insert(p.address);
            if asked_again {
                // Wanted from now on (no scan asks for it meanwhile), asked for with WANT_AGAIN
                // once the stream has ended, so that no later piece of this copy is taken for
                // the new one (spec §14.8).
                self.wanted.insert(p.address);
                self.retry_at_end.insert(stream, p.address);
            }
            self.events.push_back(ResourceEvent::Corrupt {
                address: p.address,
                asked_again,
            });
            return Err(ResourceError::Mismatch {
                address: p.address,
                actual: blob.address(),
            });
        }
        self.wanted.remove(&p.address);
        let len = blob.len();
        let inner = nested(&blob);
        // A blob larger than the whole store cannot be kept; it is still verified.
        let _ = self.store.insert(blob);
        self.events.push_back(ResourceEvent::Complete {
            address: p.address,
            len,
        });
        self.need(inner);
        Ok(())
    }

    /// Resource stream `stream` ended (FIN) or was reset. An unfinished blob is dropped
    /// ([`ResourceEvent::Incomplete`]) and may be wanted again by the next scan; a blob whose
    /// copy on this stream was corrupted is asked for again now, with `WANT_AGAIN`
    /// ([`ResourceEvent::Corrupt`], [`ResourceReceiver::poll_want_again`]).
    pub fn handle_stream_end(&mut self, stream: u64) {
        self.dead.remove(&stream);
        if let Some(address) = self.retry_at_end.remove(&stream)
            && self.wanted.contains(&address)
        {
            self.again_queue.push(address);
        }
        if let Some(p) = self.partial.remove(&stream) {
            self.in_flight -= p.total_len;
            self.wanted.remove(&p.address);
            self.events
                .push_back(ResourceEvent::Incomplete { address: p.address });
        }
    }
}

/// The first `max_list` addresses of `queue`, as one list message's body; `None` when empty.
fn take_list(queue: &mut Vec<Address>, max_list: usize) -> Option<Addresses> {
    if queue.is_empty() {
        return None;
    }
    let n = queue.len().min(max_list);
    let addresses = queue.drain(..n).map(|a| a.0).collect();
    Some(Addresses { addresses })
}

/// Addresses a blob refers to: resource URIs in a text blob (a stylesheet's `url()`s).
fn nested(b: &Blob) -> Vec<Address> {
    if !b
        .content_type()
        .to_ascii_lowercase()
        .starts_with("text/css")
    {
        return Vec::new();
    }
    match std::str::from_utf8(b.bytes()) {
        Ok(t) => uris_in(t).map(|(_, a)| a).collect(),
        Err(_) => Vec::new(),
    }
}

// ───────────────────────────── relay ─────────────────────────────

/// The relay's cache (spec §14.7): one per relay, shared across sessions, bounded in bytes,
/// holding only blobs marked cacheable and verified against their address.
///
/// Feed every `RESOURCE` piece the relay forwards to [`RelayCache::observe`] (it assembles the
/// cacheable ones on the side) and the end of each stream to [`RelayCache::observe_end`];
/// answer an agent's `WANT` with [`RelayCache::answer_want`]: serve what it returns through
/// a [`ResourceSender`] of that agent's session and forward the rest to the consumer. Stream
/// numbers must be unique among all streams fed to one cache (e.g. connection and stream id).
#[derive(Debug)]
pub struct RelayCache {
    rx: ResourceReceiver,
}

impl RelayCache {
    /// An empty cache of at most `max_bytes`, assembling within `limits`.
    pub fn new(max_bytes: u64, limits: ResourceLimits) -> Self {
        RelayCache {
            rx: ResourceReceiver::new(BlobStore::new(max_bytes), limits),
        }
    }

    /// Adds a blob; refuses one that is not cacheable.
    pub fn insert(&mut self, blob: Blob) -> Result<Address, StoreError> {
        if !blob.cacheable() {
            return Err(StoreError::NotCacheable(blob.address()));
        }
        self.rx.store.insert(blob)
    }

    /// Whether the cache holds `a`.
    pub fn contains(&self, a: &Address) -> bool {
        self.rx.store.contains(a)
    }

    /// The blobs held.
    pub fn store(&self) -> &BlobStore {
        &self.rx.store
    }

    /// Notes a piece forwarded on stream `stream`; a cacheable blob enters the cache once
    /// whole and verified. Pieces of private blobs are not kept at all.
    pub fn observe(&mut self, stream: u64, piece: &Resource) -> Result<(), ResourceError> {
        if !piece.cacheable {
            return Ok(());
        }
        let r = self.rx.handle_piece(stream, piece);
        while self.rx.poll_event().is_some() {}
        while self.rx.poll_stop().is_some() {}
        self.rx.want_queue.clear();
        self.rx.wanted.clear();
        r
    }

    /// A forwarded stream ended or was reset.
    pub fn observe_end(&mut self, stream: u64) {
        self.rx.handle_stream_end(stream);
        while self.rx.poll_event().is_some() {}
    }

    /// Splits an agent's `WANT`: the blobs the cache holds (to send from here) and the
    /// `WANT` to forward to the consumer (the rest; `None` when nothing is left).
    pub fn answer_want(&mut self, want: &Addresses) -> (Vec<Blob>, Option<Addresses>) {
        let mut served = Vec::new();
        let mut rest = Vec::new();
        for &a in &want.addresses {
            match self.rx.store.get(&Address(a)) {
                Some(b) => served.push(b),
                None => rest.push(a),
            }
        }
        let rest = (!rest.is_empty()).then_some(Addresses { addresses: rest });
        (served, rest)
    }
}

impl BlobSource for RelayCache {
    fn blob(&mut self, address: &Address) -> Option<Blob> {
        self.rx.store.get(address)
    }
}

// ───────────────────────────── agent: writing the page ─────────────────────────────

/// How [`resolve_page`] makes an agent's page complete (spec §14.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveMode {
    /// Every resource URI becomes a `data:` URL (stylesheets with their own references
    /// inlined too): one self-contained HTML file.
    Inline,
    /// Every resource URI becomes the relative URL `<prefix><64 hex>.<ext>`; the caller writes
    /// [`ResolvedPage::files`] there (stylesheets point at their neighbours by bare name, so
    /// all files must share one directory).
    Files {
        /// Prepended to each file name in the page (e.g. `res/`).
        prefix: String,
    },
}

/// A page written with its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPage {
    /// The HTML.
    pub html: String,
    /// Files to write beside it ([`ResolveMode::Files`]): name (`<64 hex>.<ext>`) and bytes.
    pub files: Vec<(String, Vec<u8>)>,
    /// Addresses referenced but not held: left as URIs.
    pub missing: Vec<Address>,
}

/// Writes `dom` as HTML with its resources from `blobs` (spec §14.9): large texts restored
/// exactly, other resource URIs pointed at `data:` URLs or files. URIs of blobs not held stay
/// as they are and are listed in [`ResolvedPage::missing`].
pub fn resolve_page(dom: &Dom, blobs: &BlobStore, mode: &ResolveMode) -> ResolvedPage {
    let mut r = Resolver {
        blobs,
        mode,
        files: BTreeMap::new(),
        missing: Vec::new(),
        inline: HashMap::new(),
    };
    let mut out = dom.clone();
    let ids: Vec<NodeId> = dom.preorder(DOCUMENT_ID).collect();
    for id in ids {
        let Some(node) = dom.node(id) else { continue };
        match &node.kind {
            NodeKind::Element(e) => {
                for (k, v) in &e.attrs {
                    if find_ci(v, URI_PREFIX).is_some() {
                        let new = r.substitute(v, 0);
                        let _ = out.set_attr(id, k, &new);
                    }
                }
            }
            NodeKind::Text(t) => {
                let in_style = dom
                    .parent(id)
                    .and_then(|p| dom.node(p))
                    .and_then(|p| p.element())
                    .is_some_and(|e| e.ns == Ns::Html && e.name == "style");
                let new = if let Some(a) = Address::from_uri(t) {
                    match blobs
                        .peek(&a)
                        .map(|b| String::from_utf8(b.bytes().to_vec()))
                    {
                        Some(Ok(s)) if in_style => Some(r.substitute(&s, 0)),
                        Some(Ok(s)) => Some(s),
                        _ => {
                            r.missing.push(a);
                            None
                        }
                    }
                } else if in_style && find_ci(t, URI_PREFIX).is_some() {
                    Some(r.substitute(t, 0))
                } else {
                    None
                };
                if let Some(new) = new {
                    let _ = out.set_text(id, &new);
                }
            }
            _ => {}
        }
    }
    r.missing.sort_unstable();
    r.missing.dedup();
    ResolvedPage {
        html: crate::html::to_html(&out),
        files: r.files.into_values().collect(),
        missing: r.missing,
    }
}

struct Resolver<'a> {
    blobs: &'a BlobStore,
    mode: &'a ResolveMode,
    files: BTreeMap<Address, (String, Vec<u8>)>,
    missing: Vec<Address>,
    inline: HashMap<Address, String>,
}

impl Resolver<'_> {
    /// `text` with every URI replaced by where its blob is written.
    fn substitute(&mut self, text: &str, depth: u32) -> String {
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        let hits: Vec<(usize, Address)> = uris_in(text).collect();
        for (at, a) in hits {
            if let Some(target) = self.target(a, depth) {
                out.push_str(&text[last..at]);
                out.push_str(&target);
                last = at + URI_LEN;
            }
        }
        out.push_str(&text[last..]);
        out
    }

    fn target(&mut self, a: Address, depth: u32) -> Option<String> {
        let Some(b) = self.blobs.peek(&a) else {
            self.missing.push(a);
            return None;
        };
        let css = b
            .content_type()
            .to_ascii_lowercase()
            .starts_with("text/css");
        match self.mode {
            ResolveMode::Files { prefix } => {
                let name = format!("{}.{}", a.to_hex(), extension_of(b.content_type()));
                if !self.files.contains_key(&a) {
                    // Reserve the name first: a stylesheet that refers to itself ends here.
                    self.files.insert(a, (name.clone(), Vec::new()));
                    let bytes = match (css, std::str::from_utf8(b.bytes())) {
                        // Inside a stylesheet, neighbours in one directory: bare names
                        // (depth > 0).
                        (true, Ok(t)) if depth < MAX_IMPORT_DEPTH => {
                            self.substitute(t, depth + 1).into_bytes()
                        }
                        _ => b.bytes().to_vec(),
                    };
                    self.files.insert(a, (name.clone(), bytes));
                }
                if depth == 0 {
                    Some(format!("{prefix}{name}"))
                } else {
                    Some(name)
                }
            }
            ResolveMode::Inline => {
                if let Some(s) = self.inline.get(&a) {
                    return Some(s.clone());
                }
                let body = match (css, std::str::from_utf8(b.bytes())) {
                    (true, Ok(t)) if depth < MAX_IMPORT_DEPTH => {
                        self.substitute(t, depth + 1).into_bytes()
                    }
                    _ => b.bytes().to_vec(),
                };
                let url = format!(
                    "data:{};base64,{}",
                    b.content_type().replace([',', ' ', '"', '\''], ""),
                    base64_encode(&body)
                );
                self.inline.insert(a, url.clone());
                Some(url)
            }
        }
    }
}

/// A file extension for a MIME type.
fn extension_of(ty: &str) -> &'static str {
    let t = ty.to_ascii_lowercase();
    let t = t.split(';').next().unwrap_or("").trim().to_owned();
    match t.as_str() {
        "text/css" => "css",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/avif" => "avif",
        "image/svg+xml" => "svg",
        "image/x-icon" | "image/vnd.microsoft.icon" => "ico",
        "font/woff" => "woff",
        "font/woff2" => "woff2",
        "font/ttf" => "ttf",
        "font/otf" => "otf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// Standard base64 with padding.
pub fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..70u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64_decode(base64_encode(&data).as_bytes()), Some(data));
        }
        assert_eq!(base64_decode(b"aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64_decode(b"a=b"), None);
        assert_eq!(base64_decode(b"a*"), None);
    }

    #[test]
    fn urls_resolve() {
        let base = "https://x.test/a/b/page.html?q=1";
        for (r, want) in [
            ("c.css", Some("https://x.test/a/b/c.css")),
            ("../c.css?v=2", Some("https://x.test/a/c.css?v=2")),
            ("../../../../c.css", Some("https://x.test/c.css")),
            ("/r.png", Some("https://x.test/r.png")),
            ("//cdn.test/f.woff", Some("https://cdn.test/f.woff")),
            ("./d/./e.png#f", Some("https://x.test/a/b/d/e.png#f")),
            ("#top", None),
            ("", None),
            ("data:,hi", Some("data:,hi")),
        ] {
            assert_eq!(resolve_url(base, r).as_deref(), want, "{r}");
        }
        assert_eq!(resolve_url("about:blank", "x.png"), None);
    }

    #[test]
    fn css_references_are_found() {
        let css = r#"@import "a.css"; @import url(b.css) screen;
/* url(no.png) */ .x { background: url( 'c.png' ) } .y{src:url(d.woff2) format("woff2")}
.z { content: "url(no2.png)" } .w{background:URL(e.gif)}"#;
        let mut seen = Vec::new();
        let out = rewrite_css(css, |u, k| {
            seen.push((u.to_owned(), k));
            Some(format!("[{u}]"))
        });
        assert_eq!(
            seen,
            vec![
                ("a.css".to_owned(), CssRef::Import),
                ("b.css".to_owned(), CssRef::Import),
                ("c.png".to_owned(), CssRef::Url),
                ("d.woff2".to_owned(), CssRef::Url),
                ("e.gif".to_owned(), CssRef::Url),
            ]
        );
        assert!(out.contains("url( '[c.png]' )"), "{out}");
        assert!(out.contains("\"url(no2.png)\""));
    }

    #[test]
    fn srcset_candidates() {
        let v = "a.png 1x, data:image/png;base64,AAA= 2x,b.png";
        let mut seen = Vec::new();
        rewrite_srcset(v, |u| {
            seen.push(u.to_owned());
            None
        });
        assert_eq!(seen, ["a.png", "data:image/png;base64,AAA=", "b.png"]);
    }
}

/// The oracle of the `resource_receive` fuzz target (STYLE.md 10): the fuzz target is a shim
/// into [`fuzzing::resource_receive`], and `engine/tests/resource.rs` replays the inputs
/// checked in under `fuzz/regressions/resource_receive/` through the same function.
#[doc(hidden)]
pub mod fuzzing {
    use tandem_protocol::message::{Coding, Resource};

    use super::{
        Address, Blob, BlobStore, ResourceEvent, ResourceLimits, ResourceReceiver, ResourceSender,
        SendMode,
    };
    use crate::diff::fuzzing::Reader;

    const TYPES: &[&str] = &[
        "text/css",
        "image/png",
        "text/plain",
        "image/svg+xml",
        "x/y",
    ];

    /// Small limits, so that the input can reach every one of them.
    const LIMITS: ResourceLimits = ResourceLimits {
        max_blob: 6000,
        max_in_flight: 9000,
        max_streams: 3,
        max_content_type: 16,
    };

    /// Blob bytes from a seed: text-like, so that most of them travel coded.
    fn content(seed: u8, len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[".a{margin:0}", "color:#fff;", " ", "\n", "body", "é", "{}"];
        let mut out = Vec::with_capacity(len + 16);
        let mut x = u32::from(seed) | 1;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if seed & 0x80 != 0 {
                out.push(x as u8);
            } else {
                out.extend_from_slice(WORDS[x as usize % WORDS.len()].as_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// Reads a few blobs and a sequence of pieces, clean, damaged or made up, and stream ends
    /// and reconnections, and feeds them to a receiver. Checks that it never panics, keeps
    /// within its in-flight budget, only ever holds blobs that match their address, gives its
    /// budget back when every stream has ended, and still takes each blob whole when its clean
    /// pieces come on a stream of their own.
    pub fn resource_receive(data: &[u8]) {
        let mut r = Reader::new(data);
        let blobs: Vec<Blob> = (0..1 + r.byte() % 3)
            .map(|_| {
                let ty = TYPES[usize::from(r.byte()) % TYPES.len()];
                let len = usize::from(r.u16() % 8000);
                Blob::new(content(r.byte(), len), ty, r.byte() & 1 == 1)
            })
            .collect();
        let piece_bytes = 1 + usize::from(r.u16() % 2048);
        let pieces_of = |b: &Blob| -> Vec<Resource> {
            let mut s = ResourceSender::new(SendMode::Pull);
            s.set_piece_bytes(piece_bytes);
            s.queue_blob(b.clone());
            std::iter::from_fn(|| s.poll_transmit().map(|t| t.piece)).collect()
        };
        let pieces: Vec<Vec<Resource>> = blobs.iter().map(pieces_of).collect();
        let mut next = vec![0usize; blobs.len()];
        let mut rx = ResourceReceiver::new(BlobStore::new(1 << 20), LIMITS);
        let mut streams = 0u64;
        for _ in 0..64 {
            if r.is_empty() {
                break;
            }
            let op = r.byte();
            let stream = u64::from(r.byte() % 4);
            streams = streams.max(stream + 1);
            let b = usize::from(r.byte()) % blobs.len();
            match op % 6 {
                // The next clean piece of a blob, or a damaged one.
                0 | 1 => {
                    let Some(p) = pieces[b].get(next[b]) else {
                        next[b] = 0;
                        continue;
                    };
                    next[b] += 1;
                    let mut p = p.clone();
                    if op % 6 == 1 {
                        damage(&mut p, &mut r);
                    }
                    let _ = rx.handle_piece(stream, &p);
                }
                // A piece made up from the input.
                2 => {
                    let len = usize::from(r.byte() % 64);
                    let piece = Resource {
                        address: blobs[b].address().0,
                        total_len: u64::from(r.u16()),
                        offset: u64::from(r.u16() % 256),
                        content_type: TYPES[usize::from(r.byte()) % TYPES.len()].into(),
                        cacheable: r.byte() & 1 == 1,
                        coding: Coding::from(u32::from(r.byte() % 3)),
                        data: (0..len).map(|_| r.byte()).collect(),
                    };
                    let _ = rx.handle_piece(stream, &piece);
                }
                3 => rx.handle_stream_end(stream),
                4 => rx.reconnected(),
                _ => next[b] = 0,
            }
            assert!(rx.in_flight() <= LIMITS.max_in_flight, "over the budget");
            while let Some(e) = rx.poll_event() {
                if let ResourceEvent::Complete { address, len } = e {
                    let held = rx.store().peek(&address).expect("a complete blob is held");
                    assert_eq!(Address::of(held.bytes()), address);
                    assert_eq!(held.len(), len);
                }
            }
            while rx.poll_stop().is_some() {}
            while rx.poll_want().is_some() {}
            while rx.poll_want_again().is_some() {}
        }
        for s in 0..streams {
            rx.handle_stream_end(s);
        }
        assert_eq!(rx.in_flight(), 0, "budget kept after every stream ended");
        assert!(
            rx.retry_at_end.is_empty(),
            "a retry still waits for a stream that ended"
        );
        // Clean pieces on streams of their own still make every blob the limits allow.
        for (i, (b, ps)) in blobs.iter().zip(&pieces).enumerate() {
            if b.len() > LIMITS.max_blob || rx.store().contains(&b.address()) {
                continue;
            }
            let stream = 100 + i as u64;
            for p in ps {
                rx.handle_piece(stream, p).expect("a clean piece is taken");
            }
            assert_eq!(
                rx.store().peek(&b.address()).map(Blob::bytes),
                Some(b.bytes()),
                "a blob sent clean arrives whole"
            );
        }
    }

    /// Damages a piece as the input says.
    fn damage(p: &mut Resource, r: &mut Reader<'_>) {
        match r.byte() % 6 {
            0 if !p.data.is_empty() => {
                let i = usize::from(r.u16()) % p.data.len();
                p.data[i] ^= r.byte() | 1;
            }
            1 => {
                p.total_len = p
                    .total_len
                    .wrapping_add(u64::from(r.byte()))
                    .wrapping_sub(128)
            }
            2 => p.offset = p.offset.wrapping_add(u64::from(r.byte() % 8)),
            3 => p.coding = Coding::from(u32::from(r.byte() % 3)),
            4 => {
                let keep = usize::from(r.u16()) % (p.data.len() + 1);
                p.data.truncate(keep);
            }
            _ => p.data.push(r.byte()),
        }
    }
}
