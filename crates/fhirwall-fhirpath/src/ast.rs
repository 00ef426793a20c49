//! The syntax tree of a parsed FHIRPath expression and the table of known functions. It is
//! immutable once built and must not hold any evaluation state other than compiled regexes.

use std::sync::OnceLock;

use regex::Regex;

use crate::value::SystemValue;

/// A node of the tree with its nesting depth (used to bound recursion).
#[derive(Debug)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub depth: usize,
}

#[derive(Debug)]
pub(crate) enum ExprKind {
    /// `{}`.
    Empty,
    /// Boxed to keep `Expr` small: parser and evaluator frames hold many of them.
    Literal(Box<SystemValue>),
    This,
    Index,
    Total,
    /// `%name`.
    Variable(String),
    /// `name` on the target, or on the input focus when there is no target.
    Member {
        target: Option<Box<Expr>>,
        name: String,
    },
    Call(Box<Call>),
    Indexer {
        target: Box<Expr>,
        index: Box<Expr>,
    },
    Negate(Box<Expr>),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    TypeOp {
        op: TypeOp,
        operand: Box<Expr>,
        ty: Box<TypeSpec>,
    },
}

impl Expr {
    /// Whether evaluating this tree may call now(), today() or timeOfDay(). Recursion follows
    /// the tree, whose depth the parser bounds.
    pub fn reads_clock(&self) -> bool {
        match &self.kind {
            ExprKind::Empty
            | ExprKind::Literal(_)
            | ExprKind::This
            | ExprKind::Index
            | ExprKind::Total
            | ExprKind::Variable(_) => false,
            ExprKind::Member { target, .. } => target.as_ref().is_some_and(|t| t.reads_clock()),
            ExprKind::Call(call) => {
                matches!(call.func, Func::Now | Func::Today | Func::TimeOfDay)
                    || call.target.as_ref().is_some_and(Expr::reads_clock)
                    || call.args.iter().any(Expr::reads_clock)
            }
            ExprKind::Indexer { target, index } => target.reads_clock() || index.reads_clock(),
            ExprKind::Negate(operand) | ExprKind::TypeOp { operand, .. } => operand.reads_clock(),
            ExprKind::Binary { left, right, .. } => left.reads_clock() || right.reads_clock(),
        }
    }
}

/// A function invocation.
#[derive(Debug)]
pub(crate) struct Call {
    pub target: Option<Expr>,
    pub func: Func,
    pub args: Vec<Expr>,
    /// The type argument of `is()`, `as()` and `ofType()`.
    pub type_arg: Option<TypeSpec>,
    /// The compiled pattern of `matches`/`replaceMatches` when it is a string literal, compiled
    /// on first use so that an invalid pattern is an evaluation error, like a computed one.
    pub regex: OnceLock<Result<Regex, String>>,
}

/// A type name, optionally qualified by `FHIR.` or `System.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeOp {
    Is,
    As,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::IntDiv => "div",
            BinaryOp::Mod => "mod",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Concat => "&",
            BinaryOp::Union => "|",
            BinaryOp::Lt => "<",
            BinaryOp::Gt => ">",
            BinaryOp::Le => "<=",
            BinaryOp::Ge => ">=",
            BinaryOp::Eq => "=",
            BinaryOp::Ne => "!=",
            BinaryOp::Equiv => "~",
            BinaryOp::NotEquiv => "!~",
            BinaryOp::In => "in",
            BinaryOp::Contains => "contains",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
            BinaryOp::Implies => "implies",
        }
    }
}

/// Declares the function table: variant, FHIRPath name, fewest and most arguments.
macro_rules! functions {
    ($($variant:ident $name:literal $min:literal $max:literal,)*) => {
        /// Every function the engine knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func {
            $($variant,)*
        }

        impl Func {
            /// The function called `name` and how many arguments it takes.
            pub fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                match name {
                    $($name => Some((Func::$variant, $min, $max)),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Func::$variant => $name,)*
                }
            }
        }
    };
}

