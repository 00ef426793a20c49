//! Renders a find plan (a `CurrentQuery`, or a no-match guard) to one SQL statement over
//! `resource_current c`. Lookups are sub-selects, never joins: with a join SQLite's constant
//! propagation marks the bound parameters as plan-relevant and re-prepares the statement on
//! every use. It must not run anything; the caller prepares and executes.

use std::fmt::Write as _;

use fhirwall_store::{Clause, CurrentQuery, IndexTerm, NoMatchGuard, ResourceKey};
use rusqlite::types::Value;

use crate::rows::{VERSION_COLUMNS, bound, limit};
use crate::writer::posting;

/// What the statement returns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Select {
    /// Whole versions (`rows::VERSION_COLUMNS`), in commit order.
    Versions,
    /// Only the ids, in commit order (a guard needs nothing more).
    Ids,
    /// The number of matches (`after_seq` and `limit` do not apply).
    Count,
}

/// The statement and its parameters, or `None` when nothing can match (a clause that admits
/// nothing, a zero limit), so no statement needs to run.
/// How a query's rows are found: through the postings of one of its term clauses (the others
/// then probe each candidate), or by walking the type's resources in commit order and probing
/// every clause (right when every clause is broad: the first page then costs a few rows
/// instead of a sort of all the postings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drive {
    Clause(usize),
    Walk,
}

/// Postings counted per clause, at most.
const COUNT_CAP: i64 = 100_000;
/// A driven query that would cost more index seeks than this is tried as a walk first (a walk
/// of the whole window costs about as much).
const DRIVEN_BUDGET: i64 = 10_000;
/// Index seeks a driven candidate costs besides the other clauses' probes (its current row,
/// its version, its place in the sort).
const SEEKS_PER_CANDIDATE: i64 = 3;
/// The most resources a walk looks at before the driven query takes over.
pub(crate) const WALK_WINDOW: i64 = 5_000;

/// The drive for `query`: the term clause whose postings, times the probes of the other
/// clauses for each, cost least ([`Drive::Clause`]), or [`Drive::Walk`] when even that costs
/// more than [`DRIVEN_BUDGET`] and rows are wanted in commit order (a count is always driven).
pub(crate) fn choose(
    conn: &rusqlite::Connection,
    query: &CurrentQuery,
    select: Select,
) -> rusqlite::Result<Drive> {
    if query.clauses.iter().any(|c| matches!(c, Clause::Ids(_))) {
        return Ok(Drive::Clause(0));
    }
    let probes_of = |c: &Clause| match c {
        Clause::Terms(terms) => i64::try_from(terms.len()).unwrap_or(i64::MAX),
        _ => 1,
    };
    let all_probes: i64 = query.clauses.iter().map(probes_of).sum();
    let mut best: Option<(i64, usize)> = None;
    for (n, clause) in query.clauses.iter().enumerate() {
        let Clause::Terms(terms) = clause else {
            continue;
        };
        let per_candidate = SEEKS_PER_CANDIDATE + all_probes - probes_of(clause);
        // Rows are wanted in order: counting past the budget tells nothing more (the clause
        // is too costly to drive), so the count stops there. A count needs the narrowest.
        let cap = match select {
            Select::Count => COUNT_CAP,
            _ => DRIVEN_BUDGET / per_candidate.max(1) + 1,
        };
        let mut sql =
            String::from("SELECT count(*) FROM (SELECT 1 FROM search_index s WHERE s.term IN (");
        let mut args = Vec::new();
        push_terms(&mut sql, &mut args, terms);
        args.push(Value::Integer(cap));
        let _ = write!(sql, ") LIMIT +?{})", args.len());
        let count: i64 = conn
            .prepare_cached(&sql)?
            .query_row(rusqlite::params_from_iter(args), |row| row.get(0))?;
        let cost = count.saturating_mul(per_candidate);
        if best.is_none_or(|(c, _)| cost < c) {
            best = Some((cost, n));
        }
    }
    Ok(match best {
        Some((cost, _)) if cost > DRIVEN_BUDGET && !matches!(select, Select::Count) => Drive::Walk,
        Some((_, n)) => Drive::Clause(n),
        None => Drive::Walk,
    })
}

/// The commit sequence number of the `WALK_WINDOW`th current resource of the type after
/// `after_seq`: where a walk stops (None: the walk reaches the end).
pub(crate) fn walk_end(
    conn: &rusqlite::Connection,
    query: &CurrentQuery,
) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(
        "SELECT seq FROM resource_current WHERE tenant = ?1 AND rtype = ?2 AND seq > ?3 \
         ORDER BY seq LIMIT 1 OFFSET ?4",
    )?
    .query_row(
        rusqlite::params![
            query.tenant.as_str(),
            query.resource_type.as_str(),
            bound(query.after_seq.unwrap_or(0)),
            WALK_WINDOW - 1
        ],
        |row| row.get(0),
    )
    .optional()
}

