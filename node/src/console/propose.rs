//! Putting a proposal to the parliament's vote from the console (admin,
//! as the parliament's secretary): a new criteria version, the allocation
//! per person or per household, the contribution scale, the rollover of
//! unspent balances, the recognition of other caisses, the accreditation
//! of a registered producer or outlet, or the revocation of an
//! accreditation. The caisse checks each one as it
//! does from the CLI (criteria well-formed and newer, producer meeting the
//! criteria, parliament able to vote) before it opens the vote.

use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;

use crate::writer::reply;
use axum::extract::State;
use axum::response::Response;
use caisse_protocol::criteria::Criteria;
use caisse_protocol::messages::{ScopeItem, Subject};
use caisse_protocol::{Amount, ContentId, Day};

use super::ConsoleState;
use super::html::{Flash, Lang, csrf_field, esc};
use super::{Kind, Posted, Visitor};
use crate::parliament::ProposalKind;
use crate::policy::{AllocationPolicy, ContributionScale, RecognitionPolicy, Rollover};

/// What the forms offer to choose from.
pub struct Choices {
    /// Registered producers and outlets, by name.
    pub subjects: Vec<(Subject, String)>,
    /// Accreditations in force, with a label.
    pub accreditations: Vec<(ContentId, String)>,
    /// The criteria in force, as TOML (the starting point of a new version).
    pub criteria_toml: String,
}

impl Choices {
    /// Gather them from the caisse.
    pub fn of(c: &impl Reads, today: Day) -> Choices {
        let mut subjects: Vec<(Subject, String)> = c
            .conventions()
            .producers()
            .values()
            .map(|p| (Subject::Producer(p.id), p.name.clone()))
            .chain(
                c.outlets()
                    .into_iter()
                    .map(|o| (Subject::Outlet(o.id), o.name)),
            )
            .collect();
        subjects.sort_by(|a, b| a.1.cmp(&b.1));
        let accreditations = c
            .conventions()
            .all()
            .into_iter()
            .filter(|r| r.active_on(today))
            .map(|r| {
                let scope: Vec<String> = r
                    .accreditation
                    .scope
                    .iter()
                    .map(|x| format!("{} {}%", x.category, x.coverage_pct))
                    .collect();
                (
                    r.id,
                    format!("{} ({})", r.accreditation.subject_name, scope.join(", ")),
                )
            })
            .collect();
        let criteria_toml = c
            .conventions()
            .criteria()
            .map(|r| {
                let mut next = r.version.criteria.clone();
                next.version = next.version.saturating_add(1);
                toml::to_string_pretty(&next).unwrap_or_default()
            })
            .unwrap_or_else(|| {
                "name = \"\"\nversion = 1\n\n[rule]\nall = [\n  { label = \"organic\" },\n]\n"
                    .into()
            });
        Choices {
            subjects,
            accreditations,
            criteria_toml,
        }
    }
}

fn subject_value(s: &Subject) -> String {
    match s {
        Subject::Producer(p) => p.to_string(),
        Subject::Outlet(o) => o.to_string(),
    }
}

