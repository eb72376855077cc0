//! HTML import with html5ever and export back to HTML (spec §6.4).
//!
//! Import builds the script-free tree: `script` elements (with their content), processing
//! instructions and event-handler attributes (`on*`) are dropped, because the agent never runs
//! page scripts. Template contents become the template element's children. A tree deeper than
//! `Limits::max_depth` is flattened at that depth (as browsers' parsers do), so any page
//! imports within the limits.

use std::borrow::Cow;
use std::cell::{Cell, Ref, RefCell};

use html5ever::interface::tree_builder::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::{Attribute, LocalName, Namespace, QualName, ns, parse_document};
use tandem_protocol::{DOCUMENT_ID, Limits, NodeId, Ns};

use crate::dom::{Dom, Element, Name, NodeKind};

/// Parses an HTML document into a [`Dom`] with ids 1, 2, … in document order.
pub fn parse_html(html: &str, limits: Limits) -> Dom {
    let sink = Sink::default();
    let sink = parse_document(sink, Default::default()).one(StrTendril::from(html));
    sink.into_dom(limits)
}

/// Whether an element is dropped on import: `script` elements never travel, in any namespace
/// (spec §6.4).
pub fn is_script(name: &str) -> bool {
    name == "script"
}

/// Whether an attribute is dropped on import: event handlers never travel (spec §6.4), that is
/// every attribute whose name starts with `on`, compared ASCII case-insensitively.
pub fn is_event_handler(name: &str) -> bool {
    name.as_bytes()
        .get(..2)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"on"))
}

#[derive(Debug)]
enum SinkData {
    Document,
    Doctype {
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    },
    Text(StrTendril),
    Comment(StrTendril),
    Element {
        attrs: Vec<Attribute>,
        template: Option<usize>,
        annotation_point: bool,
    },
    Pi,
}

#[derive(Debug)]
struct SinkNode {
    data: SinkData,
    name: QualName,
    parent: Option<usize>,
    first_child: Option<usize>,
    last_child: Option<usize>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// The html5ever tree sink: an index arena with sibling links, converted to a [`Dom`] once
/// parsing is done.
#[derive(Debug)]
struct Sink {
    nodes: RefCell<Vec<SinkNode>>,
    quirks: Cell<QuirksMode>,
}

impl Default for Sink {
    fn default() -> Self {
        let sink = Sink {
            nodes: RefCell::new(Vec::new()),
            quirks: Cell::new(QuirksMode::NoQuirks),
        };
        sink.new_node(SinkData::Document, empty_name());
        sink
    }
}

fn empty_name() -> QualName {
    QualName::new(None, ns!(), LocalName::from(""))
}

impl Sink {
    fn new_node(&self, data: SinkData, name: QualName) -> usize {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(SinkNode {
            data,
            name,
            parent: None,
            first_child: None,
            last_child: None,
            prev: None,
            next: None,
        });
        nodes.len() - 1
    }

    fn detach(nodes: &mut [SinkNode], n: usize) {
        let (parent, prev, next) = (
            nodes[n].parent.take(),
            nodes[n].prev.take(),
            nodes[n].next.take(),
        );
        match next {
            Some(x) => nodes[x].prev = prev,
            None => {
                if let Some(p) = parent {
                    nodes[p].last_child = prev;
                }
            }
        }
        match prev {
            Some(x) => nodes[x].next = next,
            None => {
                if let Some(p) = parent {
                    nodes[p].first_child = next;
                }
            }
        }
    }

    fn append_node(nodes: &mut [SinkNode], parent: usize, child: usize) {
        Self::detach(nodes, child);
        nodes[child].parent = Some(parent);
        match nodes[parent].last_child {
            Some(last) => {
                nodes[child].prev = Some(last);
                nodes[last].next = Some(child);
            }
            None => nodes[parent].first_child = Some(child),
        }
        nodes[parent].last_child = Some(child);
    }

