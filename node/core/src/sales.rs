//! Producers' sales through the allocation at this caisse's outlets: a
//! running total per month and producer, kept with each purchase line that
//! names a producer, and published as a signed [`ProducerSales`] statement
//! per month so a producer can see its demand in every caisse. Only
//! producer, month, amount and line count: nothing about members.

use caisse_protocol::messages::PurchaseLine;
use caisse_protocol::producer::{ProducerSales, SalesLine};
use caisse_protocol::{Amount, CaisseId, Envelope, FederationId, Period, ProducerId, SecretKey};
use serde::{Deserialize, Serialize};

use crate::caisse::{Caisse, CaisseError};
use crate::store::{StoreError, decode_value, encode_value, keys};
use crate::view::Reads;

/// Totals by month and producer: `ps/<period index BE><producer>`.
pub const SALES: &[u8] = b"ps/";

/// One producer's total for one month.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesTotal {
    /// Sum of the line prices.
    pub amount: Amount,
    /// Purchase lines.
    pub lines: u32,
}

fn period_prefix(period: Period) -> Vec<u8> {
    keys::key(SALES, &[&period.index().to_be_bytes()])
}

fn sales_key(period: Period, producer: &ProducerId) -> Vec<u8> {
    keys::key(SALES, &[&period.index().to_be_bytes(), producer.as_bytes()])
}

/// Changes to the sales totals alone wait this long (plus a spread of up
/// to as much again, by caisse) before they are published: every publish
/// makes each other caisse sync the document, and caisses that all
/// published at a month's first sale kept a 30-caisse federation's CPU
/// busy for a second and more, while tills waited.
pub const SALES_PUBLISH_EVERY_MS: u64 = 5_000;

impl Caisse {
    /// Add the lines of a sale at one of our outlets to the month's totals,
    /// published after [`SALES_PUBLISH_EVERY_MS`] and its spread (the month
    /// before with its final totals at the next publish).
    pub(crate) fn record_sales(
        &mut self,
        period: Period,
        lines: &[PurchaseLine],
    ) -> Result<(), CaisseError> {
        for l in lines {
            let Some(p) = l.producer else { continue };
            let key = sales_key(period, &p);
            let mut t: SalesTotal = match self.get(&key)? {
                Some(b) => decode_value(&key, &b)?,
                None => SalesTotal::default(),
            };
            t.amount = t
                .amount
                .checked_add(l.amount)
                .map_err(|_| CaisseError::Invalid("sales total out of range".into()))?;
            t.lines = t.lines.saturating_add(1);
            self.pending.put(key, encode_value(&t));
        }
        if lines.iter().any(|l| l.producer.is_some()) {
            // The month's totals are published: every sale of a producer's
            // goods changes them, published within seconds with the next.
            self.mark_sales_changed();
        }
        Ok(())
    }
}

/// The totals of `period`, by producer.
pub fn totals(r: &impl Reads, period: Period) -> Result<Vec<SalesLine>, StoreError> {
    let prefix = period_prefix(period);
    let mut out = Vec::new();
    for (k, v) in r.read_prefix(&prefix)? {
        let Some(id) = k
            .get(prefix.len()..)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
        else {
            continue;
        };
        let t: SalesTotal = decode_value(&k, &v)?;
        out.push(SalesLine {
            producer: ProducerId::from_bytes(id),
            amount: t.amount,
            lines: t.lines,
        });
    }
    Ok(out)
}

/// The months that have totals, in order.
pub fn periods(r: &impl Reads) -> Result<Vec<Period>, StoreError> {
    let mut periods: Vec<Period> = r
        .read_prefix(SALES)?
        .into_iter()
        .filter_map(|(k, _)| {
            let b: [u8; 4] = k.get(SALES.len()..SALES.len() + 4)?.try_into().ok()?;
            Period::from_index(u32::from_be_bytes(b))
        })
        .collect();
    periods.dedup();
    Ok(periods)
}

/// One producer's totals, month by month (one read per month).
pub fn producer_totals(
    r: &impl Reads,
    producer: &ProducerId,
) -> Result<Vec<(Period, SalesLine)>, StoreError> {
    let mut out = Vec::new();
    for period in periods(r)? {
        let key = sales_key(period, producer);
        if let Some(v) = r.read(&key)? {
            let t: SalesTotal = decode_value(&key, &v)?;
            out.push((
                period,
                SalesLine {
                    producer: *producer,
                    amount: t.amount,
                    lines: t.lines,
                },
            ));
        }
    }
    Ok(out)
}

/// Every month's totals, signed, for the federation document.
pub fn publications(
    r: &impl Reads,
    caisse: CaisseId,
    secret: &SecretKey,
    federation: &FederationId,
) -> std::collections::BTreeMap<Period, Envelope> {
    periods(r)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|period| {
            let totals = totals(r, period).ok()?;
            let s = ProducerSales {
                caisse,
                period,
                totals,
            };
            Some((period, Envelope::seal(secret, federation, &s).ok()?))
        })
        .collect()
}
