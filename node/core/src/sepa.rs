//! Bank details and the SEPA credit transfer file of a period's payouts.
//!
//! Outlets and the caisse itself have bank accounts (business data: an
//! IBAN checked by its ISO 13616 checksum, a BIC, the holder's name), kept
//! under `ib/`. A period's outlet payouts become one SEPA credit transfer
//! initiation (ISO 20022 `pain.001.001.09`, what French banks import): one
//! transaction per payout, its end-to-end id naming the payout's journal
//! entry, with the number of transactions and the control sum in the group
//! header and the payment block.
//!
//! Contributions are collected by SEPA direct debit: each member's mandate
//! (its reference, the day it was signed, the account) is kept at home
//! under `md/` (personal data: it never leaves the node), and a period's
//! recorded contributions become one direct debit initiation (ISO 20022
//! `pain.008.001.02`, SDD Core), first collections and recurring ones in
//! separate payment blocks, under the caisse's SEPA creditor identifier.

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
    /// The caisse's SEPA creditor identifier (ICS), to collect
    /// contributions by direct debit.
    #[serde(default)]
    pub creditor_id: Option<String>,
}

/// A member's SEPA direct debit mandate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandate {
    /// The unique mandate reference (UMR), as on the signed form.
    pub reference: String,
    /// The day it was signed.
    pub signed_on: Day,
    /// The account holder.
    pub holder: String,
    /// The account debited (IBAN checked).
    pub iban: String,
    /// Its bank's BIC, if given.
    pub bic: Option<String>,
}

/// Storage key of a member's mandate.
pub fn mandate_key(member: &caisse_protocol::MemberId) -> Vec<u8> {
    keys::key(b"md/", &[member.as_bytes()])
}

/// A mandate from what the desk typed, checked.
pub fn mandate(
    reference: &str,
    signed_on: Day,
    holder: &str,
    iban: &str,
    bic: Option<&str>,
) -> Result<Mandate, String> {
    let reference = reference.trim();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "/-?:().,'+ ".contains(c);
    if reference.is_empty() || reference.len() > 35 || !reference.chars().all(allowed) {
        return Err(format!(
            "{reference:?}: a mandate reference is 1 to 35 characters of A-Z a-z 0-9 / - ? : ( ) . , ' + and spaces"
        ));
    }
    let account = bank_account(holder, iban, bic)?;
    Ok(Mandate {
        reference: reference.to_owned(),
        signed_on,
        holder: account.holder,
        iban: account.iban,
        bic: account.bic,
    })
}