    fn insert_before(nodes: &mut [SinkNode], sibling: usize, child: usize) {
        Self::detach(nodes, child);
        let parent = nodes[sibling].parent;
        nodes[child].parent = parent;
        nodes[child].next = Some(sibling);
        match nodes[sibling].prev {
            Some(p) => {
                nodes[child].prev = Some(p);
                nodes[p].next = Some(child);
            }
            None => {
                if let Some(par) = parent {
                    nodes[par].first_child = Some(child);
                }
            }
        }
        nodes[sibling].prev = Some(child);
    }

    /// Appends text to `prev` if it is a text node; otherwise makes a new text node.
    fn text_or_node(&self, prev: Option<usize>, child: NodeOrText<usize>) -> Option<usize> {
        match child {
            NodeOrText::AppendNode(n) => Some(n),
            NodeOrText::AppendText(text) => {
                if let Some(p) = prev
                    && let SinkData::Text(t) = &mut self.nodes.borrow_mut()[p].data
                {
                    t.push_tendril(&text);
                    return None;
                }
                Some(self.new_node(SinkData::Text(text), empty_name()))
            }
        }
    }

    fn into_dom(self, limits: Limits) -> Dom {
        let nodes = self.nodes.into_inner();
        let mut dom = Dom::new(limits);
        let max_depth = limits.max_depth;
        // (sink node, dom parent, depth of dom parent); children are pushed in reverse.
        let mut stack: Vec<(usize, NodeId, u32)> = Vec::new();
        let push_children = |stack: &mut Vec<(usize, NodeId, u32)>,
                             first: Option<usize>,
                             parent: NodeId,
                             depth: u32| {
            let mut kids = Vec::new();
            let mut c = first;
            while let Some(k) = c {
                kids.push(k);
                c = nodes[k].next;
            }
            stack.extend(kids.into_iter().rev().map(|k| (k, parent, depth)));
        };
        push_children(&mut stack, nodes[0].first_child, DOCUMENT_ID, 0);
        while let Some((n, mut parent, mut pdepth)) = stack.pop() {
            if dom.len() as u64 >= u64::from(limits.max_nodes) {
                break;
            }
            // Flatten below the depth limit: attach to the nearest ancestor that fits.
            while pdepth >= max_depth {
                parent = dom.parent(parent).unwrap_or(DOCUMENT_ID);
                pdepth -= 1;
            }
            let node = &nodes[n];
            let (kind, first) = match &node.data {
                SinkData::Document | SinkData::Pi => continue,
                SinkData::Doctype {
                    name,
                    public_id,
                    system_id,
                } => {
                    if parent != DOCUMENT_ID {
                        continue;
                    }
                    let kind = NodeKind::Doctype {
                        name: name.to_string(),
                        public_id: public_id.to_string(),
                        system_id: system_id.to_string(),
                    };
                    (kind, None)
                }
                SinkData::Text(t) => {
                    if parent == DOCUMENT_ID {
                        continue;
                    }
                    // Text on both sides of a dropped script joins, as a reparse would join it.
                    if let Some(&last) = dom.children(parent).last()
                        && dom.text(last).is_some()
                        && matches!(dom.node(last).map(|n| &n.kind), Some(NodeKind::Text(_)))
                    {
                        if let Ok(text) = dom.text_mut(last, "import") {
                            text.push_str(t);
                        }
                        continue;
                    }
                    (NodeKind::Text(t.to_string()), None)
                }
                SinkData::Comment(t) => (NodeKind::Comment(t.to_string()), None),
                SinkData::Element {
                    attrs, template, ..
                } => {
                    let ns = namespace(&node.name.ns);
                    let name = node.name.local.to_string();
                    if is_script(&name) {
                        continue;
                    }
                    let attrs = attrs
                        .iter()
                        .map(|a| (qualified(&a.name), a.value.to_string()))
                        .filter(|(n, _)| !is_event_handler(n))
                        .take(limits.max_attributes as usize)
                        .collect();
                    let first = match template {
                        Some(t) => nodes[*t].first_child,
                        None => node.first_child,
                    };
                    let name = crate::dom::name(&name);
                    (NodeKind::Element(Element { ns, name, attrs }), first)
                }
            };
            let Ok(id) = dom.push_raw(kind, parent) else {
                break;
            };
            push_children(&mut stack, first, id, pdepth + 1);
        }
        dom
    }
}

fn namespace(ns: &Namespace) -> Ns {
    if *ns == ns!(svg) {
        Ns::Svg
    } else if *ns == ns!(mathml) {
        Ns::MathMl
    } else {
        Ns::Html
    }
}

fn qualified(name: &QualName) -> Name {
    match &name.prefix {
        Some(p) => crate::dom::name(&format!("{}:{}", p, name.local)),
        None => crate::dom::name(&name.local),
    }
}

impl TreeSink for Sink {
    type Handle = usize;
    type Output = Self;
    type ElemName<'a> = Ref<'a, QualName>;

