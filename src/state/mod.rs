//! Embedded state in SQLite (WAL, synchronous commits) under `storage.dir`.
//!
//! - `alerts`: every alert's latest state, so firing alerts resume after a restart;
//! - `outbox`: per delivery target, the latest unsent state of each alert. A state change is
//!   committed here before anything is sent; delivery removes a row only when the target has
//!   accepted that version. Re-posting an alert's newest state is all Alertmanager needs, so a
//!   newer change replaces an older unsent one;
//! - `dead_letters`: states a target refused as invalid (HTTP 4xx), kept for inspection;
//! - `cursors`: named positions such as the time of the last flow processed;
//! - `baseline_samples`, `baseline_hours`: hourly egress rates per namespace, and which hours
//!   were sampled (see `egress::baseline`);
//! - `known_destinations`: what each `new_destination` rule has learned;
//! - `versions`: the counter that orders alert states in the outbox;
//! - `renamed_alerts`: fingerprints of an earlier scheme and the ones that replaced them, so
//!   that links sent before still lead to their alert.
//!
//! Alert states are JSON bodies the `alert` module encodes and decodes; beside each, the
//! columns the API selects and orders by, indexed ([`alerts`]). The file's `user_version`
//! counts the migrations applied.

mod alerts;

pub use alerts::{AlertFilter, AlertRow};

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::common::clock::now_ns;

/// A storage failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {action}: {source}")]
    Sql {
        path: String,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// One unsent alert state for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub fingerprint: String,
    pub version: i64,
    /// The alert as JSON.
    pub alert: String,
    pub enqueued_ns: i64,
}

/// A known destination: rule, namespace, destination, last seen (ns).
pub type Learned = (String, String, String, i64);

