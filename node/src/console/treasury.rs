//! Treasury and reports, for the caisse's staff (admin) and its evaluation
//! committee (observer, read-only): members, the allocation run,
//! contributions and subsidies against the target split, outlet payouts,
//! settlement with other caisses, and the evaluation report with charts.
//! Personal records (names, balances of members) are shown to the admin
//! only; every change is a form the observer never sees and the server
//! refuses to the observer anyway.

use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;

use crate::writer::reply;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use caisse_protocol::{Amount, CaisseId, Day, OutletId, Period};
use serde::Deserialize;

use super::ConsoleState;
use super::charts::bars;
use super::html::{Flash, Lang, csrf_field, esc, money, percent};
use super::session::Who;
use super::{Kind, Posted, Visitor};
use crate::ledger::Account;
use crate::members::{MemberRecord, MemberStatus, OutletRecord};
use crate::report::Report;

/// Members listed on the treasury page.
pub const MEMBERS_SHOWN: usize = 200;

/// The period asked for.
#[derive(Deserialize, Default)]
pub struct PeriodQuery {
    #[serde(default)]
    period: Option<String>,
}

fn period_of(q: &PeriodQuery, today: Day) -> Period {
    q.period
        .as_deref()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| today.period())
}

struct Treasury {
    report: Report,
    members: Vec<(MemberRecord, Amount)>,
    member_count: usize,
    outlets: Vec<(OutletRecord, Amount)>,
    treasury: Amount,
}

