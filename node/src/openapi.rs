//! The API's description (OpenAPI 3.1), served at `/api/v1/openapi.json`.
//!
//! Every route of [`crate::api::routes`] is listed once in [`ROUTES`] with
//! what it is for and which token it needs; the document is generated from
//! that table, and a test reads the router's source and fails when a route
//! is added, renamed or removed without its entry here. Bodies and answers
//! are JSON; their fields are those of the types the handlers take and
//! return (see `node/src/api.rs`); the error body is described once.
//! A hand-kept table rather than `utoipa`: deriving schemas would mean
//! annotating every core and protocol type the API carries, for a
//! description whose use here is the list of what exists and who may call it.

use serde_json::{Value, json};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token (public).
    Public,
    /// The admin token.
    Admin,
    /// A reading token: admin, observer (the evaluation committee) or auditor.
    Reader,
    /// The admin token, or an outlet's token for its own outlet.
    Till,
    /// A producer's token (its own page or dossier), or as the route says.
    Producer,
}

impl Access {
    fn text(self) -> &'static str {
        match self {
            Access::Public => "no token",
            Access::Admin => "the admin token",
            Access::Reader => "a reading token (admin, observer or auditor)",
            Access::Till => "the admin token or the outlet's own till token",
            Access::Producer => "the producer's own token (or the admin token)",
        }
    }
}

