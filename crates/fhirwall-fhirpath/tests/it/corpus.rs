//! Corpus tests: every invariant and search expression of the FHIR R4 core package parses,
//! every invariant holds on the specification's examples (bar a justified allow-list), and every
//! search expression evaluates on them. They must skip, not fail, without the packages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use fhirwall_fhirpath::{Context, Expression, Item, Model, evaluate, parse, passes};
use serde_json::Value;

use crate::model::{Invariant, PackageModel};

/// (example file, invariant key) pairs that fail for a reason other than the engine, each
/// with the reason.
const ALLOWED_FAILURES: &[(&str, &str, &str)] = &[
    (
        "Bundle-dataelements.json",
        "bdl-7",
        "the example repeats entry fullUrls (de-Quantity.value and others) without versionIds",
    ),
    // Only met with FHIRPATH_FULL_CORPUS: the R4 pattern logical models are neither abstract
    // nor derived from anything, which sdf-4 forbids.
    (
        "StructureDefinition-Definition.json",
        "sdf-4",
        "R4 defect: logical model, not abstract, no base",
    ),
    (
        "StructureDefinition-Event.json",
        "sdf-4",
        "R4 defect: logical model, not abstract, no base",
    ),
    (
        "StructureDefinition-FiveWs.json",
        "sdf-4",
        "R4 defect: logical model, not abstract, no base",
    ),
    (
        "StructureDefinition-Request.json",
        "sdf-4",
        "R4 defect: logical model, not abstract, no base",
    ),
];

/// A parsed package file.
struct JsonFile {
    name: String,
    size: usize,
    value: Value,
}

/// Every `package/*.json` file of the shared package `package` whose name `wanted` accepts,
/// parsed, in archive order. None (with a note printed) when the package is absent.
fn read_json_files(package: &str, wanted: impl FnMut(&str) -> bool) -> Option<Vec<JsonFile>> {
    let path = fhirwall_testdata::shared_file_or_skip(package)?;
    let files = fhirwall_testdata::package_json_files(&path, wanted).expect("readable package");
    // A few package files (the index, some examples) are not resources; keep what parses.
    let parsed = files.into_iter().filter_map(|(name, bytes)| {
        let value = serde_json::from_slice::<Value>(&bytes).ok()?;
        Some(JsonFile {
            name,
            size: bytes.len(),
            value,
        })
    });
    Some(parsed.collect())
}

struct SearchParam {
    id: String,
    base: Vec<String>,
    expression: String,
}

struct Corpus {
    model: PackageModel,
    search_params: Vec<SearchParam>,
    examples: Vec<JsonFile>,
}

static CORPUS: OnceLock<Option<Corpus>> = OnceLock::new();

/// Whether to run over every file of the examples package (the conformance resources too)
/// instead of only the examples proper.
fn full_corpus() -> bool {
    std::env::var_os("FHIRPATH_FULL_CORPUS").is_some()
}

fn corpus() -> Option<&'static Corpus> {
    CORPUS
        .get_or_init(|| {
            let started = Instant::now();
            let mut core_names = HashSet::new();
            let core = read_json_files(fhirwall_testdata::CORE_PACKAGE, |name| {
                core_names.insert(name.to_owned());
                name.starts_with("StructureDefinition-") || name.starts_with("SearchParameter-")
            })?;
            let model = PackageModel::from_definitions(core.iter().map(|f| &f.value));
            let mut search_params = Vec::new();
            for JsonFile { value: sp, .. } in &core {
                if sp.get("resourceType").and_then(Value::as_str) != Some("SearchParameter") {
                    continue;
                }
                let Some(expression) = sp.get("expression").and_then(Value::as_str) else {
                    continue;
                };
                search_params.push(SearchParam {
                    id: sp
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    base: sp
                        .get("base")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                    expression: expression.to_owned(),
                });
            }
            let full = full_corpus();
            let examples = read_json_files(fhirwall_testdata::EXAMPLES_PACKAGE, |name| {
                name != "package.json"
                    && !name.starts_with('.')
                    && (full || !core_names.contains(name))
            })?;
            println!(
                "loaded {} definitions, {} search parameters and {} example files in {:?}",
                core.len(),
                search_params.len(),
                examples.len(),
                started.elapsed()
            );
            Some(Corpus {
                model,
                search_params,
                examples,
            })
        })
        .as_ref()
}

