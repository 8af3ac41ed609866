//! A producer's own page, after signing in with the producer token a caisse
//! issued: its accreditations in every caisse with their validity, what
//! each caisse's criteria still require of its dossier, its sales through
//! the allocation per caisse and month, and warnings before anything lapses.
//! Built by [`crate::producers::page`], the same as `GET /api/v1/producer`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use caisse_protocol::Day;

use super::ConsoleState;
use super::html::{esc, money};
use super::session::Who;
use super::{Kind, Visitor};
use crate::producers::ProducerPage;

/// `GET /producer`
pub async fn page(v: Visitor, State(s): State<ConsoleState>) -> Response {
    let producer = match v.require(&s, &[Kind::Producer]) {
        Ok(Who::Producer { producer }) => producer,
        Ok(_) => return v.error(&s, StatusCode::FORBIDDEN, "producers only"),
        Err(r) => return r,
    };
    let view = s.federation.snapshot();
    let data = s
        .handle
        .read(move |c, now| {
            Ok((
                crate::producers::local_side(c, producer)?,
                Day::from_unix(now),
            ))
        })
        .await;
    match data {
        Ok((local, today)) => {
            let p = crate::producers::page(&view, &local, producer, today);
            let body = render(&v, &p);
            v.page(&s, StatusCode::OK, v.t("My farm", "Ma ferme"), &body)
        }
        Err(e) => v.unavailable(&s, &e),
    }
}

fn render(v: &Visitor, p: &ProducerPage) -> String {
    let l = v.lang;
    let warnings: String = p
        .warnings
        .iter()
        .map(|w| format!("<li>{}</li>", esc(w)))
        .collect();
    let warnings = if warnings.is_empty() {
        String::new()
    } else {
        format!(
            "<section class=\"notice\" role=\"status\"><h2>{}</h2><ul>{warnings}</ul></section>",
            v.t("Before anything lapses", "Avant toute échéance")
        )
    };
    let dossier = match &p.dossier {
        Some(d) => {
            let certs: String = d
                .certificates
                .iter()
                .map(|c| {
                    format!(
                        "<li>{} — {} ({}) {} {} → {}</li>",
                        esc(c.label.as_str()),
                        esc(&c.number),
                        esc(&c.certifier),
                        v.t("valid", "valide"),
                        c.valid_from,
                        c.valid_until
                    )
                })
                .collect();
            format!(
                "<p>{} {} · SIRET {} · {} ({})</p><ul>{certs}</ul>",
                v.t("Dossier version", "Dossier version"),
                d.version,
                esc(&d.siret),
                esc(&d.commune),
                esc(&d.postcode)
            )
        }
        None => format!(
            "<p>{}</p>",
            v.t(
                "No signed dossier yet: publish one with `caisse producer publish`.",
                "Pas encore de dossier signé : publiez-le avec `caisse producer publish`."
            )
        ),
    };
    let accreditations: String = p
        .accreditations
        .iter()
        .map(|a| {
            let scope: Vec<String> = a
                .scope
                .iter()
                .map(|s| {
                    format!(
                        "{} {}%",
                        super::html::category_label(l, s.category.as_str()),
                        s.coverage_pct
                    )
                })
                .collect();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
                esc(&a.caisse_name),
                esc(scope.join(", ")),
                a.valid_from,
                a.valid_until,
                esc(match a.status.as_str() {
                    "active" => v.t("active", "en cours"),
                    "lapsed" => v.t("lapsed", "échu"),
                    "revoked" => v.t("revoked", "révoqué"),
                    _ => v.t("not yet valid", "pas encore valable"),
                }),
                esc(a.lapses_with.as_deref().unwrap_or(""))
            )
        })
        .collect();
    let requirements: String = p
        .requirements
        .iter()
        .map(|r| {
            let verdict = if r.passed {
                v.t("meets them", "les remplit").to_owned()
            } else {
                format!("{} {}", v.t("missing:", "manque :"), r.missing.join("; "))
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.caisse_name),
                esc(&r.criteria),
                r.distance_km.map_or("—".into(), |d| format!("{d} km")),
                esc(&verdict)
            )
        })
        .collect();
    let sales: String = p
        .sales
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                s.period,
                esc(&s.caisse_name),
                money(l, s.amount),
                s.lines
            )
        })
        .collect();
    let sales = if sales.is_empty() {
        format!(
            "<tr><td colspan=\"4\">{}</td></tr>",
            v.t(
                "No sale naming this producer yet.",
                "Aucune vente nommant ce producteur pour l'instant."
            )
        )
    } else {
        sales
    };
    format!(
        "<h1>{name}</h1><p class=\"mono\">{id}</p>{warnings}\
         <section><h2>{h_dossier}</h2>{dossier}</section>\
         <section><h2>{h_acc}</h2><table><thead><tr><th>{c}</th><th>{scope}</th><th>{valid}</th><th>{status}</th><th>{why}</th></tr></thead><tbody>{accreditations}</tbody></table></section>\
         <section><h2>{h_req}</h2><table><thead><tr><th>{c}</th><th>{crit}</th><th>{dist}</th><th>{verdict}</th></tr></thead><tbody>{requirements}</tbody></table></section>\
         <section><h2>{h_sales}</h2><table><thead><tr><th>{month}</th><th>{c}</th><th>{amount}</th><th>{lines}</th></tr></thead><tbody>{sales}</tbody></table></section>",
        name = esc(&p.name),
        id = p.producer,
        h_dossier = v.t("My dossier", "Mon dossier"),
        h_acc = v.t("Where I am accredited", "Où je suis conventionné"),
        h_req = v.t(
            "What each caisse's criteria require",
            "Ce que demandent les critères de chaque caisse"
        ),
        h_sales = v.t("Sales through the allocation", "Ventes avec l'allocation"),
        c = v.t("Caisse", "Caisse"),
        scope = v.t("Categories", "Catégories"),
        valid = v.t("Valid", "Validité"),
        status = v.t("Status", "État"),
        why = v.t("Ends with", "Prend fin avec"),
        crit = v.t("Criteria", "Critères"),
        dist = v.t("Distance", "Distance"),
        verdict = v.t("Verdict", "Verdict"),
        month = v.t("Month", "Mois"),
        amount = v.t("Amount", "Montant"),
        lines = v.t("Lines", "Lignes"),
    )
}