pub(crate) fn render(query: &CurrentQuery, select: Select) -> Option<(String, Vec<Value>)> {
    let drive = query
        .clauses
        .iter()
        .position(|c| matches!(c, Clause::Terms(_)))
        .map_or(Drive::Walk, Drive::Clause);
    render_driven(query, select, drive)
}

pub(crate) fn render_driven(
    query: &CurrentQuery,
    select: Select,
    drive: Drive,
) -> Option<(String, Vec<Value>)> {
    let counting = matches!(select, Select::Count);
    if (query.limit == 0 && !counting) || query.clauses.iter().any(Clause::is_empty) {
        return None;
    }
    let column = match select {
        Select::Versions => "c.seq",
        Select::Ids => "c.id",
        Select::Count => "count(*)",
    };
    let has_ids = query.clauses.iter().any(|c| matches!(c, Clause::Ids(_)));
    let driving = match drive {
        Drive::Clause(n) if !has_ids => Some(n),
        _ => None,
    };
    let by_terms = driving.is_some();
    // When a posting list drives, the unary plus keeps the planner from walking every
    // resource of the type by the primary key instead (it cannot know how short lists are).
    let scope = if by_terms { "+" } else { "" };
    let mut sql = format!(
        "SELECT {column} FROM resource_current c \
         WHERE {scope}c.tenant = ?1 AND {scope}c.rtype = ?2 AND c.deleted = 0"
    );
    let mut args = vec![
        Value::Text(query.tenant.as_str().to_string()),
        Value::Text(query.resource_type.as_str().to_string()),
    ];
    // Ids drive through the primary key; otherwise the first term clause drives.
    // The driving clause goes first, as the posting-list lookup.
    let mut order: Vec<usize> = (0..query.clauses.len()).collect();
    if let Some(n) = driving {
        order.retain(|&i| i != n);
        order.insert(0, n);
    } else if !has_ids {
        // A walk probes the clauses with fewest terms first: most rows fail there.
        order.sort_by_key(|&i| match query.clauses.get(i) {
            Some(Clause::Terms(terms)) => terms.len(),
            _ => 0,
        });
    }
    let mut driven = has_ids || driving.is_none();
    for clause in order.iter().filter_map(|&i| query.clauses.get(i)) {
        match clause {
            Clause::Ids(ids) => {
                sql.push_str(" AND c.id IN (");
                for (n, id) in ids.iter().enumerate() {
                    args.push(Value::Text(id.as_str().to_string()));
                    let comma = if n == 0 { "" } else { ", " };
                    let _ = write!(sql, "{comma}?{}", args.len());
                }
                sql.push(')');
            }
            Clause::Terms(terms) if !driven => {
                // The first term clause's posting lists drive the lookup: terms are blind-index
                // identifiers, so these lists are short while the type may hold millions.
                driven = true;
                sql.push_str(" AND c.rid IN (SELECT s.rid FROM search_index s WHERE s.term IN (");
                push_terms(&mut sql, &mut args, terms);
                sql.push_str("))");
            }
            Clause::Terms(terms) => {
                // Every further clause is a probe of the candidate's own postings.
                sql.push_str(
                    " AND EXISTS (SELECT 1 FROM search_index s WHERE s.rid = c.rid AND s.term IN (",
                );
                push_terms(&mut sql, &mut args, terms);
                sql.push_str("))");
            }
            Clause::Updated(windows) => {
                sql.push_str(
                    " AND EXISTS (SELECT 1 FROM resource_versions u WHERE u.seq = c.seq AND (",
                );
                for (n, (from, to)) in windows.iter().enumerate() {
                    if n > 0 {
                        sql.push_str(" OR ");
                    }
                    sql.push('(');
                    let mut parts = Vec::new();
                    if let Some(from) = from {
                        args.push(Value::Integer(*from));
                        parts.push(format!("u.last_updated >= ?{}", args.len()));
                    }
                    if let Some(to) = to {
                        args.push(Value::Integer(*to));
                        parts.push(format!("u.last_updated <= ?{}", args.len()));
                    }
                    if parts.is_empty() {
                        parts.push("1".into());
                    }
                    sql.push_str(&parts.join(" AND "));
                    sql.push(')');
                }
                sql.push_str("))");
            }
        }
    }
    if let Some(after) = query.after_seq.filter(|_| !counting) {
        args.push(Value::Integer(bound(after)));
        let _ = write!(sql, " AND c.seq > ?{}", args.len());
    }
    if let Some(up_to) = query.up_to_seq {
        args.push(Value::Integer(bound(up_to)));
        let _ = write!(sql, " AND +c.seq <= ?{}", args.len());
    }
    if counting {
        return Some((sql, args));
    }
    // With a narrowing clause, `+c.seq` keeps the planner from walking resource_current_by_seq
    // in order (which would visit every resource of the type to find a rare term) and lets the
    // posting list drive; without one that walk in commit order is exactly right.
    if query.clauses.is_empty() || (!has_ids && driving.is_none()) {
        sql.push_str(" ORDER BY c.seq");
    } else {
        sql.push_str(" ORDER BY +c.seq");
    }
    args.push(Value::Integer(limit(query.limit)));
    // `+?n`, not `?n`: SQLite's planner reads a bound LIMIT, so each new value would
    // re-prepare the statement; behind the unary plus the value is opaque to it.
    let _ = write!(sql, " LIMIT +?{}", args.len());
    let sql = match select {
        Select::Versions => format!(
            "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.seq IN ({sql}) \
             ORDER BY v.seq"
        ),
        Select::Ids | Select::Count => sql,
    };
    Some((sql, args))
}

