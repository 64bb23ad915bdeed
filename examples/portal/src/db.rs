//! SQLite: a small connection pool that runs every query on tokio's blocking threads, and
//! the queries behind each endpoint. The schema and the seed are in `seed.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::dates::{now_rfc3339, Date};
use crate::seed::{Rng, FIRST_DAY};

/// A database operation failed.
#[derive(Debug)]
pub enum DbError {
    Sqlite(rusqlite::Error),
    /// The blocking task panicked or was cancelled at shutdown.
    Task(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Sqlite(e) => write!(f, "database error: {e}"),
            DbError::Task(e) => write!(f, "database task failed: {e}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sqlite(e) => Some(e),
            DbError::Task(_) => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e)
    }
}

/// A pool of SQLite connections. Cheap to clone. Connections are not `Sync`, so each
/// query borrows one on a blocking thread and puts it back.
#[derive(Clone)]
pub struct Db {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Db {
    /// A pool of at most `size` connections to `path`, opened on first use.
    pub fn new(path: impl Into<PathBuf>, size: usize) -> Db {
        Db {
            pool: Arc::new(Pool {
                path: path.into(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(size.max(1))),
            }),
        }
    }

    /// Run `f` with a connection on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let pool = self.pool.clone();
        // The permit moves into the task: a caller that gives up (client gone) does not free
        // a connection that is still busy.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = pool.idle.lock().expect("pool lock").pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => open(&pool.path)?,
            };
            let result = f(&mut conn);
            pool.idle.lock().expect("pool lock").push(conn);
            result
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

/// Open a connection with the settings every connection shares.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    // A sync writes while dashboards read: WAL lets them run side by side.
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// One row of `GET /api/companies`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Company {
    pub guid: String,
    pub name: String,
    pub alter_id: i64,
    pub last_synced_at: Option<String>,
}

/// Every company that has been synced at least once, by name.
pub fn companies(conn: &mut Connection) -> Result<Vec<Company>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT guid, name, alter_id, last_synced_at FROM companies
         WHERE last_synced_at IS NOT NULL ORDER BY name",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(Company {
            guid: row.get(0)?,
            name: row.get(1)?,
            alter_id: row.get(2)?,
            last_synced_at: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many companies there are: a cheap liveness query.
pub fn count_companies(conn: &mut Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT count(*) FROM companies", [], |row| row.get(0))?)
}

/// An inclusive date range; `None` on a side means unbounded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    pub from: Option<Date>,
    pub to: Option<Date>,
}