/// `GET /treasury`
pub async fn page(
    v: Visitor,
    State(s): State<ConsoleState>,
    Query(q): Query<PeriodQuery>,
) -> Response {
    let who = match v.require(&s, &[Kind::Admin, Kind::Observer]) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let admin = who == Who::Admin;
    let period = period_of(&q, s.handle.clock().today());
    let report = crate::app::report(&s, period).await;
    let data = s
        .handle
        .read(move |c, _| {
            let report = report?;
            let mut members = Vec::new();
            if admin {
                // The first records only: a large caisse's list is not loaded whole.
                let mut records = Vec::new();
                let mut bad = None;
                c.store
                    .for_each_prefix(crate::store::keys::MEMBER, &mut |k, val| {
                        match crate::store::decode_value::<MemberRecord>(k, val) {
                            Ok(r) => records.push(r),
                            Err(e) => bad = Some(e),
                        }
                        records.len() < MEMBERS_SHOWN && bad.is_none()
                    })?;
                if let Some(e) = bad {
                    return Err(e.into());
                }
                for r in records {
                    let b = c.balance(&Account::Member(r.id));
                    members.push((r, b));
                }
            }
            let outlets = c
                .outlets()
                .into_iter()
                .map(|o| {
                    let owed = c.balance(&Account::Outlet(o.id));
                    (o, owed)
                })
                .collect();
            Ok(Treasury {
                report,
                members,
                member_count: c.snapshot.members,
                outlets,
                treasury: c.balance(&Account::Treasury),
            })
        })
        .await;
    let d = match data {
        Ok(d) => d,
        Err(e) => {
            return v.unavailable(&s, &e);
        }
    };
    let view = s.federation.snapshot();
    let settlement = crate::settlement::settlement_view(&view, period);
    let name_of = |id: &CaisseId| -> String {
        if *id == s.caisse_id {
            return s.config.name.clone();
        }
        view.caisses
            .get(id)
            .and_then(|p| p.profile.as_ref())
            .map_or_else(|| id.short(), |p| p.name.clone())
    };
    let l = v.lang;
    let r = &d.report;
    let period_form = period_picker(&v, "/treasury", period);
    let members = if admin {
        let rows: String = d
            .members
            .iter()
            .map(|(m, b)| {
                let status = match m.status {
                    MemberStatus::Active => v.t("active", "actif"),
                    MemberStatus::Suspended => v.t("suspended", "suspendu"),
                    MemberStatus::Left => v.t("left", "parti"),
                };
                format!(
                    "<tr><td>{}</td><td class=\"mono\">{}</td><td>{status}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                    esc(&m.name),
                    esc(m.card),
                    m.joined,
                    money(l, *b)
                )
            })
            .collect();
        let more = if d.member_count > d.members.len() {
            format!(
                "<p>{} {} / {}. {}</p>",
                v.t("Showing", "Affichage de"),
                d.members.len(),
                d.member_count,
                v.t(
                    "The full list: `caisse member list`.",
                    "La liste complète : `caisse member list`."
                )
            )
        } else {
            String::new()
        };
        format!(
            "<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\">{}</th><th scope=\"col\" class=\"num\">{}</th></tr></thead><tbody>{rows}</tbody></table></div>{more}",
            v.t("Name", "Nom"),
            v.t("Card", "Carte"),
            v.t("Status", "État"),
            v.t("Joined", "Inscription"),
            v.t("Balance", "Solde"),
        )
    } else {
        format!(
            "<p>{}</p>",
            v.t(
                "Members' personal records are shown to the caisse's admin only.",
                "Les données personnelles des membres ne sont visibles que par l'administration de la caisse."
            )
        )
    };
    let enrol = if admin {
        format!(
            r#"<details><summary>{sum}</summary>
<form method="post" action="/treasury/members">{csrf}
<label for="m-name">{name_l}</label><input id="m-name" name="name" required maxlength="100" autocomplete="off">
<label for="m-residence">{res_l}</label><input id="m-residence" name="residence" required maxlength="200" autocomplete="off">
<label for="m-birth">{birth_l}</label><input id="m-birth" name="birth_year" inputmode="numeric" pattern="[0-9]{{4}}">
<label for="m-income">{income_l}</label><input id="m-income" name="income" inputmode="decimal" pattern="[0-9]+([.,][0-9]{{1,2}})?" aria-describedby="m-income-h"><small id="m-income-h">{income_h}</small>
<label for="m-pin">{pin_l}</label><input id="m-pin" name="pin" type="password" inputmode="numeric" pattern="[0-9]{{4,8}}" autocomplete="new-password">
<div class="choices"><label><input type="checkbox" name="new_household" value="1"> {hh_l}</label></div>
<button type="submit">{btn}</button></form></details>"#,
            csrf = csrf_field(&v.session),
            sum = v.t("Enrol a member", "Inscrire un membre"),
            name_l = v.t("Full name", "Nom complet"),
            res_l = v.t(
                "Place of residence (the only condition)",
                "Lieu de résidence (seule condition)"
            ),
            birth_l = v.t(
                "Year of birth (adults only)",
                "Année de naissance (adultes seulement)"
            ),
            income_l = v.t(
                "Monthly income, for the contribution scale",
                "Revenu mensuel, pour le barème des cotisations"
            ),
            income_h = v.t(
                "Leave empty if not declared.",
                "Laisser vide s'il n'est pas déclaré."
            ),
            pin_l = v.t(
                "PIN for paying without a smartphone (4 to 8 digits, optional)",
                "Code pour payer sans smartphone (4 à 8 chiffres, facultatif)"
            ),
            hh_l = v.t(
                "Start a household with this member",
                "Créer un foyer avec ce membre"
            ),
            btn = v.t("Enrol", "Inscrire"),
        )
    } else {
        String::new()
    };
    let funding_forms = if admin {
        format!(
            r#"<details><summary>{c_sum}</summary>
<form method="post" action="/treasury/contributions">{csrf}<input type="hidden" name="period" value="{period}">
<label for="c-card">{card_l}</label><input id="c-card" name="card" required autocomplete="off" spellcheck="false">
<label for="c-amount">{amount_l}</label><input id="c-amount" name="amount" inputmode="decimal" pattern="[0-9]+([.,][0-9]{{1,2}})?" aria-describedby="c-amount-h"><small id="c-amount-h">{amount_h}</small>
<button type="submit">{c_btn} {period}</button></form></details>
<details><summary>{s_sum}</summary>
<form method="post" action="/treasury/subsidies">{csrf}<input type="hidden" name="period" value="{period}">
<label for="s-source">{source_l}</label><select id="s-source" name="source"><option value="state">{state}</option><option value="local-authority">{local}</option><option value="other">{other}</option></select>
<label for="s-amount">{s_amount_l}</label><input id="s-amount" name="amount" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<label for="s-key">{key_l}</label><input id="s-key" name="key" required maxlength="100" aria-describedby="s-key-h"><small id="s-key-h">{key_h}</small>
<button type="submit">{s_btn} {period}</button></form></details>"#,
            csrf = csrf_field(&v.session),
            c_sum = v.t("Record a contribution", "Enregistrer une cotisation"),
            card_l = v.t("Member's card number", "Numéro de carte du membre"),
            amount_l = v.t("Amount", "Montant"),
            amount_h = v.t(
                "Leave empty for the member's amount on the caisse's scale.",
                "Laisser vide pour le montant du barème de la caisse."
            ),
            c_btn = v.t("Record for", "Enregistrer pour"),
            s_sum = v.t(
                "Record a subsidy received",
                "Enregistrer une subvention reçue"
            ),
            source_l = v.t("Funder", "Financeur"),
            state = source_name(l, "state"),
            local = source_name(l, "local-authority"),
            other = source_name(l, "other"),
            s_amount_l = v.t("Amount received", "Montant reçu"),
            key_l = v.t("Bank reference", "Référence bancaire"),
            key_h = v.t(
                "The same reference twice records the subsidy once.",
                "La même référence deux fois n'enregistre la subvention qu'une fois."
            ),
            s_btn = v.t("Record for", "Enregistrer pour"),
        )
    } else {
        String::new()
    };
    let allocation_form = if admin {
        format!(
            r#"<form method="post" action="/treasury/allocations">{csrf}<label for="alloc-period">{lab}</label><input id="alloc-period" name="period" value="{period}" pattern="[0-9]{{4}}-[0-9]{{2}}" required><button type="submit">{btn}</button></form><p><small>{help}</small></p>"#,
            csrf = csrf_field(&v.session),
            lab = v.t("Period (YYYY-MM)", "Période (AAAA-MM)"),
            btn = v.t("Issue the allocations", "Verser les allocations"),
            help = v.t(
                "Members who already received this period's allocation are skipped: running it twice pays nothing twice.",
                "Les membres ayant déjà reçu l'allocation de la période sont ignorés : relancer ne paie rien deux fois."
            ),
        )
    } else {
        String::new()
    };
    let subsidies: String = r
        .subsidies
        .iter()
        .map(|(src, a)| {
            format!(
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(source_name(l, src)),
                money(l, *a)
            )
        })
        .collect();
    let share_chart = bars(
        "funding-split",
        v.t(
            "Contributions' share of funding against the target",
            "Part des cotisations dans le financement, face à l'objectif",
        ),
        &[
            (
                v.t("contributions", "cotisations").to_owned(),
                i64::from(r.contribution_share_bp),
            ),
            (
                v.t("target", "objectif").to_owned(),
                i64::from(r.contribution_target_pct) * 100,
            ),
        ],
        |x| percent(l, u32::try_from(x).unwrap_or(0)),
    );
    let outlets: String = d
        .outlets
        .iter()
        .map(|(o, owed)| {
            let turnover = r
                .outlets
                .iter()
                .find(|t| t.outlet == o.id)
                .map_or(Amount::ZERO, |t| t.turnover);
            let pay = if admin {
                format!(
                    r#"<form method="post" action="/treasury/payout">{csrf}<input type="hidden" name="outlet" value="{id}"><input type="hidden" name="period" value="{period}"><button type="submit" class="secondary" aria-label="{btn} {name}">{btn}</button></form>"#,
                    csrf = csrf_field(&v.session),
                    id = o.id,
                    name = esc(&o.name),
                    btn = v.t("Pay out", "Payer"),
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{pay}</td></tr>",
                esc(&o.name),
                money(l, turnover),
                money(l, *owed)
            )
        })
        .collect();
    let statements: String = settlement
        .statements
        .iter()
        .map(|(id, st, acked, dispute)| {
            let state = match (acked, dispute) {
                (true, _) => v.t("acknowledged", "reconnu").to_owned(),
                (false, Some(d)) => format!(
                    "{} {} {}, {} {}",
                    v.t("disputed:", "contesté :"),
                    d.unknown_to_debtor.len(),
                    v.t("receipts unknown to the debtor", "reçus inconnus du débiteur"),
                    d.missing_from_statement.len(),
                    v.t("missing from the statement", "absents du relevé")
                ),
                (false, None) => v.t("awaiting acknowledgement", "en attente de reconnaissance").to_owned(),
            };
            // Our claims a debtor disputed as unknown to it can be withdrawn.
            let state = match dispute {
                Some(d) if admin && !acked && st.creditor == s.caisse_id && !d.unknown_to_debtor.is_empty() => format!(
                    r#"{state} <form method="post" action="/treasury/withdraw" class="inline">{csrf}<input type="hidden" name="debtor" value="{debtor}"><input type="hidden" name="period" value="{period}"><button type="submit" class="secondary">{btn}</button></form>"#,
                    csrf = csrf_field(&v.session),
                    debtor = st.debtor,
                    btn = v.t("Withdraw the disputed claims", "Retirer les créances contestées"),
                ),
                _ => state,
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{state}</td><td class=\"mono\">{}</td></tr>",
                esc(name_of(&st.creditor)),
                esc(name_of(&st.debtor)),
                money(l, st.amount),
                st.count,
                esc(id.short())
            )
        })
        .collect();
    let transfers: String = settlement
        .transfers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let paid = settlement
                .paid
                .iter()
                .find(|(p, _)| p.from == t.from && p.to == t.to && p.amount == t.amount);
            let state = match paid {
                Some((_, true)) => v.t("paid, confirmed by the receiver", "payé, confirmé par le destinataire"),
                Some((_, false)) => v.t("declared paid", "déclaré payé"),
                None => v.t("to pay", "à payer"),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{state}</td></tr>",
                i + 1,
                esc(name_of(&t.from)),
                esc(name_of(&t.to)),
                money(l, t.amount)
            )
        })
        .collect();
    let settlement_html = if statements.is_empty() {
        format!(
            "<p>{}</p>",
            v.t(
                "No settlement statement for this period.",
                "Aucun relevé de compensation pour cette période."
            )
        )
    } else {
        format!(
            r#"<h3>{st_h}</h3><div class="table-wrap"><table><thead><tr><th scope="col">{cred}</th><th scope="col">{debt}</th><th scope="col" class="num">{amount}</th><th scope="col" class="num">{count}</th><th scope="col">{state}</th><th scope="col">{id}</th></tr></thead><tbody>{statements}</tbody></table></div>
<h3>{tr_h}</h3><div class="table-wrap"><table><thead><tr><th scope="col">#</th><th scope="col">{from}</th><th scope="col">{to}</th><th scope="col" class="num">{amount}</th><th scope="col">{state}</th></tr></thead><tbody>{transfers}</tbody></table></div>"#,
            st_h = v.t("Statements", "Relevés"),
            cred = v.t("Owed to", "Dû à"),
            debt = v.t("Owed by", "Dû par"),
            amount = v.t("Amount", "Montant"),
            count = v.t("Purchases", "Achats"),
            state = v.t("Status", "État"),
            id = v.t("Statement", "Relevé"),
            tr_h = v.t("Net transfers", "Virements nets"),
            from = v.t("From", "De"),
            to = v.t("To", "À"),
        )
    };
    let body = format!(
        r#"{period_form}
<div class="figures">
<div class="figure"><div class="label">{members_l}</div><div class="big">{active}</div><small>{susp} {susp_l} · {left} {left_l} · {new} {new_l}</small></div>
<div class="figure"><div class="label">{alloc_l} {period}</div><div class="big">{alloc}</div><small>{alloc_n} {alloc_n_l}</small></div>
<div class="figure"><div class="label">{contrib_l}</div><div class="big">{contrib}</div></div>
<div class="figure"><div class="label">{subs_l}</div><div class="big">{subs}</div></div>
<div class="figure"><div class="label">{budget_l}</div><div class="big">{budget}</div></div>
<div class="figure"><div class="label">{treasury_l}</div><div class="big">{treasury}</div></div>
</div>
<h2>{members_h}</h2>
{members}
{enrol}
<h2>{run_h}</h2>
{allocation_form}
<h2>{funding_h}</h2>
<p>{share_l} <strong>{share}</strong> — {target_l} <strong>{target}%</strong></p>
{share_chart}
<div class="table-wrap"><table><thead><tr><th scope="col">{source_h}</th><th scope="col" class="num">{amount_h}</th></tr></thead><tbody><tr><td>{contrib_row}</td><td class="num">{contrib}</td></tr>{subsidies}</tbody></table></div>
{funding_forms}
<h2>{outlets_h}</h2>
<div class="table-wrap"><table><thead><tr><th scope="col">{outlet_h}</th><th scope="col" class="num">{turnover_h} {period}</th><th scope="col" class="num">{owed_h}</th><th scope="col">{payout_h}</th></tr></thead><tbody>{outlets}</tbody></table></div>
<h2>{settle_h}</h2>
{settlement_html}
<p><a href="/report?period={period}">{report_a}</a></p>{access_a}"#,
        access_a = if admin {
            format!(
                "<p><a href=\"/access\">{}</a></p>",
                v.t(
                    "Access: tokens and tills (revoke, suspend)",
                    "Accès : jetons et caisses (révoquer, suspendre)"
                )
            )
        } else {
            String::new()
        },
        members_l = v.t("Active members", "Membres actifs"),
        active = r.members.active,
        susp = r.members.suspended,
        susp_l = v.t("suspended", "suspendus"),
        left = r.members.left,
        left_l = v.t("left", "partis"),
        new = r.members.new_enrolments,
        new_l = v.t("new this period", "nouveaux sur la période"),
        alloc_l = v.t("Allocations", "Allocations"),
        alloc = money(l, r.allocations.total),
        alloc_n = r.allocations.count,
        alloc_n_l = v.t("issued", "versées"),
        contrib_l = v.t("Contributions", "Cotisations"),
        contrib = money(l, r.contributions.total),
        subs_l = v.t("Subsidies", "Subventions"),
        subs = money(l, r.subsidies_total),
        budget_l = v.t("Funding minus allocations", "Financement moins allocations"),
        budget = money(l, r.budget_balance),
        treasury_l = v.t("Treasury", "Trésorerie"),
        treasury = money(l, d.treasury),
        members_h = v.t("Members", "Membres"),
        run_h = v.t("Allocation run", "Versement des allocations"),
        funding_h = v.t("Contributions and subsidies", "Cotisations et subventions"),
        share_l = v.t("Contributions' share of funding:", "Part des cotisations :"),
        share = percent(l, r.contribution_share_bp),
        target_l = v.t("target", "objectif"),
        target = r.contribution_target_pct,
        source_h = v.t("Source", "Source"),
        amount_h = v.t("Amount", "Montant"),
        contrib_row = v.t("member contributions", "cotisations des membres"),
        outlets_h = v.t("Outlets and payouts", "Points de vente et paiements"),
        outlet_h = v.t("Outlet", "Point de vente"),
        turnover_h = v.t("Sales under the allocation", "Ventes sur l'allocation"),
        owed_h = v.t("Owed now", "Dû maintenant"),
        payout_h = v.t("Payout", "Paiement"),
        settle_h = v.t(
            "Settlement with other caisses",
            "Compensation entre caisses"
        ),
        report_a = v.t(
            "Evaluation report with charts",
            "Rapport d'évaluation avec graphiques"
        ),
    );
    v.page(&s, StatusCode::OK, v.t("Treasury", "Trésorerie"), &body)
}