    fn finish(self) -> Self {
        self
    }

    fn parse_error(&self, _msg: Cow<'static, str>) {}

    fn get_document(&self) -> usize {
        0
    }

    fn elem_name<'a>(&'a self, target: &'a usize) -> Ref<'a, QualName> {
        Ref::map(self.nodes.borrow(), |n| &n[*target].name)
    }

    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> usize {
        let template = flags
            .template
            .then(|| self.new_node(SinkData::Document, empty_name()));
        let data = SinkData::Element {
            attrs,
            template,
            annotation_point: flags.mathml_annotation_xml_integration_point,
        };
        self.new_node(data, name)
    }

    fn create_comment(&self, text: StrTendril) -> usize {
        self.new_node(SinkData::Comment(text), empty_name())
    }

    fn create_pi(&self, _target: StrTendril, _data: StrTendril) -> usize {
        self.new_node(SinkData::Pi, empty_name())
    }

    fn append(&self, parent: &usize, child: NodeOrText<usize>) {
        let last = self.nodes.borrow()[*parent].last_child;
        if let Some(c) = self.text_or_node(last, child) {
            Self::append_node(&mut self.nodes.borrow_mut(), *parent, c);
        }
    }

    fn append_based_on_parent_node(
        &self,
        element: &usize,
        prev_element: &usize,
        child: NodeOrText<usize>,
    ) {
        if self.nodes.borrow()[*element].parent.is_some() {
            self.append_before_sibling(element, child);
        } else {
            self.append(prev_element, child);
        }
    }

    fn append_doctype_to_document(
        &self,
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    ) {
        let n = self.new_node(
            SinkData::Doctype {
                name,
                public_id,
                system_id,
            },
            empty_name(),
        );
        Self::append_node(&mut self.nodes.borrow_mut(), 0, n);
    }

    fn get_template_contents(&self, target: &usize) -> usize {
        match self.nodes.borrow()[*target].data {
            SinkData::Element {
                template: Some(t), ..
            } => t,
            // html5ever asks only for templates; a fresh empty fragment is a safe answer otherwise.
            _ => 0,
        }
    }

    fn same_node(&self, x: &usize, y: &usize) -> bool {
        x == y
    }

    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.quirks.set(mode);
    }

    fn append_before_sibling(&self, sibling: &usize, child: NodeOrText<usize>) {
        let prev = self.nodes.borrow()[*sibling].prev;
        if let Some(c) = self.text_or_node(prev, child) {
            Self::insert_before(&mut self.nodes.borrow_mut(), *sibling, c);
        }
    }

    fn add_attrs_if_missing(&self, target: &usize, attrs: Vec<Attribute>) {
        if let SinkData::Element {
            attrs: existing, ..
        } = &mut self.nodes.borrow_mut()[*target].data
        {
            for a in attrs {
                if !existing.iter().any(|e| e.name == a.name) {
                    existing.push(a);
                }
            }
        }
    }