fn push_terms(sql: &mut String, args: &mut Vec<Value>, terms: &[IndexTerm]) {
    for (n, term) in terms.iter().enumerate() {
        args.push(Value::Blob(posting(term).to_vec()));
        let comma = if n == 0 { "" } else { ", " };
        let _ = write!(sql, "{comma}?{}", args.len());
    }
}

/// A guard as a plan: a resource of the written type carrying every one of its terms. Two
/// matches are enough to tell the caller whether one or several resources matched.
pub(crate) fn guard_plan(key: &ResourceKey, guard: &NoMatchGuard) -> CurrentQuery {
    CurrentQuery {
        tenant: key.tenant.clone(),
        resource_type: key.resource_type.clone(),
        clauses: guard
            .terms
            .iter()
            .map(|term| Clause::Terms(vec![*term]))
            .collect(),
        after_seq: None,
        up_to_seq: None,
        limit: 2,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use fhirwall_store::{ResourceType, TenantId};
    use rusqlite::Connection;

    fn plan(clauses: Vec<Vec<IndexTerm>>) -> CurrentQuery {
        CurrentQuery {
            tenant: TenantId::default_tenant(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            clauses: clauses.into_iter().map(Clause::Terms).collect(),
            after_seq: None,
            up_to_seq: None,
            limit: 10,
        }
    }

    fn query_plan(query: &CurrentQuery, select: Select) -> String {
        let conn = Connection::open_in_memory().unwrap();
        for migration in crate::schema::MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        let (sql, _) = render(query, select).unwrap();
        explain(&conn, &sql)
    }

    /// SQLite's plan for `sql` (each placeholder bound to NULL: the plan does not depend on
    /// the values).
    fn explain(conn: &Connection, sql: &str) -> String {
        let args: Vec<Value> = (0..sql.matches('?').count()).map(|_| Value::Null).collect();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("\n")
    }

    #[test]
    fn nothing_can_match_a_clause_without_terms() {
        assert!(render(&plan(vec![vec![], vec![IndexTerm([1; 16])]]), Select::Ids).is_none());
        assert!(render(&plan(vec![vec![IndexTerm([1; 16])]]), Select::Ids).is_some());
    }

    /// A rare term must not cost a walk over every resource of the type.
    #[test]
    fn terms_are_looked_up_through_their_posting_lists() {
        let terms = plan(vec![
            vec![IndexTerm([1; 16]), IndexTerm([2; 16])],
            vec![IndexTerm([3; 16])],
        ]);
        for select in [Select::Versions, Select::Ids] {
            let explained = query_plan(&terms, select);
            assert!(
                explained.contains("SEARCH s USING PRIMARY KEY (term=?)")
                    && explained.contains("resource_current_by_rid"),
                "{select:?}: {explained}"
            );
            assert!(
                !explained.contains("resource_current_by_seq"),
                "{select:?}: {explained}"
            );
            assert!(!explained.contains("SCAN"), "{select:?}: {explained}");
        }
    }

    /// Ids go straight to the primary key, terms then only probe each candidate's postings.
    #[test]
    fn ids_drive_through_the_primary_key() {
        let mut query = plan(vec![vec![IndexTerm([1; 16])]]);
        query.clauses.push(Clause::Ids(vec![
            fhirwall_store::ResourceId::parse("a").unwrap(),
            fhirwall_store::ResourceId::parse("b").unwrap(),
        ]));
        query.clauses.push(Clause::Updated(vec![(Some(1), None)]));
        let explained = query_plan(&query, Select::Versions);
        assert!(
            explained.contains("SEARCH c USING PRIMARY KEY (tenant=? AND rtype=? AND id=?)"),
            "{explained}"
        );
        assert!(explained.contains("(term=? AND rid=?)"), "{explained}");
        assert!(!explained.contains("SCAN"), "{explained}");
    }

    /// When every term clause is broad, the page walks commit order and probes each clause:
    /// no sort of the postings.
    #[test]
    fn broad_terms_walk_commit_order() {
        let terms = plan(vec![vec![IndexTerm([1; 16])], vec![IndexTerm([3; 16])]]);
        let (sql, _) = render_driven(&terms, Select::Versions, Drive::Walk).unwrap();
        let conn = Connection::open_in_memory().unwrap();
        for migration in crate::schema::MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        let explained = explain(&conn, &sql);
        assert!(explained.contains("resource_current_by_seq"), "{explained}");
        assert!(!explained.contains("TEMP B-TREE"), "{explained}");
        // The narrowest clause drives otherwise, whichever place it has.
        let (sql, _) = render_driven(&terms, Select::Versions, Drive::Clause(1)).unwrap();
        let explained = explain(&conn, &sql);
        assert!(
            explained.contains("SEARCH s USING PRIMARY KEY (term=?)"),
            "{explained}"
        );
        assert_eq!(
            choose(&conn, &terms, Select::Versions).unwrap(),
            Drive::Clause(0),
            "an empty store: every clause is narrow"
        );
        assert_eq!(walk_end(&conn, &terms).unwrap(), None);
    }

    /// Without terms, the commit-order index answers the first page without a sort.
    #[test]
    fn a_plan_without_terms_walks_commit_order() {
        let explained = query_plan(&plan(vec![]), Select::Versions);
        assert!(explained.contains("resource_current_by_seq"), "{explained}");
        assert!(!explained.contains("TEMP B-TREE"), "{explained}");
    }

    /// How often SQLite re-prepared `sql` over uses with different parameters.
    fn reprepares(sql: &str, uses: &[Vec<Value>]) -> i32 {
        let conn = Connection::open_in_memory().unwrap();
        for migration in crate::schema::MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        let mut stmt = conn.prepare(sql).unwrap();
        for args in uses {
            let mut rows = stmt.query(rusqlite::params_from_iter(args)).unwrap();
            while rows.next().unwrap().is_some() {}
        }
        stmt.get_status(rusqlite::StatementStatus::RePrepare)
    }

    /// The habit the sub-selects keep: a cached statement is not prepared again for each new
    /// set of values (a LIMIT the planner can read would re-prepare it for every new limit).
    #[test]
    fn hot_statements_are_not_re_prepared_per_use() {
        let key = |n: u8| {
            vec![
                Value::Text(format!("tenant-{n}")),
                Value::Text(
                    if n.is_multiple_of(2) {
                        "Patient"
                    } else {
                        "Observation"
                    }
                    .into(),
                ),
                Value::Text(format!("id-{n}")),
            ]
        };
        let uses: Vec<_> = (0..10).map(key).collect();
        assert_eq!(reprepares(crate::resources::READ_CURRENT, &uses), 0);
        let shape = |n: u8| {
            let query = CurrentQuery {
                tenant: TenantId::parse(&format!("tenant-{n}")).unwrap(),
                after_seq: Some(u64::from(n)),
                limit: usize::from(n) + 1,
                ..plan(vec![
                    vec![IndexTerm([n; 16]), IndexTerm([n + 1; 16])],
                    vec![IndexTerm([n + 2; 16])],
                ])
            };
            render(&query, Select::Versions).unwrap()
        };
        let (sql, _) = shape(0);
        let uses: Vec<_> = (0..10).map(|n| shape(n).1).collect();
        assert_eq!(reprepares(&sql, &uses), 0, "{sql}");
        let (guard_sql, _) = render(&guard_plan_of(0), Select::Ids).unwrap();
        let uses: Vec<_> = (0..10)
            .map(|n| render(&guard_plan_of(n), Select::Ids).unwrap().1)
            .collect();
        assert_eq!(reprepares(&guard_sql, &uses), 0, "{guard_sql}");
    }

    fn guard_plan_of(n: u8) -> CurrentQuery {
        let key = ResourceKey {
            tenant: TenantId::parse(&format!("tenant-{n}")).unwrap(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            id: fhirwall_store::ResourceId::parse("new").unwrap(),
        };
        guard_plan(
            &key,
            &NoMatchGuard {
                terms: vec![IndexTerm([n; 16]), IndexTerm([n + 1; 16])],
            },
        )
    }
}