/// A SEPA creditor identifier (ICS) if its check digits hold (ISO 7064 mod
/// 97-10 over the national identifier, the country and `00`, the business
/// code left out), else why not.
pub fn check_creditor_id(text: &str) -> Result<String, String> {
    let id: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let bad = || format!("{text:?} is not a SEPA creditor identifier (like FR72ZZZ123456)");
    if id.len() < 8 || id.len() > 35 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    let (country, rest) = id.split_at(2);
    let (check, rest) = rest.split_at(2);
    let national = &rest[3..];
    if !country.chars().all(|c| c.is_ascii_uppercase())
        || !check.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut rem: u32 = 0;
    for c in format!("{national}{country}00").chars() {
        let v = c.to_digit(36).ok_or_else(bad)?;
        for d in v.to_string().chars() {
            rem = (rem * 10 + d.to_digit(10).unwrap_or(0)) % 97;
        }
    }
    if format!("{:02}", 98 - rem) == check {
        Ok(id)
    } else {
        Err(format!(
            "{text:?}: the creditor identifier's check digits do not match (mistyped?)"
        ))
    }
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
        creditor_id: None,
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

/// One transfer to send.
struct Transfer {
    end_to_end: String,
    amount: Amount,
    account: BankAccount,
    remittance: String,
}

/// What this caisse owes another after a period's settlement.
#[derive(Clone, Debug)]
pub struct SettlementDebt {
    /// The caisse owed.
    pub to: caisse_protocol::CaisseId,
    /// Its name.
    pub name: String,
    /// How much.
    pub amount: Amount,
    /// Its published bank account, if it published one.
    pub account: Option<BankAccount>,
}

/// The `pain.001.001.09` file of `period`'s outlet payouts and of the
/// settlement transfers this caisse owes (`debts`), to be executed on
/// `execution`; `created` is the file's creation time (unix seconds).
/// Payouts and transfers are two payment blocks; each transfer's end-to-end
/// id ties it back: `PAYOUT-<period>-J<journal entry>`,
/// `SETTLE-<period>-<creditor>` (the reference to give `settlement paid`).
pub fn payouts_pain001(
    store: &dyn Store,
    caisse_name: &str,
    period: Period,
    execution: Day,
    created: u64,
    debts: &[SettlementDebt],
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
    let mut payouts: Vec<(u64, Transfer)> = Vec::new();
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
            Some(b) => payouts.push((
                seq,
                Transfer {
                    end_to_end: format!("PAYOUT-{period}-J{seq}"),
                    amount: idx.amount,
                    account: decode_value(&bank_key(Some(&id)), &b)?,
                    remittance: format!("Allocation alimentaire {period} {name}"),
                },
            )),
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
    payouts.sort_by_key(|(seq, _)| *seq);
    let payouts: Vec<Transfer> = payouts.into_iter().map(|(_, t)| t).collect();
    let mut settle = Vec::new();
    let mut unpublished = Vec::new();
    for d in debts.iter().filter(|d| d.amount > Amount::ZERO) {
        match &d.account {
            Some(a) => settle.push(Transfer {
                end_to_end: settlement_reference(period, &d.to),
                amount: d.amount,
                account: a.clone(),
                remittance: format!("Compensation {period} {caisse_name} -> {}", d.name),
            }),
            None => unpublished.push(d.name.clone()),
        }
    }
    if !unpublished.is_empty() {
        return Err(invalid(format!(
            "{} published no bank account: ask them to run `caisse bank set` (it is published to the federation)",
            unpublished.join(", ")
        )));
    }
    if payouts.is_empty() && settle.is_empty() {
        return Err(invalid(format!(
            "no payout recorded and nothing owed to another caisse for {period}: nothing to transfer"
        )));
    }
    let all = || payouts.iter().chain(settle.iter());
    let total = Amount::checked_sum(all().map(|t| t.amount)).map_err(|e| invalid(e.to_string()))?;
    let n = all().count();
    let (y, m, d) = Day::from_unix(created).ymd();
    let secs = created % 86_400;
    let stamp = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let msg_id = format!("CAISSE-{period}-{created}");
    let mut blocks = String::new();
    for (id, part) in [("PAYOUTS", &payouts), ("SETTLEMENT", &settle)] {
        if part.is_empty() {
            continue;
        }
        let sum = Amount::checked_sum(part.iter().map(|t| t.amount))
            .map_err(|e| invalid(e.to_string()))?;
        let mut txs = String::new();
        for t in part {
            txs.push_str(&format!(
                "<CdtTrfTxInf><PmtId><EndToEndId>{e2e}</EndToEndId></PmtId><Amt><InstdAmt Ccy=\"EUR\">{amount}</InstdAmt></Amt><CdtrAgt>{agent}</CdtrAgt><Cdtr><Nm>{holder}</Nm></Cdtr><CdtrAcct><Id><IBAN>{iban}</IBAN></Id></CdtrAcct><RmtInf><Ustrd>{ustrd}</Ustrd></RmtInf></CdtTrfTxInf>",
                e2e = xml(&t.end_to_end),
                amount = t.amount,
                agent = agent(&t.account.bic),
                holder = xml(&t.account.holder),
                iban = xml(&t.account.iban),
                ustrd = xml(&t.remittance.chars().take(140).collect::<String>()),
            ));
        }
        blocks.push_str(&format!(
            "<PmtInf><PmtInfId>{id}-{period}</PmtInfId><PmtMtd>TRF</PmtMtd><NbOfTxs>{k}</NbOfTxs><CtrlSum>{sum}</CtrlSum><PmtTpInf><SvcLvl><Cd>SEPA</Cd></SvcLvl></PmtTpInf><ReqdExctnDt><Dt>{execution}</Dt></ReqdExctnDt><Dbtr><Nm>{dholder}</Nm></Dbtr><DbtrAcct><Id><IBAN>{diban}</IBAN></Id></DbtrAcct><DbtrAgt>{dagent}</DbtrAgt><ChrgBr>SLEV</ChrgBr>{txs}</PmtInf>",
            k = part.len(),
            dholder = xml(&debtor.holder),
            diban = xml(&debtor.iban),
            dagent = agent(&debtor.bic),
        ));
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.001.001.09\"><CstmrCdtTrfInitn><GrpHdr><MsgId>{msg_id}</MsgId><CreDtTm>{stamp}</CreDtTm><NbOfTxs>{n}</NbOfTxs><CtrlSum>{total}</CtrlSum><InitgPty><Nm>{caisse}</Nm></InitgPty></GrpHdr>{blocks}</CstmrCdtTrfInitn></Document>\n",
        caisse = xml(caisse_name),
    ))
}

