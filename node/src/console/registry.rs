//! The public registry: every producer and outlet accredited in the
//! federation, by which caisse, under which criteria version, valid until
//! when, and every revocation; filtered by category and caisse. Open to all,
//! read-only: it shows only what caisses publish (names of businesses, never
//! of people).

use caisse_core::view::Reads;
use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use caisse_protocol::messages::{Accreditation, Subject};
use caisse_protocol::{CaisseId, ContentId, Day};
use serde::Deserialize;

use super::ConsoleState;
use super::Visitor;
use super::html::esc;
use crate::conventionnement::CriteriaRecord;

/// Rows on one page of the registry.
pub const MAX_ROWS: usize = 200;

/// How long a rendered registry page is served again without being
/// rebuilt: a flood of registry requests then costs a lookup each, not a
/// walk over every accreditation of the federation.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// The most rendered pages kept.
pub const CACHE_ENTRIES: usize = 64;

/// Rendered registry pages by language, filters and page number. A small
/// hand-written map (one use, bounded, a time to live): a caching crate
/// would bring more than it saves here.
#[derive(Clone, Default)]
pub struct Cache(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, String)>>,
    >,
);

impl Cache {
    fn get(&self, key: &str) -> Option<String> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.get(key)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, body)| body.clone())
    }

    fn put(&self, key: String, body: String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= CACHE_ENTRIES {
            g.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if g.len() >= CACHE_ENTRIES {
                g.clear();
            }
        }
        g.insert(key, (std::time::Instant::now(), body));
    }
}

/// The registry's filters.
#[derive(Deserialize, Default)]
pub struct Filter {
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    caisse: Option<String>,
    /// Page number, from 1.
    #[serde(default)]
    page: Option<usize>,
}

struct Row {
    caisse: CaisseId,
    accreditation: Accreditation,
    revoked: Option<(Day, String)>,
}

