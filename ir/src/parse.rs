//! The text-format reader: the inverse of `write.rs`. The grammar is in docs/ir.md.
//! Errors carry the line and column and the offending line's text; the parser stops at the
//! first error (the verifier, which runs next, collects all of its own).

use crate::attrs::{op_from_text, Attr, AttrReader};
use crate::constant::{Blob, ConstData};
use crate::dtype::{DType, Domain};
use crate::entity::Value;
use crate::graph::{Device, Graph, MemSlot, SourceMap, Span};
use crate::op::Op;
use crate::shape::{Dim, Shape};
use crate::tensor::Tensor;
use crate::types::{Quant, QuantGranularity, TensorType};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A syntax error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ParseError {
    pub span: Span,
    pub message: String,
    /// The text of the offending line.
    pub line_text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.span, self.message)?;
        if !self.line_text.is_empty() {
            write!(f, "\n  | {}", self.line_text.trim_end())?;
        }
        Ok(())
    }
}

/// Where `blob(..)` constants find their bytes.
#[derive(Clone, Debug, Default)]
pub struct ParseOptions {
    /// The folder the header's `weights "file"` is relative to.
    pub base_dir: Option<PathBuf>,
    /// Sidecar bytes given directly (overrides `base_dir`).
    pub sidecar: Option<Blob>,
    /// Skip each `blob`'s hash check: for a sidecar whose bytes the caller has already checked
    /// as a whole (an artifact's checksummed weights section).
    pub trust_blob_hashes: bool,
}

/// Parses text with no sidecar (`blob` constants are then an error).
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    parse_with(text, &ParseOptions::default())
}

/// Parses a `.tir` file; a sidecar named in its header is mapped from the file's folder.
pub fn parse_file(path: &Path) -> Result<Graph, ParseFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ParseFileError::Io(path.to_path_buf(), e))?;
    let opts = ParseOptions { base_dir: path.parent().map(Path::to_path_buf), sidecar: None, trust_blob_hashes: false };
    parse_with(&text, &opts).map_err(|e| ParseFileError::Parse(path.to_path_buf(), e))
}

#[derive(Debug, thiserror::Error)]
pub enum ParseFileError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{path}:{error}", path = .0.display(), error = .1)]
    Parse(PathBuf, ParseError),
}

