//! A member's own page, after signing in with card and PIN: balance, this
//! month's allocation and contribution, the history of their account, where
//! they may shop, and the parliament's open votes. It shows only what
//! concerns the member signed in.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use caisse_core::view::Reads;
use caisse_protocol::messages::Subject;
use caisse_protocol::{Amount, Day, MemberId};

use super::ConsoleState;
use super::html::{esc, money};
use super::session::Who;
use super::{Accredited, Kind, Visitor};
use crate::caisse::ContributionIndex;
use crate::ledger::{Account, EntryKind, JournalEntry};
use crate::parliament::Proposal;

/// History lines shown.
pub const HISTORY: usize = 50;

struct MemberPage {
    name: String,
    balance: Amount,
    allocation: Option<Amount>,
    contribution: Option<ContributionIndex>,
    history: Vec<JournalEntry>,
    outlet_names: Vec<(caisse_protocol::OutletId, String)>,
    accredited: Vec<Accredited>,
    open: Vec<Proposal>,
    seat: Option<u32>,
    today: Day,
}

/// `GET /member`
pub async fn page(v: Visitor, State(s): State<ConsoleState>) -> Response {
    let member = match v.require(&s, &[Kind::Member]) {
        Ok(Who::Member { member, .. }) => member,
        Ok(_) => return v.error(&s, StatusCode::FORBIDDEN, "members only"),
        Err(r) => return r,
    };
    let view = s.federation.snapshot();
    let own = s.config.name.clone();
    let data = s
        .handle
        .read(move |c, now| {
            let today = Day::from_unix(now);
            let period = today.period();
            let record = c.member_record(&member)?;
            let seat = c.seat_of(&member)?;
            Ok(MemberPage {
                name: record.name,
                balance: c.balance(&Account::Member(member)),
                allocation: c.member_allocation(&member, period)?,
                contribution: c.member_contribution(&member, period)?,
                history: c.member_statement(&member, HISTORY)?,
                outlet_names: c.outlets().into_iter().map(|o| (o.id, o.name)).collect(),
                accredited: super::accredited_today(c, &view, today, &own),
                open: c
                    .proposals()?
                    .into_iter()
                    .filter(|p| p.outcome.is_none() && now < p.closes)
                    .collect(),
                seat,
                today,
            })
        })
        .await;
    match data {
        Ok(d) => {
            let body = render(&v, &d, member);
            v.page(&s, StatusCode::OK, v.t("My account", "Mon compte"), &body)
        }
        Err(e) => v.unavailable(&s, &e),
    }
}