fn source_name(l: Lang, src: &str) -> &str {
    match src {
        "state" => l.t("the State", "l'État"),
        "local-authority" => l.t("local authority", "collectivité locale"),
        "other" => l.t("other funders", "autres financeurs"),
        other => other,
    }
}

fn period_picker(v: &Visitor, action: &str, period: Period) -> String {
    format!(
        r#"<form method="get" action="{action}" class="filters"><div><label for="period">{lab}</label><input id="period" name="period" value="{period}" pattern="[0-9]{{4}}-[0-9]{{2}}"></div><div><button type="submit">{btn}</button></div></form>"#,
        lab = v.t("Period (YYYY-MM)", "Période (AAAA-MM)"),
        btn = v.t("Show", "Afficher"),
    )
}

fn admin_only(v: &Visitor, s: &ConsoleState) -> Result<(), Response> {
    match v.require(s, &[Kind::Admin, Kind::Observer])? {
        Who::Admin => Ok(()),
        _ => Err(v.error(
            s,
            StatusCode::FORBIDDEN,
            v.t(
                "An observer can read everything here but change nothing.",
                "L'observation peut tout lire ici mais ne rien modifier.",
            ),
        )),
    }
}

/// `POST /treasury/members`: enrol a member (admin).
pub async fn enrol(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let back = |f: Flash| v.redirect(&s, "/treasury", Some(f));
    let bad = |en: &str, fr: &str| Flash {
        ok: false,
        text: v.t(en, fr).to_owned(),
    };
    let birth_year = match p.get("birth_year") {
        "" => None,
        y => match y.parse::<u16>() {
            Ok(y) => Some(y),
            Err(_) => {
                return back(bad(
                    "Write the year of birth as 1980.",
                    "Écrivez l'année de naissance ainsi : 1980.",
                ));
            }
        },
    };
    let income = match p.get("income") {
        "" => None,
        i => match i.replace(',', ".").parse::<Amount>() {
            Ok(a) => Some(a),
            Err(_) => {
                return back(bad(
                    "Write the income as 1250.00.",
                    "Écrivez le revenu ainsi : 1250,00.",
                ));
            }
        },
    };
    let input = crate::caisse::EnrollInput {
        name: p.get("name").to_owned(),
        residence: p.get("residence").to_owned(),
        birth_year,
        income,
        household: None,
        new_household: p.get("new_household") == "1",
        joined: None,
        pin: Some(p.get("pin").to_owned()).filter(|x| !x.is_empty()),
    };
    let name = input.name.clone();
    match s.handle.enroll(input).await {
        Ok(e) => {
            tracing::info!(target: "caisse::events::console", member = %e.member, "member enrolled from the console");
            let text = match v.lang {
                Lang::Fr => format!(
                    "{name} est inscrit·e. Numéro de carte à lui remettre : {}",
                    e.card
                ),
                Lang::En => format!("{name} is enrolled. Card number to give them: {}", e.card),
            };
            back(Flash { ok: true, text })
        }
        Err(e) => back(Flash::refused(v.lang, &e)),
    }
}