/// The admin's forms, below the proposals.
pub fn forms(v: &Visitor, c: &Choices) -> String {
    let csrf = csrf_field(&v.session);
    let title_field = |id: &str| {
        format!(
            "<label for=\"{id}-title\">{}</label><input id=\"{id}-title\" name=\"title\" required maxlength=\"200\">",
            v.t("Title", "Titre")
        )
    };
    let subjects: String = c
        .subjects
        .iter()
        .map(|(s, name)| {
            let kind = match s {
                Subject::Producer(_) => v.t("producer", "producteur"),
                Subject::Outlet(_) => v.t("outlet", "point de vente"),
            };
            format!(
                "<option value=\"{}\">{} ({kind})</option>",
                esc(subject_value(s)),
                esc(name)
            )
        })
        .collect();
    let accreditations: String = c
        .accreditations
        .iter()
        .map(|(id, label)| format!("<option value=\"{}\">{}</option>", esc(id), esc(label)))
        .collect();
    format!(
        r#"<h2>{h}</h2>
<p>{intro}</p>
<details><summary>{acc_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="accredit">
{acc_title}
<label for="acc-subject">{who_l}</label><select id="acc-subject" name="subject" required>{subjects}</select>
<label for="acc-scope">{scope_l}</label><input id="acc-scope" name="scope" required placeholder="fresh-produce:100, bread:66" aria-describedby="acc-scope-h">
<small id="acc-scope-h">{scope_h}</small>
<label for="acc-days">{days_l}</label><input id="acc-days" name="days" inputmode="numeric" value="365" pattern="[0-9]{{1,4}}">
<button type="submit">{open}</button></form></details>
<details><summary>{rev_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="revoke">
{rev_title}
<label for="rev-acc">{rev_l}</label><select id="rev-acc" name="accreditation" required>{accreditations}</select>
<label for="rev-reason">{reason_l}</label><input id="rev-reason" name="reason" required maxlength="200">
<button type="submit">{open}</button></form></details>
<details><summary>{alloc_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="allocation">
{alloc_title}
<label for="alloc-amount">{amount_l}</label><input id="alloc-amount" name="amount" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<button type="submit">{open}</button></form></details>
<details><summary>{hh_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="household">
{hh_title}
<label for="hh-base">{hh_base_l}</label><input id="hh-base" name="base" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<label for="hh-extra">{hh_extra_l}</label><input id="hh-extra" name="extra" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<button type="submit">{open}</button></form></details>
<details><summary>{scale_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="scale">
{scale_title}
<label for="scale-min">{min_l}</label><input id="scale-min" name="min" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<label for="scale-max">{max_l}</label><input id="scale-max" name="max" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<label for="scale-floor">{floor_l}</label><input id="scale-floor" name="floor" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<label for="scale-ceiling">{ceiling_l}</label><input id="scale-ceiling" name="ceiling" inputmode="decimal" required pattern="[0-9]+([.,][0-9]{{1,2}})?">
<button type="submit">{open}</button></form></details>
<details><summary>{roll_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="rollover">
{roll_title}
<fieldset><legend>{roll_l}</legend>
<label><input type="radio" name="rollover" value="carry-over" checked> {carry}</label>
<label><input type="radio" name="rollover" value="expire"> {expire}</label>
<label><input type="radio" name="rollover" value="cap"> {cap}</label></fieldset>
<label for="roll-cap">{cap_l}</label><input id="roll-cap" name="cap" inputmode="decimal" pattern="[0-9]+([.,][0-9]{{1,2}})?">
<button type="submit">{open}</button></form></details>
<details><summary>{rec_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="recognition">
{rec_title}
<fieldset><legend>{rec_l}</legend>
<label><input type="radio" name="policy" value="none" checked> {rec_none}</label>
<label><input type="radio" name="policy" value="listed"> {rec_listed}</label>
<label><input type="radio" name="policy" value="compatible-criteria"> {rec_compat}</label></fieldset>
<button type="submit">{open}</button></form></details>
<details><summary>{crit_s}</summary>
<form method="post" action="/parliament/propose">{csrf}<input type="hidden" name="kind" value="criteria">
{crit_title}
<label for="crit-text">{crit_l}</label><textarea id="crit-text" name="criteria" rows="14" required spellcheck="false" class="mono">{crit}</textarea>
<button type="submit">{open}</button></form></details>"#,
        h = v.t("Put a proposal to the vote", "Soumettre une proposition au vote"),
        intro = v.t(
            "The vote opens at once, for the caisse's usual voting window.",
            "Le vote s'ouvre aussitôt, pour la durée habituelle de la caisse."
        ),
        acc_s = v.t("Accredit a producer or an outlet", "Conventionner un producteur ou un point de vente"),
        acc_title = title_field("acc"),
        who_l = v.t("Producer or outlet", "Producteur ou point de vente"),
        scope_l = v.t("Categories and share paid", "Catégories et part payée"),
        scope_h = v.t(
            "CATEGORY:PERCENT, comma-separated; without a percentage the allocation pays 100%.",
            "CATÉGORIE:POURCENTAGE, séparés par des virgules ; sans pourcentage l'allocation paie 100 %."
        ),
        days_l = v.t("Valid for (days, from today)", "Valable (jours, à partir d'aujourd'hui)"),
        rev_s = v.t("Revoke an accreditation", "Révoquer un conventionnement"),
        rev_title = title_field("rev"),
        rev_l = v.t("Accreditation", "Conventionnement"),
        reason_l = v.t("Reason", "Motif"),
        alloc_s = v.t("Change the monthly allocation", "Changer l'allocation mensuelle"),
        alloc_title = title_field("alloc"),
        amount_l = v.t("Amount per person per month", "Montant par personne et par mois"),
        hh_s = v.t("Allocate per household", "Allouer par foyer"),
        hh_title = title_field("hh"),
        hh_base_l = v.t("For the household's first member, per month", "Pour le premier membre du foyer, par mois"),
        hh_extra_l = v.t("For each other member, per month", "Pour chaque autre membre, par mois"),
        scale_s = v.t("Change the contribution scale", "Changer le barème des cotisations"),
        scale_title = title_field("scale"),
        min_l = v.t("Smallest contribution, per month", "Plus petite cotisation, par mois"),
        max_l = v.t("Largest contribution, per month", "Plus grande cotisation, par mois"),
        floor_l = v.t("Monthly income at or below which the smallest applies", "Revenu mensuel jusqu'auquel s'applique la plus petite"),
        ceiling_l = v.t("Monthly income from which the largest applies", "Revenu mensuel à partir duquel s'applique la plus grande"),
        roll_s = v.t("Decide what happens to unspent balances", "Décider du sort des soldes non dépensés"),
        roll_title = title_field("roll"),
        roll_l = v.t("Unspent allocation", "Allocation non dépensée"),
        carry = v.t("carries over", "reportée"),
        expire = v.t("expires at the next allocation", "perdue à l'allocation suivante"),
        cap = v.t("carries over up to a cap", "reportée jusqu'à un plafond"),
        cap_l = v.t("Cap (for the last choice)", "Plafond (pour le dernier choix)"),
        rec_s = v.t("Recognise other caisses' accreditations", "Reconnaître les conventionnements des autres caisses"),
        rec_title = title_field("rec"),
        rec_l = v.t("Accreditations that count here", "Conventionnements valables ici"),
        rec_none = v.t("only ours", "les nôtres seulement"),
        rec_listed = v.t("ours and those of the caisses recognised by vote", "les nôtres et ceux des caisses reconnues par vote"),
        rec_compat = v.t("ours and those of caisses whose criteria include ours", "les nôtres et ceux des caisses dont les critères incluent les nôtres"),
        crit_s = v.t("Adopt a new criteria version", "Adopter une nouvelle version des critères"),
        crit_title = title_field("crit"),
        crit_l = v.t("Criteria (TOML), starting from those in force", "Critères (TOML), à partir de ceux en vigueur"),
        crit = esc(&c.criteria_toml),
        open = v.t("Open the vote", "Ouvrir le vote"),
    )
}

/// An amount typed in a form (decimal point or comma).
fn money_field(p: &Posted, name: &str) -> Result<Amount, String> {
    p.get(name)
        .trim()
        .replace(',', ".")
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

fn read_kind(p: &Posted, today: Day) -> Result<ProposalKind, String> {
    match p.get("kind") {
        "accredit" => {
            let subject = {
                let text = p.get("subject");
                if let Ok(id) = text.parse() {
                    Subject::Producer(id)
                } else if let Ok(id) = text.parse() {
                    Subject::Outlet(id)
                } else {
                    return Err("choose a producer or outlet".into());
                }
            };
            let scope = ScopeItem::parse_list(p.get("scope"))?;
            let days: u32 = p
                .get("days")
                .parse()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or("the validity is 1 to 3650 days")?;
            Ok(ProposalKind::Accredit {
                subject,
                scope,
                valid_from: today,
                valid_until: today.plus(days),
            })
        }
        "revoke" => Ok(ProposalKind::Revoke {
            accreditation: p
                .get("accreditation")
                .parse()
                .map_err(|_| "choose an accreditation".to_owned())?,
            reason: p.get("reason").to_owned(),
        }),
        "allocation" => {
            let amount: Amount = p
                .get("amount")
                .replace(',', ".")
                .parse()
                .map_err(|e| format!("amount: {e}"))?;
            Ok(ProposalKind::Allocation(AllocationPolicy::PerPerson {
                amount,
            }))
        }
        "household" => Ok(ProposalKind::Allocation(AllocationPolicy::PerHousehold {
            base: money_field(p, "base")?,
            per_extra_member: money_field(p, "extra")?,
        })),
        "scale" => Ok(ProposalKind::ContributionScale(ContributionScale::Linear {
            min: money_field(p, "min")?,
            max: money_field(p, "max")?,
            income_floor: money_field(p, "floor")?,
            income_ceiling: money_field(p, "ceiling")?,
        })),
        "rollover" => Ok(ProposalKind::Rollover(match p.get("rollover") {
            "carry-over" => Rollover::CarryOver,
            "expire" => Rollover::Expire,
            "cap" => Rollover::Cap {
                max: money_field(p, "cap")?,
            },
            _ => return Err("choose what happens to unspent balances".into()),
        })),
        "recognition" => Ok(ProposalKind::RecognitionPolicy(match p.get("policy") {
            "none" => RecognitionPolicy::None,
            "listed" => RecognitionPolicy::Listed,
            "compatible-criteria" => RecognitionPolicy::CompatibleCriteria,
            _ => return Err("choose a recognition policy".into()),
        })),
        "criteria" => {
            let c: Criteria =
                toml::from_str(p.get("criteria")).map_err(|e| format!("criteria: {e}"))?;
            Ok(ProposalKind::Criteria(c))
        }
        _ => Err("unknown kind of proposal".into()),
    }
}

/// `POST /parliament/propose`
pub async fn propose(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = v.require(&s, &[Kind::Admin]) {
        return r;
    }
    let today = s.handle.clock().today();
    let kind = match read_kind(&p, today) {
        Ok(k) => k,
        Err(e) => {
            let text = match v.lang {
                Lang::Fr => format!("Proposition non ouverte : {e}"),
                Lang::En => format!("Proposal not opened: {e}"),
            };
            return v.redirect(&s, "/parliament", Some(Flash { ok: false, text }));
        }
    };
    let title = p.get("title").to_owned();
    let propose = Command::Propose {
        title,
        kind,
        window_minutes: None,
    };
    match reply!(s.handle.execute(propose).await, Reply::Proposal) {
        Ok(prop) => {
            tracing::info!(target: "caisse::events::parliament", proposal = %prop.id, "proposal opened from the console");
            let text = match v.lang {
                Lang::Fr => format!(
                    "Vote ouvert : « {} », jusqu'au {}.",
                    prop.title,
                    Day::from_unix(prop.closes)
                ),
                Lang::En => format!(
                    "Vote opened: \"{}\", until {}.",
                    prop.title,
                    Day::from_unix(prop.closes)
                ),
            };
            v.redirect(
                &s,
                &format!("/parliament#p-{}", prop.id),
                Some(Flash { ok: true, text }),
            )
        }
        Err(e) => v.redirect(&s, "/parliament", Some(Flash::refused(v.lang, &e))),
    }
}
