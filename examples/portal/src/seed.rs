//! The deterministic seed: about 20 companies and their vouchers, generated from a fixed
//! PRNG seed so every fresh database (and every test run) holds the same data.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, TransactionBehavior};

use crate::dates::{now_rfc3339, Date};
use crate::db::{open, DbError};

/// Seeded vouchers span three fiscal years: 2022-04-01 to 2025-03-31.
pub const FIRST_DAY: Date = Date {
    year: 2022,
    month: 4,
    day: 1,
};
const SEEDED_DAYS: i64 = 1096;

const COMPANY_NAMES: [&str; 20] = [
    "Acme Traders",
    "Bharat Steel Works",
    "Coastal Fisheries",
    "Deccan Textiles",
    "Eastern Spice Co",
    "Falcon Logistics",
    "Ganga Agro Foods",
    "Himalaya Pharma",
    "Indus Motors",
    "Jaipur Handicrafts",
    "Kaveri Paper Mills",
    "Lotus Electronics",
    "Malabar Exports",
    "Narmada Cement",
    "Orchid Hotels",
    "Pioneer Plastics",
    "Quartz Glassware",
    "Royal Tea Estates",
    "Sahyadri Dairy",
    "Tapti Chemicals",
];

const LEDGERS: [&str; 40] = [
    "Sales Account",
    "Purchase Account",
    "Cash",
    "HDFC Bank",
    "ICICI Bank",
    "SBI Current Account",
    "GST Output",
    "GST Input",
    "TDS Payable",
    "Salaries",
    "Rent",
    "Electricity",
    "Freight Inward",
    "Freight Outward",
    "Office Expenses",
    "Travelling",
    "Telephone",
    "Repairs & Maintenance",
    "Advertising",
    "Insurance",
    "Interest Paid",
    "Interest Received",
    "Discount Allowed",
    "Discount Received",
    "Commission",
    "Professional Fees",
    "Printing & Stationery",
    "Bank Charges",
    "Depreciation",
    "Sundry Debtors",
    "Sundry Creditors",
    "Raw Materials",
    "Packing Materials",
    "Consumables",
    "Fuel",
    "Staff Welfare",
    "Audit Fees",
    "Legal Charges",
    "Donations",
    "Miscellaneous",
];

/// Voucher types with their weights out of 100.
const VOUCHER_TYPES: [(&str, u64); 8] = [
    ("Sales", 30),
    ("Purchase", 20),
    ("Receipt", 18),
    ("Payment", 18),
    ("Journal", 6),
    ("Contra", 4),
    ("Credit Note", 2),
    ("Debit Note", 2),
];

const SCHEMA: &str = "
CREATE TABLE companies (
    id             INTEGER PRIMARY KEY,
    guid           TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    alter_id       INTEGER NOT NULL,
    last_synced_at TEXT
);
CREATE TABLE vouchers (
    id           INTEGER PRIMARY KEY,
    company_id   INTEGER NOT NULL REFERENCES companies(id),
    alter_id     INTEGER NOT NULL,
    date         TEXT NOT NULL,
    voucher_type TEXT NOT NULL,
    ledger       TEXT NOT NULL,
    amount_cents INTEGER NOT NULL
);
";

/// Narrows the dashboard to one company's date range; every aggregate still reads each of
/// its rows (tens of thousands per company), which is the cost the cache removes.
const INDEX: &str = "CREATE INDEX vouchers_by_company_date ON vouchers(company_id, date);";

/// What seeding did.
#[derive(Debug, Clone, Copy)]
pub struct Seeded {
    pub companies: usize,
    pub vouchers: u64,
    pub elapsed: Duration,
}

/// Create and seed the database unless it is already there; `None` when it was. Seeding is
/// one transaction, so an interrupted seed leaves no half-built database behind.
pub fn prepare(path: &Path, vouchers: u64) -> Result<Option<Seeded>, DbError> {
    let mut conn = open(path)?;
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'companies')",
        [],
        |row| row.get(0),
    )?;
    if exists {
        return Ok(None);
    }
    tracing::info!(
        vouchers,
        "new database: creating and seeding it (once; a few seconds)"
    );
    let started = Instant::now();
    let now = now_rfc3339();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    tx.execute_batch(SCHEMA)?;
    let mut rng = Rng(0x5eed_f00d_c0de_cafe);
    let per_company = vouchers / COMPANY_NAMES.len() as u64;
    let mut remainder = vouchers % COMPANY_NAMES.len() as u64;
    {
        let mut company = tx.prepare(
            "INSERT INTO companies (id, guid, name, alter_id, last_synced_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut voucher = tx.prepare(
            "INSERT INTO vouchers (company_id, alter_id, date, voucher_type, ledger, amount_cents)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, name) in COMPANY_NAMES.iter().enumerate() {
            let id = i as i64 + 1;
            let count = per_company + u64::from(remainder > 0);
            remainder = remainder.saturating_sub(1);
            let guid = rng.guid();
            company.execute(params![id, guid, name, count as i64, now])?;
            // Vouchers arrive in date order, so each one's alter_id (the company's change
            // counter when it was imported) grows with its date, as in the source system.
            let mut day_text = (i64::MIN, String::new());
            for k in 0..count {
                let day = FIRST_DAY.to_days() + (k as i64 * SEEDED_DAYS) / count.max(1) as i64;
                if day != day_text.0 {
                    day_text = (day, Date::from_days(day).to_string());
                }
                let v = rng.voucher();
                voucher.execute(params![
                    id,
                    k as i64 + 1,
                    day_text.1,
                    v.voucher_type,
                    v.ledger,
                    v.amount_cents
                ])?;
            }
        }
    }
    tx.execute_batch(INDEX)?;
    tx.commit()?;
    conn.execute_batch("ANALYZE")?;
    Ok(Some(Seeded {
        companies: COMPANY_NAMES.len(),
        vouchers,
        elapsed: started.elapsed(),
    }))
}

pub struct Voucher {
    pub voucher_type: &'static str,
    pub ledger: &'static str,
    pub amount_cents: i64,
}

/// SplitMix64: tiny, fast, and the same sequence everywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A GUID-shaped identifier (lower-case hex), like the source system's.
    fn guid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn voucher(&mut self) -> Voucher {
        let r = self.next_u64();
        let mut pick = r % 100;
        let voucher_type = VOUCHER_TYPES
            .iter()
            .find(|(_, weight)| {
                let found = pick < *weight;
                pick = pick.saturating_sub(*weight);
                found
            })
            .map_or("Journal", |(name, _)| name);
        // The smaller of two draws favours the first ledgers, so "top ledgers" has a shape.
        let ledger = ((r >> 8) % 40).min((r >> 16) % 40) as usize;
        let scale = [1, 1, 1, 10, 10, 100][((r >> 24) % 6) as usize];
        Voucher {
            voucher_type,
            ledger: LEDGERS[ledger],
            amount_cents: ((r >> 32) % 100_000 + 100) as i64 * scale,
        }
    }
}