    fn remove_from_parent(&self, target: &usize) {
        Self::detach(&mut self.nodes.borrow_mut(), *target);
    }

    fn reparent_children(&self, node: &usize, new_parent: &usize) {
        let mut nodes = self.nodes.borrow_mut();
        let mut c = nodes[*node].first_child;
        while let Some(k) = c {
            c = nodes[k].next;
            Self::append_node(&mut nodes, *new_parent, k);
        }
    }

    fn is_mathml_annotation_xml_integration_point(&self, handle: &usize) -> bool {
        matches!(
            self.nodes.borrow()[*handle].data,
            SinkData::Element {
                annotation_point: true,
                ..
            }
        )
    }
}

const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "img", "input",
    "keygen", "link", "meta", "param", "source", "track", "wbr",
];

const RAW_TEXT: &[&str] = &[
    "style",
    "script",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
    "plaintext",
    "noscript",
];

/// Serializes the tree as an HTML document (the HTML fragment serialization algorithm applied
/// to the document's children). A `script` element (any namespace, any case) and an event
/// handler attribute are left out: the script-free tree never holds them, and an agent that
/// receives one anyway must not let it run (spec §6.4).
pub fn to_html(dom: &Dom) -> String {
    let mut out = String::new();
    write_html(dom, DOCUMENT_ID, &mut out);
    out
}

/// Whether `name` can be written as a tag or attribute name as it is: a name with white
/// space, `/`, `>` or (after its first byte) `=`, which no parsed page yields, only a faulty or
/// hostile sender, would end the name early and let the rest be read as markup.
fn is_writable_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ' | b'/' | b'>'))
        && !name.bytes().skip(1).any(|b| b == b'=')
}

/// Serializes the children of `id` into `out`, leaving out scripts and event handlers as
/// [`to_html`] does. Nothing a node holds ends its own markup early (spec §6.4: received
/// content never runs): an element or attribute whose name cannot be written is left out, a
/// raw text's `</name` is written `<\/name`, and the `>`s of a comment that would end early
/// or of a doctype are left out.
pub fn write_html(dom: &Dom, id: NodeId, out: &mut String) {
    enum Step {
        Open(NodeId),
        Close(NodeId),
    }
    let mut stack: Vec<Step> = dom
        .children(id)
        .iter()
        .rev()
        .map(|&c| Step::Open(c))
        .collect();
    while let Some(step) = stack.pop() {
        match step {
            Step::Close(n) => {
                if let Some(e) = dom.node(n).and_then(|n| n.element()) {
                    out.push_str("</");
                    out.push_str(&e.name);
                    out.push('>');
                }
            }
            Step::Open(n) => {
                let Some(node) = dom.node(n) else { continue };
                match &node.kind {
                    NodeKind::Document => {}
                    NodeKind::Doctype {
                        name,
                        public_id,
                        system_id,
                    } => {
                        // A `>` or a quote in them would end the doctype or an id early.
                        let clean = |s: &str| s.replace(['>', '"'], "");
                        out.push_str("<!DOCTYPE ");
                        out.push_str(&clean(name));
                        if !public_id.is_empty() {
                            out.push_str(" PUBLIC \"");
                            out.push_str(&clean(public_id));
                            out.push('"');
                            if !system_id.is_empty() {
                                out.push_str(" \"");
                                out.push_str(&clean(system_id));
                                out.push('"');
                            }
                        } else if !system_id.is_empty() {
                            out.push_str(" SYSTEM \"");
                            out.push_str(&clean(system_id));
                            out.push('"');
                        }
                        out.push('>');
                    }
                    NodeKind::Comment(t) => {
                        // A comment ends early at `-->` or `--!>`, or at once when it starts
                        // with `>` or `->`; without its `>`s such a text cannot end it.
                        let ends = t.starts_with('>')
                            || t.starts_with("->")
                            || t.contains("-->")
                            || t.contains("--!>");
                        out.push_str("<!--");
                        if ends {
                            out.push_str(&t.replace('>', ""));
                        } else {
                            out.push_str(t);
                        }
                        out.push_str("-->");
                    }
                    NodeKind::Text(t) => {
                        let raw = dom
                            .parent(n)
                            .and_then(|p| dom.node(p))
                            .and_then(|p| p.element())
                            .filter(|e| e.ns == Ns::Html && RAW_TEXT.contains(&&*e.name));
                        if let Some(e) = raw {
                            write_raw_text(t, &e.name, out);
                        } else {
                            escape(t, false, out);
                        }
                    }
                    // Written out, `SCRIPT` in any namespace would parse as an HTML script.
                    NodeKind::Element(e)
                        if e.name.eq_ignore_ascii_case("script") || !is_writable_name(&e.name) => {}
                    NodeKind::Element(e) => {
                        out.push('<');
                        out.push_str(&e.name);
                        let written = |k: &str| !is_event_handler(k) && is_writable_name(k);
                        for (k, v) in e.attrs.iter().filter(|(k, _)| written(k)) {
                            out.push(' ');
                            out.push_str(k);
                            out.push_str("=\"");
                            escape(v, true, out);
                            out.push('"');
                        }
                        out.push('>');
                        if e.ns == Ns::Html && VOID.contains(&&*e.name) {
                            continue;
                        }
                        if e.ns == Ns::Html
                            && matches!(&*e.name, "pre" | "textarea" | "listing")
                            && node
                                .children()
                                .first()
                                .and_then(|&c| dom.text(c))
                                .is_some_and(|t| t.starts_with('\n'))
                        {
                            out.push('\n');
                        }
                        stack.push(Step::Close(n));
                        stack.extend(node.children().iter().rev().map(|&c| Step::Open(c)));
                    }
                }
            }
        }
    }
}

