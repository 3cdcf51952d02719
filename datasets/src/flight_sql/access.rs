//! What a Flight SQL client may run: queries always; statements that touch files or change the
//! catalog only where the operator allowed them.
//!
//! A Flight SQL endpoint is read-only by default ([`SqlAccess::read_only`]): DDL (`CREATE`,
//! `DROP`), DML (`INSERT`), `COPY` and statements (`SET`, transactions) are refused with
//! `PERMISSION_DENIED` before they run, whatever part of the plan they hide in (DataFusion's
//! `SQLOptions::verify_plan` walks it all). With writable locations
//! ([`SqlAccess::writable_under`]), DDL and DML run, but a `CREATE EXTERNAL TABLE` must read,
//! and a `COPY ... TO` or an `INSERT` must write, only under one of them: a local directory
//! (absolute, compared by whole path components, `..` refused) or a URL prefix
//! (`s3://bucket/prefix/`). `SET` stays refused: the session is shared by every client.
//!
//! ```
//! use manta_datasets::flight_sql::SqlAccess;
//!
//! let access = SqlAccess::writable_under(["/srv/shared", "s3://bucket/out/"]);
//! assert!(access.allows_location("/srv/shared/people.csv"));
//! assert!(access.allows_location("s3://bucket/out/part-0.parquet"));
//! assert!(!access.allows_location("/srv/shared-not/x.csv"));
//! assert!(!access.allows_location("/srv/shared/../../etc/shadow"));
//! assert!(!access.allows_location("/etc/shadow"));
//! assert!(!SqlAccess::read_only().allows_location("/srv/shared/people.csv"));
//! ```

use std::path::{Component, Path};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use tonic::Status;

/// What the clients of a Flight SQL endpoint may change (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct SqlAccess {
    writable: Vec<String>,
}

impl SqlAccess {
    /// Queries only: nothing that touches files or the catalog.
    pub fn read_only() -> Self {
        Self::default()
    }

    /// DDL, DML and `COPY`, reading and writing only under `locations` (absolute local
    /// directories, or URL prefixes).
    pub fn writable_under<S: Into<String>>(locations: impl IntoIterator<Item = S>) -> Self {
        Self {
            writable: locations.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether `location` lies under one of the writable locations.
    pub fn allows_location(&self, location: &str) -> bool {
        self.writable
            .iter()
            .any(|allowed| is_under(location, allowed))
    }

    /// Refuses `plan` if it does what this access does not allow.
    pub fn check(&self, plan: &LogicalPlan) -> Result<(), Status> {
        let read_only = self.writable.is_empty();
        SQLOptions::new()
            .with_allow_ddl(!read_only)
            .with_allow_dml(!read_only)
            .with_allow_statements(false)
            .verify_plan(plan)
            .map_err(|e| {
                let why = e.strip_backtrace();
                let how = match read_only {
                    true => {
                        "this Flight SQL endpoint is read-only (start it with writable \
                         locations, `--sql-writable DIR`, to allow DDL, DML and COPY under them)"
                    }
                    false => "SET and transactions would change the session every client shares",
                };
                Status::permission_denied(format!("{why}: {how}"))
            })?;
        if read_only {
            return Ok(());
        }
        let mut refused = None;
        plan.apply(|node| {
            let locations: Vec<String> = match node {
                LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => {
                    create.locations.clone()
                }
                LogicalPlan::Copy(copy) => vec![copy.output_url.clone()],
                LogicalPlan::Dml(dml) => match table_locations(&dml.target) {
                    Some(locations) => locations,
                    None => {
                        refused = Some(format!(
                            "{} writes to table {}, which is not files under a writable location",
                            dml.op, dml.table_name
                        ));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                },
                _ => return Ok(TreeNodeRecursion::Continue),
            };
            if let Some(outside) = locations.iter().find(|l| !self.allows_location(l)) {
                refused = Some(format!(
                    "{outside:?} is not under a writable location ({})",
                    self.writable.join(", ")
                ));
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| Status::internal(e.strip_backtrace()))?;
        match refused {
            Some(why) => Err(Status::permission_denied(why)),
            None => Ok(()),
        }
    }
}

/// The locations of a table's files, if it is a listing table (files under paths).
fn table_locations(
    target: &std::sync::Arc<dyn datafusion::logical_expr::TableSource>,
) -> Option<Vec<String>> {
    let provider = source_as_provider(target).ok()?;
    let listing = provider.downcast_ref::<ListingTable>()?;
    Some(
        listing
            .table_paths()
            .iter()
            .map(|url| url.as_str().to_string())
            .collect(),
    )
}

/// Whether `location` is `allowed` or lies under it, by whole components.
fn is_under(location: &str, allowed: &str) -> bool {
    let location = location.strip_prefix("file://").unwrap_or(location);
    let allowed = allowed.strip_prefix("file://").unwrap_or(allowed);
    if location.split(['/', '\\']).any(|part| part == "..") {
        return false;
    }
    match (location.split_once("://"), allowed.split_once("://")) {
        (None, None) => {
            let (location, allowed) = (Path::new(location), Path::new(allowed));
            location.is_absolute()
                && allowed.is_absolute()
                && location
                    .components()
                    .all(|c| !matches!(c, Component::ParentDir))
                && location.starts_with(allowed)
        }
        (Some((scheme, rest)), Some((allowed_scheme, allowed_rest))) => {
            scheme.eq_ignore_ascii_case(allowed_scheme) && {
                let allowed_rest = allowed_rest.trim_end_matches('/');
                rest == allowed_rest
                    || rest
                        .strip_prefix(allowed_rest)
                        .is_some_and(|tail| tail.starts_with('/'))
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_under_and_not() {
        assert!(is_under("/a/b/c.csv", "/a/b"));
        assert!(is_under("/a/b/c.csv", "/a/b/"));
        assert!(is_under("/a/b", "/a/b"));
        assert!(is_under("file:///a/b/c.csv", "/a/b"));
        assert!(!is_under("/a/bc/d.csv", "/a/b"));
        assert!(!is_under("a/b/c.csv", "/a/b"));
        assert!(!is_under("/a/b/../c.csv", "/a/b"));
        assert!(is_under("s3://bucket/out/x.parquet", "s3://bucket/out"));
        assert!(is_under("S3://bucket/out/x", "s3://bucket/out/"));
        assert!(!is_under("s3://bucket/outer/x", "s3://bucket/out"));
        assert!(!is_under("s3://other/out/x", "s3://bucket/out"));
        assert!(!is_under("/bucket/out/x", "s3://bucket/out"));
        assert!(!is_under("s3://bucket/out/../secret", "s3://bucket/out"));
    }
}