/// `GET /registry`
pub async fn page(v: Visitor, State(s): State<ConsoleState>, Query(f): Query<Filter>) -> Response {
    // This caisse's own changes (an accreditation, a revocation) show at
    // once: its published version is part of the key. Other caisses'
    // show within the cache's few seconds.
    let key = format!(
        "{}|{}|{}|{}|{}",
        s.handle
            .published_version()
            .load(std::sync::atomic::Ordering::Relaxed),
        v.t("en", "fr"),
        f.category.as_deref().unwrap_or(""),
        f.caisse.as_deref().unwrap_or(""),
        f.page.unwrap_or(1)
    );
    if let Some(body) = s.registry_cache.get(&key) {
        return v.page(&s, StatusCode::OK, v.t("Registry", "Registre"), &body);
    }
    let view = s.federation.snapshot();
    let own_id = s.caisse_id;
    let local = s
        .handle
        .read(move |c, now| {
            let rows: Vec<Row> = c
                .conventions()
                .all()
                .into_iter()
                .map(|r| Row {
                    caisse: own_id,
                    accreditation: r.accreditation.clone(),
                    revoked: r.revoked.as_ref().map(|x| (x.day, x.reason.clone())),
                })
                .collect();
            let mut versions: BTreeMap<ContentId, String> = BTreeMap::new();
            for (k, val) in c.read_prefix(crate::conventionnement::CRITERIA)? {
                if let Ok(r) = crate::store::decode_value::<CriteriaRecord>(&k, &val) {
                    versions.insert(
                        r.hash,
                        format!(
                            "{} v{}",
                            r.version.criteria.name, r.version.criteria.version
                        ),
                    );
                }
            }
            let recognition = c.policy().recognition.clone();
            let ours = c
                .conventions()
                .criteria()
                .map(|r| r.version.criteria.clone());
            Ok((rows, versions, Day::from_unix(now), (recognition, ours)))
        })
        .await;
    let (mut rows, mut versions, today, (recognition, ours)) = match local {
        Ok(x) => x,
        Err(e) => {
            return v.unavailable(&s, &e);
        }
    };
    let mut names: BTreeMap<CaisseId, String> = BTreeMap::new();
    names.insert(own_id, s.config.name.clone());
    for (id, p) in &view.caisses {
        if *id == own_id {
            continue;
        }
        let name = p
            .profile
            .as_ref()
            .map_or_else(|| id.short(), |x| x.name.clone());
        names.insert(*id, name);
        if let Some((cr, hash)) = &p.criteria {
            versions
                .entry(*hash)
                .or_insert_with(|| format!("{} v{}", cr.name, cr.version));
        }
        for a in &p.accreditations {
            rows.push(Row {
                caisse: *id,
                accreditation: a.accreditation.clone(),
                revoked: a
                    .revocation
                    .as_ref()
                    .map(|r| (r.effective, r.reason.clone())),
            });
        }
    }
    let mut categories: Vec<String> = rows
        .iter()
        .flat_map(|r| r.accreditation.scope.iter().map(|x| x.category.to_string()))
        .collect();
    categories.sort();
    categories.dedup();
    let want_cat = f.category.filter(|c| !c.is_empty());
    let want_caisse = f.caisse.filter(|c| !c.is_empty());
    let shown: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            want_cat.as_ref().is_none_or(|c| {
                r.accreditation
                    .scope
                    .iter()
                    .any(|x| x.category.as_str() == c)
            })
        })
        .filter(|r| {
            want_caisse
                .as_ref()
                .is_none_or(|c| r.caisse.to_string() == *c)
        })
        .collect();
    let total = shown.len();
    let pages = total.div_ceil(MAX_ROWS).max(1);
    let page = f.page.unwrap_or(1).clamp(1, pages);
    // Who accredited: the name a caisse gives itself (anyone may claim
    // any name), its key's fingerprint, and whether this caisse recognises it.
    let by = |id: &CaisseId| -> String {
        let name = esc(names.get(id).cloned().unwrap_or_else(|| id.short()));
        let trust = if *id == own_id {
            v.t("this caisse", "cette caisse")
        } else if view.recognises(id, &recognition, ours.as_ref()) {
            v.t("recognised by this caisse", "reconnue par cette caisse")
        } else {
            v.t(
                "not recognised by this caisse",
                "non reconnue par cette caisse",
            )
        };
        format!(
            "{name}<br><small><span class=\"mono\" title=\"{full}\">{short}</span> · {trust}</small>",
            full = esc(id),
            short = esc(id.short()),
        )
    };
    let body_rows: String = shown
        .iter()
        .skip((page - 1) * MAX_ROWS)
        .take(MAX_ROWS)
        .map(|r| {
            let a = &r.accreditation;
            let kind = match a.subject {
                Subject::Producer(_) => v.t("producer", "producteur"),
                Subject::Outlet(_) => v.t("outlet", "point de vente"),
            };
            let scope: Vec<String> = a
                .scope
                .iter()
                .map(|x| {
                    format!(
                        "{} {}\u{a0}%",
                        super::html::category_label(v.lang, x.category.as_str()),
                        x.coverage_pct
                    )
                })
                .collect();
            let criteria = match (versions.get(&a.criteria), a.decided_by) {
                (Some(name), _) => esc(name),
                (None, None) => v.t("administrative", "administratif").to_owned(),
                (None, Some(_)) => format!("<span class=\"mono\">{}</span>", esc(a.criteria.short())),
            };
            let (class, status) = match &r.revoked {
                Some((day, reason)) => (
                    "status-revoked",
                    format!("{} {day}: {}", v.t("revoked on", "révoqué le"), esc(reason)),
                ),
                None if a.valid_until < today => ("status-expired", v.t("expired", "expiré").to_owned()),
                None if a.valid_from > today => ("", v.t("not yet valid", "pas encore valide").to_owned()),
                None => ("status-active", v.t("active", "actif").to_owned()),
            };
            format!(
                "<tr><td data-label=\"{l_who}\">{}<br><small>{kind}</small></td><td data-label=\"{l_cats}\">{}</td><td data-label=\"{l_by}\">{}</td><td data-label=\"{l_crit}\">{criteria}</td><td data-label=\"{l_valid}\">{} – {}</td><td data-label=\"{l_status}\" class=\"{class}\">{status}</td></tr>",
                esc(&a.subject_name),
                esc(scope.join(", ")),
                by(&r.caisse),
                a.valid_from,
                a.valid_until,
                l_who = v.t("Producer or outlet", "Producteur ou point de vente"),
                l_cats = v.t("Categories (share paid)", "Catégories (part payée)"),
                l_by = v.t("Accredited by", "Conventionné par"),
                l_crit = v.t("Criteria version", "Version des critères"),
                l_valid = v.t("Valid", "Validité"),
                l_status = v.t("Status", "État"),
            )
        })
        .collect();
    let cat_opts: String = categories
        .iter()
        .map(|c| {
            let sel = if want_cat.as_deref() == Some(c) {
                " selected"
            } else {
                ""
            };
            format!(
                "<option value=\"{}\"{sel}>{}</option>",
                esc(c),
                esc(super::html::category_label(v.lang, c))
            )
        })
        .collect();
    let caisse_opts: String = names
        .iter()
        .map(|(id, name)| {
            let sel = if want_caisse.as_deref() == Some(&id.to_string()) {
                " selected"
            } else {
                ""
            };
            format!("<option value=\"{}\"{sel}>{}</option>", esc(id), esc(name))
        })
        .collect();
    let more = if pages > 1 {
        let link = |p: usize, label: &str| {
            format!(
                "<a href=\"/registry?category={}&amp;caisse={}&amp;page={p}\">{label}</a>",
                esc(want_cat.as_deref().unwrap_or("")),
                esc(want_caisse.as_deref().unwrap_or("")),
            )
        };
        let prev = if page > 1 {
            link(page - 1, v.t("previous page", "page précédente"))
        } else {
            String::new()
        };
        let next = if page < pages {
            link(page + 1, v.t("next page", "page suivante"))
        } else {
            String::new()
        };
        format!(
            "<nav class=\"pages\"><p>{} {page} / {pages}</p><p>{prev} {next}</p></nav>",
            v.t("Page", "Page"),
        )
    } else {
        String::new()
    };
    let table = if total == 0 {
        format!(
            "<p>{}</p>",
            v.t(
                "No accreditation matches.",
                "Aucun conventionnement ne correspond."
            )
        )
    } else {
        format!(
            r#"<div class="table-wrap"><table id="registry" class="stack"><caption class="sr-only">{cap}</caption><thead><tr><th scope="col">{who}</th><th scope="col">{cats}</th><th scope="col">{by}</th><th scope="col">{crit}</th><th scope="col">{valid}</th><th scope="col">{status}</th></tr></thead><tbody>{body_rows}</tbody></table></div>{more}"#,
            cap = v.t("Accreditations", "Conventionnements"),
            who = v.t("Producer or outlet", "Producteur ou point de vente"),
            cats = v.t("Categories (share paid)", "Catégories (part payée)"),
            by = v.t("Accredited by", "Conventionné par"),
            crit = v.t("Criteria version", "Version des critères"),
            valid = v.t("Valid", "Validité"),
            status = v.t("Status", "État"),
        )
    };
    let body = format!(
        r#"<p>{intro}</p>
<form method="get" action="/registry" class="filters" role="search">
<div><label for="f-category">{cat_l}</label><select id="f-category" name="category"><option value="">{all}</option>{cat_opts}</select></div>
<div><label for="f-caisse">{caisse_l}</label><select id="f-caisse" name="caisse"><option value="">{all}</option>{caisse_opts}</select></div>
<div><button type="submit">{filter}</button></div>
</form>
<p role="status">{count} {count_l}</p>
{table}"#,
        intro = v.t(
            "Every producer and outlet accredited by the caisses of the federation, as each caisse publishes it (signed).",
            "Tous les producteurs et points de vente conventionnés par les caisses de la fédération, tels que chaque caisse les publie (signés)."
        ),
        cat_l = v.t("Category", "Catégorie"),
        caisse_l = v.t("Caisse", "Caisse"),
        all = v.t("All", "Toutes"),
        filter = v.t("Filter", "Filtrer"),
        count = total,
        count_l = v.t("accreditations", "conventionnements"),
    );
    s.registry_cache.put(key, body.clone());
    v.page(&s, StatusCode::OK, v.t("Registry", "Registre"), &body)
}
