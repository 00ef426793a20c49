//! The tree-walking evaluator: paths, operators, equality and comparison, type tests and
//! variables. Functions live in `functions.rs`. It must not print, allocate JSON, or recurse
//! deeper than the parsed tree (whose depth the parser bounds).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use crate::ast::{BinaryOp, Expr, ExprKind, TypeOp, TypeSpec};
use crate::decimal::Decimal;
use crate::quantity::Quantity;
use crate::temporal::{DateTimeValue, TimeUnit};
use crate::value::{Item, Prim, SystemValue, json_equal, normalize_type, primitive_kind};
use crate::{Collection, Context, EvalError, Model, navigate};

/// The largest collection repeat(), descendants() and friends may build.
pub const MAX_ITEMS: usize = 1_000_000;

/// How deep JSON equality looks before giving up (the server already caps documents at 64).
const JSON_DEPTH: usize = 128;

pub(crate) type Res<T> = Result<T, EvalError>;

/// A collection being built without duplicates (by `=`). Items are bucketed by a hash that
/// equal items always share, so that large unions and distinct() stay close to linear.
#[derive(Default)]
pub(crate) struct Distinct<'a> {
    pub items: Collection<'a>,
    buckets: HashMap<u64, Vec<usize>>,
}

/// The iteration variables in force.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'s, 'a> {
    pub this: &'s [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'s [Item<'a>]>,
}

pub(crate) struct Evaluator<'c, 'a> {
    pub ctx: &'c Context<'a>,
    pub model: &'a dyn Model,
    focus: &'c [Item<'a>],
}

fn not_singleton(what: &str, count: usize) -> EvalError {
    EvalError::NotSingleton {
        what: what.to_owned(),
        count,
    }
}

/// The System type names of a FHIR primitive kind, for the lenient `is` rule.
fn system_name_of(type_name: &str) -> Option<&'static str> {
    use crate::value::Kind;
    Some(match primitive_kind(type_name)? {
        Kind::Bool => "Boolean",
        Kind::Str => "String",
        Kind::Int => "Integer",
        Kind::Dec => "Decimal",
        Kind::Date => "Date",
        Kind::DateTime => "DateTime",
        Kind::Time => "Time",
    })
}

/// The FHIR primitive that corresponds one-to-one to a System type.
fn fhir_name_of(system: &str) -> Option<&'static str> {
    Some(match system {
        "Boolean" => "boolean",
        "String" => "string",
        "Integer" => "integer",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Time" => "time",
        _ => return None,
    })
}

pub(crate) fn number(p: &Prim<'_>) -> Option<Decimal> {
    match p {
        Prim::Int(i) => Some(Decimal::from_i64(*i)),
        Prim::Dec(d) => Some(*d),
        _ => None,
    }
}

/// Orders two primitives. The outer None means the types cannot be compared at all; the inner
/// None means the comparison is unknown (dates of different precision, unconvertible units).
pub(crate) fn compare_prims(a: &Prim<'_>, b: &Prim<'_>) -> Option<Option<Ordering>> {
    Some(match (a, b) {
        (Prim::Bool(x), Prim::Bool(y)) => Some(x.cmp(y)),
        (Prim::Int(x), Prim::Int(y)) => Some(x.cmp(y)),
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        (Prim::Date(x) | Prim::DateTime(x), Prim::Date(y) | Prim::DateTime(y)) => x.compare(y),
        (Prim::Time(x), Prim::Time(y)) => x.compare(y),
        (Prim::Qty(x), Prim::Qty(y)) => x.compare(y),
        (Prim::Qty(q), other @ (Prim::Int(_) | Prim::Dec(_))) => {
            q.compare(&Quantity::new(number(other)?, "1"))
        }
        (other @ (Prim::Int(_) | Prim::Dec(_)), Prim::Qty(q)) => {
            Quantity::new(number(other)?, "1").compare(q)
        }
        _ => Some(number(a)?.cmp(&number(b)?)),
    })
}