#[test]
fn every_core_expression_parses() {
    let Some(corpus) = corpus() else {
        return;
    };
    let mut failures = Vec::new();
    let mut count = 0;
    for (sd, path, invariant) in &corpus.model.all_invariants {
        count += 1;
        if let Err(e) = parse(&invariant.expression) {
            failures.push(format!(
                "{sd} {path} {}: {e}: {}",
                invariant.key, invariant.expression
            ));
        }
    }
    for sp in &corpus.search_params {
        count += 1;
        if let Err(e) = parse(&sp.expression) {
            failures.push(format!("SearchParameter {}: {e}: {}", sp.id, sp.expression));
        }
    }
    println!("parsed {count} expressions, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "unparsable expressions:\n{}",
        failures.join("\n")
    );
}

/// A resource of an example file with what its evaluation context needs.
struct ResourceAt<'a> {
    resource: &'a Value,
    root: &'a Value,
    bundle: Option<&'a Value>,
}

/// Finds the example's resources: the file's own, and those nested in it (contained resources,
/// Bundle entries, Parameters values...). A contained resource's root is its container.
fn resources_of<'a>(model: &PackageModel, value: &'a Value) -> Vec<ResourceAt<'a>> {
    fn visit<'a>(
        model: &PackageModel,
        value: &'a Value,
        key: Option<&str>,
        root: &'a Value,
        bundle: Option<&'a Value>,
        out: &mut Vec<ResourceAt<'a>>,
    ) {
        match value {
            Value::Object(obj) => {
                let mut root = root;
                let mut bundle = bundle;
                if let Some(rt) = obj.get("resourceType").and_then(Value::as_str)
                    && model.is_resource_type(rt)
                {
                    if key != Some("contained") {
                        root = value;
                    }
                    out.push(ResourceAt {
                        resource: value,
                        root,
                        bundle,
                    });
                    if rt == "Bundle" {
                        bundle = Some(value);
                    }
                }
                for (k, v) in obj {
                    visit(model, v, Some(k), root, bundle, out);
                }
            }
            Value::Array(values) => {
                for v in values {
                    visit(model, v, key, root, bundle, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    visit(model, value, None, value, None, &mut out);
    out
}

#[derive(Default)]
struct Stats {
    evaluated: usize,
    by_key: BTreeMap<String, usize>,
    passed: usize,
    warnings_failed: BTreeMap<String, usize>,
    failures: Vec<String>,
    allowed: usize,
    errors: Vec<String>,
}

/// Files above this size are the specification's bulk definition Bundles (all resource
/// definitions, all value sets...): ele-1 on their 1.7 million elements would triple the
/// test's run time, so it is only checked there when the full corpus is asked for.
const BULK_FILE_SIZE: usize = 2_000_000;

/// What the checks of one resource share.
struct Walk<'w, 'a, 'm> {
    ctx: &'w Context<'a>,
    file: &'w str,
    /// The invariants of the core profiles the resource claims, by element path.
    profiles: &'w [&'m HashMap<String, Vec<Invariant>>],
}

struct Checker<'m> {
    model: &'m PackageModel,
    check_ele1: bool,
    compiled: HashMap<String, Expression>,
    stats: Stats,
}

impl<'m> Checker<'m> {
    fn expression(&mut self, text: &str) -> Option<Expression> {
        if let Some(e) = self.compiled.get(text) {
            return Some(e.clone());
        }
        let parsed = parse(text).ok()?;
        self.compiled.insert(text.to_owned(), parsed.clone());
        Some(parsed)
    }

    /// Checks the invariants of one node (those of its element path and of its type), then
    /// its children, stopping at nested resources (checked on their own).
    fn node<'a>(
        &mut self,
        at: &Walk<'_, 'a, 'm>,
        value: Option<&'a Value>,
        meta: Option<&'a Value>,
        type_name: &'a str,
        element_path: Option<&str>,
        resource_path: &str,
    ) where
        'm: 'a,
    {
        let (ctx, file, profiles) = (at.ctx, at.file, at.profiles);
        let item = Item::primitive(value, meta, type_name);
        let mut seen = HashSet::new();
        let model = self.model;
        let invariants = element_path
            .and_then(|p| model.invariants.get(p))
            .into_iter()
            .flatten()
            .chain(model.invariants.get(type_name).into_iter().flatten())
            .chain(
                profiles
                    .iter()
                    .filter_map(|p| p.get(resource_path))
                    .flatten(),
            );
        for invariant in invariants {
            if !seen.insert(invariant.key.as_str())
                || (!self.check_ele1 && invariant.key == "ele-1")
            {
                continue;
            }
            let Some(expr) = self.expression(&invariant.expression) else {
                continue;
            };
            self.stats.evaluated += 1;
            *self.stats.by_key.entry(invariant.key.clone()).or_default() += 1;
            let where_ = element_path.unwrap_or(type_name);
            match evaluate(&expr, ctx, item.clone()) {
                Ok(result) if passes(&result) => self.stats.passed += 1,
                Ok(_) if invariant.severity != "error" => {
                    *self
                        .stats
                        .warnings_failed
                        .entry(invariant.key.clone())
                        .or_default() += 1;
                }
                Ok(_) => {
                    if ALLOWED_FAILURES
                        .iter()
                        .any(|(f, k, _)| *f == file && *k == invariant.key)
                    {
                        self.stats.allowed += 1;
                    } else {
                        self.stats.failures.push(format!(
                            "{file} {where_} {}: {}",
                            invariant.key, invariant.expression
                        ));
                    }
                }
                Err(e) => self.stats.errors.push(format!(
                    "{file} {where_} {}: {e}: {}",
                    invariant.key, invariant.expression
                )),
            }
        }
        let children = match (value, meta) {
            (Some(Value::Object(obj)), _) => obj,
            (_, Some(Value::Object(meta))) => meta,
            _ => return,
        };
        for (key, child) in children {
            if key == "resourceType" {
                continue;
            }
            let (base, is_meta) = match key.strip_prefix('_') {
                Some(base) => (base, true),
                None => (key.as_str(), false),
            };
            if is_meta && children.contains_key(base) {
                continue;
            }
            let Some((name, is_choice, child_type)) = element_of(model, type_name, base) else {
                continue;
            };
            let suffix = if is_choice { "[x]" } else { "" };
            let path = format!("{type_name}.{name}{suffix}");
            let child_resource_path = format!("{resource_path}.{name}{suffix}");
            let (values, metas) = if is_meta {
                (None, Some(child))
            } else {
                (Some(child), children.get(&format!("_{base}")))
            };
            let list = |v: Option<&'a Value>| -> Vec<Option<&'a Value>> {
                match v {
                    Some(Value::Array(items)) => items.iter().map(Some).collect(),
                    other => vec![other],
                }
            };
            let values = list(values);
            let metas = list(metas);
            for i in 0..values.len().max(metas.len()) {
                let v = values.get(i).copied().flatten().filter(|v| !v.is_null());
                let m = metas.get(i).copied().flatten().filter(|v| !v.is_null());
                if v.is_none() && m.is_none() {
                    continue;
                }
                if v.and_then(|v| v.get("resourceType")).is_some()
                    && model.is_resource_type(child_type)
                {
                    continue;
                }
                self.node(at, v, m, child_type, Some(&path), &child_resource_path);
            }
        }
    }
}

