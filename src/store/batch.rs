//! Rows sent to the database in one statement, whatever their count: a table held column
//! by column that each dialect binds its own way ([`super::shared::Dialect::rows_table`]):
//! PostgreSQL as one array per column (`unnest($n::T[], ...)`, typed, in the binary
//! protocol), SQLite as one JSON array of rows read by `json_each` (a multi-row `VALUES`
//! would run into SQLite's bound-parameter limit and need several statements).
//!
//! The shared statements read the rows as a table `u` with the columns' names, e.g.
//! `UPDATE deliveries AS d SET ... FROM <rows> WHERE d.id = u.id AND d.claim_token =
//! u.token RETURNING d.id`: one statement, however many rows, and the fence by claim
//! token stays the same `WHERE` as for one row.

use serde_json::Value;

use crate::model::Tracked;

/// One column's values, of one SQL type.
pub(crate) enum Col<'a> {
    Int(Vec<i64>),
    OptInt(Vec<Option<i64>>),
    Text(Vec<&'a str>),
    OptText(Vec<Option<&'a str>>),
    Bool(Vec<bool>),
}

impl Col<'_> {
    fn len(&self) -> usize {
        match self {
            Col::Int(v) => v.len(),
            Col::OptInt(v) => v.len(),
            Col::Text(v) => v.len(),
            Col::OptText(v) => v.len(),
            Col::Bool(v) => v.len(),
        }
    }

    /// Row `i` as JSON (SQLite's binding).
    fn json(&self, i: usize) -> Value {
        match self {
            Col::Int(v) => v[i].into(),
            Col::OptInt(v) => v[i].into(),
            Col::Text(v) => v[i].into(),
            Col::OptText(v) => v[i].into(),
            Col::Bool(v) => v[i].into(),
        }
    }

    /// The PostgreSQL array type this column binds as.
    pub(crate) fn pg_array(&self) -> &'static str {
        match self {
            Col::Int(_) | Col::OptInt(_) => "BIGINT[]",
            Col::Text(_) | Col::OptText(_) => "TEXT[]",
            Col::Bool(_) => "BOOLEAN[]",
        }
    }
}

/// A table of rows, by column: every column has one value per row.
#[derive(Default)]
pub(crate) struct Rows<'a> {
    pub(crate) cols: Vec<(&'static str, Col<'a>)>,
}

impl<'a> Rows<'a> {
    /// Add the column `name`.
    pub(crate) fn col(mut self, name: &'static str, col: Col<'a>) -> Self {
        debug_assert!(self.cols.first().is_none_or(|(_, c)| c.len() == col.len()));
        self.cols.push((name, col));
        self
    }

    /// How many rows.
    pub(crate) fn len(&self) -> usize {
        self.cols.first().map_or(0, |(_, c)| c.len())
    }

    /// The columns' names, comma-separated.
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.cols.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }

    /// The rows as one JSON array of arrays, in column order (SQLite's binding).
    pub(crate) fn json(&self) -> String {
        let rows: Vec<Value> = (0..self.len())
            .map(|i| Value::Array(self.cols.iter().map(|(_, c)| c.json(i)).collect()))
            .collect();
        Value::Array(rows).to_string()
    }
}

/// Checkpoints as rows `u(id, name, ..., seq)`: the columns of
/// [`super::sql::CHECKPOINT_INSERT`] after `target`, up to `seq` (everything but the text).
pub(crate) fn checkpoints<'a>(rows: &[&'a Tracked]) -> Rows<'a> {
    let text = |f: fn(&'a Tracked) -> &'a str| Col::Text(rows.iter().map(|t| f(t)).collect());
    let int = |f: fn(&Tracked) -> i64| Col::Int(rows.iter().map(|t| f(t)).collect());
    let flag = |f: fn(&Tracked) -> bool| Col::Bool(rows.iter().map(|t| f(t)).collect());
    Rows::default()
        .col("id", text(|t| t.id.as_str()))
        .col("name", text(|t| t.name.as_str()))
        .col("run_id", text(|t| t.run_id.as_str()))
        .col("checkpoint_target", text(|t| t.target.as_str()))
        .col(
            "sync_status",
            Col::OptText(rows.iter().map(|t| t.sync_status.as_deref()).collect()),
        )
        .col("created_at", text(|t| t.created_at.as_str()))
        .col("first_seen_at", int(|t| t.first_seen_at.timestamp_millis()))
        .col("completed", flag(|t| t.completed))
        .col("stalled", flag(|t| t.stalled))
        .col("missing", int(|t| i64::from(t.missing)))
        .col("deleted", flag(|t| t.deleted))
        .col("deleted_reported", flag(|t| t.deleted_reported))
        .col("seq", int(|t| i64::from(t.seq)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_json_arrays_in_column_order() {
        let rows = Rows::default()
            .col("id", Col::Int(vec![1, 2]))
            .col("error", Col::OptText(vec![Some("a \"b\""), None]))
            .col("done", Col::Bool(vec![true, false]));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.names(), "id, error, done");
        assert_eq!(rows.json(), r#"[[1,"a \"b\"",true],[2,null,false]]"#);
        assert_eq!(Rows::default().len(), 0);
    }
}