/// `GET /api/dashboard/{guid}`.
#[derive(Debug, Serialize)]
pub struct Dashboard {
    pub guid: String,
    pub alter_id: i64,
    pub name: String,
    pub last_synced_at: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub vouchers: i64,
    pub totals: Vec<Total>,
    pub monthly: Vec<Month>,
    pub top_ledgers: Vec<LedgerTotal>,
    /// When this body was computed: on a cache hit it stays the same.
    pub computed_at: String,
    /// How long the queries took.
    pub query_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Total {
    pub voucher_type: String,
    pub vouchers: i64,
    pub amount: f64,
}

#[derive(Debug, Serialize)]
pub struct Month {
    pub month: String,
    pub vouchers: i64,
    /// Amount by voucher type.
    pub amounts: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct LedgerTotal {
    pub ledger: String,
    pub vouchers: i64,
    pub amount: f64,
}

/// The dashboard of one company, or `None` when there is no such company. One read
/// transaction, so `alter_id` and the figures describe the same state.
pub fn dashboard(
    conn: &mut Connection,
    guid: &str,
    range: Range,
) -> Result<Option<Dashboard>, DbError> {
    let started = Instant::now();
    let tx = conn.transaction()?;
    let Some((id, name, alter_id, last_synced_at)) = tx
        .query_row(
            "SELECT id, name, alter_id, last_synced_at FROM companies WHERE guid = ?1",
            [guid],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let from = range
        .from
        .map_or_else(|| "0000-01-01".to_owned(), |d| d.to_string());
    let to = range
        .to
        .map_or_else(|| "9999-12-31".to_owned(), |d| d.to_string());
    let scope = params![id, from, to];

    let totals = tx
        .prepare_cached(
            "SELECT voucher_type, count(*), sum(amount_cents) FROM vouchers
             WHERE company_id = ?1 AND date BETWEEN ?2 AND ?3
             GROUP BY voucher_type ORDER BY sum(amount_cents) DESC",
        )?
        .query_map(scope, |row| {
            Ok(Total {
                voucher_type: row.get(0)?,
                vouchers: row.get(1)?,
                amount: cents(row.get(2)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;

    let mut monthly: Vec<Month> = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT substr(date, 1, 7) AS month, voucher_type, count(*), sum(amount_cents)
             FROM vouchers WHERE company_id = ?1 AND date BETWEEN ?2 AND ?3
             GROUP BY month, voucher_type ORDER BY month, voucher_type",
        )?;
        let mut rows = stmt.query(scope)?;
        while let Some(row) = rows.next()? {
            let month: String = row.get(0)?;
            if monthly.last().map(|m| &m.month) != Some(&month) {
                monthly.push(Month {
                    month,
                    vouchers: 0,
                    amounts: BTreeMap::new(),
                });
            }
            let entry = monthly.last_mut().expect("pushed above");
            entry.vouchers += row.get::<_, i64>(2)?;
            entry.amounts.insert(row.get(1)?, cents(row.get(3)?));
        }
    }

    let top_ledgers = tx
        .prepare_cached(
            "SELECT ledger, count(*), sum(amount_cents) AS total FROM vouchers
             WHERE company_id = ?1 AND date BETWEEN ?2 AND ?3
             GROUP BY ledger ORDER BY total DESC LIMIT 10",
        )?
        .query_map(scope, |row| {
            Ok(LedgerTotal {
                ledger: row.get(0)?,
                vouchers: row.get(1)?,
                amount: cents(row.get(2)?),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    tx.finish()?;

    Ok(Some(Dashboard {
        guid: guid.to_owned(),
        alter_id,
        name,
        last_synced_at,
        from: range.from.map(|d| d.to_string()),
        to: range.to.map(|d| d.to_string()),
        vouchers: totals.iter().map(|t| t.vouchers).sum(),
        totals,
        monthly,
        top_ledgers,
        computed_at: now_rfc3339(),
        query_ms: (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
    }))
}

/// What one sync imported.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    pub guid: String,
    pub name: String,
    pub previous_alter_id: i64,
    pub alter_id: i64,
    pub inserted: i64,
    /// The day the new vouchers are dated (the day after the company's latest voucher).
    pub date: String,
    pub last_synced_at: String,
}

/// Import the next batch of vouchers for one company and bump its `alter_id`, in one write
/// transaction. `None` when there is no such company.
pub fn sync(conn: &mut Connection, guid: &str) -> Result<Option<Synced>, DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some((id, name, alter_id, last_date)) = tx
        .query_row(
            "SELECT id, name, alter_id, (SELECT max(date) FROM vouchers WHERE company_id = c.id)
             FROM companies c WHERE guid = ?1",
            [guid],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let day = last_date
        .as_deref()
        .and_then(Date::parse)
        .map_or(FIRST_DAY, |d| Date::from_days(d.to_days() + 1))
        .to_string();
    // Deterministic per company and state, like the seed.
    let mut rng = Rng((id as u64) << 32 ^ alter_id as u64);
    let inserted = 100 + (rng.next_u64() % 400) as i64;
    {
        let mut voucher = tx.prepare_cached(
            "INSERT INTO vouchers (company_id, alter_id, date, voucher_type, ledger, amount_cents)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for k in 1..=inserted {
            let v = rng.voucher();
            voucher.execute(params![
                id,
                alter_id + k,
                day,
                v.voucher_type,
                v.ledger,
                v.amount_cents
            ])?;
        }
    }
    let now = now_rfc3339();
    tx.execute(
        "UPDATE companies SET alter_id = ?1, last_synced_at = ?2 WHERE id = ?3",
        params![alter_id + inserted, now, id],
    )?;
    tx.commit()?;
    Ok(Some(Synced {
        guid: guid.to_owned(),
        name,
        previous_alter_id: alter_id,
        alter_id: alter_id + inserted,
        inserted,
        date: day,
        last_synced_at: now,
    }))
}

/// Every company's GUID, in id order (for the periodic sync's round robin).
pub fn guids(conn: &mut Connection) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare_cached("SELECT guid FROM companies ORDER BY id")?;
    let rows = stmt.query_map([], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn cents(cents: i64) -> f64 {
    cents as f64 / 100.0
}
