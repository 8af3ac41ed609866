//! `/access` (admin only): who can open this caisse. Every API token by
//! id and role, each with a button to revoke it, and every outlet's tills,
//! open or suspended (by the admin, or by the node after a burst of wrong
//! PINs), with a button to suspend or reinstate them. Revoking a token or
//! suspending a member ends their console sessions at once (see
//! `session`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;
use caisse_protocol::OutletId;

use super::html::{Flash, csrf_field, esc};
use super::{ConsoleState, Kind, Posted, Visitor};
use crate::members::Role;
use crate::writer::reply;

/// `GET /access`
pub async fn page(v: Visitor, State(s): State<ConsoleState>) -> Response {
    if let Err(r) = v.require(&s, &[Kind::Admin]) {
        return r;
    }
    let data = s
        .handle
        .read(|c, _| {
            let tokens = crate::caisse::tokens(&*c.store)?;
            let mut outlets = Vec::new();
            for o in c.outlets() {
                let key = crate::members::OutletBlock::key(&o.id);
                let block = match c.store.get(&key)? {
                    Some(b) => Some(crate::store::decode_value::<crate::members::OutletBlock>(
                        &key, &b,
                    )?),
                    None => None,
                };
                outlets.push((o, block));
            }
            Ok((tokens, outlets))
        })
        .await;
    let (tokens, outlets) = match data {
        Ok(d) => d,
        Err(e) => return v.unavailable(&s, &e),
    };
    let csrf = csrf_field(&v.session);
    let names: std::collections::HashMap<OutletId, String> = outlets
        .iter()
        .map(|(o, _)| (o.id, o.name.clone()))
        .collect();
    let token_rows: String = tokens
        .iter()
        .map(|(id, role)| {
            let what = match role {
                Role::Admin => v.t("admin", "administration").to_owned(),
                Role::Observer => v.t("evaluation committee", "comité d'évaluation").to_owned(),
                Role::Auditor => v.t("auditor", "expert-comptable").to_owned(),
                Role::Outlet { outlet } => format!(
                    "{} {}",
                    v.t("till of", "caisse de"),
                    names.get(outlet).cloned().unwrap_or_else(|| outlet.to_string())
                ),
                Role::Seat { seat } => format!("{} seat-{seat}", v.t("seat", "siège")),
                Role::Producer { producer } => {
                    format!("{} {producer}", v.t("producer", "producteur"))
                }
            };
            format!(
                r#"<tr><td class="mono">{id}</td><td>{what}</td><td><form method="post" action="/access/revoke">{csrf}<input type="hidden" name="id" value="{id}"><button type="submit" class="secondary" aria-label="{btn} {id}">{btn}</button></form></td></tr>"#,
                id = esc(id),
                what = esc(what),
                btn = v.t("Revoke", "Révoquer"),
            )
        })
        .collect();
    let outlet_rows: String = outlets
        .iter()
        .map(|(o, block)| {
            let (state, action, btn) = match block {
                None => (v.t("open", "ouvertes").to_owned(), "suspend", v.t("Suspend", "Suspendre")),
                Some(b) => (
                    format!("{}: {}", v.t("suspended", "suspendues"), b.reason),
                    "reinstate",
                    v.t("Reinstate", "Rétablir"),
                ),
            };
            format!(
                r#"<tr><td>{name}</td><td>{state}</td><td><form method="post" action="/access/outlet">{csrf}<input type="hidden" name="outlet" value="{id}"><input type="hidden" name="action" value="{action}"><button type="submit" class="secondary" aria-label="{btn} {name}">{btn}</button></form></td></tr>"#,
                name = esc(&o.name),
                state = esc(state),
                id = o.id,
            )
        })
        .collect();
    let body = format!(
        r#"<h2>{tokens_h}</h2>
<p>{tokens_p}</p>
<div class="table-wrap"><table id="tokens"><thead><tr><th scope="col">{id_h}</th><th scope="col">{role_h}</th><th scope="col"></th></tr></thead><tbody>{token_rows}</tbody></table></div>
<h2>{outlets_h}</h2>
<div class="table-wrap"><table id="tills"><thead><tr><th scope="col">{outlet_h}</th><th scope="col">{state_h}</th><th scope="col"></th></tr></thead><tbody>{outlet_rows}</tbody></table></div>"#,
        tokens_h = v.t("Tokens", "Jetons"),
        tokens_p = v.t(
            "A revoked token opens nothing from its next request on, and its console sessions end. The last admin token cannot be revoked.",
            "Un jeton révoqué n'ouvre plus rien dès sa requête suivante, et ses sessions de console se terminent. Le dernier jeton d'administration ne peut pas être révoqué."
        ),
        id_h = v.t("Id", "Identifiant"),
        role_h = v.t("Role", "Rôle"),
        outlets_h = v.t("Outlets' tills", "Caisses des points de vente"),
        outlet_h = v.t("Outlet", "Point de vente"),
        state_h = v.t("Tills", "Caisses"),
    );
    v.page(&s, StatusCode::OK, v.t("Access", "Accès"), &body)
}

/// `POST /access/revoke`
pub async fn revoke(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = v.require(&s, &[Kind::Admin]) {
        return r;
    }
    let id = p.get("id").to_owned();
    let flash = match reply!(
        s.handle
            .execute(Command::RevokeToken { id: id.clone() })
            .await,
        Reply::Revoked
    ) {
        Ok(_) => Flash {
            ok: true,
            text: format!("{} {id}", v.t("Revoked:", "Révoqué :")),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, "/access", Some(flash))
}

/// `POST /access/outlet`: suspend or reinstate an outlet's tills.
pub async fn outlet(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Err(r) = v.require(&s, &[Kind::Admin]) {
        return r;
    }
    let Ok(outlet) = p.get("outlet").parse::<OutletId>() else {
        return v.error(
            &s,
            StatusCode::BAD_REQUEST,
            v.t("Unknown outlet.", "Point de vente inconnu."),
        );
    };
    let suspended = p.get("action") == "suspend";
    let command = Command::SuspendOutlet {
        outlet,
        suspended,
        reason: suspended.then(|| "suspended by the admin from the console".to_owned()),
    };
    let flash = match reply!(s.handle.execute(command).await, Reply::Suspended) {
        Ok(true) => Flash {
            ok: true,
            text: v
                .t("The tills are suspended.", "Les caisses sont suspendues.")
                .to_owned(),
        },
        Ok(false) => Flash {
            ok: true,
            text: v
                .t("The tills are open again.", "Les caisses sont rouvertes.")
                .to_owned(),
        },
        Err(e) => Flash::refused(v.lang, &e),
    };
    v.redirect(&s, "/access", Some(flash))
}