/// Lower-cased with runs of whitespace collapsed, for string equivalence.
fn normalize_text(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl<'c, 'a> Evaluator<'c, 'a> {
    pub fn new(ctx: &'c Context<'a>, focus: &'c [Item<'a>]) -> Self {
        Evaluator {
            ctx,
            model: ctx.model,
            focus,
        }
    }

    pub fn run(&self, root: &Expr) -> Res<Collection<'a>> {
        let scope = Scope {
            this: self.focus,
            index: None,
            total: None,
        };
        self.eval(root, self.focus, &scope)
    }

    /// The instant the caller gave for now(), today() and timeOfDay(), if any. The engine has
    /// no clock of its own: the caller reads one once per request, so that every expression
    /// of the request sees the same instant and tests can fix it.
    pub fn now(&self) -> Option<DateTimeValue> {
        self.ctx.now
    }

    /// Evaluates one node. Each arm delegates to a small function: evaluation recurses along
    /// the tree, and a single large body would make every level's stack frame large.
    pub fn eval(
        &self,
        expr: &Expr,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        match &expr.kind {
            ExprKind::Empty => Ok(Vec::new()),
            ExprKind::Literal(v) => Ok(vec![Item::Value(v.as_ref().clone())]),
            ExprKind::This => Ok(scope.this.to_vec()),
            ExprKind::Index => Ok(scope
                .index
                .and_then(|i| i64::try_from(i).ok())
                .map(|i| Item::Value(SystemValue::Integer(i)))
                .into_iter()
                .collect()),
            ExprKind::Total => Ok(scope.total.map(<[Item<'a>]>::to_vec).unwrap_or_default()),
            ExprKind::Variable(name) => self.variable(name),
            ExprKind::Member { target, name } => self.member(target.as_deref(), name, input, scope),
            ExprKind::Call(call) => self.call(call, input, scope),
            ExprKind::Indexer { target, index } => self.indexer(target, index, input, scope),
            ExprKind::Negate(operand) => self.negate(operand, input, scope),
            ExprKind::Binary { op, left, right } => {
                self.binary_expr(*op, left, right, input, scope)
            }
            ExprKind::TypeOp { op, operand, ty } => self.type_op(*op, operand, ty, input, scope),
        }
    }

    fn member(
        &self,
        target: Option<&Expr>,
        name: &str,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        let Some(target) = target else {
            return Ok(self.entry_member(input, name));
        };
        let base = self.eval(target, input, scope)?;
        let mut out = Vec::new();
        for item in &base {
            navigate::child_items(self.model, item, name, &mut out);
        }
        Ok(out)
    }

    fn indexer(
        &self,
        target: &Expr,
        index: &Expr,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        let base = self.eval(target, input, scope)?;
        let index = self.eval(index, input, scope)?;
        let Some(i) = self.single_integer(&index, "indexer")? else {
            return Ok(Vec::new());
        };
        Ok(usize::try_from(i)
            .ok()
            .and_then(|i| base.into_iter().nth(i))
            .into_iter()
            .collect())
    }

    fn negate(
        &self,
        operand: &Expr,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        let c = self.eval(operand, input, scope)?;
        let Some(item) = self.single(&c, "unary -")? else {
            return Ok(Vec::new());
        };
        let negated = match item.prim(self.model) {
            Some(Prim::Int(i)) => i.checked_neg().map(SystemValue::Integer),
            Some(Prim::Dec(d)) => d.checked_neg().map(SystemValue::Decimal),
            Some(Prim::Qty(q)) => q
                .value
                .checked_neg()
                .map(|v| SystemValue::Quantity(Quantity::new(v, q.unit.clone()))),
            _ => {
                return Err(EvalError::InputType {
                    function: "unary -",
                    found: self.type_label(item),
                });
            }
        };
        Ok(negated.map(Item::Value).into_iter().collect())
    }

    fn binary_expr(
        &self,
        op: BinaryOp,
        left: &Expr,
        right: &Expr,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        match op {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor | BinaryOp::Implies => {
                self.logic(op, left, right, input, scope)
            }
            _ => {
                let l = self.eval(left, input, scope)?;
                let r = self.eval(right, input, scope)?;
                self.binary(op, &l, &r)
            }
        }
    }

    fn type_op(
        &self,
        op: TypeOp,
        operand: &Expr,
        ty: &TypeSpec,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        let c = self.eval(operand, input, scope)?;
        match op {
            TypeOp::Is => self.is_type(&c, ty),
            TypeOp::As => Ok(c.into_iter().filter(|i| self.type_matches(i, ty)).collect()),
        }
    }

    /// A name at the start of a path: a type name selects the input items of that type
    /// (`Patient.name` on a Patient), anything else is an element of each input item.
    fn entry_member(&self, input: &[Item<'a>], name: &str) -> Collection<'a> {
        let type_like = name.starts_with(|c: char| c.is_ascii_uppercase());
        let mut out = Vec::new();
        for item in input {
            if type_like {
                let own_type = match item {
                    Item::Node(n) => n.type_name(),
                    Item::Stub(s) => Some(s.type_name),
                    Item::Value(_) => None,
                };
                if own_type.is_some_and(|t| self.is_a(t, name)) {
                    out.push(item.clone());
                    continue;
                }
            }
            navigate::child_items(self.model, item, name, &mut out);
        }
        out
    }

    fn variable(&self, name: &str) -> Res<Collection<'a>> {
        if let Some((_, value)) = self.ctx.variables.iter().rev().find(|(n, _)| n == name) {
            return Ok(value.clone());
        }
        let text = match name {
            "resource" => return Ok(vec![Item::resource(self.ctx.resource)]),
            "rootResource" => return Ok(vec![Item::resource(self.ctx.root_resource)]),
            "context" => {
                return Ok(match &self.ctx.context {
                    Some(item) => vec![item.clone()],
                    None => self.focus.to_vec(),
                });
            }
            "ucum" => "http://unitsofmeasure.org".to_owned(),
            "sct" => "http://snomed.info/sct".to_owned(),
            "loinc" => "http://loinc.org".to_owned(),
            _ => {
                if let Some(vs) = name.strip_prefix("vs-") {
                    format!("http://hl7.org/fhir/ValueSet/{vs}")
                } else if let Some(ext) = name.strip_prefix("ext-") {
                    format!("http://hl7.org/fhir/StructureDefinition/{ext}")
                } else {
                    return Err(EvalError::UnknownVariable(name.to_owned()));
                }
            }
        };
        Ok(vec![Item::string(text)])
    }

    /// The item of a collection that must have at most one.
    pub fn single<'x>(&self, c: &'x [Item<'a>], what: &str) -> Res<Option<&'x Item<'a>>> {
        match c {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(not_singleton(what, c.len())),
        }
    }

    pub fn single_integer(&self, c: &[Item<'a>], what: &'static str) -> Res<Option<i64>> {
        let Some(item) = self.single(c, what)? else {
            return Ok(None);
        };
        match item.prim(self.model) {
            Some(Prim::Int(i)) => Ok(Some(i)),
            _ => Err(EvalError::Argument {
                function: what,
                reason: format!("expected an Integer, got {}", self.type_label(item)),
            }),
        }
    }

    /// A collection as a Boolean for the logical operators: empty is unknown, a single
    /// non-Boolean item is true, more than one item is an error.
    pub fn to_bool3(&self, c: &[Item<'a>], what: &str) -> Res<Option<bool>> {
        Ok(self
            .single(c, what)?
            .map(|item| item.as_bool().unwrap_or(true)))
    }

    /// A short description of an item's type for error messages (never its value).
    pub fn type_label(&self, item: &Item<'a>) -> String {
        match item {
            Item::Value(v) => format!("System.{}", v.type_name()),
            Item::Node(n) => n.type_name().unwrap_or("an untyped element").to_owned(),
            Item::Stub(s) => s.type_name.to_owned(),
        }
    }

    fn logic(
        &self,
        op: BinaryOp,
        left: &Expr,
        right: &Expr,
        input: &[Item<'a>],
        scope: &Scope<'_, 'a>,
    ) -> Res<Collection<'a>> {
        let l = self.to_bool3(&self.eval(left, input, scope)?, op.symbol())?;
        // Short-circuit where the left side decides, so the right side cannot fail the result.
        let decided = match (op, l) {
            (BinaryOp::And, Some(false)) => Some(false),
            (BinaryOp::Or, Some(true)) | (BinaryOp::Implies, Some(false)) => Some(true),
            _ => None,
        };
        if let Some(b) = decided {
            return Ok(vec![Item::boolean(b)]);
        }
        let r = self.to_bool3(&self.eval(right, input, scope)?, op.symbol())?;
        let result = match op {
            BinaryOp::And => match (l, r) {
                (Some(true), Some(true)) => Some(true),
                (_, Some(false)) => Some(false),
                _ => None,
            },
            BinaryOp::Or => match (l, r) {
                (Some(false), Some(false)) => Some(false),
                (_, Some(true)) => Some(true),
                _ => None,
            },
            BinaryOp::Xor => match (l, r) {
                (Some(a), Some(b)) => Some(a != b),
                _ => None,
            },
            _ => match (l, r) {
                (Some(true), r) => r,
                (None, Some(true)) => Some(true),
                _ => None,
            },
        };
        Ok(result.map(Item::boolean).into_iter().collect())
    }

    fn binary(&self, op: BinaryOp, l: &[Item<'a>], r: &[Item<'a>]) -> Res<Collection<'a>> {
        let boolean = |b: Option<bool>| -> Res<Collection<'a>> {
            Ok(b.map(Item::boolean).into_iter().collect())
        };
        match op {
            BinaryOp::Eq => boolean(self.eq_collections(l, r)),
            BinaryOp::Ne => boolean(self.eq_collections(l, r).map(|b| !b)),
            BinaryOp::Equiv => boolean(Some(self.equiv_collections(l, r))),
            BinaryOp::NotEquiv => boolean(Some(!self.equiv_collections(l, r))),
            BinaryOp::Lt | BinaryOp::Gt | BinaryOp::Le | BinaryOp::Ge => self.compare_op(op, l, r),
            BinaryOp::Union => Ok(self.distinct(l.iter().chain(r))),
            BinaryOp::In => self.membership(l, r, "in"),
            BinaryOp::Contains => self.membership(r, l, "contains"),
            _ => self.arithmetic(op, l, r),
        }
    }

    /// `in` and `contains`: whether the single `item` is in `collection`.
    fn membership(
        &self,
        item: &[Item<'a>],
        collection: &[Item<'a>],
        what: &str,
    ) -> Res<Collection<'a>> {
        let Some(item) = self.single(item, what)? else {
            return Ok(Vec::new());
        };
        let found = collection
            .iter()
            .any(|c| self.items_equal(item, c) == Some(true));
        Ok(vec![Item::boolean(found)])
    }

    /// A hash that items equal by `=` share (numbers by value, objects by their keys).
    fn distinct_key(&self, item: &Item<'a>) -> u64 {
        let mut h = DefaultHasher::new();
        match item.prim(self.model) {
            Some(Prim::Str(s)) => (0u8, s).hash(&mut h),
            Some(p @ (Prim::Int(_) | Prim::Dec(_))) => {
                (1u8, number(&p).map(|d| d.canonical_parts())).hash(&mut h)
            }
            Some(Prim::Bool(b)) => (2u8, b).hash(&mut h),
            Some(Prim::Date(_) | Prim::DateTime(_)) => 3u8.hash(&mut h),
            Some(Prim::Time(_)) => 4u8.hash(&mut h),
            Some(Prim::Qty(_)) => 5u8.hash(&mut h),
            None => match item {
                Item::Node(n) => match n.json() {
                    Some(serde_json::Value::Object(obj)) => {
                        // Key order does not matter to equality, so combine key hashes with xor.
                        let mut keys = 0u64;
                        for k in obj.keys() {
                            let mut kh = DefaultHasher::new();
                            k.hash(&mut kh);
                            keys ^= kh.finish();
                        }
                        (6u8, keys).hash(&mut h);
                    }
                    _ => 7u8.hash(&mut h),
                },
                Item::Stub(s) => (8u8, s.type_name, s.id).hash(&mut h),
                Item::Value(_) => 9u8.hash(&mut h),
            },
        }
        h.finish()
    }

    /// Whether an item equal to `item` is in the set.
    pub fn contains_equal(&self, set: &Distinct<'a>, item: &Item<'a>) -> bool {
        set.buckets
            .get(&self.distinct_key(item))
            .is_some_and(|bucket| {
                bucket
                    .iter()
                    .filter_map(|i| set.items.get(*i))
                    .any(|o| self.items_equal(o, item) == Some(true))
            })
    }

    /// Adds `item` unless an equal one is there; returns whether it was added.
    pub fn insert_distinct(&self, set: &mut Distinct<'a>, item: &Item<'a>) -> bool {
        if self.contains_equal(set, item) {
            return false;
        }
        let key = self.distinct_key(item);
        set.buckets.entry(key).or_default().push(set.items.len());
        set.items.push(item.clone());
        true
    }

    /// The set of distinct items of `items`, for membership tests.
    pub fn distinct_set(&self, items: &[Item<'a>]) -> Distinct<'a> {
        let mut set = Distinct::default();
        for item in items {
            self.insert_distinct(&mut set, item);
        }
        set
    }

    /// The distinct items of `items`, in order.
    pub fn distinct<'x>(&self, items: impl IntoIterator<Item = &'x Item<'a>>) -> Collection<'a>
    where
        'a: 'x,
    {
        let mut set = Distinct::default();
        for item in items {
            self.insert_distinct(&mut set, item);
        }
        set.items
    }

    /// `=` on two items: None when unknown (dates of different precision, a primitive that
    /// only has extensions).
    pub fn items_equal(&self, a: &Item<'a>, b: &Item<'a>) -> Option<bool> {
        if let (Item::Node(x), Item::Node(y)) = (a, b)
            && x.same(y)
        {
            return Some(true);
        }
        if a.as_node().is_some_and(|n| n.json().is_none())
            || b.as_node().is_some_and(|n| n.json().is_none())
        {
            return None;
        }
        match (a.prim(self.model), b.prim(self.model)) {
            (Some(Prim::Qty(x)), Some(Prim::Qty(y))) => {
                Some(x.compare(&y) == Some(Ordering::Equal))
            }
            (Some(x), Some(y)) => match compare_prims(&x, &y) {
                Some(Some(o)) => Some(o == Ordering::Equal),
                Some(None) => None,
                None => Some(false),
            },
            (None, None) => Some(match (a, b) {
                (Item::Node(x), Item::Node(y)) => match (x.json(), y.json()) {
                    (Some(x), Some(y)) => json_equal(x, y, JSON_DEPTH),
                    _ => false,
                },
                (Item::Stub(x), Item::Stub(y)) => x.type_name == y.type_name && x.id == y.id,
                _ => false,
            }),
            _ => Some(false),
        }
    }

    fn items_equivalent(&self, a: &Item<'a>, b: &Item<'a>) -> bool {
        match (a.prim(self.model), b.prim(self.model)) {
            (Some(x), Some(y)) => match (&x, &y) {
                (Prim::Str(s), Prim::Str(t)) => normalize_text(s) == normalize_text(t),
                (Prim::Date(s) | Prim::DateTime(s), Prim::Date(t) | Prim::DateTime(t)) => {
                    s.equivalent(t)
                }
                (Prim::Time(s), Prim::Time(t)) => s.equivalent(t),
                (Prim::Qty(s), Prim::Qty(t)) => s.equivalent(t),
                (Prim::Bool(s), Prim::Bool(t)) => s == t,
                _ => match (number(&x), number(&y)) {
                    (Some(s), Some(t)) => s.equivalent(&t),
                    _ => false,
                },
            },
            (None, None) => self.items_equal(a, b) == Some(true),
            _ => false,
        }
    }

    pub fn eq_collections(&self, l: &[Item<'a>], r: &[Item<'a>]) -> Option<bool> {
        if l.is_empty() || r.is_empty() {
            return None;
        }
        if l.len() != r.len() {
            return Some(false);
        }
        let mut unknown = false;
        for (a, b) in l.iter().zip(r) {
            match self.items_equal(a, b) {
                Some(false) => return Some(false),
                None => unknown = true,
                Some(true) => {}
            }
        }
        (!unknown).then_some(true)
    }

    fn equiv_collections(&self, l: &[Item<'a>], r: &[Item<'a>]) -> bool {
        l.len() == r.len()
            && l.iter()
                .all(|a| r.iter().any(|b| self.items_equivalent(a, b)))
    }

    fn compare_op(&self, op: BinaryOp, l: &[Item<'a>], r: &[Item<'a>]) -> Res<Collection<'a>> {
        let (Some(a), Some(b)) = (self.single(l, op.symbol())?, self.single(r, op.symbol())?)
        else {
            return Ok(Vec::new());
        };
        let mismatch = || EvalError::OperandTypes {
            op: op.symbol(),
            left: self.type_label(a),
            right: self.type_label(b),
        };
        let (Some(x), Some(y)) = (a.prim(self.model), b.prim(self.model)) else {
            // A primitive with only extensions, or a Quantity without a value, has no value to
            // compare: the comparison is unknown rather than an error.
            if self.lacks_value(a) || self.lacks_value(b) {
                return Ok(Vec::new());
            }
            return Err(mismatch());
        };
        let Some(ordering) = compare_prims(&x, &y) else {
            return Err(mismatch());
        };
        let Some(ordering) = ordering else {
            return Ok(Vec::new());
        };
        let result = match op {
            BinaryOp::Lt => ordering == Ordering::Less,
            BinaryOp::Gt => ordering == Ordering::Greater,
            BinaryOp::Le => ordering != Ordering::Greater,
            _ => ordering != Ordering::Less,
        };
        Ok(vec![Item::boolean(result)])
    }

    /// Whether `item` is a node that could hold a comparable value but does not.
    fn lacks_value(&self, item: &Item<'a>) -> bool {
        let Item::Node(n) = item else {
            return false;
        };
        match (n.json(), n.type_name()) {
            (None, _) => true,
            (Some(v), Some(t)) if v.is_object() => crate::value::is_quantity_type(self.model, t),
            _ => false,
        }
    }

    /// The text for `&`: empty counts as the empty string.
    fn concat_text(&self, c: &[Item<'a>]) -> Res<String> {
        let Some(item) = self.single(c, "&")? else {
            return Ok(String::new());
        };
        match item.text(self.model) {
            Some(t) => Ok(t.into_owned()),
            None => Err(EvalError::InputType {
                function: "&",
                found: self.type_label(item),
            }),
        }
    }

    fn arithmetic(&self, op: BinaryOp, l: &[Item<'a>], r: &[Item<'a>]) -> Res<Collection<'a>> {
        if op == BinaryOp::Concat {
            let text = self.concat_text(l)? + &self.concat_text(r)?;
            return Ok(vec![Item::string(text)]);
        }
        let (Some(a), Some(b)) = (self.single(l, op.symbol())?, self.single(r, op.symbol())?)
        else {
            return Ok(Vec::new());
        };
        let mismatch = || EvalError::OperandTypes {
            op: op.symbol(),
            left: self.type_label(a),
            right: self.type_label(b),
        };
        let (Some(x), Some(y)) = (a.prim(self.model), b.prim(self.model)) else {
            return Err(mismatch());
        };
        let result = match (&x, &y) {
            (Prim::Str(s), Prim::Str(t)) if op == BinaryOp::Add => {
                Some(SystemValue::String(format!("{s}{t}")))
            }
            (Prim::Int(i), Prim::Int(j)) if op != BinaryOp::Div => {
                let v = match op {
                    BinaryOp::Add => i.checked_add(*j),
                    BinaryOp::Sub => i.checked_sub(*j),
                    BinaryOp::Mul => i.checked_mul(*j),
                    BinaryOp::IntDiv => i.checked_div(*j),
                    BinaryOp::Mod => i.checked_rem(*j),
                    _ => return Err(mismatch()),
                };
                v.map(SystemValue::Integer)
            }
            (Prim::Int(_) | Prim::Dec(_), Prim::Int(_) | Prim::Dec(_)) => {
                let (Some(p), Some(q)) = (number(&x), number(&y)) else {
                    return Err(mismatch());
                };
                match op {
                    BinaryOp::Add => p.checked_add(q).map(SystemValue::Decimal),
                    BinaryOp::Sub => p.checked_sub(q).map(SystemValue::Decimal),
                    BinaryOp::Mul => p.checked_mul(q).map(SystemValue::Decimal),
                    BinaryOp::Div => p.checked_div(q).map(SystemValue::Decimal),
                    BinaryOp::IntDiv => p
                        .checked_div_trunc(q)
                        .and_then(|d| d.to_i64())
                        .map(SystemValue::Integer),
                    BinaryOp::Mod => p.checked_rem(q).map(SystemValue::Decimal),
                    _ => return Err(mismatch()),
                }
            }
            (Prim::Date(d) | Prim::DateTime(d), Prim::Qty(q))
                if matches!(op, BinaryOp::Add | BinaryOp::Sub) =>
            {
                let Some(unit) = TimeUnit::parse(&q.unit) else {
                    return Err(mismatch());
                };
                let amount = if op == BinaryOp::Sub {
                    q.value.checked_neg()
                } else {
                    Some(q.value)
                };
                let moved = amount.and_then(|amount| d.add(&amount, unit));
                match x {
                    Prim::Date(_) => moved.map(SystemValue::Date),
                    _ => moved.map(SystemValue::DateTime),
                }
            }
            (Prim::Time(t), Prim::Qty(q)) if matches!(op, BinaryOp::Add | BinaryOp::Sub) => {
                let Some(unit) = TimeUnit::parse(&q.unit) else {
                    return Err(mismatch());
                };
                let amount = if op == BinaryOp::Sub {
                    q.value.checked_neg()
                } else {
                    Some(q.value)
                };
                amount
                    .and_then(|amount| t.add(&amount, unit))
                    .map(SystemValue::Time)
            }
            (Prim::Qty(p), Prim::Qty(q)) => match op {
                BinaryOp::Add | BinaryOp::Sub => {
                    let Some(other) = p.convert_to_unit_of(q) else {
                        return Err(mismatch());
                    };
                    let value = if op == BinaryOp::Add {
                        p.value.checked_add(other)
                    } else {
                        p.value.checked_sub(other)
                    };
                    value.map(|v| SystemValue::Quantity(Quantity::new(v, p.unit.clone())))
                }
                BinaryOp::Div if p.unit == q.unit => p
                    .value
                    .checked_div(q.value)
                    .map(|v| SystemValue::Quantity(Quantity::new(v, "1"))),
                _ => return Err(mismatch()),
            },
            (Prim::Qty(p), n @ (Prim::Int(_) | Prim::Dec(_)))
                if matches!(op, BinaryOp::Mul | BinaryOp::Div) =>
            {
                let Some(n) = number(n) else {
                    return Err(mismatch());
                };
                let v = if op == BinaryOp::Mul {
                    p.value.checked_mul(n)
                } else {
                    p.value.checked_div(n)
                };
                v.map(|v| SystemValue::Quantity(Quantity::new(v, p.unit.clone())))
            }
            (n @ (Prim::Int(_) | Prim::Dec(_)), Prim::Qty(q)) if op == BinaryOp::Mul => {
                let Some(n) = number(n) else {
                    return Err(mismatch());
                };
                n.checked_mul(q.value)
                    .map(|v| SystemValue::Quantity(Quantity::new(v, q.unit.clone())))
            }
            _ => return Err(mismatch()),
        };
        // Overflow and division by zero give empty, as the specification says.
        Ok(result.map(Item::Value).into_iter().collect())
    }

    pub fn is_type(&self, c: &[Item<'a>], ty: &TypeSpec) -> Res<Collection<'a>> {
        let Some(item) = self.single(c, "is")? else {
            // The HL7 engine answers false where the specification answers empty.
            return Ok(if self.ctx.hl7_compat {
                vec![Item::boolean(false)]
            } else {
                Vec::new()
            });
        };
        Ok(vec![Item::boolean(self.type_matches(item, ty))])
    }

    /// Whether `type_name` is `target` or derives from it.
    pub fn is_a(&self, type_name: &str, target: &str) -> bool {
        let mut current = Some(normalize_type(type_name));
        let mut steps = 0;
        while let Some(t) = current {
            if t == target {
                return true;
            }
            steps += 1;
            if steps > 32 {
                return false;
            }
            current = self.model.base_type(t);
        }
        false
    }

    /// `is`/`as`/`ofType` matching. A FHIR primitive also matches its System type (so
    /// `answer is Boolean` holds for a FHIR boolean), and a System value matches the FHIR
    /// primitive of the same name, as the HL7 Java engine lets them.
    pub fn type_matches(&self, item: &Item<'a>, spec: &TypeSpec) -> bool {
        let mut ns = spec.namespace.as_deref();
        let qualified;
        let mut name = spec.name.as_str();
        if let Some(prefix) = ns.filter(|n| *n != "FHIR" && *n != "System") {
            // `Questionnaire.item`: a backbone element's type is its path.
            qualified = format!("{prefix}.{name}");
            name = &qualified;
            ns = Some("FHIR");
        }
        match item {
            Item::Value(v) => match ns {
                Some("System") => v.type_name() == name,
                Some("FHIR") => false,
                _ => v.type_name() == name || fhir_name_of(v.type_name()) == Some(name),
            },
            Item::Stub(s) => ns != Some("System") && self.is_a(s.type_name, name),
            Item::Node(n) => match n.type_name() {
                Some(t) => {
                    let t = normalize_type(t);
                    if ns != Some("System") && self.is_a(t, name) {
                        return true;
                    }
                    ns != Some("FHIR")
                        && (t.strip_prefix("System.") == Some(name)
                            || system_name_of(t) == Some(name))
                }
                None => {
                    ns != Some("FHIR") && item.prim(self.model).is_some_and(|p| p.kind() == name)
                }
            },
        }
    }
}
