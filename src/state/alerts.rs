//! The `alerts` table: each alert's latest state, queued for the targets in the same
//! transaction; read by fingerprint and a page at a time through indexes, so that a flood of
//! alerts costs the API a look-up, not a scan; resolved alerts pruned after a retention.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{StateError, Store};
use crate::common::clock::now_ns;

/// The columns saved beside an alert's body.
#[derive(Debug, Clone, Copy)]
pub struct AlertRow<'a> {
    pub fingerprint: &'a str,
    pub alertname: &'a str,
    pub namespace: &'a str,
    pub starts_at_ns: i64,
    pub firing: bool,
}

/// The migrations applied to a store of `user_version` 0 or 1: the columns and indexes above,
/// and fingerprints from the 64-bit FNV of earlier versions to SHA-256.
const VERSION: i64 = 2;

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS alerts_by_start ON alerts (starts_at_ns DESC);
CREATE INDEX IF NOT EXISTS alerts_by_status ON alerts (status, starts_at_ns DESC);
CREATE INDEX IF NOT EXISTS alerts_by_namespace ON alerts (namespace, starts_at_ns DESC);
CREATE INDEX IF NOT EXISTS alerts_by_update ON alerts (status, updated_ns);
";

/// Brings the alerts of an earlier version to this one, in one transaction: adds the columns,
/// fills them from each body, gives each alert its SHA-256 fingerprint (in its body, its
/// link, its queued states and dead letters, and `renamed_alerts`), then indexes.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version >= VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let has_columns = tx
        .prepare("SELECT 1 FROM pragma_table_info('alerts') WHERE name = 'alertname'")?
        .exists([])?;
    if !has_columns {
        tx.execute_batch(
            "ALTER TABLE alerts ADD COLUMN alertname TEXT NOT NULL DEFAULT '';
             ALTER TABLE alerts ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
             ALTER TABLE alerts ADD COLUMN starts_at_ns INTEGER NOT NULL DEFAULT 0;",
        )?;
    }
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT fingerprint, body FROM alerts")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut renamed = 0usize;
    for (old, body) in rows {
        // A body that does not decode stays as it is; reading it reports it.
        let Ok(mut alert) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let labels: BTreeMap<String, String> = alert["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let new = crate::common::hash::fingerprint(&labels);
        alert["fingerprint"] = new.clone().into();
        if let Some(url) = alert["generator_url"].as_str()
            && let Some(base) = url.strip_suffix(old.as_str())
        {
            alert["generator_url"] = format!("{base}{new}").into();
        }
        let alertname = labels
            .get("alertname")
            .cloned()
            .or_else(|| alert["rule"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let namespace = labels.get("namespace").cloned().unwrap_or_default();
        let starts_at_ns = alert["starts_at_ns"].as_i64().unwrap_or(0);
        let body = alert.to_string();
        tx.execute(
            "UPDATE alerts SET fingerprint = ?2, body = ?3, alertname = ?4, namespace = ?5, starts_at_ns = ?6
             WHERE fingerprint = ?1",
            params![old, new, body, alertname, namespace, starts_at_ns],
        )?;
        if old != new {
            // The queued state is this one or older: the newest is what goes out.
            tx.execute(
                "UPDATE outbox SET fingerprint = ?2, body = ?3 WHERE fingerprint = ?1",
                params![old, new, body],
            )?;
            tx.execute(
                "UPDATE dead_letters SET fingerprint = ?2 WHERE fingerprint = ?1",
                params![old, new],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO renamed_alerts (old, new) VALUES (?1, ?2)",
                params![old, new],
            )?;
            renamed += 1;
        }
    }
    tx.execute_batch(INDEXES)?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    if renamed > 0 {
        tracing::info!(
            alerts = renamed,
            "state store: alerts given SHA-256 fingerprints; their earlier links still lead to them"
        );
    }
    Ok(())
}

/// Which alerts a page holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertFilter<'a> {
    /// Only firing (true) or only resolved (false) alerts.
    pub firing: Option<bool>,
    pub namespace: Option<&'a str>,
}

impl Store {
    /// Saves an alert's new state (`body`, the alert as JSON) and queues it for every target,
    /// in one transaction.
    pub fn record(
        &self,
        row: &AlertRow<'_>,
        body: &str,
        targets: &[String],
    ) -> Result<(), StateError> {
        let status = if row.firing { "firing" } else { "resolved" };
        let now = now_ns();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.error("begin"))?;
        let version: i64 = tx
            .query_row(
                "UPDATE versions SET next = next + 1 WHERE id = 1 RETURNING next - 1",
                [],
                |r| r.get(0),
            )
            .map_err(self.error("allocate a version"))?;
        tx.execute(
            "INSERT INTO alerts (fingerprint, status, body, updated_ns, alertname, namespace, starts_at_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (fingerprint) DO UPDATE SET status = ?2, body = ?3, updated_ns = ?4",
            params![
                row.fingerprint,
                status,
                body,
                now,
                row.alertname,
                row.namespace,
                row.starts_at_ns
            ],
        )
        .map_err(self.error("save the alert"))?;
        for target in targets {
            tx.execute(
                "INSERT INTO outbox (target, fingerprint, version, body, enqueued_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (target, fingerprint) DO UPDATE SET version = ?3, body = ?4",
                params![target, row.fingerprint, version, body, now],
            )
            .map_err(self.error("queue the alert"))?;
        }
        tx.commit().map_err(self.error("commit"))
    }

    /// The saved alert bodies: only the firing ones, or all, by fingerprint.
    pub fn alert_bodies(&self, firing_only: bool) -> Result<Vec<String>, StateError> {
        let sql = if firing_only {
            "SELECT body FROM alerts WHERE status = 'firing' ORDER BY fingerprint"
        } else {
            "SELECT body FROM alerts ORDER BY fingerprint"
        };
        let conn = self.lock();
        let mut stmt = conn.prepare(sql).map_err(self.error("read alerts"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))
            .map_err(self.error("read alerts"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.error("read alerts"))
    }

    /// The body of the alert with `fingerprint`, or of the alert it was renamed to.
    pub fn alert_body(&self, fingerprint: &str) -> Result<Option<String>, StateError> {
        self.read()
            .query_row(
                "SELECT body FROM alerts
                 WHERE fingerprint = coalesce((SELECT new FROM renamed_alerts WHERE old = ?1), ?1)",
                [fingerprint],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.error("read an alert"))
    }

    /// The bodies of the newest `limit` alerts `filter` selects, newest first.
    pub fn alert_page(
        &self,
        filter: AlertFilter<'_>,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let status = filter.firing.map(|f| if f { "firing" } else { "resolved" });
        let sql = match (status.is_some(), filter.namespace.is_some()) {
            (false, false) => {
                "SELECT body FROM alerts WHERE ?1 IS NULL AND ?2 IS NULL ORDER BY starts_at_ns DESC, fingerprint LIMIT ?3"
            }
            (true, false) => {
                "SELECT body FROM alerts WHERE status = ?1 AND ?2 IS NULL ORDER BY starts_at_ns DESC, fingerprint LIMIT ?3"
            }
            (false, true) => {
                "SELECT body FROM alerts WHERE ?1 IS NULL AND namespace = ?2 ORDER BY starts_at_ns DESC, fingerprint LIMIT ?3"
            }
            (true, true) => {
                "SELECT body FROM alerts WHERE status = ?1 AND namespace = ?2 ORDER BY starts_at_ns DESC, fingerprint LIMIT ?3"
            }
        };
        let conn = self.read();
        let mut stmt = conn.prepare(sql).map_err(self.error("read alerts"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        stmt.query_map(params![status, filter.namespace, limit], |r| r.get(0))
            .map_err(self.error("read alerts"))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.error("read alerts"))
    }

    /// Firing alerts counted by (alertname, namespace).
    pub fn firing_counts(&self) -> Result<Vec<(String, String, i64)>, StateError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare(
                "SELECT alertname, namespace, count(*) FROM alerts WHERE status = 'firing'
                 GROUP BY alertname, namespace ORDER BY alertname, namespace",
            )
            .map_err(self.error("count alerts"))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.error("count alerts"))?
            .collect::<Result<_, _>>()
            .map_err(self.error("count alerts"))
    }

    /// Forgets alerts that resolved before `before_ns` and were delivered (none of their
    /// states is still queued); how many.
    pub fn prune_resolved(&self, before_ns: i64) -> Result<usize, StateError> {
        self.lock()
            .execute(
                "DELETE FROM alerts WHERE status = 'resolved' AND updated_ns < ?1
                 AND fingerprint NOT IN (SELECT fingerprint FROM outbox)",
                [before_ns],
            )
            .map_err(self.error("prune resolved alerts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(
        fingerprint: &'a str,
        namespace: &'a str,
        starts: i64,
        firing: bool,
    ) -> AlertRow<'a> {
        AlertRow {
            fingerprint,
            alertname: "A",
            namespace,
            starts_at_ns: starts,
            firing,
        }
    }

    #[test]
    fn pages_are_selected_and_ordered_by_the_columns() {
        let store = Store::in_memory().unwrap();
        store.record(&row("f1", "a", 10, true), "one", &[]).unwrap();
        store
            .record(&row("f2", "b", 30, false), "two", &[])
            .unwrap();
        store
            .record(&row("f3", "a", 20, false), "three", &[])
            .unwrap();
        let page = |firing, namespace, limit| {
            store
                .alert_page(AlertFilter { firing, namespace }, limit)
                .unwrap()
        };
        assert_eq!(page(None, None, 10), ["two", "three", "one"]);
        assert_eq!(page(None, None, 2), ["two", "three"]);
        assert_eq!(page(Some(true), None, 10), ["one"]);
        assert_eq!(page(Some(false), Some("a"), 10), ["three"]);
        assert_eq!(page(None, Some("a"), 10), ["three", "one"]);
        assert_eq!(store.alert_body("f2").unwrap().as_deref(), Some("two"));
        assert_eq!(store.alert_body("nope").unwrap(), None);
        assert_eq!(
            store.firing_counts().unwrap(),
            [("A".into(), "a".into(), 1)]
        );
    }

    #[test]
    fn resolved_alerts_are_pruned_once_delivered_and_firing_ones_never() {
        let store = Store::in_memory().unwrap();
        let targets = vec!["am".to_owned()];
        store.record(&row("old", "a", 1, false), "x", &[]).unwrap();
        store
            .record(&row("queued", "a", 1, false), "y", &targets)
            .unwrap();
        store
            .record(&row("firing", "a", 1, true), "z", &[])
            .unwrap();
        let pruned = store.prune_resolved(now_ns() + 1).unwrap();
        assert_eq!(pruned, 1);
        assert_eq!(store.alert_body("old").unwrap(), None);
        assert!(
            store.alert_body("queued").unwrap().is_some(),
            "not delivered yet"
        );
        assert!(store.alert_body("firing").unwrap().is_some());
    }

    #[test]
    fn a_store_of_the_earlier_version_is_migrated_to_sha256_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        {
            // The schema and rows of version 1: FNV fingerprints, no columns, no version.
            let conn = Connection::open(dir.path().join("exfilwatch.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE alerts (fingerprint TEXT PRIMARY KEY, status TEXT NOT NULL, body TEXT NOT NULL, updated_ns INTEGER NOT NULL);
                 CREATE TABLE outbox (target TEXT NOT NULL, fingerprint TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL, enqueued_ns INTEGER NOT NULL, PRIMARY KEY (target, fingerprint));
                 CREATE TABLE dead_letters (target TEXT NOT NULL, fingerprint TEXT NOT NULL, body TEXT NOT NULL, error TEXT NOT NULL, at_ns INTEGER NOT NULL);",
            )
            .unwrap();
            let body = r#"{"fingerprint":"0123456789abcdef","rule":"R","labels":{"alertname":"R","namespace":"ai-training"},"starts_at_ns":42,"generator_url":"http://x/ui/alerts/0123456789abcdef","status":"firing"}"#;
            conn.execute(
                "INSERT INTO alerts VALUES ('0123456789abcdef', 'firing', ?1, 1)",
                [body],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox VALUES ('am', '0123456789abcdef', 1, ?1, 1)",
                [body],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "R".to_owned()),
            ("namespace".to_owned(), "ai-training".to_owned()),
        ]);
        let new = crate::common::hash::fingerprint(&labels);
        let body: serde_json::Value =
            serde_json::from_str(&store.alert_body(&new).unwrap().unwrap()).unwrap();
        assert_eq!(body["fingerprint"], new.as_str());
        assert_eq!(
            body["generator_url"],
            format!("http://x/ui/alerts/{new}").as_str()
        );
        // The old link still finds it; the queued state carries the new identity.
        assert_eq!(
            store.alert_body("0123456789abcdef").unwrap(),
            store.alert_body(&new).unwrap()
        );
        let pending = store.pending("am", 10).unwrap();
        assert_eq!(pending[0].fingerprint, new);
        assert_eq!(
            store
                .alert_page(
                    AlertFilter {
                        firing: Some(true),
                        namespace: Some("ai-training")
                    },
                    10
                )
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store.firing_counts().unwrap(),
            [("R".into(), "ai-training".into(), 1)]
        );
        drop(store);
        // Opened again: nothing left to migrate.
        let store = Store::open(dir.path()).unwrap();
        assert!(store.alert_body(&new).unwrap().is_some());
    }
}