/// The bank reference of the settlement transfer of `period` to `creditor`.
pub fn settlement_reference(period: Period, creditor: &caisse_protocol::CaisseId) -> String {
    format!("SETTLE-{period}-{}", &creditor.to_string()[..12])
}

/// What a direct debit file holds.
#[derive(Clone, Debug, Serialize)]
pub struct DirectDebits {
    /// The `pain.008.001.02` document.
    pub xml: String,
    /// Debits in it.
    pub count: usize,
    /// Their sum.
    pub total: Amount,
    /// Members with a contribution for the period but no mandate (to
    /// collect another way).
    pub without_mandate: usize,
}

/// The `pain.008.001.02` file collecting `period`'s recorded contributions
/// of members with a mandate, on `collection`.
pub fn contributions_pain008(
    store: &dyn Store,
    caisse_name: &str,
    period: Period,
    collection: Day,
    created: u64,
) -> Result<DirectDebits, CaisseError> {
    let invalid = CaisseError::Invalid;
    let creditor: BankAccount = match store.get(&bank_key(None))? {
        Some(b) => decode_value(&bank_key(None), &b)?,
        None => {
            return Err(invalid(
                "the caisse's own bank account is not set: `caisse bank set --holder … --iban … --creditor-id …`"
                    .into(),
            ));
        }
    };
    let ics = creditor.creditor_id.clone().ok_or_else(|| {
        invalid("the caisse has no SEPA creditor identifier: `caisse bank set … --creditor-id FR…` (your bank gives it)".into())
    })?;
    // (first collection, seq, amount, mandate)
    let mut debits: Vec<(bool, u64, Amount, Mandate)> = Vec::new();
    let mut without = 0usize;
    let prefix = keys::key(keys::CONTRIBUTION, &[&period.index().to_be_bytes()]);
    for (k, v) in store.scan_prefix(&prefix)? {
        let idx: crate::caisse::ContributionIndex = decode_value(&k, &v)?;
        let Some(member) = k
            .get(prefix.len()..)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(caisse_protocol::MemberId::from_bytes)
        else {
            continue;
        };
        if idx.amount.cents() <= 0 {
            continue;
        }
        let Some(b) = store.get(&mandate_key(&member))? else {
            without += 1;
            continue;
        };
        let m: Mandate = decode_value(&mandate_key(&member), &b)?;
        // The first collection under a mandate: no contribution in any
        // month since it was signed.
        let mut first = true;
        let mut p = m.signed_on.period();
        while p < period {
            let key = keys::key(
                keys::CONTRIBUTION,
                &[&p.index().to_be_bytes(), member.as_bytes()],
            );
            if store.get(&key)?.is_some() {
                first = false;
                break;
            }
            match p.next() {
                Some(n) => p = n,
                None => break,
            }
        }
        debits.push((first, idx.seq, idx.amount, m));
    }
    if debits.is_empty() {
        return Err(invalid(format!(
            "no contribution of {period} to collect by direct debit ({without} without a mandate)"
        )));
    }
    debits.sort_by_key(|d| (!d.0, d.1));
    let total =
        Amount::checked_sum(debits.iter().map(|d| d.2)).map_err(|e| invalid(e.to_string()))?;
    let (y, mo, d) = Day::from_unix(created).ymd();
    let secs = created % 86_400;
    let stamp = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let agent = |bic: &Option<String>| match bic {
        Some(b) => format!("<FinInstnId><BIC>{}</BIC></FinInstnId>", xml(b)),
        None => "<FinInstnId><Othr><Id>NOTPROVIDED</Id></Othr></FinInstnId>".into(),
    };
    let mut blocks = String::new();
    for (seq_type, first) in [("FRST", true), ("RCUR", false)] {
        let part: Vec<&(bool, u64, Amount, Mandate)> =
            debits.iter().filter(|d| d.0 == first).collect();
        if part.is_empty() {
            continue;
        }
        let sum =
            Amount::checked_sum(part.iter().map(|d| d.2)).map_err(|e| invalid(e.to_string()))?;
        let mut txs = String::new();
        for (_, seq, amount, m) in &part {
            txs.push_str(&format!(
                "<DrctDbtTxInf><PmtId><EndToEndId>CONTRIB-{period}-J{seq}</EndToEndId></PmtId><InstdAmt Ccy=\"EUR\">{amount}</InstdAmt><DrctDbtTx><MndtRltdInf><MndtId>{mid}</MndtId><DtOfSgntr>{signed}</DtOfSgntr></MndtRltdInf></DrctDbtTx><DbtrAgt>{agent}</DbtrAgt><Dbtr><Nm>{holder}</Nm></Dbtr><DbtrAcct><Id><IBAN>{iban}</IBAN></Id></DbtrAcct><RmtInf><Ustrd>{ustrd}</Ustrd></RmtInf></DrctDbtTxInf>",
                mid = xml(&m.reference),
                signed = m.signed_on,
                agent = agent(&m.bic),
                holder = xml(&m.holder.chars().take(70).collect::<String>()),
                iban = xml(&m.iban),
                ustrd = xml(&format!("Cotisation {period} {caisse_name}").chars().take(140).collect::<String>()),
            ));
        }
        blocks.push_str(&format!(
            "<PmtInf><PmtInfId>CONTRIB-{period}-{seq_type}</PmtInfId><PmtMtd>DD</PmtMtd><NbOfTxs>{n}</NbOfTxs><CtrlSum>{sum}</CtrlSum><PmtTpInf><SvcLvl><Cd>SEPA</Cd></SvcLvl><LclInstrm><Cd>CORE</Cd></LclInstrm><SeqTp>{seq_type}</SeqTp></PmtTpInf><ReqdColltnDt>{collection}</ReqdColltnDt><Cdtr><Nm>{cholder}</Nm></Cdtr><CdtrAcct><Id><IBAN>{ciban}</IBAN></Id></CdtrAcct><CdtrAgt>{cagent}</CdtrAgt><ChrgBr>SLEV</ChrgBr><CdtrSchmeId><Id><PrvtId><Othr><Id>{ics}</Id><SchmeNm><Prtry>SEPA</Prtry></SchmeNm></Othr></PrvtId></Id></CdtrSchmeId>{txs}</PmtInf>",
            n = part.len(),
            cholder = xml(&creditor.holder),
            ciban = xml(&creditor.iban),
            cagent = agent(&creditor.bic),
            ics = xml(&ics),
        ));
    }
    let n = debits.len();
    let xml_doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pain.008.001.02\"><CstmrDrctDbtInitn><GrpHdr><MsgId>CAISSE-DD-{period}-{created}</MsgId><CreDtTm>{stamp}</CreDtTm><NbOfTxs>{n}</NbOfTxs><CtrlSum>{total}</CtrlSum><InitgPty><Nm>{caisse}</Nm></InitgPty></GrpHdr>{blocks}</CstmrDrctDbtInitn></Document>\n",
        caisse = xml(caisse_name),
    );
    Ok(DirectDebits {
        xml: xml_doc,
        count: n,
        total,
        without_mandate: without,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creditor_identifiers_are_checked_by_their_digits() {
        assert_eq!(
            check_creditor_id("fr72 zzz 123456").as_deref(),
            Ok("FR72ZZZ123456")
        );
        assert_eq!(check_creditor_id("DE98ZZZ09999999999").map(|_| ()), Ok(()));
        assert!(
            check_creditor_id("FR73ZZZ123456")
                .unwrap_err()
                .contains("check digits")
        );
        assert!(check_creditor_id("hello").is_err());
        assert!(
            mandate(
                "RUM-2027-0001",
                Day::from_days(20_000),
                "A",
                "FR7630006000011234567890189",
                None
            )
            .is_ok()
        );
        assert!(
            mandate(
                "RUM<2027>",
                Day::from_days(20_000),
                "A",
                "FR7630006000011234567890189",
                None
            )
            .unwrap_err()
            .contains("mandate reference")
        );
    }

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
