//! The FHIRPath lexer and precedence-climbing parser. It only builds syntax trees; it must not
//! evaluate anything, and it bounds nesting so that hostile input cannot exhaust the stack.

use std::sync::OnceLock;

use crate::ast::{BinaryOp, Call, Expr, ExprKind, Func, TypeOp, TypeSpec};
use crate::decimal::Decimal;
use crate::quantity::{Quantity, calendar_keyword};
use crate::temporal::{DateTimeValue, TimeValue};
use crate::value::SystemValue;

/// The deepest expression tree accepted. Evaluation recurses along the tree, so this bounds the
/// evaluator's stack use too; the deepest expression in the FHIR R4 core package is about 40.
pub const MAX_DEPTH: usize = 200;

/// Why an expression could not be parsed, and where (a byte offset into the source).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath syntax error at offset {position}: {message}")]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        position,
        message: message.into(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A plain identifier (keywords included; the parser decides).
    Ident(String),
    /// A `backtick-delimited` identifier, never a keyword.
    Quoted(String),
    Str(String),
    Number(String),
    /// The text after `@` of a date or date-time literal.
    DateTime(String),
    /// The text after `@T` of a time literal.
    Time(String),
    /// `%name`.
    Var(String),
    /// `$this`, `$index`, `$total`.
    Dollar(String),
    Sym(&'static str),
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
}

const SYMBOLS: [&str; 21] = [
    "<=", ">=", "!=", "!~", "=", "~", "<", ">", "+", "-", "*", "/", "&", "|", ".", ",", "(", ")",
    "[", "]", "{",
];

struct Lexer<'s> {
    src: &'s str,
    bytes: &'s [u8],
    at: usize,
}