fn describe(
    v: &Visitor,
    e: &JournalEntry,
    outlets: &[(caisse_protocol::OutletId, String)],
) -> String {
    let outlet_name = |o: &caisse_protocol::OutletId| {
        outlets
            .iter()
            .find(|(id, _)| id == o)
            .map_or_else(|| o.to_string(), |(_, n)| n.clone())
    };
    let cats = |lines: &[caisse_protocol::messages::PurchaseLine]| {
        let mut c: Vec<&str> = lines.iter().map(|l| l.category.as_str()).collect();
        c.dedup();
        c.join(", ")
    };
    match &e.kind {
        EntryKind::Allocation {
            period, expired, ..
        } if !expired.is_zero() => format!(
            "{} {period} ({} {})",
            v.t("Allocation for", "Allocation de"),
            v.t("expired:", "expiré :"),
            money(v.lang, *expired)
        ),
        EntryKind::Allocation { period, .. } => {
            format!("{} {period}", v.t("Allocation for", "Allocation de"))
        }
        EntryKind::Purchase { outlet, lines, .. } => format!(
            "{} {} — {}",
            v.t("Purchase at", "Achat chez"),
            outlet_name(outlet),
            cats(lines)
        ),
        EntryKind::CrossPurchase { host, lines, .. } => format!(
            "{} {} — {}",
            v.t(
                "Purchase at another caisse's outlet",
                "Achat dans un point de vente d'une autre caisse"
            ),
            host.short(),
            cats(lines)
        ),
        other => format!("{other:?}")
            .split([' ', '{'])
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

fn render(v: &Visitor, d: &MemberPage, member: MemberId) -> String {
    let l = v.lang;
    let account = Account::Member(member);
    let history: String = d
        .history
        .iter()
        .map(|e| {
            let delta = e
                .postings
                .iter()
                .filter(|p| p.account == account)
                .fold(Amount::ZERO, |a, p| a.checked_add(p.amount).unwrap_or(a));
            let sign = if delta.is_negative() { "" } else { "+" };
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{sign}{}</td></tr>",
                Day::from_unix(e.at),
                esc(describe(v, e, &d.outlet_names)),
                money(l, delta)
            )
        })
        .collect();
    let history = if history.is_empty() {
        format!("<p>{}</p>", v.t("Nothing yet.", "Rien pour l'instant."))
    } else {
        format!(
            "<div class=\"table-wrap\"><table><caption class=\"sr-only\">{cap}</caption><thead><tr><th scope=\"col\">{date}</th><th scope=\"col\">{what}</th><th scope=\"col\" class=\"num\">{amount}</th></tr></thead><tbody>{history}</tbody></table></div>",
            cap = v.t("History of my allocation", "Historique de mon allocation"),
            date = v.t("Date", "Date"),
            what = v.t("What", "Quoi"),
            amount = v.t("Amount", "Montant"),
        )
    };
    let places = |want_outlets: bool| -> String {
        let rows: String = d
            .accredited
            .iter()
            .filter(|a| matches!(a.subject, Subject::Outlet(_)) == want_outlets)
            .map(|a| {
                let scope: Vec<String> = a
                    .scope
                    .iter()
                    .map(|x| {
                        format!(
                            "{} {}\u{a0}%",
                            super::html::category_label(l, x.category.as_str()),
                            x.coverage_pct
                        )
                    })
                    .collect();
                format!(
                    "<tr><td data-label=\"{}\">{}</td><td data-label=\"{}\">{}</td><td data-label=\"{}\">{}</td><td data-label=\"{}\">{}</td></tr>",
                    v.t("Name", "Nom"),
                    esc(&a.name),
                    v.t("Categories (share paid)", "Catégories (part payée)"),
                    esc(scope.join(", ")),
                    v.t("Accredited by", "Conventionné par"),
                    esc(&a.caisse),
                    v.t("Until", "Jusqu'au"),
                    a.until
                )
            })
            .collect();
        if rows.is_empty() {
            return format!("<p>{}</p>", v.t("None today.", "Aucun aujourd'hui."));
        }
        format!(
            "<div class=\"table-wrap\"><table class=\"stack\"><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>{rows}</tbody></table></div>",
            v.t("Name", "Nom"),
            v.t("Categories (share paid)", "Catégories (part payée)"),
            v.t("Accredited by", "Conventionné par"),
            v.t("Until", "Jusqu'au"),
        )
    };
    let votes = if d.open.is_empty() {
        format!("<p>{}</p>", v.t("No vote is open.", "Aucun vote en cours."))
    } else {
        let items: String = d
            .open
            .iter()
            .map(|p| {
                format!(
                    "<li><strong>{}</strong> — {} {}</li>",
                    esc(&p.title),
                    v.t("closes", "clôture le"),
                    Day::from_unix(p.closes)
                )
            })
            .collect();
        let seat = match d.seat {
            Some(n) => format!(
                "<p>{} seat-{n}. <a href=\"/parliament\">{}</a></p>",
                v.t("You hold", "Vous occupez le siège"),
                v.t(
                    "Vote on the parliament page",
                    "Voter sur la page du parlement"
                )
            ),
            None => String::new(),
        };
        format!("<ul>{items}</ul>{seat}")
    };
    let contribution = match &d.contribution {
        Some(c) => money(l, c.amount),
        None => v.t("not recorded yet", "pas encore enregistrée").to_owned(),
    };
    let allocation = match d.allocation {
        Some(a) => money(l, a),
        None => v.t("not issued yet", "pas encore versée").to_owned(),
    };
    format!(
        r#"<p>{hello} <strong>{name}</strong></p>
<div class="figures">
<div class="figure"><div class="label">{bal_l}</div><div class="big" id="balance">{bal}</div></div>
<div class="figure"><div class="label">{alloc_l} {period}</div><div class="big">{alloc}</div></div>
<div class="figure"><div class="label">{contrib_l} {period}</div><div class="big">{contrib}</div></div>
</div>
<h2>{hist_h}</h2>
{history}
<h2>{shops_h}</h2>
{shops}
<h2>{prods_h}</h2>
{prods}
<h2>{votes_h}</h2>
{votes}"#,
        hello = v.t("Hello", "Bonjour"),
        name = esc(&d.name),
        bal_l = v.t("Left on my allocation", "Reste sur mon allocation"),
        bal = money(l, d.balance),
        alloc_l = v.t("Allocation for", "Allocation de"),
        period = d.today.period(),
        alloc = allocation,
        contrib_l = v.t("My contribution for", "Ma cotisation de"),
        contrib = contribution,
        hist_h = v.t("History", "Historique"),
        shops_h = v.t("Where I can shop", "Où je peux faire mes courses"),
        shops = places(true),
        prods_h = v.t("Accredited producers", "Producteurs conventionnés"),
        prods = places(false),
        votes_h = v.t(
            "Open votes of the parliament",
            "Votes en cours au parlement"
        ),
    )
}