functions! {
    Empty "empty" 0 0,
    Exists "exists" 0 1,
    All "all" 1 1,
    AllTrue "allTrue" 0 0,
    AnyTrue "anyTrue" 0 0,
    AllFalse "allFalse" 0 0,
    AnyFalse "anyFalse" 0 0,
    SubsetOf "subsetOf" 1 1,
    SupersetOf "supersetOf" 1 1,
    Count "count" 0 0,
    Distinct "distinct" 0 0,
    IsDistinct "isDistinct" 0 0,
    Where "where" 1 1,
    Select "select" 1 1,
    Repeat "repeat" 1 1,
    OfType "ofType" 1 1,
    Is "is" 1 1,
    As "as" 1 1,
    First "first" 0 0,
    Last "last" 0 0,
    Tail "tail" 0 0,
    Skip "skip" 1 1,
    Take "take" 1 1,
    Single "single" 0 0,
    Intersect "intersect" 1 1,
    Exclude "exclude" 1 1,
    Union "union" 1 1,
    Combine "combine" 1 1,
    Iif "iif" 2 3,
    Not "not" 0 0,
    ToBoolean "toBoolean" 0 0,
    ConvertsToBoolean "convertsToBoolean" 0 0,
    ToInteger "toInteger" 0 0,
    ConvertsToInteger "convertsToInteger" 0 0,
    ToDecimal "toDecimal" 0 0,
    ConvertsToDecimal "convertsToDecimal" 0 0,
    ToStringFn "toString" 0 0,
    ConvertsToString "convertsToString" 0 0,
    ToQuantity "toQuantity" 0 1,
    ConvertsToQuantity "convertsToQuantity" 0 1,
    ToDate "toDate" 0 0,
    ConvertsToDate "convertsToDate" 0 0,
    ToDateTime "toDateTime" 0 0,
    ConvertsToDateTime "convertsToDateTime" 0 0,
    ToTime "toTime" 0 0,
    ConvertsToTime "convertsToTime" 0 0,
    IndexOf "indexOf" 1 1,
    Substring "substring" 1 2,
    StartsWith "startsWith" 1 1,
    EndsWith "endsWith" 1 1,
    ContainsFn "contains" 1 1,
    Upper "upper" 0 0,
    Lower "lower" 0 0,
    Replace "replace" 2 2,
    Matches "matches" 1 1,
    ReplaceMatches "replaceMatches" 2 2,
    Length "length" 0 0,
    ToChars "toChars" 0 0,
    Trim "trim" 0 0,
    Split "split" 1 1,
    Join "join" 0 1,
    Encode "encode" 1 1,
    Decode "decode" 1 1,
    Escape "escape" 1 1,
    Unescape "unescape" 1 1,
    Abs "abs" 0 0,
    Ceiling "ceiling" 0 0,
    Exp "exp" 0 0,
    Floor "floor" 0 0,
    Ln "ln" 0 0,
    Log "log" 1 1,
    Power "power" 1 1,
    Round "round" 0 1,
    Sqrt "sqrt" 0 0,
    Truncate "truncate" 0 0,
    Children "children" 0 0,
    Descendants "descendants" 0 0,
    Trace "trace" 1 2,
    Now "now" 0 0,
    Today "today" 0 0,
    TimeOfDay "timeOfDay" 0 0,
    Aggregate "aggregate" 1 2,
    Extension "extension" 1 1,
    HasExtension "hasExtension" 1 1,
    HasValue "hasValue" 0 0,
    GetValue "getValue" 0 0,
    Resolve "resolve" 0 0,
    MemberOf "memberOf" 1 1,
    ConformsTo "conformsTo" 1 1,
    HtmlChecks "htmlChecks" 0 0,
    ElementDefinition "elementDefinition" 0 0,
    Slice "slice" 2 2,
    CheckModifiers "checkModifiers" 0 1,
}

impl Func {
    /// Whether the single argument names a type rather than being an expression.
    pub fn takes_type(self) -> bool {
        matches!(self, Func::OfType | Func::Is | Func::As)
    }
}
