//! Falco filter conditions: tokens, an AST, and the parser.
//!
//! The grammar is Falco's (libsinsp's filter parser): `or` binds loosest, then `and`, then
//! `not`; a check is `field op value`, `field exists`, a parenthesised expression, or a bare
//! identifier naming a macro. Fields may take an argument (`proc.aname[2]`,
//! `jevt.value[/stage]`); values are bare words, quoted strings, or lists `(a, "b c", list_name)`
//! whose bare items may name Falco lists.

use std::fmt;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Intersects,
    Pmatch,
    Startswith,
    Bstartswith,
    Endswith,
    Contains,
    Icontains,
    Bcontains,
    Glob,
    Iglob,
    Regex,
}

impl Op {
    /// The operator as Falco spells it (also in exception `comps`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
            Op::Intersects => "intersects",
            Op::Pmatch => "pmatch",
            Op::Startswith => "startswith",
            Op::Bstartswith => "bstartswith",
            Op::Endswith => "endswith",
            Op::Contains => "contains",
            Op::Icontains => "icontains",
            Op::Bcontains => "bcontains",
            Op::Glob => "glob",
            Op::Iglob => "iglob",
            Op::Regex => "regex",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "=" | "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "intersects" => Op::Intersects,
            "pmatch" => Op::Pmatch,
            "startswith" => Op::Startswith,
            "bstartswith" => Op::Bstartswith,
            "endswith" => Op::Endswith,
            "contains" => Op::Contains,
            "icontains" => Op::Icontains,
            "bcontains" => Op::Bcontains,
            "glob" => Op::Glob,
            "iglob" => Op::Iglob,
            "regex" => Op::Regex,
            _ => return None,
        })
    }

    /// Operators whose right-hand side is a list.
    pub fn takes_list(self) -> bool {
        matches!(self, Op::In | Op::Intersects | Op::Pmatch)
    }
}

/// A field, with its argument when it has one (`proc.aname[2]` → `proc.aname`, `2`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    pub name: String,
    pub arg: Option<String>,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.arg {
            Some(a) => write!(f, "{}[{a}]", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A right-hand side item: a literal, or (in a list) a bare word that may name a Falco list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Literal(String),
    /// Unquoted: a list name if one is defined, else the word itself.
    Bare(String),
}

impl Item {
    pub fn text(&self) -> &str {
        match self {
            Item::Literal(s) | Item::Bare(s) => s,
        }
    }
}

/// A condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    /// A macro reference.
    Macro(String),
    Compare {
        field: Field,
        op: Op,
        values: Vec<Item>,
    },
    Exists(Field),
}

impl Expr {
    /// Every macro this expression names, in order of appearance.
    pub fn macros(&self, out: &mut Vec<String>) {
        match self {
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.macros(out)),
            Expr::Not(e) => e.macros(out),
            Expr::Macro(m) => out.push(m.clone()),
            Expr::Compare { .. } | Expr::Exists(_) => {}
        }
    }

    /// Every bare list item (possible list reference).
    pub fn bare_items(&self, out: &mut Vec<String>) {
        match self {
            Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| e.bare_items(out)),
            Expr::Not(e) => e.bare_items(out),
            Expr::Compare { values, op, .. } if op.takes_list() => {
                out.extend(values.iter().filter_map(|i| match i {
                    Item::Bare(b) => Some(b.clone()),
                    Item::Literal(_) => None,
                }))
            }
            _ => {}
        }
    }
}

/// A parse error: what, and the byte offset in the condition text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    /// A comparison symbol (`=`, `!=`, `<=`, ...).
    Symbol(String),
    Quoted(String),
    /// A bare word: identifier, field (with its `[arg]`), keyword or value.
    Word(String),
}

fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((start, Tok::LParen));
                i += 1;
            }
            b')' => {
                out.push((start, Tok::RParen));
                i += 1;
            }
            b',' => {
                out.push((start, Tok::Comma));
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = text.get(i..i + 2).unwrap_or("");
                let sym = if matches!(two, "==" | "!=" | "<=" | ">=") {
                    two
                } else if c == b'!' {
                    return Err(ParseError {
                        offset: i,
                        reason: "`!` must be followed by `=`".into(),
                    });
                } else {
                    &text[i..i + 1]
                };
                i += sym.len();
                out.push((start, Tok::Symbol(sym.to_string())));
            }
            b'"' | b'\'' => {
                let quote = c;
                i += 1;
                let mut s = String::new();
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(ParseError {
                                offset: start,
                                reason: "unterminated string".into(),
                            });
                        }
                        Some(&b) if b == quote => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < bytes.len() => {
                            let next = text[i + 1..].chars().next().unwrap_or('\\');
                            s.push(next);
                            i += 1 + next.len_utf8();
                        }
                        Some(_) => {
                            let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((start, Tok::Quoted(s)));
            }
            _ => {
                // A bare word runs to whitespace, a paren, a comma or a comparison symbol;
                // a `[...]` argument belongs to it whole (it may hold `/` and `.`).
                let mut depth = 0;
                while i < bytes.len() {
                    let b = bytes[i];
                    if b == b'[' {
                        depth += 1;
                    } else if b == b']' && depth > 0 {
                        depth -= 1;
                    } else if depth == 0
                        && (matches!(
                            b,
                            b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b',' | b'=' | b'<' | b'>'
                        ) || (b == b'!' && bytes.get(i + 1) == Some(&b'=')))
                    {
                        break;
                    }
                    i += 1;
                }
                out.push((start, Tok::Word(text[start..i].to_string())));
            }
        }
    }
    Ok(out)
}

/// How deep parentheses and `not`s may nest. Falco's own rules nest a few levels; the parser
/// and every walk of the tree recurse per level, and a thread's stack (2 MiB) must hold them.
pub const MAX_DEPTH: usize = 100;

/// Parses a condition.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let toks = tokenize(text)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: text.len(),
        depth: 0,
    };
    let e = p.or()?;
    if let Some((offset, t)) = p.toks.get(p.pos) {
        return Err(ParseError {
            offset: *offset,
            reason: format!("unexpected {}", describe(t)),
        });
    }
    Ok(e)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
    /// Parentheses and `not`s open at `pos`.
    depth: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Symbol(s) => format!("`{s}`"),
        Tok::Quoted(s) => format!("string {s:?}"),
        Tok::Word(w) => format!("`{w}`"),
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn error<T>(&self, reason: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: self.offset(),
            reason: reason.into(),
        })
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.and()?];
        while self.keyword("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut items = vec![self.not()?];
        while self.keyword("and") {
            self.pos += 1;
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    /// Runs `inner` one nesting level deeper, refusing past [`MAX_DEPTH`].
    fn nested<T>(
        &mut self,
        inner: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth == MAX_DEPTH {
            return self.error(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        self.depth += 1;
        let out = inner(self);
        self.depth -= 1;
        out
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("not") {
            return self.nested(|p| {
                p.pos += 1;
                Ok(Expr::Not(Box::new(p.not()?)))
            });
        }
        self.check()
    }

    fn check(&mut self) -> Result<Expr, ParseError> {
        match self.peek().cloned() {
            Some(Tok::LParen) => self.nested(|p| {
                p.pos += 1;
                let e = p.or()?;
                if p.peek() != Some(&Tok::RParen) {
                    return p.error("expected `)`");
                }
                p.pos += 1;
                Ok(e)
            }),
            Some(Tok::Word(w)) if !matches!(w.as_str(), "and" | "or" | "not") => {
                self.pos += 1;
                // An operator follows a field; anything else ends a macro reference.
                let op = match self.peek() {
                    Some(Tok::Symbol(s)) => Op::parse(s),
                    Some(Tok::Word(o)) if o == "exists" => {
                        self.pos += 1;
                        return Ok(Expr::Exists(field(&w)));
                    }
                    Some(Tok::Word(o)) => Op::parse(o),
                    _ => None,
                };
                let Some(op) = op else {
                    if w.contains('.') || w.contains('[') {
                        return self.error(format!("expected an operator after field `{w}`"));
                    }
                    return Ok(Expr::Macro(w));
                };
                self.pos += 1;
                let values = self.values(op)?;
                Ok(Expr::Compare {
                    field: field(&w),
                    op,
                    values,
                })
            }
            Some(t) => self.error(format!("unexpected {}", describe(&t))),
            None => self.error("unexpected end of condition"),
        }
    }

    fn values(&mut self, op: Op) -> Result<Vec<Item>, ParseError> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let mut items = Vec::new();
            loop {
                match self.peek().cloned() {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        break;
                    }
                    Some(Tok::Quoted(s)) => items.push(Item::Literal(s)),
                    Some(Tok::Word(w)) => items.push(Item::Bare(w)),
                    Some(t) => return self.error(format!("unexpected {} in a list", describe(&t))),
                    None => return self.error("unterminated list"),
                }
                self.pos += 1;
                match self.peek() {
                    Some(Tok::Comma) => self.pos += 1,
                    Some(Tok::RParen) => {}
                    Some(t) => {
                        let t = describe(t);
                        return self.error(format!("expected `,` or `)` in a list, found {t}"));
                    }
                    None => return self.error("unterminated list"),
                }
            }
            return Ok(items);
        }
        if op.takes_list() {
            return self.error(format!("`{}` needs a list `(...)`", op.as_str()));
        }
        match self.peek().cloned() {
            Some(Tok::Quoted(s)) => {
                self.pos += 1;
                Ok(vec![Item::Literal(s)])
            }
            Some(Tok::Word(w)) => {
                self.pos += 1;
                Ok(vec![Item::Literal(w)])
            }
            Some(t) => self.error(format!("expected a value, found {}", describe(&t))),
            None => self.error("expected a value"),
        }
    }
}

