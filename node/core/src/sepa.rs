//! Bank details and the SEPA credit transfer file of a period's payouts.
//!
//! Outlets and the caisse itself have bank accounts (business data: an
//! IBAN checked by its ISO 13616 checksum, a BIC, the holder's name), kept
//! under `ib/`. A period's outlet payouts become one SEPA credit transfer
//! initiation (ISO 20022 `pain.001.001.09`, what French banks import): one
//! transaction per payout, its end-to-end id naming the payout's journal
//! entry, with the number of transactions and the control sum in the group
//! header and the payment block.

use caisse_protocol::{Amount, Day, OutletId, Period};
use serde::{Deserialize, Serialize};

use crate::caisse::CaisseError;
use crate::store::{Store, decode_value, keys};

/// Bank details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    /// The account holder's name.
    pub holder: String,
    /// The IBAN, without spaces, upper case.
    pub iban: String,
    /// The BIC, if given.
    pub bic: Option<String>,
}

/// Storage key of an outlet's bank account (`None`: the caisse's own).
pub fn bank_key(owner: Option<&OutletId>) -> Vec<u8> {
    match owner {
        Some(o) => keys::key(b"ib/o", &[o.as_bytes()]),
        None => b"ib/self".to_vec(),
    }
}

/// An IBAN in its electronic form if its checksum holds, else why not.
pub fn check_iban(text: &str) -> Result<String, String> {
    let iban: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !(15..=34).contains(&iban.len()) || !iban.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{text:?} is not an IBAN: 15 to 34 letters and digits"
        ));
    }
    let b = iban.as_bytes();
    if !b[0].is_ascii_alphabetic()
        || !b[1].is_ascii_alphabetic()
        || !b[2].is_ascii_digit()
        || !b[3].is_ascii_digit()
    {
        return Err(format!(
            "{text:?} is not an IBAN: it starts with a country code and two check digits"
        ));
    }
    let rearranged = iban[4..].chars().chain(iban[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = c.to_digit(36).unwrap_or(0);
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    if rem != 1 {
        return Err(format!(
            "{text:?}: the IBAN's check digits do not match: check for a typing mistake"
        ));
    }
    Ok(iban)
}

/// A BIC (8 or 11 characters) upper-cased, or why not.
pub fn check_bic(text: &str) -> Result<String, String> {
    let bic = text.trim().to_ascii_uppercase();
    let ok = (bic.len() == 8 || bic.len() == 11)
        && bic.chars().all(|c| c.is_ascii_alphanumeric())
        && bic[..6].chars().all(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(bic)
    } else {
        Err(format!(
            "{text:?} is not a BIC: 8 or 11 letters and digits, the first six letters"
        ))
    }
}

/// Check and normalise bank details.
pub fn bank_account(holder: &str, iban: &str, bic: Option<&str>) -> Result<BankAccount, String> {
    let holder = holder.trim();
    if holder.is_empty() || holder.chars().count() > 70 {
        return Err("the holder's name is 1 to 70 characters (as the bank knows it)".into());
    }
    Ok(BankAccount {
        holder: holder.to_owned(),
        iban: check_iban(iban)?,
        bic: bic.map(check_bic).transpose()?,
    })
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn agent(bic: &Option<String>) -> String {
    match bic {
        Some(b) => format!("<FinInstnId><BICFI>{}</BICFI></FinInstnId>", xml(b)),
        None => "<FinInstnId><Othr><Id>NOTPROVIDED</Id></Othr></FinInstnId>".into(),
    }
}

/// One payout to send.
struct Transfer {
    seq: u64,
    amount: Amount,
    name: String,
    account: BankAccount,
}

/// The `pain.001.001.09` file of `period`'s outlet payouts, to be executed
/// on `execution`; `created` is the file's creation time (unix seconds).
pub fn payouts_pain001(
    store: &dyn Store,
    caisse_name: &str,
    period: Period,
    execution: Day,
    created: u64,
) -> Result<String, CaisseError> {
    let invalid = CaisseError::Invalid;
    let debtor: BankAccount = match store.get(&bank_key(None))? {
        Some(b) => decode_value(&bank_key(None), &b)?,
        None => {
            return Err(invalid(
                "the caisse's own bank account is not set: `caisse bank set --holder … --iban …`"
                    .into(),
            ));
        }
    };
    let mut transfers = Vec::new();
    let mut missing = Vec::new();
    let prefix = keys::key(keys::PAYOUT, &[&period.index().to_be_bytes()]);
    for (k, v) in store.scan_prefix(&prefix)? {
        let idx: crate::caisse::PayoutIndex = decode_value(&k, &v)?;
        let (Some(seq), Some(id)) = (
            idx.seq,
            k.get(prefix.len()..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(OutletId::from_bytes),
        ) else {
            continue;
        };
        let okey = crate::members::OutletRecord::key(&id);
        let name = match store.get(&okey)? {
            Some(b) => decode_value::<crate::members::OutletRecord>(&okey, &b)?.name,
            None => id.to_string(),
        };
        match store.get(&bank_key(Some(&id)))? {
            Some(b) => transfers.push(Transfer {
                seq,
                amount: idx.amount,
                name,
                account: decode_value(&bank_key(Some(&id)), &b)?,
            }),
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        return Err(invalid(format!(
            "no bank account for {}: set it with `caisse outlet bank`",
            missing.join(", ")
        )));
    }
    // In the order the payouts were recorded.
    transfers.sort_by_key(|t| t.seq);
    if transfers.is_empty() {
        return Err(invalid(format!(
            "no payout recorded for {period}: nothing to transfer"
        )));
    }
    let total = Amount::checked_sum(transfers.iter().map(|t| t.amount))
        .map_err(|e| invalid(e.to_string()))?;
    let n = transfers.len();
    let (y, m, d) = Day::from_unix(created).ymd();
    let secs = created % 86_400;
    let stamp = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let msg_id = format!("CAISSE-{period}-{created}");
    let mut txs = String::new();
    for t in &transfers {
        txs.push_str(&format!(
            "<CdtTrfTxInf><PmtId><EndToEndId>PAYOUT-{period}-J{seq}</EndToEndId></PmtId><Amt><InstdAmt Ccy=\"EUR\">{amount}</InstdAmt></Amt><CdtrAgt>{agent}</CdtrAgt><Cdtr><Nm>{holder}</Nm></Cdtr><CdtrAcct><Id><IBAN>{iban}</IBAN></Id></CdtrAcct><RmtInf><Ustrd>{ustrd}</Ustrd></RmtInf></CdtTrfTxInf>",
            seq = t.seq,
            amount = t.amount,
            agent = agent(&t.account.bic),
            holder = xml(&t.account.holder),
            iban = xml(&t.account.iban),
            ustrd = xml(
                &format!("Allocation alimentaire {period} {}", t.name)
                    .chars()
                    .take(140)
                    .collect::<String>()
            ),
        ));
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\"><CstmrCdtTrfInitn><GrpHdr><MsgId>{msg_id}</MsgId><CreDtTm>{stamp}</CreDtTm><NbOfTxs>{n}</NbOfTxs><CtrlSum>{total}</CtrlSum><InitgPty><Nm>{caisse}</Nm></InitgPty></GrpHdr><PmtInf><PmtInfId>PAYOUTS-{period}</PmtInfId><PmtMtd>TRF</PmtMtd><NbOfTxs>{n}</NbOfTxs><CtrlSum>{total}</CtrlSum><PmtTpInf><SvcLvl><Cd>SEPA</Cd></SvcLvl></PmtTpInf><ReqdExctnDt><Dt>{execution}</Dt></ReqdExctnDt><Dbtr><Nm>{dholder}</Nm></Dbtr><DbtrAcct><Id><IBAN>{diban}</IBAN></Id></DbtrAcct><DbtrAgt>{dagent}</DbtrAgt><ChrgBr>SLEV</ChrgBr>{txs}</PmtInf></CstmrCdtTrfInitn></Document>\n",
        caisse = xml(caisse_name),
        dholder = xml(&debtor.holder),
        diban = xml(&debtor.iban),
        dagent = agent(&debtor.bic),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ibans_are_checked_by_their_digits() {
        assert_eq!(
            check_iban("fr76 3000 6000 0112 3456 7890 189").as_deref(),
            Ok("FR7630006000011234567890189")
        );
        assert_eq!(
            check_iban("DE89 3704 0044 0532 0130 00").map(|_| ()),
            Ok(())
        );
        assert!(
            check_iban("FR76 3000 6000 0112 3456 7890 188")
                .unwrap_err()
                .contains("check digits")
        );
        assert!(check_iban("not an iban").is_err());
        assert_eq!(check_bic("bnpafrpp").as_deref(), Ok("BNPAFRPP"));
        assert!(check_bic("12345678").is_err());
    }
}