/// The state store; clones share one connection.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Read-only, for the API's alert reads (the same connection for a store in memory).
    reader: Arc<Mutex<Connection>>,
    path: String,
    /// Bumped by every save of a known destination: whether they changed since a look.
    learned: Arc<std::sync::atomic::AtomicU64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    fingerprint TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ns INTEGER NOT NULL,
    alertname TEXT NOT NULL DEFAULT '',
    namespace TEXT NOT NULL DEFAULT '',
    starts_at_ns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    target TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    enqueued_ns INTEGER NOT NULL,
    PRIMARY KEY (target, fingerprint)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    target TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS baseline_samples (
    namespace TEXT NOT NULL,
    hour INTEGER NOT NULL,
    rate REAL NOT NULL,
    PRIMARY KEY (namespace, hour)
);
CREATE TABLE IF NOT EXISTS baseline_hours (hour INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS known_destinations (
    rule TEXT NOT NULL,
    namespace TEXT NOT NULL,
    destination TEXT NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (rule, namespace, destination)
);
CREATE TABLE IF NOT EXISTS versions (id INTEGER PRIMARY KEY CHECK (id = 1), next INTEGER NOT NULL);
INSERT OR IGNORE INTO versions (id, next) VALUES (1, 1);
CREATE TABLE IF NOT EXISTS renamed_alerts (old TEXT PRIMARY KEY, new TEXT NOT NULL);
";

impl Store {
    /// Opens (creating) `dir/exfilwatch.db`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join("exfilwatch.db");
        let name = path.display().to_string();
        let err = |action| {
            let name = name.clone();
            move |source| StateError::Sql {
                path: name,
                action,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            path: dir.display().to_string(),
            action: "create the directory",
            source,
        })?;
        let conn = Connection::open(&path).map_err(err("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("enable WAL"))?;
        // Alert state changes are rare and must survive a crash: commit with fsync.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        conn.execute_batch(SCHEMA)
            .map_err(err("create the schema"))?;
        let mut conn = conn;
        alerts::migrate(&mut conn).map_err(err("migrate the alerts"))?;
        // The API's reads go through a connection of their own: in WAL mode they neither wait
        // for the alert manager's commits nor hold them up.
        let reader = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err("open for reading"))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("set busy timeout"))?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path: name,
            learned: Arc::default(),
        })
    }

    /// A store that lives in memory only (replay without sending, the demo).
    pub fn in_memory() -> Result<Store, StateError> {
        let err = |source| StateError::Sql {
            path: ":memory:".into(),
            action: "open",
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        alerts::migrate(&mut conn).map_err(err)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Store {
            // One database in memory: reads share its connection.
            reader: conn.clone(),
            conn,
            path: ":memory:".into(),
            learned: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock left SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn error(&self, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StateError + '_ {
        move |source| StateError::Sql {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Where the store is, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Up to `limit` unsent states for `target`, oldest first.
    pub fn pending(&self, target: &str, limit: usize) -> Result<Vec<Pending>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT fingerprint, version, body, enqueued_ns FROM outbox WHERE target = ?1
                 ORDER BY enqueued_ns, fingerprint LIMIT ?2",
            )
            .map_err(self.error("read the outbox"))?;
        let rows = stmt
            .query_map(params![target, limit as i64], |r| {
                Ok(Pending {
                    fingerprint: r.get(0)?,
                    version: r.get(1)?,
                    alert: r.get(2)?,
                    enqueued_ns: r.get(3)?,
                })
            })
            .map_err(self.error("read the outbox"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read the outbox"))
    }

    /// Removes the states `target` accepted, unless a newer version replaced them meanwhile.
    pub fn delivered(&self, target: &str, sent: &[Pending]) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.error("begin"))?;
        for p in sent {
            tx.execute(
                "DELETE FROM outbox WHERE target = ?1 AND fingerprint = ?2 AND version = ?3",
                params![target, p.fingerprint, p.version],
            )
            .map_err(self.error("mark delivered"))?;
        }
        tx.commit().map_err(self.error("commit"))
    }

    /// Moves a state `target` refused into the dead letters.
    pub fn refused(&self, target: &str, p: &Pending, error: &str) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.error("begin"))?;
        tx.execute(
            "INSERT INTO dead_letters (target, fingerprint, body, error, at_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![target, p.fingerprint, p.alert, error, now_ns()],
        )
        .map_err(self.error("keep a dead letter"))?;
        tx.execute(
            "DELETE FROM outbox WHERE target = ?1 AND fingerprint = ?2 AND version = ?3",
            params![target, p.fingerprint, p.version],
        )
        .map_err(self.error("drop a refused alert"))?;
        tx.commit().map_err(self.error("commit"))
    }

    /// Unsent states over all targets.
    pub fn outbox_depth(&self) -> Result<u64, StateError> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(self.error("count the outbox"))
    }

    /// Saves hourly egress samples, marks `hours` as sampled, and forgets hours before
    /// `forget_before`, in one transaction.
    pub fn save_baseline_samples(
        &self,
        rows: &[(String, i64, f64)],
        hours: &[i64],
        forget_before: i64,
    ) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.error("begin"))?;
        for (namespace, hour, rate) in rows {
            tx.execute(
                "INSERT INTO baseline_samples (namespace, hour, rate) VALUES (?1, ?2, ?3)
                 ON CONFLICT (namespace, hour) DO UPDATE SET rate = ?3",
                params![namespace, hour, rate],
            )
            .map_err(self.error("save a baseline sample"))?;
        }
        for hour in hours {
            tx.execute(
                "INSERT OR IGNORE INTO baseline_hours (hour) VALUES (?1)",
                [hour],
            )
            .map_err(self.error("mark an hour sampled"))?;
        }
        tx.execute(
            "DELETE FROM baseline_samples WHERE hour < ?1",
            [forget_before],
        )
        .map_err(self.error("forget old samples"))?;
        tx.execute(
            "DELETE FROM baseline_hours WHERE hour < ?1",
            [forget_before],
        )
        .map_err(self.error("forget old hours"))?;
        tx.commit().map_err(self.error("commit"))
    }

    /// Every saved (namespace, hour, rate).
    pub fn baseline_samples(&self) -> Result<Vec<(String, i64, f64)>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT namespace, hour, rate FROM baseline_samples ORDER BY namespace, hour")
            .map_err(self.error("read baselines"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.error("read baselines"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read baselines"))
    }

    /// The hours already sampled.
    pub fn baseline_hours(&self) -> Result<Vec<i64>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT hour FROM baseline_hours ORDER BY hour")
            .map_err(self.error("read hours"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(self.error("read hours"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read hours"))
    }

    /// Overwrites a queued state with bytes that are not an alert (tests).
    #[cfg(test)]
    pub(crate) fn corrupt_outbox_row(&self, target: &str, fingerprint: &str) {
        let _ = self.lock().execute(
            "UPDATE outbox SET body = '{not an alert' WHERE target = ?1 AND fingerprint = ?2",
            params![target, fingerprint],
        );
    }

    /// Makes every write fail, as a full or read-only disk would (tests).
    #[cfg(test)]
    pub(crate) fn refuse_writes(&self, refuse: bool) {
        let _ = self.lock().pragma_update(None, "query_only", refuse);
    }

    /// Remembers that `namespace` reached `destination` at `seen_ns` (for `rule`).
    pub fn save_known_destination(
        &self,
        rule: &str,
        namespace: &str,
        destination: &str,
        seen_ns: i64,
    ) -> Result<(), StateError> {
        self.lock()
            .execute(
                "INSERT INTO known_destinations (rule, namespace, destination, last_seen_ns) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (rule, namespace, destination) DO UPDATE SET last_seen_ns = MAX(last_seen_ns, ?4)",
                params![rule, namespace, destination, seen_ns],
            )
            .map_err(self.error("save a known destination"))?;
        self.learned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A number that changes whenever a known destination is saved.
    pub fn learned_version(&self) -> u64 {
        self.learned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every rule's known destinations: (rule, namespace, destination, last seen); the empty
    /// destination holds when learning began.
    pub fn all_known_destinations(&self) -> Result<Vec<Learned>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT rule, namespace, destination, last_seen_ns FROM known_destinations ORDER BY rule, namespace",
            )
            .map_err(self.error("read known destinations"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(self.error("read known destinations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.error("read known destinations"))
    }

    /// The destinations `rule` learned: (namespace, destination, last seen).
    pub fn known_destinations(&self, rule: &str) -> Result<Vec<(String, String, i64)>, StateError> {
        let rows = self.all_known_destinations()?;
        Ok(rows
            .into_iter()
            .filter(|(r, ..)| r == rule)
            .map(|(_, namespace, destination, seen)| (namespace, destination, seen))
            .collect())
    }

    pub fn cursor(&self, name: &str) -> Result<Option<i64>, StateError> {
        self.lock()
            .query_row("SELECT value FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.error("read a cursor"))
    }

    pub fn set_cursor(&self, name: &str, value: i64) -> Result<(), StateError> {
        self.lock()
            .execute(
                "INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2",
                params![name, value],
            )
            .map(|_| ())
            .map_err(self.error("save a cursor"))
    }
}