fn field(word: &str) -> Field {
    match word.split_once('[') {
        Some((name, rest)) => Field {
            name: name.to_string(),
            arg: Some(rest.trim_end_matches(']').to_string()),
        },
        None => Field {
            name: word.to_string(),
            arg: None,
        },
    }
}

/// Serialised as Falco spells it (`=`, `startswith`, ...), as in exception `comps`.
impl serde::Serialize for Op {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(field: &str, op: Op, values: &[&str]) -> Expr {
        Expr::Compare {
            field: super::field(field),
            op,
            values: values
                .iter()
                .map(|v| Item::Literal(v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn precedence_and_checks() {
        let e =
            parse("evt.type=connect and (fd.typechar=4 or fd.typechar=6) and not k8s_containers")
                .unwrap();
        assert_eq!(
            e,
            Expr::And(vec![
                cmp("evt.type", Op::Eq, &["connect"]),
                Expr::Or(vec![
                    cmp("fd.typechar", Op::Eq, &["4"]),
                    cmp("fd.typechar", Op::Eq, &["6"])
                ]),
                Expr::Not(Box::new(Expr::Macro("k8s_containers".into()))),
            ])
        );
    }

    #[test]
    fn lists_arguments_strings_and_exists() {
        let e = parse(
            "proc.aname[2] in (bash, \"my shell\", shell_binaries) and jevt.value[/stage] exists",
        )
        .unwrap();
        let Expr::And(items) = e else { panic!() };
        assert_eq!(
            items[0],
            Expr::Compare {
                field: Field {
                    name: "proc.aname".into(),
                    arg: Some("2".into())
                },
                op: Op::In,
                values: vec![
                    Item::Bare("bash".into()),
                    Item::Literal("my shell".into()),
                    Item::Bare("shell_binaries".into())
                ],
            }
        );
        assert_eq!(
            items[1],
            Expr::Exists(Field {
                name: "jevt.value".into(),
                arg: Some("/stage".into())
            })
        );
        assert_eq!(
            parse("fd.name startswith /etc/").unwrap(),
            cmp("fd.name", Op::Startswith, &["/etc/"])
        );
        assert_eq!(
            parse("proc.name!=sh").unwrap(),
            cmp("proc.name", Op::Ne, &["sh"])
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("proc.name in bash").unwrap_err();
        assert_eq!(e.offset, 13);
        let e = parse("(proc.name = sh").unwrap_err();
        assert_eq!((e.offset, e.reason.as_str()), (15, "expected `)`"));
        assert!(parse("proc.name").unwrap_err().reason.contains("operator"));
    }

    /// Found by the `falco_condition` fuzz target: 3 000 nested parentheses overflowed the
    /// stack (SIGSEGV). Past the limit it is an error at the offending offset.
    #[test]
    fn nesting_past_the_limit_is_an_error_not_a_stack_overflow() {
        let deep = |n: usize| format!("{}proc.name = a{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        let err = parse(&deep(3000)).unwrap_err();
        assert_eq!(err.offset, MAX_DEPTH);
        assert!(err.reason.contains("nested deeper than"), "{}", err.reason);
        let nots = format!("{}proc.name = a", "not ".repeat(3000));
        assert!(
            parse(&nots)
                .unwrap_err()
                .reason
                .contains("nested deeper than")
        );
    }
}