/// Lines before the graph that start with `test` are filetest directives (as in Cranelift's
/// filetests): the parser skips them, keeping line numbers.
pub fn parse_with(text: &str, opts: &ParseOptions) -> Result<Graph, ParseError> {
    let mut in_header = true;
    let mut stripped: String = text
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with("graph") {
                in_header = false;
            }
            if in_header && (t == "test" || t.starts_with("test ")) {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if text.ends_with('\n') {
        stripped.push('\n');
    }
    let text = stripped.as_str();
    let tokens = lex(text)?;
    let lines: std::sync::Arc<[String]> = text.lines().map(str::to_string).collect();
    let mut p = Parser { tokens, pos: 0, lines, opts, sidecar: opts.sidecar.clone() };
    let g = p.graph()?;
    p.expect_eof()?;
    Ok(g)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Punct(char),
    Eof,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Int(n) => write!(f, "`{n}`"),
            Tok::Float(x) => write!(f, "`{x}`"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Punct(c) => write!(f, "`{c}`"),
            Tok::Eof => f.write_str("end of file"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(Tok, Span)>, ParseError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    let err = |span: Span, message: String| ParseError {
        span,
        message,
        line_text: text.lines().nth(span.line as usize - 1).unwrap_or("").to_string(),
    };
    while i < chars.len() {
        let c = chars[i];
        let span = Span { line, col };
        let start = i;
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            col += 1;
            continue;
        }
        if c == ';' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                i += 1;
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit()
            || (c == '-' && i + 1 < chars.len() && (chars[i + 1].is_ascii_digit() || chars[i + 1] == 'i'))
        {
            i += 1;
            if c == '-' && chars[i] == 'i' {
                while i < chars.len() && chars[i].is_ascii_alphabetic() {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word != "-inf" {
                    return Err(err(span, format!("unexpected `{word}`")));
                }
                Tok::Float(f64::NEG_INFINITY)
            } else if c == '0' && i < chars.len() && chars[i] == 'x' {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_hexdigit() {
                    i += 1;
                }
                let digits: String = chars[start + 2..i].iter().collect();
                let n = u64::from_str_radix(&digits, 16).map_err(|e| err(span, format!("bad hex number: {e}")))?;
                Tok::Int(n as i64)
            } else {
                let mut is_float = false;
                while i < chars.len() {
                    let d = chars[i];
                    if d.is_ascii_digit() {
                        i += 1;
                    } else if d == '.' || d == 'e' || d == 'E' {
                        is_float = true;
                        i += 1;
                        if (d == 'e' || d == 'E') && i < chars.len() && (chars[i] == '-' || chars[i] == '+') {
                            i += 1;
                        }
                    } else {
                        break;
                    }
                }
                let s: String = chars[start..i].iter().collect();
                if is_float {
                    Tok::Float(s.parse().map_err(|_| err(span, format!("bad number `{s}`")))?)
                } else {
                    Tok::Int(s.parse().map_err(|_| err(span, format!("integer `{s}` does not fit in 64 bits")))?)
                }
            }
        } else if c == '"' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None | Some('\n') => return Err(err(span, "unterminated string".into())),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            // The printer writes strings with `{:?}`, which also escapes these two.
                            Some('r') => s.push('\r'),
                            Some('0') => s.push('\0'),
                            Some(&e @ ('"' | '\\')) => s.push(e),
                            Some('u') if chars.get(i + 2) == Some(&'{') => {
                                let close = (i + 3..chars.len())
                                    .find(|&k| chars[k] == '}')
                                    .ok_or_else(|| err(span, "bad escape".into()))?;
                                let hex: String = chars[i + 3..close].iter().collect();
                                let ch = u32::from_str_radix(&hex, 16)
                                    .ok()
                                    .and_then(char::from_u32)
                                    .ok_or_else(|| err(span, "bad escape".into()))?;
                                s.push(ch);
                                i = close - 1;
                            }
                            _ => return Err(err(span, "bad escape in string".into())),
                        }
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            Tok::Str(s)
        } else if "{}[](),:=@?".contains(c) {
            i += 1;
            Tok::Punct(c)
        } else {
            return Err(err(span, format!("unexpected character `{c}`")));
        };
        col += (i - start) as u32;
        out.push((tok, span));
    }
    out.push((Tok::Eof, Span { line, col }));
    Ok(out)
}

/// A quant parameter named before its definition, resolved at the end of the graph.
struct Pending {
    owner: Value,
    field: u8,
    name: u32,
    span: Span,
}

struct Parser<'a> {
    tokens: Vec<(Tok, Span)>,
    pos: usize,
    lines: std::sync::Arc<[String]>,
    opts: &'a ParseOptions,
    sidecar: Option<Blob>,
}

type PResult<T> = Result<T, ParseError>;

const PLACEHOLDER: Value = Value(u32::MAX);

/// Largest `splat(..)` constant (16M elements, at most 128 MB while parsing).
const MAX_SPLAT_ELEMENTS: usize = 1 << 24;