/// (method, path, what it does, who may call it)
pub const ROUTES: &[(&str, &str, &str, Access)] = &[
    (
        "get",
        "/api/v1/openapi.json",
        "This description",
        Access::Public,
    ),
    (
        "get",
        "/api/v1/status",
        "The node's identity, counts and federation state",
        Access::Reader,
    ),
    (
        "get",
        "/metrics",
        "Prometheus metrics (no personal data in labels)",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/policy",
        "The caisse's policy",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/members",
        "Enrol a member (residency is the only condition)",
        Access::Admin,
    ),
    ("get", "/api/v1/members", "List members", Access::Admin),
    (
        "get",
        "/api/v1/members/{id}",
        "A member's record and balance",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/cards/print",
        "Member cards to print (HTML, QR and barcode)",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/members/{id}/{action}",
        "Suspend, reinstate, leave, set a PIN",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/allocations",
        "Run a month's allocation",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/contributions",
        "Record a member's contribution",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/subsidies",
        "Record a subsidy received",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/outlets",
        "Register an outlet (and its till token)",
        Access::Admin,
    ),
    ("get", "/api/v1/outlets", "List outlets", Access::Reader),
    (
        "post",
        "/api/v1/outlets/{id}/payouts",
        "Pay an outlet what the caisse owes it",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/purchases",
        "A sale at a till (local or another caisse's card)",
        Access::Till,
    ),
    (
        "get",
        "/api/v1/ledger/balances",
        "Account balances",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/ledger/journal",
        "Journal entries (pseudonymised for the auditor)",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/ledger/check",
        "Audit the ledger from the last clean audit's checkpoint (`?full=true`: the whole journal)",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/ledger/checks",
        "Start an audit and answer at once (202, its number; `{\"full\": true}`: the whole journal); while one runs, that one (409 if it is not full and this asks for full)",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/ledger/checks/{id}",
        "An audit started with POST: running (seconds so far) or finished with its report (`result`)",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/ledger/accounting",
        "The accountant's file of a period (FEC layout)",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/jobs",
        "Background jobs and their progress",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/backup",
        "An online, consistent backup, answered when the file is on disk",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/backups",
        "Start an online backup and answer at once (202, its number); asking again for the same file while it runs gets it",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/backups/{id}",
        "A backup started with POST: running (seconds so far) or finished with what it wrote (`result`)",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/bank",
        "Set the bank account of the caisse or an outlet",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/payouts/sepa",
        "SEPA credit transfers of a month (pain.001)",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/contributions/sepa",
        "SEPA direct debits of a month (pain.008)",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/mandates",
        "Record a member's direct debit mandate",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/tokens",
        "Create a token (observer, auditor, admin, seat, producer)",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/tokens",
        "List tokens by id and role",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/tokens/{id}/revoke",
        "Revoke a token",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/outlets/{id}/{action}",
        "Suspend or reinstate an outlet's tills",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/parliament",
        "Seats and proposals",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/parliament/seats",
        "Add a seat",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/parliament/seats/{id}/remove",
        "Remove a seat",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/parliament/draw",
        "Draw citizen seats by stratified lottery",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/parliament/proposals",
        "Put a proposal to the vote",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/parliament/proposals/{id}/votes",
        "A seat's vote",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/parliament/proposals/{id}/close",
        "Close a vote",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/producers",
        "Register a producer (without its own key)",
        Access::Admin,
    ),
    ("get", "/api/v1/producers", "List producers", Access::Reader),
    (
        "get",
        "/api/v1/producers/{id}",
        "A producer and its accreditations across the federation",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/producers/{id}/evaluation",
        "Judge a producer against criteria, rule by rule",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/producers/dossiers",
        "Publish a producer's signed dossier",
        Access::Producer,
    ),
    (
        "get",
        "/api/v1/producers/{id}/dossier",
        "A producer's newest dossier",
        Access::Producer,
    ),
    (
        "get",
        "/api/v1/producers/{id}/page",
        "A producer's page, as staff see it",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/producers/{id}/adopt",
        "Give an older producer record an identity",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/producers/{id}/handover",
        "Hand a held producer key over, once",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/producer",
        "The producer's own page",
        Access::Producer,
    ),
    (
        "get",
        "/api/v1/registry/producers",
        "Producers of the federation, filtered",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/accreditations/lapsing",
        "Our accreditations ending soon, and why",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/territory-centre",
        "Set the territory's centre (distances)",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/accreditations",
        "Accreditations (ours, or the federation's)",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/criteria",
        "The criteria in force",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/report",
        "The evaluation report of a period",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/report/export",
        "The anonymised export of a period",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/peers",
        "Other caisses: recognised, connected, last change",
        Access::Reader,
    ),
    (
        "get",
        "/api/v1/settlement",
        "Statements, disputes, positions, transfers",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/settlement/run",
        "Sign statements and answer others'",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/settlement/paid",
        "Declare a settlement transfer paid",
        Access::Admin,
    ),
    (
        "post",
        "/api/v1/settlement/withdraw",
        "Withdraw claims a debtor disputed",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/network",
        "Addresses, peers, refused messages",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/network/block",
        "Block or unblock a caisse",
        Access::Admin,
    ),
    (
        "get",
        "/api/v1/federation/documents/{caisse}",
        "A caisse's federation document, as held here",
        Access::Reader,
    ),
    (
        "post",
        "/api/v1/clock",
        "Move a test network's clock (manual clock only)",
        Access::Admin,
    ),
];

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary, access) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '-', '.'], "_")),
            "description": format!("Needs {}.", access.text()),
            "responses": {
                "200": { "description": "Done", "content": { "application/json": {} } },
                "default": { "description": "Refused: what was wrong and what to do",
                             "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if *access != Access::Public {
            op["security"] = json!([{ "bearer": [] }]);
        }
        if *method == "post" {
            op["requestBody"] = json!({ "content": { "application/json": {} } });
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "caisse node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A caisse's node: members, allocations, purchases, parliament, accreditation, settlement, producers. Bearer tokens by role; personal data only to the roles whose duty needs it."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": { "type": "string", "description": "a stable code (invalid, not_found, forbidden, declined reasons…)" },
                    "message": { "type": "string", "description": "what was wrong and what to do" },
                    "detail": {}
                }
            } }
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) of every `.route(…)` in the router's source.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let src = include_str!("api.rs");
        let body = &src[src.find("pub fn routes()").expect("the router")..];
        let body = &body[..body.find("\n}\n").expect("its end")];
        let mut out = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a quoted path").to_owned();
            let handlers = chunk.split(')').take(4).collect::<Vec<_>>().join(")");
            for method in ["get", "post", "put", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_described_and_nothing_else() {
        let described: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(described.len(), ROUTES.len(), "a route listed twice");
        let routed = routes_in_source();
        let missing: Vec<_> = routed.difference(&described).collect();
        let stale: Vec<_> = described.difference(&routed).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "routes without a description: {missing:?}; described but not routed: {stale:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_with_every_path() {
        let d = document();
        assert_eq!(d["openapi"], "3.1.0");
        let paths = d["paths"].as_object().unwrap();
        assert_eq!(
            paths
                .values()
                .map(|p| p.as_object().unwrap().len())
                .sum::<usize>(),
            ROUTES.len()
        );
        let op = &paths["/api/v1/producers/{id}/evaluation"]["get"];
        assert_eq!(op["parameters"][0]["name"], "id");
        assert_eq!(op["security"][0]["bearer"], json!([]));
        assert!(
            paths["/api/v1/openapi.json"]["get"]
                .get("security")
                .is_none()
        );
    }
}