impl<'s> Lexer<'s> {
    fn peek_at(&self, offset: usize) -> Option<u8> {
        self.bytes.get(self.at + offset).copied()
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'s str, ParseError> {
        match self.src.get(start..end) {
            Some(s) => Ok(s),
            None => err(start, "invalid text"),
        }
    }

    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        loop {
            match (self.peek_at(0), self.peek_at(1)) {
                (Some(c), _) if c.is_ascii_whitespace() => self.at += 1,
                (Some(b'/'), Some(b'/')) => {
                    while let Some(c) = self.peek_at(0) {
                        if c == b'\n' {
                            break;
                        }
                        self.at += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let start = self.at;
                    self.at += 2;
                    loop {
                        match (self.peek_at(0), self.peek_at(1)) {
                            (Some(b'*'), Some(b'/')) => {
                                self.at += 2;
                                break;
                            }
                            (Some(_), _) => self.at += 1,
                            (None, _) => return err(start, "unterminated comment"),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn ident_end(&self, from: usize) -> usize {
        let mut end = from;
        while let Some(c) = self.bytes.get(end) {
            if c.is_ascii_alphanumeric() || *c == b'_' {
                end += 1;
            } else {
                break;
            }
        }
        end
    }

    /// Reads a quoted string or delimited identifier starting at the opening `quote`,
    /// resolving escapes.
    fn quoted(&mut self, quote: u8) -> Result<String, ParseError> {
        let start = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek_at(0) else {
                return err(start, "unterminated string");
            };
            if c == quote {
                self.at += 1;
                return Ok(out);
            }
            if c == b'\\' {
                let Some(e) = self.peek_at(1) else {
                    return err(self.at, "unterminated escape");
                };
                self.at += 2;
                match e {
                    b'\'' => out.push('\''),
                    b'"' => out.push('"'),
                    b'`' => out.push('`'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let hex = self.slice(self.at, self.at + 4)?;
                        let code = u32::from_str_radix(hex, 16)
                            .or_else(|_| err(self.at, "invalid \\u escape"))?;
                        self.at += 4;
                        // A surrogate pair arrives as two escapes; join them when both are there.
                        let ch = if (0xD800..0xDC00).contains(&code)
                            && self.peek_at(0) == Some(b'\\')
                            && self.peek_at(1) == Some(b'u')
                        {
                            let low_hex = self.slice(self.at + 2, self.at + 6)?;
                            let low = u32::from_str_radix(low_hex, 16)
                                .or_else(|_| err(self.at, "invalid \\u escape"))?;
                            self.at += 6;
                            char::from_u32(
                                0x10000
                                    + ((code - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF),
                            )
                        } else {
                            char::from_u32(code)
                        };
                        match ch {
                            Some(ch) => out.push(ch),
                            None => return err(self.at, "invalid \\u escape"),
                        }
                    }
                    // Unknown escapes keep the character, as most engines do.
                    other => {
                        let ch_start = self.at - 1;
                        let len = utf8_len(other);
                        out.push_str(self.slice(ch_start, ch_start + len)?);
                        self.at = ch_start + len;
                    }
                }
                continue;
            }
            let len = utf8_len(c);
            out.push_str(self.slice(self.at, self.at + len)?);
            self.at += len;
        }
    }

    /// Length of a date/time literal body starting at `from` (after `@`), following the
    /// literal grammar so that a following operator is not swallowed.
    fn datetime_len(&self, from: usize) -> usize {
        let b = self.bytes;
        let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        let digits = |i: usize, n: usize| (i..i + n).all(digit);
        let mut i = from;
        if !digits(i, 4) {
            return 0;
        }
        i += 4;
        if b.get(i) == Some(&b'-') && digits(i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b'-') && digits(i + 1, 2) {
                i += 3;
            }
        }
        if b.get(i) == Some(&b'T') {
            i += 1;
            let time = self.time_len(i);
            if time > 0 {
                i += time;
                i += self.tz_len(i);
            }
        }
        i - from
    }

    fn time_len(&self, from: usize) -> usize {
        let b = self.bytes;
        let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        let digits = |i: usize, n: usize| (i..i + n).all(digit);
        let mut i = from;
        if !digits(i, 2) {
            return 0;
        }
        i += 2;
        if b.get(i) == Some(&b':') && digits(i + 1, 2) {
            i += 3;
            if b.get(i) == Some(&b':') && digits(i + 1, 2) {
                i += 3;
                if b.get(i) == Some(&b'.') && digit(i + 1) {
                    i += 1;
                    while digit(i) {
                        i += 1;
                    }
                }
            }
        }
        i - from
    }

    fn tz_len(&self, from: usize) -> usize {
        let b = self.bytes;
        let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
        match b.get(from) {
            Some(b'Z') => 1,
            Some(b'+' | b'-')
                if digit(from + 1)
                    && digit(from + 2)
                    && b.get(from + 3) == Some(&b':')
                    && digit(from + 4)
                    && digit(from + 5) =>
            {
                6
            }
            _ => 0,
        }
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia()?;
        let pos = self.at;
        let Some(c) = self.peek_at(0) else {
            return Ok(Token { tok: Tok::Eof, pos });
        };
        let tok = if c.is_ascii_alphabetic() || c == b'_' {
            let end = self.ident_end(self.at);
            let name = self.slice(self.at, end)?.to_owned();
            self.at = end;
            Tok::Ident(name)
        } else if c == b'`' {
            Tok::Quoted(self.quoted(b'`')?)
        } else if c == b'\'' {
            Tok::Str(self.quoted(b'\'')?)
        } else if c.is_ascii_digit() {
            let mut end = self.at;
            while self.bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if self.bytes.get(end) == Some(&b'.')
                && self.bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
            {
                end += 1;
                while self.bytes.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
            }
            let text = self.slice(self.at, end)?.to_owned();
            self.at = end;
            Tok::Number(text)
        } else if c == b'@' {
            if self.peek_at(1) == Some(b'T') {
                let len = self.time_len(self.at + 2);
                if len == 0 {
                    return err(pos, "invalid time literal");
                }
                let text = self.slice(self.at + 2, self.at + 2 + len)?.to_owned();
                self.at += 2 + len;
                Tok::Time(text)
            } else {
                let len = self.datetime_len(self.at + 1);
                if len == 0 {
                    return err(pos, "invalid date/time literal");
                }
                let text = self.slice(self.at + 1, self.at + 1 + len)?.to_owned();
                self.at += 1 + len;
                Tok::DateTime(text)
            }
        } else if c == b'%' {
            self.at += 1;
            match self.peek_at(0) {
                Some(b'`') => Tok::Var(self.quoted(b'`')?),
                Some(b'\'') => Tok::Var(self.quoted(b'\'')?),
                Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                    let end = self.ident_end(self.at);
                    let name = self.slice(self.at, end)?.to_owned();
                    self.at = end;
                    Tok::Var(name)
                }
                _ => return err(pos, "expected a name after %"),
            }
        } else if c == b'$' {
            let end = self.ident_end(self.at + 1);
            let name = self.slice(self.at + 1, end)?.to_owned();
            self.at = end;
            Tok::Dollar(name)
        } else if c == b'{' {
            self.skip_after_brace(pos)?;
            Tok::Sym("{}")
        } else {
            let rest = self.slice(self.at, self.src.len())?;
            match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
                Some(sym) => {
                    self.at += sym.len();
                    Tok::Sym(sym)
                }
                None => {
                    let ch = rest.chars().next().unwrap_or('?');
                    return err(pos, format!("unexpected character {ch:?}"));
                }
            }
        };
        Ok(Token { tok, pos })
    }

    /// `{` must be followed (after optional space) by `}`: the empty collection literal.
    fn skip_after_brace(&mut self, pos: usize) -> Result<(), ParseError> {
        self.at += 1;
        self.skip_trivia()?;
        if self.peek_at(0) == Some(b'}') {
            self.at += 1;
            Ok(())
        } else {
            err(pos, "expected '}' after '{'")
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer {
        src,
        bytes: src.as_bytes(),
        at: 0,
    };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next()?;
        let end = token.tok == Tok::Eof;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Current recursion depth of the parser itself.
    nesting: usize,
}

/// Binding power of a binary operator token (higher binds tighter).
fn binary_op(tok: &Tok) -> Option<(BinaryOp, u8)> {
    Some(match tok {
        Tok::Sym("*") => (BinaryOp::Mul, 10),
        Tok::Sym("/") => (BinaryOp::Div, 10),
        Tok::Ident(k) if k == "div" => (BinaryOp::IntDiv, 10),
        Tok::Ident(k) if k == "mod" => (BinaryOp::Mod, 10),
        Tok::Sym("+") => (BinaryOp::Add, 9),
        Tok::Sym("-") => (BinaryOp::Sub, 9),
        Tok::Sym("&") => (BinaryOp::Concat, 9),
        Tok::Sym("|") => (BinaryOp::Union, 7),
        Tok::Sym("<") => (BinaryOp::Lt, 6),
        Tok::Sym(">") => (BinaryOp::Gt, 6),
        Tok::Sym("<=") => (BinaryOp::Le, 6),
        Tok::Sym(">=") => (BinaryOp::Ge, 6),
        Tok::Sym("=") => (BinaryOp::Eq, 5),
        Tok::Sym("!=") => (BinaryOp::Ne, 5),
        Tok::Sym("~") => (BinaryOp::Equiv, 5),
        Tok::Sym("!~") => (BinaryOp::NotEquiv, 5),
        Tok::Ident(k) if k == "in" => (BinaryOp::In, 4),
        Tok::Ident(k) if k == "contains" => (BinaryOp::Contains, 4),
        Tok::Ident(k) if k == "and" => (BinaryOp::And, 3),
        Tok::Ident(k) if k == "or" => (BinaryOp::Or, 2),
        Tok::Ident(k) if k == "xor" => (BinaryOp::Xor, 2),
        Tok::Ident(k) if k == "implies" => (BinaryOp::Implies, 1),
        _ => return None,
    })
}

/// Binding power of `is` and `as` (between additive and union).
const TYPE_OP_POWER: u8 = 8;

impl Parser {
    fn peek(&self) -> &Tok {
        self.tokens.get(self.at).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.at).map_or(0, |t| t.pos)
    }

    fn bump(&mut self) -> Tok {
        let tok = self.peek().clone();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        tok
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), ParseError> {
        if self.peek() == &Tok::Sym(sym) {
            self.bump();
            Ok(())
        } else {
            err(self.pos(), format!("expected '{sym}'"))
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return err(
                self.pos(),
                format!("expression nested deeper than {MAX_DEPTH}"),
            );
        }
        Ok(())
    }

    // The functions from here to `arguments` recurse into each other once per nesting level
    // of the expression, so they keep few locals and leave everything else (literals, node
    // building, error text) to helpers that are not on the recursive path.

    fn expression(&mut self, min_power: u8) -> Result<Expr, ParseError> {
        self.enter()?;
        let mut left = self.unary()?;
        while let Some((op, pos)) = self.infix(min_power) {
            left = match op {
                Infix::Type(op) => {
                    let ty = self.type_specifier()?;
                    type_op_node(op, left, ty, pos)?
                }
                Infix::Binary(op, power) => {
                    let right = self.expression(power + 1)?;
                    binary_node(op, left, right, pos)?
                }
            };
        }
        self.nesting -= 1;
        Ok(left)
    }

    /// Consumes the next infix operator if it binds at least as tightly as `min_power`.
    fn infix(&mut self, min_power: u8) -> Option<(Infix, usize)> {
        let pos = self.pos();
        let op = match self.peek() {
            Tok::Ident(k) if k == "is" => Infix::Type(TypeOp::Is),
            Tok::Ident(k) if k == "as" => Infix::Type(TypeOp::As),
            tok => {
                let (op, power) = binary_op(tok)?;
                Infix::Binary(op, power)
            }
        };
        let power = match op {
            Infix::Type(_) => TYPE_OP_POWER,
            Infix::Binary(_, power) => power,
        };
        if power < min_power {
            return None;
        }
        self.bump();
        Some((op, pos))
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let negate = match self.peek() {
            Tok::Sym("-") => true,
            Tok::Sym("+") => false,
            _ => return self.postfix(),
        };
        let pos = self.pos();
        self.bump();
        self.enter()?;
        let operand = self.unary()?;
        self.nesting -= 1;
        if negate {
            negate_node(operand, pos)
        } else {
            Ok(operand)
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.term()?;
        loop {
            expr = match self.peek() {
                Tok::Sym(".") => {
                    self.bump();
                    self.invocation(Some(expr))?
                }
                Tok::Sym("[") => self.indexer(expr)?,
                _ => return Ok(expr),
            };
        }
    }

    fn indexer(&mut self, target: Expr) -> Result<Expr, ParseError> {
        let pos = self.pos();
        self.bump();
        let index = self.expression(0)?;
        self.expect("]")?;
        let depth = target.depth.max(index.depth);
        let kind = ExprKind::Indexer {
            target: Box::new(target),
            index: Box::new(index),
        };
        with_depth(kind, depth, pos)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Tok::Sym("(") => {}
            Tok::Ident(name) if name != "true" && name != "false" => return self.invocation(None),
            Tok::Quoted(_) => return self.invocation(None),
            _ => return self.atom(),
        }
        self.bump();
        let inner = self.expression(0)?;
        self.expect(")")?;
        Ok(inner)
    }

    /// A member name or a function call, on `target` or (without one) on the input focus.
    fn invocation(&mut self, target: Option<Expr>) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let name = self.identifier()?;
        if self.peek() != &Tok::Sym("(") {
            return member_node(target, name, pos);
        }
        self.bump();
        let args = self.arguments()?;
        call_node(target, &name, args, pos)
    }

    fn arguments(&mut self) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if self.peek() != &Tok::Sym(")") {
            loop {
                args.push(self.expression(0)?);
                if self.peek() != &Tok::Sym(",") {
                    break;
                }
                self.bump();
            }
        }
        self.expect(")")?;
        Ok(args)
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, ParseError> {
        let first = self.identifier()?;
        if self.peek() == &Tok::Sym(".") {
            self.bump();
            let name = self.identifier()?;
            return Ok(TypeSpec {
                namespace: Some(first),
                name,
            });
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn identifier(&mut self) -> Result<String, ParseError> {
        match self.bump() {
            Tok::Ident(name) | Tok::Quoted(name) => Ok(name),
            _ => {
                self.at = self.at.saturating_sub(1);
                err(self.pos(), "expected an identifier")
            }
        }
    }

    /// A literal, variable or special variable: a term that contains no sub-expression.
    fn atom(&mut self) -> Result<Expr, ParseError> {
        let pos = self.pos();
        let kind = match self.bump() {
            Tok::Sym("{}") => ExprKind::Empty,
            Tok::Str(s) => ExprKind::Literal(Box::new(SystemValue::String(s))),
            Tok::Number(text) => return self.number(&text, pos),
            Tok::DateTime(text) => match DateTimeValue::parse(&text) {
                Some((v, true)) => ExprKind::Literal(Box::new(SystemValue::DateTime(v))),
                Some((v, false)) => ExprKind::Literal(Box::new(SystemValue::Date(v))),
                None => return err(pos, "invalid date/time literal"),
            },
            Tok::Time(text) => match TimeValue::parse(&text) {
                Some(v) => ExprKind::Literal(Box::new(SystemValue::Time(v))),
                None => return err(pos, "invalid time literal"),
            },
            Tok::Var(name) => ExprKind::Variable(name),
            Tok::Dollar(name) => match name.as_str() {
                "this" => ExprKind::This,
                "index" => ExprKind::Index,
                "total" => ExprKind::Total,
                _ => return err(pos, format!("unknown special variable ${name}")),
            },
            Tok::Ident(name) if name == "true" || name == "false" => {
                ExprKind::Literal(Box::new(SystemValue::Boolean(name == "true")))
            }
            Tok::Eof => return err(pos, "unexpected end of expression"),
            _ => return err(pos, "expected an expression"),
        };
        with_depth(kind, 0, pos)
    }

    fn number(&mut self, text: &str, pos: usize) -> Result<Expr, ParseError> {
        let value = if text.contains('.') {
            match Decimal::parse(text) {
                Some(d) => SystemValue::Decimal(d),
                None => return err(pos, "decimal literal out of range"),
            }
        } else {
            match text.parse::<i64>() {
                Ok(i) => SystemValue::Integer(i),
                Err(_) => match Decimal::parse(text) {
                    Some(d) => SystemValue::Decimal(d),
                    None => return err(pos, "number literal out of range"),
                },
            }
        };
        // A number followed by a unit is a quantity literal.
        let unit = match self.peek() {
            Tok::Str(unit) => Some(unit.clone()),
            Tok::Ident(word) => calendar_keyword(word).map(str::to_owned),
            _ => None,
        };
        if let Some(unit) = unit {
            self.bump();
            let amount = match value {
                SystemValue::Integer(i) => Decimal::from_i64(i),
                SystemValue::Decimal(d) => d,
                _ => return err(pos, "invalid quantity"),
            };
            return with_depth(
                ExprKind::Literal(Box::new(SystemValue::Quantity(Quantity::new(amount, unit)))),
                0,
                pos,
            );
        }
        with_depth(ExprKind::Literal(Box::new(value)), 0, pos)
    }
}

/// What `infix` found.
#[derive(Clone, Copy)]
enum Infix {
    Type(TypeOp),
    Binary(BinaryOp, u8),
}

fn type_op_node(op: TypeOp, operand: Expr, ty: TypeSpec, pos: usize) -> Result<Expr, ParseError> {
    let depth = operand.depth;
    let kind = ExprKind::TypeOp {
        op,
        operand: Box::new(operand),
        ty: Box::new(ty),
    };
    with_depth(kind, depth, pos)
}

fn binary_node(op: BinaryOp, left: Expr, right: Expr, pos: usize) -> Result<Expr, ParseError> {
    let depth = left.depth.max(right.depth);
    let kind = ExprKind::Binary {
        op,
        left: Box::new(left),
        right: Box::new(right),
    };
    with_depth(kind, depth, pos)
}

fn negate_node(operand: Expr, pos: usize) -> Result<Expr, ParseError> {
    // Negative literals are folded so that they stay literals (and the smallest integer can
    // be written).
    if let ExprKind::Literal(value) = &operand.kind
        && let Some(negated) = negate_literal(value)
    {
        return with_depth(ExprKind::Literal(Box::new(negated)), 0, pos);
    }
    let depth = operand.depth;
    with_depth(ExprKind::Negate(Box::new(operand)), depth, pos)
}

fn member_node(target: Option<Expr>, name: String, pos: usize) -> Result<Expr, ParseError> {
    let depth = target.as_ref().map_or(0, |t| t.depth);
    let kind = ExprKind::Member {
        target: target.map(Box::new),
        name,
    };
    with_depth(kind, depth, pos)
}

fn call_node(
    target: Option<Expr>,
    name: &str,
    mut args: Vec<Expr>,
    pos: usize,
) -> Result<Expr, ParseError> {
    let Some((func, min, max)) = Func::lookup(name) else {
        return err(pos, format!("unknown function {name}()"));
    };
    if args.len() < min || args.len() > max {
        let wanted = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return err(
            pos,
            format!("{name}() takes {wanted} argument(s), not {}", args.len()),
        );
    }
    let type_arg = if func.takes_type() {
        match args.first().and_then(type_spec_of) {
            Some(spec) => Some(spec),
            None => return err(pos, format!("{name}() needs a type name")),
        }
    } else {
        None
    };
    if type_arg.is_some() {
        args.clear();
    }
    let depth = target
        .iter()
        .chain(args.iter())
        .map(|e| e.depth)
        .max()
        .unwrap_or(0);
    let call = Call {
        target,
        func,
        args,
        type_arg,
        regex: OnceLock::new(),
    };
    with_depth(ExprKind::Call(Box::new(call)), depth, pos)
}

fn with_depth(kind: ExprKind, children_depth: usize, pos: usize) -> Result<Expr, ParseError> {
    let depth = children_depth + 1;
    if depth > MAX_DEPTH {
        return err(pos, format!("expression nested deeper than {MAX_DEPTH}"));
    }
    Ok(Expr { kind, depth })
}

fn negate_literal(value: &SystemValue) -> Option<SystemValue> {
    Some(match value {
        SystemValue::Integer(i) => SystemValue::Integer(i.checked_neg()?),
        SystemValue::Decimal(d) => SystemValue::Decimal(d.checked_neg()?),
        SystemValue::Quantity(q) => {
            SystemValue::Quantity(Quantity::new(q.value.checked_neg()?, q.unit.clone()))
        }
        _ => return None,
    })
}

/// Reads a type name written as an expression (`Patient`, `FHIR.Patient`, `'Patient'`).
fn type_spec_of(expr: &Expr) -> Option<TypeSpec> {
    match &expr.kind {
        ExprKind::Member { target: None, name } => Some(TypeSpec {
            namespace: None,
            name: name.clone(),
        }),
        ExprKind::Member {
            target: Some(target),
            name,
        } => match &target.kind {
            ExprKind::Member {
                target: None,
                name: namespace,
            } => Some(TypeSpec {
                namespace: Some(namespace.clone()),
                name: name.clone(),
            }),
            _ => None,
        },
        ExprKind::Literal(value) => match value.as_ref() {
            SystemValue::String(name) => Some(TypeSpec {
                namespace: None,
                name: name.clone(),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Parses a whole expression.
pub(crate) fn parse_expr(src: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(src)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        nesting: 0,
    };
    let expr = parser.expression(0)?;
    match parser.peek() {
        Tok::Eof => Ok(expr),
        _ => err(parser.pos(), "unexpected text after the expression"),
    }
}