/// `POST /treasury/contributions`: a member's contribution for a period (admin).
pub async fn contribution(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let bad = |en: &str, fr: &str| {
        let f = Flash {
            ok: false,
            text: v.t(en, fr).to_owned(),
        };
        v.redirect(&s, "/treasury", Some(f))
    };
    let Ok(period) = p.get("period").parse::<Period>() else {
        return bad("Unknown period.", "Période inconnue.");
    };
    let Ok(card) = p.get("card").parse::<caisse_protocol::CardId>() else {
        return bad(
            "This is not a card number: it starts with card_.",
            "Ce n'est pas un numéro de carte : il commence par card_.",
        );
    };
    let amount = match p.get("amount") {
        "" => None,
        a => match a.replace(',', ".").parse::<Amount>() {
            Ok(a) => Some(a),
            Err(_) => {
                return bad(
                    "Write the amount as 12.50.",
                    "Écrivez le montant ainsi : 12,50.",
                );
            }
        },
    };
    let contribution = Command::ContributionByCard {
        card,
        period,
        amount,
    };
    let result = reply!(s.handle.execute(contribution).await, Reply::Contribution);
    let flash = match result {
        Ok(r) if r.already_recorded => Flash {
            ok: true,
            text: format!(
                "{} {}",
                v.t(
                    "Already recorded for this period:",
                    "Déjà enregistrée pour cette période :"
                ),
                money(v.lang, r.amount)
            ),
        },
        Ok(r) => Flash {
            ok: true,
            text: format!(
                "{} {}",
                v.t("Contribution recorded:", "Cotisation enregistrée :"),
                money(v.lang, r.amount)
            ),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/treasury?period={period}"), Some(flash))
}

/// `POST /treasury/subsidies`: a subsidy received (admin), once per bank reference.
pub async fn subsidy(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let (Ok(period), Ok(source), Ok(amount)) = (
        p.get("period").parse::<Period>(),
        p.get("source").parse::<crate::ledger::SubsidySource>(),
        p.get("amount").replace(',', ".").parse::<Amount>(),
    ) else {
        let f = Flash {
            ok: false,
            text: v
                .t(
                    "Give the funder and the amount (e.g. 1500.00).",
                    "Indiquez le financeur et le montant (par ex. 1500,00).",
                )
                .to_owned(),
        };
        return v.redirect(&s, "/treasury", Some(f));
    };
    let key = p.get("key").to_owned();
    let flash = match s.handle.record_subsidy(source, amount, period, key).await {
        Ok(r) if r.already_recorded => Flash {
            ok: true,
            text: v
                .t(
                    "This bank reference was already recorded: nothing was added.",
                    "Cette référence bancaire était déjà enregistrée : rien n'a été ajouté.",
                )
                .to_owned(),
        },
        Ok(r) => Flash {
            ok: true,
            text: format!(
                "{} {}",
                v.t("Subsidy recorded:", "Subvention enregistrée :"),
                money(v.lang, r.amount)
            ),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/treasury?period={period}"), Some(flash))
}

/// `POST /treasury/allocations`
pub async fn allocate(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let Ok(period) = p.get("period").parse::<Period>() else {
        let flash = Flash {
            ok: false,
            text: v
                .t(
                    "Write the period as YYYY-MM, e.g. 2026-11.",
                    "Écrivez la période sous la forme AAAA-MM, par ex. 2026-11.",
                )
                .to_owned(),
        };
        return v.redirect(&s, "/treasury", Some(flash));
    };
    let flash = match s.handle.issue_allocations(period).await {
        Ok(run) => Flash {
            ok: true,
            text: match v.lang {
                Lang::Fr => format!(
                    "{period} : {} allocations versées ({}), {} déjà versées, {} suspendus.",
                    run.issued,
                    money(Lang::Fr, run.total),
                    run.already_issued,
                    run.skipped_suspended
                ),
                Lang::En => format!(
                    "{period}: {} allocations issued ({}), {} already issued, {} suspended.",
                    run.issued,
                    money(Lang::En, run.total),
                    run.already_issued,
                    run.skipped_suspended
                ),
            },
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/treasury?period={period}"), Some(flash))
}

/// `POST /treasury/payout`
pub async fn payout(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let (Ok(outlet), Ok(period)) = (
        p.get("outlet").parse::<OutletId>(),
        p.get("period").parse::<Period>(),
    ) else {
        return v.error(
            &s,
            StatusCode::BAD_REQUEST,
            v.t(
                "Unknown outlet or period.",
                "Point de vente ou période inconnus.",
            ),
        );
    };
    let flash = match s.handle.payout(outlet, period).await {
        Ok(done) if done.already_paid => Flash {
            ok: true,
            text: format!(
                "{} {}",
                v.t(
                    "Already paid for this period:",
                    "Déjà payé pour cette période :"
                ),
                money(v.lang, done.amount)
            ),
        },
        Ok(done) => Flash {
            ok: true,
            text: format!(
                "{} {}",
                v.t("Paid out:", "Payé :"),
                money(v.lang, done.amount)
            ),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/treasury?period={period}"), Some(flash))
}

/// `POST /treasury/withdraw`: withdraw the claims a debtor disputed.
pub async fn withdraw(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = admin_only(v, &s) {
        return r;
    }
    let (Ok(debtor), Ok(period)) = (
        p.get("debtor").parse::<CaisseId>(),
        p.get("period").parse::<Period>(),
    ) else {
        return v.error(
            &s,
            StatusCode::BAD_REQUEST,
            v.t("Unknown caisse or period.", "Caisse ou période inconnue."),
        );
    };
    let flash = match crate::writer::reply!(
        s.handle
            .execute(caisse_core::command::Command::WithdrawClaims { debtor, period })
            .await,
        caisse_core::command::Reply::Count
    ) {
        Ok(n) => Flash {
            ok: true,
            text: format!(
                "{} {n}",
                v.t(
                    "Disputed claims withdrawn, revised statement published:",
                    "Créances contestées retirées, relevé révisé publié :"
                )
            ),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, &format!("/treasury?period={period}"), Some(flash))
}

/// `GET /report`
pub async fn report_page(
    v: Visitor,
    State(s): State<ConsoleState>,
    Query(q): Query<PeriodQuery>,
) -> Response {
    if let Err(r) = v.require(&s, &[Kind::Admin, Kind::Observer]) {
        return r;
    }
    let period = period_of(&q, s.handle.clock().today());
    let r = match crate::app::report(&s, period).await {
        Ok(r) => r,
        Err(e) => {
            return v.unavailable(&s, &e);
        }
    };
    let l = v.lang;
    let cents = |x: i64| money(l, Amount::from_cents(x));
    let by_cat: Vec<(String, i64)> = r
        .spending
        .by_category
        .iter()
        .map(|(k, a)| (k.clone(), a.cents()))
        .collect();
    let shares = vec![
        (
            v.t("organic", "bio").to_owned(),
            i64::from(r.spending.organic_bp),
        ),
        (
            v.t("fresh fruit and vegetables", "fruits et légumes frais")
                .to_owned(),
            i64::from(r.spending.fresh_bp),
        ),
        (
            v.t("local", "local").to_owned(),
            i64::from(r.spending.local_bp),
        ),
    ];
    let turnover: Vec<(String, i64)> = r
        .outlets
        .iter()
        .map(|o| (o.name.clone(), o.turnover.cents()))
        .collect();
    let mut funding: Vec<(String, i64)> = vec![(
        v.t("contributions", "cotisations").to_owned(),
        r.contributions.total.cents(),
    )];
    funding.extend(
        r.subsidies
            .iter()
            .map(|(k, a)| (source_name(l, k).to_owned(), a.cents())),
    );
    let votes: String = r
        .votes
        .iter()
        .map(|x| {
            format!(
                "<tr><td>{}</td><td class=\"num\">{} / {}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&x.title),
                x.cast,
                x.seats,
                percent(l, x.participation_bp),
                if x.passed { v.t("adopted", "adoptée") } else { v.t("rejected", "rejetée") }
            )
        })
        .collect();
    let votes = if votes.is_empty() {
        format!(
            "<p>{}</p>",
            v.t(
                "No vote closed in this period.",
                "Aucun vote clos sur la période."
            )
        )
    } else {
        format!(
            "<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">{}</th><th scope=\"col\" class=\"num\">{}</th><th scope=\"col\" class=\"num\">{}</th><th scope=\"col\">{}</th></tr></thead><tbody>{votes}</tbody></table></div>",
            v.t("Proposal", "Proposition"),
            v.t("Votes", "Votes"),
            v.t("Participation", "Participation"),
            v.t("Outcome", "Résultat"),
        )
    };
    let local_note = match r.spending.local_distance_km {
        Some(km) => match l {
            Lang::Fr => format!("« Local » : à moins de {km} km, selon les critères en vigueur."),
            Lang::En => format!("\"Local\": within {km} km, as the criteria in force say."),
        },
        None => v
            .t(
                "No local distance is set in the criteria.",
                "Les critères ne fixent pas de distance locale.",
            )
            .to_owned(),
    };
    let body = format!(
        r#"{picker}
<div class="figures">
<div class="figure"><div class="label">{purchases_l}</div><div class="big">{purchases}</div><small>{cross} {cross_l}</small></div>
<div class="figure"><div class="label">{spent_l}</div><div class="big">{spent}</div></div>
<div class="figure"><div class="label">{alloc_l}</div><div class="big">{alloc}</div></div>
<div class="figure"><div class="label">{member_l}</div><div class="big">{member}</div></div>
</div>
<h2>{cat_h}</h2>
{cat_chart}
<h2>{shares_h}</h2>
{shares_chart}
<p><small>{local_note}</small></p>
<h2>{outlets_h}</h2>
{outlets_chart}
<h2>{funding_h}</h2>
{funding_chart}
<p>{share_l} <strong>{share}</strong> — {target_l} <strong>{target}%</strong> — {budget_l} <strong>{budget}</strong></p>
<h2>{votes_h}</h2>
{votes}
<h2>{acc_h}</h2>
<p>{granted_l} {granted} · {expired_l} {expired} · {revoked_l} {revoked} · {active_l} {active}</p>
<h2>{members_h}</h2>
<p>{active_m_l} {active_m} · {new_l} {new} · {susp_l} {susp} · {left_l} {left}</p>
<h2>{export_h}</h2>
<p>{export_p}</p>
<ul><li><a href="/report/export/purchases.csv?period={period}" download>purchases-{period}.csv</a></li><li><a href="/report/export/members.csv?period={period}" download>members-{period}.csv</a></li></ul>"#,
        picker = period_picker(&v, "/report", period),
        purchases_l = v.t("Purchases", "Achats"),
        purchases = r.spending.purchases,
        cross = r.spending.cross_caisse_purchases,
        cross_l = v.t("at other caisses' outlets", "chez d'autres caisses"),
        spent_l = v.t("Total spent", "Total dépensé"),
        spent = money(l, r.spending.total),
        alloc_l = v.t("Paid by the allocation", "Payé par l'allocation"),
        alloc = money(l, r.spending.allocation_part),
        member_l = v.t("Paid by members", "Payé par les membres"),
        member = money(l, r.spending.member_part),
        cat_h = v.t("Spending by category", "Dépenses par catégorie"),
        cat_chart = or_none(
            &v,
            bars(
                "by-category",
                v.t("Spending by category", "Dépenses par catégorie"),
                &by_cat,
                cents
            )
        ),
        shares_h = v.t(
            "Organic, fresh and local shares",
            "Parts bio, frais et local"
        ),
        shares_chart = bars(
            "shares",
            v.t("Shares of spending", "Parts des dépenses"),
            &shares,
            |x| percent(l, u32::try_from(x).unwrap_or(0))
        ),
        outlets_h = v.t(
            "Turnover by outlet",
            "Chiffre d'affaires par point de vente"
        ),
        outlets_chart = or_none(
            &v,
            bars(
                "by-outlet",
                v.t(
                    "Turnover by outlet",
                    "Chiffre d'affaires par point de vente"
                ),
                &turnover,
                cents
            )
        ),
        funding_h = v.t("Funding", "Financement"),
        funding_chart = bars(
            "funding",
            v.t("Funding by source", "Financement par source"),
            &funding,
            cents
        ),
        share_l = v.t("Contributions' share:", "Part des cotisations :"),
        share = percent(l, r.contribution_share_bp),
        target_l = v.t("target", "objectif"),
        target = r.contribution_target_pct,
        budget_l = v.t("funding minus allocations", "financement moins allocations"),
        budget = money(l, r.budget_balance),
        votes_h = v.t("Parliament participation", "Participation au parlement"),
        acc_h = v.t("Accreditations", "Conventionnements"),
        granted_l = v.t("granted", "accordés"),
        granted = r.accreditations.granted,
        expired_l = v.t("expired", "expirés"),
        expired = r.accreditations.expired,
        revoked_l = v.t("revoked", "révoqués"),
        revoked = r.accreditations.revoked,
        active_l = v.t("active at the end", "actifs en fin de période"),
        active = r.accreditations.active,
        members_h = v.t("Members", "Membres"),
        active_m_l = v.t("active", "actifs"),
        active_m = r.members.active,
        new_l = v.t("new", "nouveaux"),
        new = r.members.new_enrolments,
        susp_l = v.t("suspended", "suspendus"),
        susp = r.members.suspended,
        left_l = v.t("left", "partis"),
        left = r.members.left,
        export_h = v.t("Anonymised export for researchers", "Export anonymisé pour la recherche"),
        export_p = v.t(
            "No names, residences, member or card numbers: members appear under pseudonyms drawn for this export, the same in both files, and forgotten when you sign out.",
            "Ni noms, ni lieux de résidence, ni numéros de membre ou de carte : les membres y figurent sous des pseudonymes tirés pour cet export, les mêmes dans les deux fichiers, oubliés à la déconnexion."
        ),
    );
    let title = format!(
        "{} {period}",
        v.t("Evaluation report", "Rapport d'évaluation")
    );
    v.page(&s, StatusCode::OK, &title, &body)
}

/// `GET /report/export/{purchases.csv|members.csv}?period=`: the
/// anonymised export for researchers (admin, observer). No names,
/// residences, member or card ids; pseudonyms drawn for this session's
/// export, the same in both files.
pub async fn export_csv(
    v: Visitor,
    State(s): State<ConsoleState>,
    axum::extract::Path(file): axum::extract::Path<String>,
    Query(q): Query<PeriodQuery>,
) -> Response {
    use axum::response::IntoResponse;
    if let Err(r) = v.require(&s, &[Kind::Admin, Kind::Observer]) {
        return r;
    }
    if file != "purchases.csv" && file != "members.csv" {
        return super::not_found(&v, &s);
    }
    let period = period_of(&q, s.handle.clock().today());
    let key = s.sessions.export_key(&v.session.id, period);
    let export = match crate::app::export(&s, period, key).await {
        Ok(e) => e,
        Err(e) => return v.unavailable(&s, &e),
    };
    let header: &[&str] = if file == "purchases.csv" {
        &caisse_core::anonymise::PURCHASE_COLUMNS
    } else {
        &caisse_core::anonymise::MEMBER_COLUMNS
    };
    let rows: Vec<serde_json::Value> = if file == "purchases.csv" {
        export
            .purchases
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect()
    } else {
        export
            .members
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect()
    };
    tracing::info!(target: "caisse::events::console", %period, file = %file, rows = rows.len(), "anonymised export downloaded");
    let name = format!("{}-{period}.csv", file.trim_end_matches(".csv"));
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        crate::report::to_csv(header, &rows),
    )
        .into_response()
}

fn or_none(v: &Visitor, chart: String) -> String {
    if chart.is_empty() {
        format!(
            "<p>{}</p>",
            v.t("Nothing in this period.", "Rien sur cette période.")
        )
    } else {
        chart
    }
}