/// The element a JSON property names on a value of `parent`: (element name, is choice, type).
fn element_of<'m>(
    model: &'m PackageModel,
    parent: &str,
    key: &str,
) -> Option<(String, bool, &'m str)> {
    if let Some(child) = model.child(parent, key) {
        return (!child.is_choice)
            .then(|| {
                child
                    .types
                    .first()
                    .map(|t| (key.to_owned(), false, t.as_str()))
            })
            .flatten();
    }
    for (at, c) in key.char_indices().skip(1) {
        if !c.is_ascii_uppercase() {
            continue;
        }
        let (name, suffix) = key.split_at(at);
        if let Some(child) = model.child(parent, name)
            && child.is_choice
        {
            for t in child.types {
                let mut chars = t.chars();
                let capitalised = chars
                    .next()
                    .map(|f| f.to_ascii_uppercase().to_string() + chars.as_str());
                if capitalised.as_deref() == Some(suffix) {
                    return Some((name.to_owned(), true, t.as_str()));
                }
            }
        }
    }
    None
}

fn context_for<'a>(model: &'a PackageModel, at: &ResourceAt<'a>) -> Context<'a> {
    let ctx = Context::new(model, at.resource).with_root_resource(at.root);
    match at.bundle {
        Some(bundle) => ctx.with_bundle(bundle),
        None => ctx,
    }
}