/// Quant parameters named in a type: (field: 0 scale, 1 zero, 2 offset; value number; where).
type QuantRefs = Vec<(u8, u32, Span)>;

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos].0
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].1
    }

    fn next(&mut self) -> (Tok, Span) {
        let t = self.tokens[self.pos].clone();
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn error<T>(&self, span: Span, message: impl Into<String>) -> PResult<T> {
        let line_text = self.lines.get(span.line as usize - 1).cloned().unwrap_or_default();
        Err(ParseError { span, message: message.into(), line_text })
    }

    fn is_punct(&self, c: char) -> bool {
        *self.peek() == Tok::Punct(c)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == w)
    }

    fn punct(&mut self, c: char) -> PResult<()> {
        let (t, span) = self.next();
        if t == Tok::Punct(c) {
            Ok(())
        } else {
            self.error(span, format!("expected `{c}`, found {t}"))
        }
    }

    fn word(&mut self, w: &str) -> PResult<()> {
        let (t, span) = self.next();
        match t {
            Tok::Ident(s) if s == w => Ok(()),
            t => self.error(span, format!("expected `{w}`, found {t}")),
        }
    }

    fn ident(&mut self, what: &str) -> PResult<(String, Span)> {
        match self.next() {
            (Tok::Ident(s), span) => Ok((s, span)),
            (t, span) => self.error(span, format!("expected {what}, found {t}")),
        }
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        match self.next() {
            (Tok::Str(s), _) => Ok(s),
            (t, span) => self.error(span, format!("expected {what} (a quoted string), found {t}")),
        }
    }

    fn int(&mut self, what: &str) -> PResult<i64> {
        match self.next() {
            (Tok::Int(n), _) => Ok(n),
            (t, span) => self.error(span, format!("expected {what} (an integer), found {t}")),
        }
    }

    /// `key = INT`.
    fn keyed_int(&mut self, key: &str) -> PResult<i64> {
        self.word(key)?;
        self.punct('=')?;
        self.int(key)
    }

    fn expect_eof(&mut self) -> PResult<()> {
        match self.next() {
            (Tok::Eof, _) => Ok(()),
            (t, span) => self.error(span, format!("expected end of file, found {t}")),
        }
    }

    /// A value name `vN`.
    fn value_name(&mut self) -> PResult<(u32, Span)> {
        let (t, span) = self.next();
        if let Tok::Ident(s) = &t {
            if let Some(n) = s.strip_prefix('v').and_then(|d| d.parse::<u32>().ok()) {
                if n != u32::MAX {
                    return Ok((n, span));
                }
            }
        }
        self.error(span, format!("expected a value name like `v3`, found {t}"))
    }

    fn graph(&mut self) -> PResult<Graph> {
        self.word("graph")?;
        self.punct('@')?;
        let (name, _) = self.ident("a graph name")?;
        if self.is_word("weights") {
            self.next();
            let span = self.span();
            let file = self.string("the weights file")?;
            if self.sidecar.is_none() {
                if let Some(dir) = &self.opts.base_dir {
                    let path = dir.join(&file);
                    match Blob::map_file(&path) {
                        Ok(b) => self.sidecar = Some(b),
                        Err(e) => return self.error(span, format!("cannot map weights file {}: {e}", path.display())),
                    }
                }
            }
        }
        self.punct('{')?;
        let g = self.body(&name)?;
        self.punct('}')?;
        Ok(g)
    }

    fn body(&mut self, name: &str) -> PResult<Graph> {
        let mut g = Graph::new(name);
        let mut source = SourceMap { lines: self.lines.clone(), ..SourceMap::default() };
        let mut names: HashMap<u32, Value> = HashMap::new();
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            if self.is_punct('}') || *self.peek() == Tok::Eof {
                break;
            }
            if self.is_word("output") {
                source.outputs.push(self.span());
                self.next();
                let out_name = self.string("the output name")?;
                self.punct('=')?;
                let (n, span) = self.value_name()?;
                let v = self.lookup(&names, n, span)?;
                g.add_output(&out_name, v);
                continue;
            }
            self.statement(&mut g, &mut source, &mut names, &mut pending)?;
        }
        for p in pending {
            let Some(&v) = names.get(&p.name) else {
                return self.error(p.span, format!("quant parameter v{} is never defined", p.name));
            };
            let q = g.value_mut(p.owner).ty.quant.as_mut().expect("pending quant");
            match p.field {
                0 => q.scale = v,
                1 => q.zero_point = Some(v),
                _ => q.offset = Some(v),
            }
        }
        g.source = Some(source);
        Ok(g)
    }

    fn lookup(&self, names: &HashMap<u32, Value>, n: u32, span: Span) -> PResult<Value> {
        match names.get(&n) {
            Some(&v) => Ok(v),
            None => self.error(span, format!("v{n} is used before it is defined")),
        }
    }

    fn statement(
        &mut self,
        g: &mut Graph,
        source: &mut SourceMap,
        names: &mut HashMap<u32, Value>,
        pending: &mut Vec<Pending>,
    ) -> PResult<()> {
        let stmt_span = self.span();
        // Result definitions: vN: type [mem(..)] (, ...)*
        let mut defs: Vec<(u32, Span, TensorType, QuantRefs, Option<MemSlot>)> = Vec::new();
        loop {
            let (n, span) = self.value_name()?;
            if names.contains_key(&n) || defs.iter().any(|(m, ..)| *m == n) {
                return self.error(span, format!("v{n} is defined twice"));
            }
            self.punct(':')?;
            let (ty, refs) = self.tensor_type()?;
            let mem = if self.is_word("mem") { Some(self.mem()?) } else { None };
            defs.push((n, span, ty, refs, mem));
            if self.is_punct(',') {
                self.next();
                continue;
            }
            break;
        }
        self.punct('=')?;
        let (head, head_span) = self.ident("`input`, `const` or an op name")?;
        let mut defined = Vec::new();
        match head.as_str() {
            "input" | "const" => {
                if defs.len() != 1 {
                    return self.error(stmt_span, format!("`{head}` defines exactly one value"));
                }
                let (_, _, ty, _, _) = &defs[0];
                let v = if head == "input" {
                    let input_name = self.string("the input name")?;
                    g.add_input(&input_name, ty.clone())
                } else {
                    let data = self.const_data(ty)?;
                    g.add_const(ty.clone(), data)
                };
                defined.push(v);
            }
            op_name => {
                let mut operands = Vec::new();
                if matches!(self.peek(), Tok::Ident(s) if s.starts_with('v') && s[1..].parse::<u32>().is_ok()) {
                    loop {
                        let (n, span) = self.value_name()?;
                        operands.push(self.lookup(names, n, span)?);
                        if self.is_punct(',') {
                            self.next();
                            continue;
                        }
                        break;
                    }
                }
                let attrs = if self.is_punct('{') { self.attrs()? } else { Vec::new() };
                let op = match op_from_text(op_name, AttrReader::new(attrs)) {
                    Ok(op) => op,
                    Err(e) => return self.error(head_span, e),
                };
                let placement = if self.is_punct('@') {
                    self.next();
                    let (d, span) = self.ident("a device")?;
                    match Device::from_name(&d) {
                        Some(d) => Some(d),
                        None => return self.error(span, format!("unknown device `{d}` (expected cpu, gpu or npu)")),
                    }
                } else {
                    None
                };
                let body = if self.is_word("region") {
                    self.next();
                    self.punct('{')?;
                    let body = self.body(op.name())?;
                    self.punct('}')?;
                    Some(Box::new(body))
                } else {
                    None
                };
                if matches!(op, Op::Kernel { .. }) != body.is_some() {
                    return self.error(
                        head_span,
                        if body.is_some() { "only `kernel` takes a region" } else { "`kernel` needs a region" },
                    );
                }
                let types = defs.iter().map(|d| d.2.clone()).collect();
                let node = g.add_node(op, operands, types);
                {
                    let nd = g.node_mut(node);
                    nd.placement = placement;
                    nd.body = body;
                }
                defined.extend(g.node(node).outputs.iter().copied());
                if source.nodes.len() <= node.index() {
                    source.nodes.resize(node.index() + 1, None);
                }
                source.nodes[node.index()] = Some(stmt_span);
            }
        }
        for ((n, span, _, refs, mem), v) in defs.into_iter().zip(defined) {
            names.insert(n, v);
            if source.values.len() <= v.index() {
                source.values.resize(v.index() + 1, None);
            }
            source.values[v.index()] = Some(span);
            g.value_mut(v).mem = mem;
            for (field, name, span) in refs {
                pending.push(Pending { owner: v, field, name, span });
            }
        }
        Ok(())
    }

    /// `dtype[dims] [quant(..)]`; quant parameter names are returned for later resolution.
    fn tensor_type(&mut self) -> PResult<(TensorType, QuantRefs)> {
        let (d, span) = self.ident("a dtype")?;
        let Some(dtype) = DType::from_name(&d) else {
            return self.error(span, format!("unknown dtype `{d}`"));
        };
        self.punct('[')?;
        let mut dims = Vec::new();
        while !self.is_punct(']') {
            if !dims.is_empty() {
                self.punct(',')?;
            }
            let (t, span) = self.next();
            dims.push(match t {
                Tok::Int(n) if n >= 0 => Dim::Static(n as u64),
                Tok::Ident(s) => Dim::sym(&s),
                Tok::Punct('?') => Dim::Unknown,
                t => return self.error(span, format!("expected a dim (a size, a symbol or `?`), found {t}")),
            });
        }
        self.punct(']')?;
        let mut ty = TensorType::new(dtype, Shape(dims));
        let mut refs = Vec::new();
        if self.is_word("quant") {
            self.next();
            self.punct('(')?;
            let (g, span) = self.ident("`tensor`, `axis` or `block`")?;
            let granularity = match g.as_str() {
                "tensor" => QuantGranularity::PerTensor,
                "axis" => {
                    self.punct('(')?;
                    let axis = self.int("the axis")?;
                    self.punct(')')?;
                    QuantGranularity::PerAxis { axis }
                }
                "block" => {
                    self.punct('(')?;
                    let axis = self.keyed_int("axis")?;
                    self.punct(',')?;
                    let size_span = self.span();
                    let size = self.keyed_int("size")?;
                    self.punct(')')?;
                    if size <= 0 {
                        return self.error(size_span, "block size must be positive");
                    }
                    QuantGranularity::PerBlock { axis, size: size as u64 }
                }
                other => return self.error(span, format!("unknown quant granularity `{other}`")),
            };
            while self.is_punct(',') {
                self.next();
                let (key, span) = self.ident("`scale`, `zero` or `offset`")?;
                let field = match key.as_str() {
                    "scale" => 0,
                    "zero" => 1,
                    "offset" => 2,
                    _ => return self.error(span, format!("unknown quant parameter `{key}`")),
                };
                self.punct('=')?;
                let (n, vspan) = self.value_name()?;
                refs.push((field, n, vspan));
            }
            self.punct(')')?;
            if !refs.iter().any(|r| r.0 == 0) {
                return self.error(span, "quant needs a `scale`");
            }
            let zero = refs.iter().any(|r| r.0 == 1).then_some(PLACEHOLDER);
            let offset = refs.iter().any(|r| r.0 == 2).then_some(PLACEHOLDER);
            ty.quant = Some(Box::new(Quant { granularity, scale: PLACEHOLDER, zero_point: zero, offset }));
        }
        Ok((ty, refs))
    }

    fn mem(&mut self) -> PResult<MemSlot> {
        self.word("mem")?;
        self.punct('(')?;
        let arena_span = self.span();
        let arena = self.keyed_int("arena")?;
        self.punct(',')?;
        let offset_span = self.span();
        let offset = self.keyed_int("offset")?;
        self.punct(')')?;
        let arena =
            u32::try_from(arena).or_else(|_| self.error(arena_span, "arena must be a small non-negative integer"))?;
        let offset = u64::try_from(offset).or_else(|_| self.error(offset_span, "offset must not be negative"))?;
        Ok(MemSlot { arena, offset })
    }

    fn attrs(&mut self) -> PResult<Vec<(String, Attr)>> {
        self.punct('{')?;
        let mut out: Vec<(String, Attr)> = Vec::new();
        while !self.is_punct('}') {
            if !out.is_empty() {
                self.punct(',')?;
            }
            let (key, span) = self.ident("an attribute name")?;
            if out.iter().any(|(k, _)| *k == key) {
                return self.error(span, format!("attribute `{key}` is given twice"));
            }
            self.punct('=')?;
            let value = self.attr()?;
            out.push((key, value));
        }
        self.punct('}')?;
        Ok(out)
    }

    fn attr(&mut self) -> PResult<Attr> {
        let (t, span) = self.next();
        Ok(match t {
            Tok::Int(n) => Attr::Int(n),
            Tok::Float(x) => Attr::Float(x),
            Tok::Str(s) => Attr::Str(s),
            Tok::Ident(w) if w == "nan" => Attr::Float(f64::NAN),
            Tok::Ident(w) if w == "inf" => Attr::Float(f64::INFINITY),
            Tok::Ident(w) => Attr::Word(w),
            Tok::Punct('[') => {
                let mut items = Vec::new();
                while !self.is_punct(']') {
                    if !items.is_empty() {
                        self.punct(',')?;
                    }
                    items.push(self.attr()?);
                }
                self.punct(']')?;
                Attr::List(items)
            }
            t => return self.error(span, format!("expected an attribute value, found {t}")),
        })
    }

    fn const_data(&mut self, ty: &TensorType) -> PResult<ConstData> {
        let span = self.span();
        let dims = ty.shape.as_static();
        if self.is_punct('[') || self.is_word("splat") {
            let Some(dims) = dims else {
                return self.error(span, "a constant written as elements needs a static shape");
            };
            let numel = match crate::tensor::checked_numel(&dims) {
                Ok(n) => n,
                Err(e) => return self.error(span, e.to_string()),
            };
            let splat = self.is_word("splat");
            let mut literals = Vec::new();
            if splat {
                self.next();
                self.punct('(')?;
                literals.push(self.literal()?);
                self.punct(')')?;
            } else {
                self.punct('[')?;
                while !self.is_punct(']') {
                    if !literals.is_empty() {
                        self.punct(',')?;
                    }
                    literals.push(self.literal()?);
                }
                self.punct(']')?;
                if literals.len() != numel {
                    return self
                        .error(span, format!("{} elements given for a {} constant of {numel}", literals.len(), ty));
                }
            }
            if splat {
                // A splat is for small test graphs; larger weights belong in a sidecar file.
                if numel > MAX_SPLAT_ELEMENTS {
                    return self.error(span, format!("splat constant of {numel} elements is too large (at most {MAX_SPLAT_ELEMENTS}; use a weights file)"));
                }
                let one = literals[0];
                let tensor = match ty.dtype.domain() {
                    Domain::Float => Tensor::from_f32(ty.dtype, &dims, vec![one.as_f64() as f32; numel]),
                    Domain::Int => match one.as_int() {
                        Some(v) => Tensor::from_i64(ty.dtype, &dims, vec![v; numel]),
                        None => return self.error(span, format!("{} constants take integers", ty.dtype)),
                    },
                    Domain::Bool => match one.as_bool() {
                        Some(b) => Tensor::from_bool(&dims, vec![b; numel]),
                        None => return self.error(span, "bool constants take `true` and `false`"),
                    },
                };
                return match tensor {
                    Ok(t) => Ok(ConstData::from_vec(t.to_bytes())),
                    Err(e) => self.error(span, e.to_string()),
                };
            }
            let tensor = match ty.dtype.domain() {
                Domain::Float => {
                    Tensor::from_f32(ty.dtype, &dims, literals.iter().map(|l| l.as_f64() as f32).collect())
                }
                Domain::Int => match literals.iter().map(|l| l.as_int()).collect::<Option<Vec<_>>>() {
                    Some(ints) => Tensor::from_i64(ty.dtype, &dims, ints),
                    None => return self.error(span, format!("{} constants take integers", ty.dtype)),
                },
                Domain::Bool => match literals.iter().map(|l| l.as_bool()).collect::<Option<Vec<_>>>() {
                    Some(b) => Tensor::from_bool(&dims, b),
                    None => return self.error(span, "bool constants take `true` and `false`"),
                },
            };
            return match tensor {
                Ok(t) => Ok(ConstData::from_vec(t.to_bytes())),
                Err(e) => self.error(span, e.to_string()),
            };
        }
        let (word, wspan) =
            self.ident("constant data (`[..]`, `splat(..)`, `hex\"..\"`, `blob(..)` or `summary(..)`)")?;
        match word.as_str() {
            "hex" => {
                let s = self.string("hex digits")?;
                if s.len() % 2 != 0 {
                    return self.error(wspan, "hex data needs an even number of digits");
                }
                let bytes: Option<Vec<u8>> = (0..s.len())
                    .step_by(2)
                    .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                match bytes {
                    Some(b) => Ok(ConstData::from_vec(b)),
                    None => self.error(wspan, "hex data holds a non-hex digit"),
                }
            }
            "summary" => {
                self.punct('(')?;
                let bytes = self.keyed_int("bytes")? as u64;
                self.punct(',')?;
                let hash = self.keyed_int("hash")? as u64;
                self.punct(')')?;
                Ok(ConstData::Summary { bytes, hash })
            }
            "blob" => {
                self.punct('(')?;
                let offset = self.keyed_int("offset")?;
                self.punct(',')?;
                let bytes = self.keyed_int("bytes")?;
                self.punct(',')?;
                let hash = self.keyed_int("hash")? as u64;
                self.punct(')')?;
                let Some(sidecar) = &self.sidecar else {
                    return self.error(wspan, "`blob` constant but no weights file: name one in the header (`graph @g weights \"file\" {`) and parse from a file");
                };
                let blob = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(bytes).ok())
                    .and_then(|(o, n)| sidecar.slice(o, n));
                let Some(blob) = blob else {
                    return self.error(
                        wspan,
                        format!(
                            "blob at offset {offset} with {bytes} bytes lies outside the weights file ({} bytes)",
                            sidecar.len()
                        ),
                    );
                };
                let actual = if self.opts.trust_blob_hashes { hash } else { crate::constant::fnv1a64(&blob) };
                if actual != hash {
                    return self.error(wspan, format!("blob hash is 0x{actual:016x}, the text says 0x{hash:016x}: the weights file does not belong to this dump"));
                }
                Ok(ConstData::Bytes(blob))
            }
            other => self.error(wspan, format!("unknown constant data `{other}`")),
        }
    }

    fn literal(&mut self) -> PResult<Literal> {
        let (t, span) = self.next();
        Ok(match t {
            Tok::Int(n) => Literal::Int(n),
            Tok::Float(x) => Literal::Float(x),
            Tok::Ident(w) if w == "nan" => Literal::Float(f64::NAN),
            Tok::Ident(w) if w == "inf" => Literal::Float(f64::INFINITY),
            Tok::Ident(w) if w == "true" => Literal::Bool(true),
            Tok::Ident(w) if w == "false" => Literal::Bool(false),
            t => return self.error(span, format!("expected a number, found {t}")),
        })
    }
}

#[derive(Clone, Copy)]
enum Literal {
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Literal {
    fn as_f64(self) -> f64 {
        match self {
            Literal::Int(n) => n as f64,
            Literal::Float(x) => x,
            Literal::Bool(b) => b as u8 as f64,
        }
    }

    fn as_int(self) -> Option<i64> {
        match self {
            Literal::Int(n) => Some(n),
            _ => None,
        }
    }

    fn as_bool(self) -> Option<bool> {
        match self {
            Literal::Bool(b) => Some(b),
            _ => None,
        }
    }
}