/// Writes the text of raw text element `name` (`style`, `noscript`, …) as it is, except that
/// a `</` that starts an end tag of `name` (ASCII case-insensitively) is written `<\/`: it
/// would end the element early and let the rest be read as markup (spec §6.4). In a style
/// sheet, that can only stand in a string or a comment, where `<\/` means the same.
fn write_raw_text(t: &str, name: &str, out: &mut String) {
    let b = t.as_bytes();
    let mut last = 0;
    let mut i = 0;
    while let Some(at) = t[i..].find("</") {
        let start = i + at;
        let tag = start + 2;
        if b.len() >= tag + name.len()
            && b[tag..tag + name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            out.push_str(&t[last..start]);
            out.push_str("<\\/");
            last = tag;
        }
        i = tag;
    }
    out.push_str(&t[last..]);
}

fn escape(s: &str, attr: bool, out: &mut String) {
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '&' => "&amp;",
            '\u{a0}' => "&nbsp;",
            '"' if attr => "&quot;",
            '<' => "&lt;",
            '>' => "&gt;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(
        dom: &mut Dom,
        parent: NodeId,
        ns: Ns,
        name: &str,
        attrs: &[(&str, &str)],
    ) -> NodeId {
        let attrs = attrs
            .iter()
            .map(|&(k, v)| (Name::Owned(k.to_owned()), v.to_owned()))
            .collect();
        let id = dom
            .create(NodeKind::Element(Element {
                ns,
                name: Name::Owned(name.to_owned()),
                attrs,
            }))
            .unwrap();
        dom.append(parent, id).unwrap();
        id
    }

    /// Nothing in a received tree ends its own markup early and smuggles in a script (spec
    /// §6.4): names that cannot be written, a `</style>` in a style text, a `>` in a comment
    /// or a doctype.
    #[test]
    fn no_node_breaks_out_of_its_markup() {
        let mut dom = Dom::new(Limits::DEFAULT);
        let doctype = dom
            .create(NodeKind::Doctype {
                name: "html><script>alert(1)</script".into(),
                public_id: String::new(),
                system_id: String::new(),
            })
            .unwrap();
        dom.append(DOCUMENT_ID, doctype).unwrap();
        for text in [
            "--><script>alert(2)</script><!--",
            "[if IE]><p>kept</p><![endif]",
        ] {
            let comment = dom.create(NodeKind::Comment(text.into())).unwrap();
            dom.append(DOCUMENT_ID, comment).unwrap();
        }
        let html = element(&mut dom, DOCUMENT_ID, Ns::Html, "html", &[]);
        let style = element(&mut dom, html, Ns::Html, "style", &[]);
        let css = dom
            .create(NodeKind::Text(
                "p{content:\"</a>\"}</STYLE><script>alert(3)</script>".into(),
            ))
            .unwrap();
        dom.append(style, css).unwrap();
        element(&mut dom, html, Ns::Html, "img src=x onerror=alert(4)", &[]);
        element(
            &mut dom,
            html,
            Ns::Html,
            "img",
            &[("x onerror=alert(5)", ""), ("alt", "ok")],
        );
        assert_eq!(
            to_html(&dom),
            "<!DOCTYPE html<scriptalert(1)</script>\
             <!----<scriptalert(2)</script<!---->\
             <!--[if IE]><p>kept</p><![endif]-->\
             <html><style>p{content:\"</a>\"}<\\/STYLE><script>alert(3)</script></style>\
             <img alt=\"ok\"></html>"
        );
    }

    /// Import leaves out `script` in every namespace (MathML included) and every attribute
    /// whose name starts with `on`, `on` itself included (spec §6.4).
    #[test]
    fn import_drops_scripts_in_any_namespace_and_every_on_attribute() {
        let dom = parse_html(
            "<p on=\"tap:x\" ON=\"y\" onclick=\"z\" one=\"1\" class=\"k\">a</p>\
             <svg><script>1</script></svg><math><mi>x</mi><script>2</script></math>",
            Limits::DEFAULT,
        );
        for id in dom.preorder(DOCUMENT_ID) {
            let Some(e) = dom.node(id).and_then(|n| n.element()) else {
                continue;
            };
            assert_ne!(e.name, "script", "a script in {:?}", e.ns);
            if e.name == "p" {
                let names: Vec<&str> = e.attrs.iter().map(|(n, _)| &**n).collect();
                assert_eq!(names, ["class"]);
            }
        }
        assert!(
            to_html(&dom).contains("<math><mi>x</mi></math>"),
            "{}",
            to_html(&dom)
        );
    }

    /// A tree that holds scripts and event handlers — what a faulty or hostile consumer could
    /// send an agent — is written out without them (spec §6.4), in any namespace and case.
    #[test]
    fn scripts_and_event_handlers_are_never_written_out() {
        let mut dom = Dom::new(Limits::DEFAULT);
        let html = element(&mut dom, DOCUMENT_ID, Ns::Html, "html", &[]);
        let body = element(&mut dom, html, Ns::Html, "body", &[("onload", "x()")]);
        let p = element(
            &mut dom,
            body,
            Ns::Html,
            "p",
            &[("class", "a"), ("OnClick", "y()")],
        );
        let text = dom.create(NodeKind::Text("hi".into())).unwrap();
        dom.append(p, text).unwrap();
        for (ns, name) in [
            (Ns::Html, "script"),
            (Ns::Svg, "SCRIPT"),
            (Ns::MathMl, "script"),
        ] {
            let s = element(&mut dom, body, ns, name, &[("src", "evil.js")]);
            let code = dom.create(NodeKind::Text("alert(1)".into())).unwrap();
            dom.append(s, code).unwrap();
        }
        assert_eq!(
            to_html(&dom),
            "<html><body><p class=\"a\">hi</p></body></html>"
        );
    }
}