#[test]
fn invariants_hold_on_examples() {
    let Some(corpus) = corpus() else {
        return;
    };
    let started = Instant::now();
    let mut checker = Checker {
        model: &corpus.model,
        check_ele1: true,
        compiled: HashMap::new(),
        stats: Stats::default(),
    };
    let mut resources = 0;
    let mut profiled = 0;
    for JsonFile {
        name: file,
        size,
        value,
    } in &corpus.examples
    {
        checker.check_ele1 = full_corpus() || *size <= BULK_FILE_SIZE;
        for at in resources_of(&corpus.model, value) {
            let Some(rt) = at.resource.get("resourceType").and_then(Value::as_str) else {
                continue;
            };
            resources += 1;
            let ctx = context_for(&corpus.model, &at);
            // Core profiles the resource claims add their invariants.
            let profiles: Vec<&HashMap<String, Vec<Invariant>>> = at
                .resource
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|url| corpus.model.profile_invariants.get(url))
                .collect();
            profiled += usize::from(!profiles.is_empty());
            let walk = Walk {
                ctx: &ctx,
                file,
                profiles: &profiles,
            };
            checker.node(&walk, Some(at.resource), None, rt, None, rt);
        }
    }
    let stats = checker.stats;
    println!(
        "{} files, {resources} resources ({profiled} claiming core profiles): {} invariants evaluated, {} passed, {} failed \
         (error severity; {} of them allow-listed), {} warnings failed, {} evaluation errors, in {:?}",
        corpus.examples.len(),
        stats.evaluated,
        stats.passed,
        stats.failures.len() + stats.allowed,
        stats.allowed,
        stats.warnings_failed.values().sum::<usize>(),
        stats.errors.len(),
        started.elapsed()
    );
    println!("failed warnings by key: {:?}", stats.warnings_failed);
    let mut busiest: Vec<_> = stats.by_key.iter().collect();
    busiest.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
    println!(
        "most evaluated: {:?}",
        busiest.iter().take(8).collect::<Vec<_>>()
    );
    let mut report = stats.failures.clone();
    report.extend(stats.errors.iter().cloned());
    assert!(
        report.is_empty(),
        "{} problems:\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn search_expressions_evaluate_on_examples() {
    let Some(corpus) = corpus() else {
        return;
    };
    let started = Instant::now();
    let mut by_type: HashMap<&str, Vec<(&SearchParam, Expression)>> = HashMap::new();
    for sp in &corpus.search_params {
        let Ok(expr) = parse(&sp.expression) else {
            continue;
        };
        for base in &sp.base {
            by_type
                .entry(base.as_str())
                .or_default()
                .push((sp, expr.clone()));
        }
    }
    let mut evaluated = 0;
    let mut non_empty = 0;
    let mut errors = Vec::new();
    for JsonFile {
        name: file,
        size,
        value,
    } in &corpus.examples
    {
        // In the bulk definition Bundles the same expressions would run on thousands of similar
        // definitions; a sample of each keeps the test quick.
        let sample = if full_corpus() || *size <= BULK_FILE_SIZE {
            usize::MAX
        } else {
            20
        };
        for at in resources_of(&corpus.model, value).into_iter().take(sample) {
            let Some(rt) = at.resource.get("resourceType").and_then(Value::as_str) else {
                continue;
            };
            let ctx = context_for(&corpus.model, &at);
            for (sp, expr) in by_type.get(rt).into_iter().flatten() {
                evaluated += 1;
                match evaluate(expr, &ctx, Item::resource(at.resource)) {
                    Ok(result) => non_empty += usize::from(!result.is_empty()),
                    Err(e) => errors.push(format!("{file} {}: {e}: {}", sp.id, sp.expression)),
                }
            }
        }
    }
    println!(
        "{evaluated} search expression evaluations, {non_empty} non-empty, {} errors, in {:?}",
        errors.len(),
        started.elapsed()
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// Rough throughput of typical invariants on the Patient example; the figures are only
/// meaningful in a release build (`cargo test --release ... throughput -- --nocapture`).
#[test]
fn throughput() {
    let Some(corpus) = corpus() else {
        return;
    };
    let Some(patient) = corpus
        .examples
        .iter()
        .find(|f| f.name == "Patient-example.json")
        .map(|f| &f.value)
    else {
        return;
    };
    let ctx = Context::new(&corpus.model, patient);
    let name = &patient["name"][0];
    let cases: [(&str, Item<'_>, &str); 4] = [
        (
            "ele-1 on a HumanName",
            Item::node(name, "HumanName"),
            "hasValue() or (children().count() > id.count())",
        ),
        (
            "pat-1 on Patient.contact",
            Item::node(&patient["contact"][0], "Patient.contact"),
            "name.exists() or telecom.exists() or address.exists() or organization.exists()",
        ),
        (
            "dom-3 on the Patient",
            Item::resource(patient),
            "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()",
        ),
        (
            "search: Patient.name.given",
            Item::resource(patient),
            "Patient.name.given",
        ),
    ];
    let iterations = if cfg!(debug_assertions) {
        2_000
    } else {
        200_000
    };
    for (label, focus, text) in cases {
        let expr = parse(text).unwrap();
        let started = Instant::now();
        for _ in 0..iterations {
            let result = evaluate(&expr, &ctx, focus.clone()).unwrap();
            std::hint::black_box(result);
        }
        let per_second = f64::from(iterations) / started.elapsed().as_secs_f64();
        println!("{label}: {per_second:.0} evaluations/s");
    }
}
