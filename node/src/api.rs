//! The local HTTP JSON API: bearer tokens with roles, bounded bodies,
//! JSON errors `{ "error": code, "message": ... }`.
//!
//! Roles: `admin` runs the caisse; an `outlet` token may only submit
//! purchases for its own outlet; `observer` (the evaluation committee) may
//! read the ledger and outlets but not members' personal records.
//! Writes go to the single writer; reads come straight from the store.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use caisse_protocol::messages::DeclineReason;
use caisse_protocol::{Amount, CaisseId, Day, MemberId, OutletId, Period};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::{App, SaleError};
use crate::caisse::{CaisseError, EnrollInput, PurchaseInput, StatusChange, decode_policy};
use crate::dto::{
    AccountingFile, BackupBody, BalanceView, BankBody, BlockBody, Blocked, CardsPrinted,
    CentreBody, ClockBody, ContributionBody, ContributionsFile, CriteriaInForce, Lapsing,
    MandateBody, MandateRecorded, MemberActionBody, MemberView, OutletBody, OutletSuspension,
    OutletView, PaidBody, PayoutsFile, PeerRow, PeriodBody, PinSet, PrintBody, ReasonBody,
    SettlementShow, Status, SubsidyBody, TerritoryCentre, TokenBody, TokenCreated, TokenRevoked,
    TokenRow, TransferRecorded, WithdrawBody, Withdrawn,
};
use crate::dto::{
    AccreditationView, AdoptBody, Adopted, CriteriaRef, DossierBody, DossierPublished,
    DossierShown, EvaluationView, KeyHandedOver, ProducerBody, ProducerView,
    PublishedAccreditation, ReportAnswer, RevokedView, WouldLapse,
};
use crate::dto::{
    DrawBody, ParliamentShow, Position, ProposeBody, SeatBody, SeatView, StatementRow, TransferRow,
    VoteBody,
};
use crate::ledger::{Account, JournalEntry};
use crate::members::{MemberRecord, OutletRecord, Role, token_key};
use crate::store::{decode_value, keys};
use crate::writer::reply;
use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The most journal entries or members returned by one call.
pub const MAX_PAGE: usize = 1000;

/// An API error as sent to clients.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let Some(d) = self.detail {
            body["detail"] = d;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<CaisseError> for ApiError {
    fn from(e: CaisseError) -> ApiError {
        let status = match &e {
            CaisseError::NotFound { .. } => StatusCode::NOT_FOUND,
            CaisseError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CaisseError::Conflict(_) => StatusCode::CONFLICT,
            CaisseError::Suspended(_) => StatusCode::FORBIDDEN,
            CaisseError::Declined { reason, .. } => match reason {
                DeclineReason::InsufficientBalance { .. } => StatusCode::PAYMENT_REQUIRED,
                DeclineReason::UnknownCard => StatusCode::NOT_FOUND,
                DeclineReason::SuspendedCard | DeclineReason::NotRecognised { .. } => {
                    StatusCode::FORBIDDEN
                }
                DeclineReason::CardLocked => StatusCode::LOCKED,
                DeclineReason::WrongPin => StatusCode::UNAUTHORIZED,
                DeclineReason::InvalidRequest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                DeclineReason::ConflictingRetry => StatusCode::CONFLICT,
            },
            CaisseError::Storage(_) | CaisseError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let detail = match &e {
            CaisseError::Declined { reason, .. } => serde_json::to_value(reason).ok(),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            detail,
        }
    }
}

impl From<SaleError> for ApiError {
    fn from(e: SaleError) -> ApiError {
        match e {
            SaleError::Caisse(e) => e.into(),
            SaleError::HomeUnreachable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "home_unreachable",
                e.to_string(),
            ),
            SaleError::RefusedByHome(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused_by_home",
                e.to_string(),
            ),
            SaleError::TooManyWrongPins(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_wrong_pins",
                e.to_string(),
            ),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        CaisseError::Storage(e).into()
    }
}

/// A JSON body whose errors come back as JSON API errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body refused: {e} (limit {MAX_BODY} bytes)"),
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "bad JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// The caller's address (through the trusted proxies, if any).
pub struct ClientAddress(pub String);

impl FromRequestParts<App> for ClientAddress {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &App) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(crate::app::client_address(
            parts,
            &state.config.http.trusted_proxies,
        )))
    }
}

/// The caller's role, from `Authorization: Bearer <token>`.
pub struct Auth(pub Role);

impl FromRequestParts<App> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &App) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("Authorization must be 'Bearer <token>'"))?;
        if token.len() > 200 {
            return Err(unauthorized("token too long"));
        }
        let role = state
            .role_of(&token_key(token))?
            .ok_or_else(|| unauthorized("unknown token: check the token file"))?;
        Ok(Auth(role))
    }
}

impl Auth {
    fn admin(&self) -> Result<(), ApiError> {
        match self.0 {
            Role::Admin => Ok(()),
            _ => Err(ApiError::forbidden("this needs the admin token")),
        }
    }
    fn seat_token() -> ApiError {
        ApiError::forbidden("a seat token only opens the parliament page of the web console")
    }
    /// Reads that name no person: aggregates, outlets, producers, the
    /// federation.
    fn reader(&self) -> Result<(), ApiError> {
        match self.0 {
            Role::Admin | Role::Observer | Role::Auditor => Ok(()),
            Role::Outlet { .. } => Err(ApiError::forbidden(
                "an outlet token may only submit purchases",
            )),
            Role::Seat { .. } => Err(Auth::seat_token()),
            Role::Producer { .. } => Err(Auth::producer_token()),
        }
    }
    fn producer_token() -> ApiError {
        ApiError::forbidden(
            "a producer token opens the producer's own page (GET /api/v1/producer) and publishes its own dossier, nothing else",
        )
    }
    /// Reads of member accounts (the journal, the audit): the admin as
    /// stored, the auditor under pseudonyms; `Ok(true)` when the answer
    /// must be pseudonymised.
    fn ledger_reader(&self) -> Result<bool, ApiError> {
        match self.0 {
            Role::Admin => Ok(false),
            Role::Auditor => Ok(true),
            Role::Observer => Err(ApiError::forbidden(
                "the journal names member accounts: the evaluation committee reads the report and the anonymised export; ask the treasurer for an auditor token to verify the ledger",
            )),
            Role::Outlet { .. } => Err(ApiError::forbidden(
                "an outlet token may only submit purchases",
            )),
            Role::Seat { .. } => Err(Auth::seat_token()),
            Role::Producer { .. } => Err(Auth::producer_token()),
        }
    }
}

fn parse<T: std::str::FromStr>(what: &str, text: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("bad {what}: {e}")))
}

/// Build the API router.
/// The API's description (no token: it names routes, not data).
async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/members", post(enroll).get(list_members))
        .route("/api/v1/members/{id}", get(show_member))
        .route("/api/v1/cards/print", post(print_cards))
        .route("/api/v1/members/{id}/{action}", post(member_action))
        .route("/api/v1/allocations", post(issue_allocations))
        .route("/api/v1/contributions", post(record_contribution))
        .route("/api/v1/subsidies", post(record_subsidy))
        .route("/api/v1/outlets", post(register_outlet).get(list_outlets))
        .route("/api/v1/outlets/{id}/payouts", post(payout))
        .route("/api/v1/purchases", post(purchase))
        .route("/api/v1/ledger/balances", get(balances))
        .route("/api/v1/ledger/journal", get(journal))
        .route("/api/v1/ledger/check", get(check))
        .route("/api/v1/ledger/checks", post(start_check))
        .route("/api/v1/ledger/checks/{id}", get(check_run))
        .route("/api/v1/ledger/accounting", get(accounting))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/backup", post(backup))
        .route("/api/v1/backups", post(start_backup))
        .route("/api/v1/backups/{id}", get(backup_run))
        .route("/api/v1/bank", post(set_bank))
        .route("/api/v1/payouts/sepa", get(payouts_sepa))
        .route("/api/v1/contributions/sepa", get(contributions_sepa))
        .route("/api/v1/mandates", post(set_mandate))
        .route("/api/v1/tokens", post(new_token).get(list_tokens))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/outlets/{id}/{action}", post(outlet_action))
        .route("/api/v1/parliament", get(parliament_show))
        .route("/api/v1/parliament/seats", post(seat_add))
        .route("/api/v1/parliament/seats/{id}/remove", post(seat_remove))
        .route("/api/v1/parliament/draw", post(parliament_draw))
        .route("/api/v1/parliament/proposals", post(propose))
        .route("/api/v1/parliament/proposals/{id}/votes", post(vote))
        .route(
            "/api/v1/parliament/proposals/{id}/close",
            post(close_proposal),
        )
        .route(
            "/api/v1/producers",
            post(register_producer).get(list_producers),
        )
        .route("/api/v1/producers/{id}", get(show_producer))
        .route("/api/v1/producers/{id}/evaluation", get(evaluate_producer))
        .route("/api/v1/producers/dossiers", post(submit_dossier))
        .route("/api/v1/producers/{id}/dossier", get(show_dossier))
        .route("/api/v1/producers/{id}/page", get(producer_page_of))
        .route("/api/v1/producers/{id}/adopt", post(adopt_producer))
        .route(
            "/api/v1/producers/{id}/handover",
            post(hand_over_producer_key),
        )
        .route("/api/v1/producer", get(own_producer_page))
        .route("/api/v1/registry/producers", get(producer_registry))
        .route(
            "/api/v1/accreditations/lapsing",
            get(lapsing_accreditations),
        )
        .route("/api/v1/territory-centre", post(set_territory_centre))
        .route("/api/v1/accreditations", get(list_accreditations))
        .route("/api/v1/criteria", get(show_criteria))
        .route("/api/v1/report", get(report))
        .route("/api/v1/report/export", get(report_export))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/settlement", get(settlement_show))
        .route("/api/v1/settlement/run", post(settlement_run))
        .route("/api/v1/settlement/paid", post(settlement_paid))
        .route("/api/v1/settlement/withdraw", post(settlement_withdraw))
        .route("/api/v1/network", get(network_info))
        .route("/api/v1/network/block", post(network_block))
        .route(
            "/api/v1/federation/documents/{caisse}",
            get(federation_document),
        )
        .route("/api/v1/clock", post(set_clock))
}

/// The JSON answer to an unknown path under `/api/`.
pub fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API route; see `caisse --help`",
    )
    .into_response()
}

async fn status(State(s): State<App>, _auth: Auth) -> Result<Json<Status>, ApiError> {
    // Counters the writer keeps: nothing here reads the store.
    let (members, entries) = s.handle.counts();
    let (document_sequence, document_heads) = s.federation.sequence_of(&s.caisse_id);
    Ok(Json(Status {
        caisse_id: s.caisse_id,
        name: s.config.name.clone(),
        territory: s.config.territory.clone(),
        federation: s.config.federation.clone(),
        members,
        journal_entries: entries,
        jobs_running: s.handle.jobs().iter().filter(|j| !j.finished).count(),
        writer_queue: s.handle.queued(),
        today: s.handle.clock().today(),
        document_sequence,
        document_heads,
    }))
}

/// Prometheus metrics (any reading token: they name no one).
async fn metrics(State(s): State<App>, auth: Auth) -> Result<Response, ApiError> {
    auth.reader()?;
    let text = crate::metrics::render(&s).await;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn policy(State(s): State<App>, _auth: Auth) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = s.store.get(keys::POLICY)?.unwrap_or_default();
    let p = decode_policy(&bytes)?;
    Ok(Json(serde_json::to_value(p).unwrap_or_default()))
}

async fn enroll(
    State(s): State<App>,
    auth: Auth,
    Body(input): Body<EnrollInput>,
) -> Result<Json<crate::caisse::Enrolled>, ApiError> {
    auth.admin()?;
    Ok(Json(s.handle.enroll(input).await?))
}

fn member_view(s: &App, record: MemberRecord) -> Result<MemberView, ApiError> {
    let key = Account::Member(record.id).balance_key();
    let balance = match s.store.get(&key)? {
        Some(b) => decode_value(&key, &b)?,
        None => Amount::ZERO,
    };
    Ok(MemberView { record, balance })
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_members(
    State(s): State<App>,
    auth: Auth,
    Query(page): Query<Page>,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    auth.admin()?;
    let limit = page.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let start = match &page.from {
        Some(f) => Some(parse::<MemberId>("member id", f)?),
        None => None,
    };
    let from = match start {
        Some(st) => {
            let mut k = MemberRecord::key(&st);
            k.push(0);
            k
        }
        None => keys::MEMBER.to_vec(),
    };
    let out = s
        .handle
        .read(move |v, _| {
            Ok(crate::store::page::<MemberRecord>(
                &*v.store,
                keys::MEMBER,
                &from,
                limit,
            )?)
        })
        .await?;
    let views: Result<Vec<_>, _> = out.into_iter().map(|r| member_view(&s, r)).collect();
    Ok(Json(views?))
}

fn read_member(s: &App, id: &MemberId) -> Result<MemberRecord, ApiError> {
    let key = MemberRecord::key(id);
    let bytes = s.store.get(&key)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("member {id} not found"),
        )
    })?;
    Ok(decode_value(&key, &bytes)?)
}

async fn show_member(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<MemberView>, ApiError> {
    auth.admin()?;
    let id: MemberId = parse("member id", &id)?;
    let record = read_member(&s, &id)?;
    Ok(Json(member_view(&s, record)?))
}

/// A printable page of member cards (admin: it holds names).
async fn print_cards(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<PrintBody>,
) -> Result<Json<CardsPrinted>, ApiError> {
    auth.admin()?;
    const MAX: usize = 1000;
    if b.members.len() > MAX {
        return Err(ApiError::bad_request(format!(
            "at most {MAX} cards at once: print in several pages"
        )));
    }
    let records: Vec<MemberRecord> = if b.all {
        s.handle
            .read(|v, _| {
                Ok(crate::store::page::<MemberRecord>(
                    &*v.store,
                    keys::MEMBER,
                    keys::MEMBER,
                    MAX,
                )?)
            })
            .await?
    } else if b.members.is_empty() {
        return Err(ApiError::bad_request(
            "name the members (\"members\": [...]) or ask for \"all\": true",
        ));
    } else {
        b.members
            .iter()
            .map(|m| read_member(&s, m))
            .collect::<Result<_, _>>()?
    };
    let cards: Vec<crate::cards::CardToPrint> = records
        .into_iter()
        .filter(|r| r.status == crate::members::MemberStatus::Active)
        .map(|r| crate::cards::CardToPrint {
            name: r.name,
            card: r.card,
        })
        .collect();
    let contact = b.contact.unwrap_or_else(|| s.config.territory.clone());
    if contact.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "the contact is at most 200 characters",
        ));
    }
    Ok(Json(CardsPrinted {
        cards: cards.len(),
        html: crate::cards::sheet(&s.config.name, &contact, &cards),
    }))
}

/// A JSON body that may be left out (empty or blank: the defaults).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn member_action(
    State(s): State<App>,
    auth: Auth,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    auth.admin()?;
    let id: MemberId = parse("member id", &id)?;
    let body: MemberActionBody = optional_body(&body)?;
    let change = match action.as_str() {
        "suspend" => StatusChange::Suspend,
        "reinstate" => StatusChange::Reinstate,
        "leave" => StatusChange::Leave(body.on),
        "pin" => {
            let pin = body
                .pin
                .ok_or_else(|| ApiError::bad_request("give the new PIN as {\"pin\": \"1234\"}"))?;
            let card = s.handle.set_pin(id, pin).await?;
            return Ok(Json(PinSet {
                member: id,
                card,
                pin_set: true,
            })
            .into_response());
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown member action {other:?}: use suspend, reinstate, leave or pin"),
            ));
        }
    };
    let record: MemberRecord = s.handle.change_status(id, change).await?;
    Ok(Json(record).into_response())
}

async fn issue_allocations(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<PeriodBody>,
) -> Result<Json<crate::caisse::AllocationRun>, ApiError> {
    auth.admin()?;
    Ok(Json(s.handle.issue_allocations(b.period).await?))
}

async fn record_contribution(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<ContributionBody>,
) -> Result<Json<crate::caisse::ContributionRecorded>, ApiError> {
    auth.admin()?;
    Ok(Json(
        s.handle
            .record_contribution(b.member, b.period, b.amount)
            .await?,
    ))
}

async fn record_subsidy(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<SubsidyBody>,
) -> Result<Json<crate::caisse::SubsidyRecorded>, ApiError> {
    auth.admin()?;
    Ok(Json(
        s.handle
            .record_subsidy(b.source, b.amount, b.period, b.key)
            .await?,
    ))
}

async fn register_outlet(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<OutletBody>,
) -> Result<Json<crate::caisse::OutletRegistered>, ApiError> {
    auth.admin()?;
    let cats = b.categories.into_iter().map(|c| (c, 100)).collect();
    Ok(Json(s.handle.register_outlet(b.name, cats).await?))
}

async fn list_outlets(State(s): State<App>, auth: Auth) -> Result<Json<Vec<OutletView>>, ApiError> {
    auth.reader()?;
    let out = s
        .handle
        .read(|v, _| {
            let mut out = Vec::new();
            for (k, val) in v.store.scan_prefix(keys::OUTLET)? {
                let record: OutletRecord = decode_value(&k, &val)?;
                let owed = v.balance(&Account::Outlet(record.id));
                let bkey = crate::members::OutletBlock::key(&record.id);
                let suspended = match v.store.get(&bkey)? {
                    Some(b) => Some(decode_value(&bkey, &b)?),
                    None => None,
                };
                out.push(OutletView {
                    record,
                    owed,
                    suspended,
                });
            }
            Ok(out)
        })
        .await?;
    Ok(Json(out))
}

async fn payout(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Body(b): Body<PeriodBody>,
) -> Result<Json<crate::caisse::PayoutDone>, ApiError> {
    auth.admin()?;
    let outlet: OutletId = parse("outlet id", &id)?;
    Ok(Json(s.handle.payout(outlet, b.period).await?))
}

async fn purchase(
    State(s): State<App>,
    auth: Auth,
    client: ClientAddress,
    Body(input): Body<PurchaseInput>,
) -> Result<Json<crate::caisse::Receipt>, ApiError> {
    match &auth.0 {
        Role::Admin => {}
        Role::Outlet { outlet } if *outlet == input.outlet => {}
        Role::Outlet { .. } => {
            return Err(ApiError::forbidden(
                "this outlet token may only submit purchases for its own outlet",
            ));
        }
        Role::Observer | Role::Auditor => {
            return Err(ApiError::forbidden(
                "an observer or auditor token cannot make purchases",
            ));
        }
        Role::Seat { .. } => return Err(Auth::seat_token()),
        Role::Producer { .. } => return Err(Auth::producer_token()),
    }
    tracing::debug!(caisse = %s.caisse_id.short(), purchase = %input.id, "purchase");
    crate::app::sell(&s, input, &client.0)
        .await
        .map(Json)
        .map_err(ApiError::from)
}

/// Every account's balance. The observer gets member accounts as one
/// total (`members`), the auditor under pseudonyms.
async fn balances(State(s): State<App>, auth: Auth) -> Result<Json<Vec<BalanceView>>, ApiError> {
    auth.reader()?;
    let per_member = !matches!(auth.0, Role::Observer);
    let out = s
        .handle
        .read(move |v, _| {
            let mut out = Vec::new();
            let mut members = Amount::ZERO;
            for (k, val) in v.store.scan_prefix(keys::BALANCE)? {
                let balance: Amount = decode_value(&k, &val)?;
                let account = Account::from_balance_key(&k);
                if !per_member && matches!(account, Some(Account::Member(_))) {
                    members = members.checked_add(balance).unwrap_or(Amount::MAX);
                    continue;
                }
                let account = account.map_or_else(|| keys::printable(&k), |a| a.to_string());
                out.push(BalanceView { account, balance });
            }
            if !per_member {
                out.push(BalanceView {
                    account: "members".into(),
                    balance: members,
                });
            }
            out.sort_by(|a, b| a.account.cmp(&b.account));
            Ok(out)
        })
        .await?;
    let mut out = out;
    if matches!(auth.0, Role::Auditor | Role::Observer) {
        for b in &mut out {
            b.account = s.pseudonyms.text(&b.account);
        }
    }
    Ok(Json(out))
}

async fn journal(
    State(s): State<App>,
    auth: Auth,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let pseudonymise = auth.ledger_reader()?;
    let from: u64 = match &page.from {
        Some(f) => parse("sequence number", f)?,
        None => 0,
    };
    let limit = page.limit.unwrap_or(100).min(MAX_PAGE);
    let out = s
        .handle
        .read(move |v, _| {
            let start = JournalEntry::key(from);
            Ok(crate::store::page::<JournalEntry>(
                &*v.store,
                keys::JOURNAL,
                &start,
                limit,
            )?)
        })
        .await?;
    let mut v = serde_json::to_value(out).map_err(|e| ApiError::internal(e.to_string()))?;
    if pseudonymise {
        s.pseudonyms.apply(&mut v);
    }
    Ok(Json(v))
}

/// `?full=true` (or `{"full": true}` to start one): read the whole
/// journal, not only what the last clean audit left.
#[derive(Deserialize)]
struct CheckQuery {
    #[serde(default)]
    full: bool,
}

async fn check(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<CheckQuery>,
) -> Result<Json<crate::ledger::CheckReport>, ApiError> {
    // The audit reads every entry: the admin (treasurer) or the auditor
    // starts it, not the committee's observer token.
    let pseudonymise = auth.ledger_reader()?;
    let report = s.handle.check(q.full).await?;
    Ok(Json(for_reader(
        &s,
        report.bounded(crate::app::FINDINGS_LISTED),
        pseudonymise,
    )))
}

/// An audit's report as its reader may see it: the auditor gets member
/// and card ids in findings under the pseudonyms of the journal it reads.
fn for_reader(
    s: &App,
    mut report: crate::ledger::CheckReport,
    pseudonymise: bool,
) -> crate::ledger::CheckReport {
    if pseudonymise {
        for f in &mut report.findings {
            f.item = s.pseudonyms.text(&f.item);
            f.problem = s.pseudonyms.text(&f.problem);
        }
    }
    report
}

/// A job a request started (an audit, a backup), as its starter
/// collects it: what was asked, whether it is done, and then its result
/// or why it stopped.
#[derive(Serialize)]
struct RunView<T> {
    /// Its number, for the `GET …/{id}` of its kind.
    id: u64,
    /// What was asked (`full` for an audit, `out` for a backup).
    #[serde(flatten)]
    asked: serde_json::Map<String, serde_json::Value>,
    /// Whether it is done (then `result` or `error` is set).
    finished: bool,
    /// Seconds it has run, or took.
    seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<T> RunView<T> {
    fn of<A>(
        run: crate::started::Run<A, T>,
        asked: (&str, serde_json::Value),
        show: impl FnOnce(T) -> T,
    ) -> RunView<T> {
        let seconds = run.seconds();
        let (result, error) = match run.outcome {
            Some(Ok(r)) => (Some(show(r)), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        RunView {
            id: run.id,
            asked: std::iter::once((asked.0.to_owned(), asked.1)).collect(),
            finished: result.is_some() || error.is_some(),
            seconds,
            result,
            error,
        }
    }
}

/// An audit as its reader may see it.
fn check_view(
    s: &App,
    run: crate::app::AuditRun,
    pseudonymise: bool,
) -> RunView<crate::ledger::CheckReport> {
    let full = run.ask;
    RunView::of(run, ("full", json!(full)), |r| {
        for_reader(s, r, pseudonymise)
    })
}

/// A backup's answer.
fn backup_view(run: crate::app::BackupRun) -> RunView<crate::backup::BackupDone> {
    let out = json!(run.ask);
    RunView::of(run, ("out", out), |done| done)
}

/// No job `id` of a kind (`what`, and the command that starts one).
fn no_run(what: &str, id: u64, again: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no {what} {id} on this node: the node restarted since it started, or it is older than the last {} finished; start one again ({again})",
            crate::started::KEPT
        ),
    )
}

/// Start an audit and answer at once (202): the audit of years of journal
/// outlasts a request's time limit; its starter collects the report with
/// `GET /api/v1/ledger/checks/{id}`. One at a time: while one runs, the
/// answer is that one, or 409 when it is not full and this asks for full.
async fn start_check(
    State(s): State<App>,
    auth: Auth,
    Body(q): Body<CheckQuery>,
) -> Result<(StatusCode, Json<RunView<crate::ledger::CheckReport>>), ApiError> {
    let pseudonymise = auth.ledger_reader()?;
    let run = s.start_audit(q.full)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(check_view(&s, run, pseudonymise)),
    ))
}

/// An audit started by `POST /api/v1/ledger/checks`: running, or its report.
async fn check_run(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<RunView<crate::ledger::CheckReport>>, ApiError> {
    let pseudonymise = auth.ledger_reader()?;
    let id: u64 = parse("audit number", &id)?;
    let run = s
        .audit_run(id)
        .ok_or_else(|| no_run("audit", id, "`caisse ledger check`"))?;
    Ok(Json(check_view(&s, run, pseudonymise)))
}

/// The accountant's file of a period (FEC layout), with its totals.
async fn accounting(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<ReportQuery>,
) -> Result<Json<AccountingFile>, ApiError> {
    auth.ledger_reader()?;
    let period: Period = parse("period", &q.period)?;
    let lines = crate::app::accounting(&s, period).await?;
    let total = |f: fn(&crate::accounting::Line) -> Amount| {
        Amount::checked_sum(lines.iter().map(f)).unwrap_or(Amount::MAX)
    };
    Ok(Json(AccountingFile {
        period,
        lines: lines.len(),
        debit: total(|l| l.debit),
        credit: total(|l| l.credit),
        fec: crate::accounting::to_fec(&lines),
    }))
}

/// Set the bank account of an outlet, or of the caisse (admin).
async fn set_bank(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<BankBody>,
) -> Result<Json<crate::sepa::BankAccount>, ApiError> {
    auth.admin()?;
    Ok(Json(reply!(
        s.handle
            .execute(Command::SetBank {
                outlet: b.outlet,
                holder: b.holder,
                iban: b.iban,
                bic: b.bic,
                creditor_id: b.creditor_id,
            })
            .await,
        Reply::Bank
    )?))
}

#[derive(Deserialize)]
struct SepaQuery {
    period: String,
    /// Requested execution day (default: tomorrow).
    #[serde(default)]
    on: Option<String>,
}

/// The SEPA credit transfer file (pain.001.001.09) of a period's payouts
/// (admin: it holds bank accounts).
/// A bank file's period, the time now, and the day asked for (default:
/// `days_ahead` days from today).
fn sepa_dates(s: &App, q: &SepaQuery, days_ahead: u32) -> Result<(Period, u64, Day), ApiError> {
    let period: Period = parse("period", &q.period)?;
    let now = s.handle.clock().now();
    let on: Day = match &q.on {
        Some(d) => parse("day", d)?,
        None => Day::from_unix(now).plus(days_ahead),
    };
    Ok((period, now, on))
}

async fn payouts_sepa(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<SepaQuery>,
) -> Result<Json<PayoutsFile>, ApiError> {
    auth.admin()?;
    let (period, now, on) = sepa_dates(&s, &q, 1)?;
    let name = s.config.name.clone();
    let store = s.store.clone();
    // What we owe other caisses after the period's settlement (and have
    // not declared paid yet), to their published accounts.
    let view = s.federation.snapshot();
    let settled = crate::settlement::settlement_view(&view, period);
    let debts: Vec<crate::sepa::SettlementDebt> = settled
        .transfers
        .iter()
        .filter(|t| t.from == s.caisse_id)
        .filter(|t| {
            !settled
                .paid
                .iter()
                .any(|(p, _)| p.from == t.from && p.to == t.to)
        })
        .map(|t| {
            let peer = view.caisses.get(&t.to);
            crate::sepa::SettlementDebt {
                to: t.to,
                name: peer
                    .and_then(|p| p.profile.as_ref())
                    .map_or_else(|| t.to.short(), |p| p.name.clone()),
                amount: t.amount,
                account: peer
                    .and_then(|p| p.bank.as_ref())
                    .map(|b| crate::sepa::BankAccount {
                        holder: b.holder.clone(),
                        iban: b.iban.clone(),
                        bic: b.bic.clone(),
                        creditor_id: None,
                    }),
            }
        })
        .collect();
    let xml = tokio::task::spawn_blocking(move || {
        crate::sepa::payouts_pain001(&*store, &name, period, on, now, &debts)
    })
    .await
    .map_err(|_| CaisseError::Unavailable)??;
    Ok(Json(PayoutsFile {
        period,
        execution: on,
        xml,
    }))
}

/// The SEPA direct debit file (pain.008.001.02) collecting a period's
/// recorded contributions from members with a mandate (admin: it holds
/// members' accounts).
async fn contributions_sepa(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<SepaQuery>,
) -> Result<Json<ContributionsFile>, ApiError> {
    auth.admin()?;
    // Core direct debits are collected at the earliest a day after the file.
    let (period, now, on) = sepa_dates(&s, &q, 2)?;
    let name = s.config.name.clone();
    let store = s.store.clone();
    let dd = tokio::task::spawn_blocking(move || {
        crate::sepa::contributions_pain008(&*store, &name, period, on, now)
    })
    .await
    .map_err(|_| CaisseError::Unavailable)??;
    Ok(Json(ContributionsFile {
        period,
        collection: on,
        xml: dd.xml,
        count: dd.count,
        total: dd.total,
        without_mandate: dd.without_mandate,
    }))
}

/// Record a member's SEPA direct debit mandate (admin).
async fn set_mandate(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<MandateBody>,
) -> Result<Json<MandateRecorded>, ApiError> {
    auth.admin()?;
    reply!(
        s.handle
            .execute(Command::SetMandate {
                member: b.member,
                reference: b.reference.clone(),
                signed_on: b.signed_on,
                holder: b.holder,
                iban: b.iban,
                bic: b.bic,
            })
            .await,
        Reply::Count
    )?;
    Ok(Json(MandateRecorded {
        member: b.member,
        reference: b.reference.trim().to_owned(),
        signed_on: b.signed_on,
    }))
}

/// An online, consistent backup of the store (admin): answered when the
/// file is complete and durable; purchases go on meanwhile.
async fn backup(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<BackupBody>,
) -> Result<Json<crate::backup::BackupDone>, ApiError> {
    auth.admin()?;
    if !b.out.is_absolute() {
        return Err(ApiError::bad_request(
            "give the backup file as an absolute path (the node writes it)",
        ));
    }
    Ok(Json(s.handle.backup(b.out).await?))
}

/// Start an online backup and answer at once (202): the copy of a large
/// store outlasts a request's time limit; its starter collects the outcome
/// with `GET /api/v1/backups/{id}`.
async fn start_backup(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<BackupBody>,
) -> Result<(StatusCode, Json<RunView<crate::backup::BackupDone>>), ApiError> {
    auth.admin()?;
    if !b.out.is_absolute() {
        return Err(ApiError::bad_request(
            "give the backup file as an absolute path (the node writes it)",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(backup_view(s.start_backup(b.out)?)),
    ))
}

/// A backup started by `POST /api/v1/backups`: running, or what it wrote.
async fn backup_run(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<RunView<crate::backup::BackupDone>>, ApiError> {
    auth.admin()?;
    let id: u64 = parse("backup number", &id)?;
    let run = s
        .backup_run(id)
        .ok_or_else(|| no_run("backup", id, "`caisse backup`"))?;
    Ok(Json(backup_view(run)))
}

/// Background jobs (allocation runs, audits), running and recent.
async fn jobs(
    State(s): State<App>,
    auth: Auth,
) -> Result<Json<Vec<crate::writer::JobStatus>>, ApiError> {
    auth.reader()?;
    Ok(Json(s.handle.jobs()))
}

async fn new_token(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<TokenBody>,
) -> Result<Json<TokenCreated>, ApiError> {
    auth.admin()?;
    let role = match b.role.as_str() {
        "observer" => Role::Observer,
        "auditor" => Role::Auditor,
        "admin" => Role::Admin,
        "producer" => {
            let producer: caisse_protocol::ProducerId = parse(
                "producer id",
                b.producer.as_deref().ok_or_else(|| {
                    ApiError::bad_request(
                        "a producer token names its producer: give \"producer\": \"prod_…\"",
                    )
                })?,
            )?;
            Role::Producer { producer }
        }
        "seat" => {
            let seat = parse_seat(b.seat.as_deref().ok_or_else(|| {
                ApiError::bad_request("a seat token names its seat: give \"seat\": \"seat-3\"")
            })?)?;
            let active = s
                .handle
                .read(move |c, _| Ok(c.seat_is_active(seat)?))
                .await?;
            if !active {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("seat-{seat} is not an active seat: see `parliament show`"),
                ));
            }
            Role::Seat { seat }
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "role {other:?}: use observer, auditor, admin, seat or producer (outlet tokens come with `outlet register`)"
            )));
        }
    };
    let token = s.handle.new_token(role.clone()).await?;
    Ok(Json(TokenCreated {
        role: b.role,
        token,
        seat: match role {
            Role::Seat { seat } => Some(format!("seat-{seat}")),
            _ => None,
        },
        producer: match role {
            Role::Producer { producer } => Some(producer.to_string()),
            _ => None,
        },
    }))
}

/// Every token by id (the start of its hash) and role.
async fn list_tokens(State(s): State<App>, auth: Auth) -> Result<Json<Vec<TokenRow>>, ApiError> {
    auth.admin()?;
    let tokens = s
        .handle
        .read(|v, _| crate::caisse::tokens(&*v.store))
        .await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|(id, role)| TokenRow { id, role })
            .collect(),
    ))
}

/// Revoke a token: the next request carrying it gets 401, and console
/// sessions opened with it end.
async fn revoke_token(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    auth.admin()?;
    let role = reply!(
        s.handle
            .execute(Command::RevokeToken { id: id.clone() })
            .await,
        Reply::Revoked
    )?;
    Ok(Json(TokenRevoked { revoked: id, role }))
}

/// `suspend` or `reinstate` an outlet's tills.
async fn outlet_action(
    State(s): State<App>,
    auth: Auth,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<OutletSuspension>, ApiError> {
    auth.admin()?;
    let outlet: OutletId = parse("outlet id", &id)?;
    let suspended = match action.as_str() {
        "suspend" => true,
        "reinstate" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no outlet action {other:?}: use suspend or reinstate"),
            ));
        }
    };
    let b: ReasonBody = optional_body(&body)?;
    let suspended = reply!(
        s.handle
            .execute(Command::SuspendOutlet {
                outlet,
                suspended,
                reason: b.reason,
            })
            .await,
        Reply::Suspended
    )?;
    Ok(Json(OutletSuspension { outlet, suspended }))
}

async fn set_clock(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<ClockBody>,
) -> Result<Json<ClockBody>, ApiError> {
    auth.admin()?;
    if !s.config.testing.manual_clock {
        return Err(ApiError::forbidden(
            "the clock can only be set on a test network ([testing] manual_clock = true)",
        ));
    }
    let secs = u64::from(b.today.days())
        .saturating_mul(86_400)
        .saturating_add(43_200);
    s.handle.clock().set(secs);
    Ok(Json(b))
}

fn parse_seat(text: &str) -> Result<u32, ApiError> {
    crate::app::parse_seat(text).map_err(ApiError::bad_request)
}

async fn parliament_show(
    State(s): State<App>,
    auth: Auth,
) -> Result<Json<ParliamentShow>, ApiError> {
    auth.reader()?;
    let admin = matches!(auth.0, Role::Admin);
    let out = s
        .handle
        .read(move |c, _| {
            let seats = c.seats()?;
            let problem = crate::parliament::composition_problem(&seats);
            Ok(ParliamentShow {
                // Who holds a seat is the admin's to know: the others see
                // the seats, their kinds and their votes.
                seats: seats.iter().map(|seat| SeatView::of(seat, admin)).collect(),
                can_vote: problem.is_none(),
                composition_problem: problem,
                rules: c.policy().parliament.clone(),
                proposals: c.proposals()?,
            })
        })
        .await?;
    Ok(Json(out))
}

async fn seat_add(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<SeatBody>,
) -> Result<Json<crate::parliament::Seat>, ApiError> {
    auth.admin()?;
    let seat = reply!(
        s.handle
            .execute(Command::AddSeat {
                kind: b.kind,
                member: b.member,
                holder: b.holder,
            })
            .await,
        Reply::Seat
    )?;
    Ok(Json(seat))
}

async fn seat_remove(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<crate::parliament::Seat>, ApiError> {
    auth.admin()?;
    let id = parse_seat(&id)?;
    Ok(Json(reply!(
        s.handle.execute(Command::RemoveSeat { seat: id }).await,
        Reply::Seat
    )?))
}

async fn parliament_draw(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<DrawBody>,
) -> Result<Json<crate::parliament::Drawn>, ApiError> {
    auth.admin()?;
    if b.volunteers.len() > 100_000 || b.seats > 10_000 {
        return Err(ApiError::bad_request(
            "at most 100,000 volunteers and 10,000 seats",
        ));
    }
    let drawn = reply!(
        s.handle
            .execute(Command::DrawSeats {
                seats: b.seats,
                seed: b.seed,
                volunteers: b.volunteers,
            })
            .await,
        Reply::Drawn
    )?;
    Ok(Json(*drawn))
}

async fn propose(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<ProposeBody>,
) -> Result<Json<crate::parliament::Proposal>, ApiError> {
    auth.admin()?;
    Ok(Json(*reply!(
        s.handle
            .execute(Command::Propose {
                title: b.title,
                kind: b.kind,
                window_minutes: b.window_minutes,
            })
            .await,
        Reply::Proposal
    )?))
}

async fn vote(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Body(b): Body<VoteBody>,
) -> Result<Json<crate::parliament::VoteRecorded>, ApiError> {
    auth.admin()?;
    let proposal: caisse_protocol::ProposalId = parse("proposal id", &id)?;
    let seat = parse_seat(&b.seat)?;
    Ok(Json(reply!(
        s.handle
            .execute(Command::Vote {
                proposal,
                seat,
                choice: b.choice,
            })
            .await,
        Reply::Vote
    )?))
}

async fn close_proposal(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<crate::parliament::Proposal>, ApiError> {
    auth.admin()?;
    let proposal: caisse_protocol::ProposalId = parse("proposal id", &id)?;
    Ok(Json(*reply!(
        s.handle.execute(Command::CloseProposal { proposal }).await,
        Reply::Proposal
    )?))
}

async fn register_producer(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<ProducerBody>,
) -> Result<Json<crate::conventionnement::ProducerRecord>, ApiError> {
    auth.admin()?;
    Ok(Json(*reply!(
        s.handle
            .execute(Command::RegisterProducer {
                name: b.name,
                attributes: b.attributes,
            })
            .await,
        Reply::Producer
    )?))
}

/// A producer with the accreditations that concern it.
fn producer_view(
    c: &impl Reads,
    id: &caisse_protocol::ProducerId,
    today: Day,
) -> Option<ProducerView> {
    let p = c.conventions().producer(id)?;
    let subject = caisse_protocol::messages::Subject::Producer(*id);
    let accreditations = c
        .conventions()
        .all()
        .into_iter()
        .filter(|r| r.accreditation.subject == subject)
        .map(|r| accreditation_view(r, today))
        .collect();
    Some(ProducerView {
        id: p.id,
        name: p.name.clone(),
        registered_here: true,
        attributes: Some(p.attributes.clone()),
        registered: Some(p.registered),
        accreditations,
        federation: Vec::new(),
    })
}

fn accreditation_view(
    r: &crate::conventionnement::AccreditationRecord,
    today: Day,
) -> AccreditationView {
    let revoked = r.revoked.as_ref().map(|x| RevokedView {
        day: x.day,
        reason: x.reason.clone(),
    });
    AccreditationView::of(r.id, &r.accreditation, revoked, today)
}

async fn list_producers(
    State(s): State<App>,
    auth: Auth,
) -> Result<Json<Vec<ProducerView>>, ApiError> {
    auth.reader()?;
    let out = s
        .handle
        .read(|c, now| {
            let today = Day::from_unix(now);
            let mut ids: Vec<_> = c.conventions().producers().keys().copied().collect();
            ids.sort();
            Ok(ids
                .iter()
                .filter_map(|id| producer_view(c, id, today))
                .collect())
        })
        .await?;
    Ok(Json(out))
}

async fn show_producer(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ProducerView>, ApiError> {
    auth.reader()?;
    let id: caisse_protocol::ProducerId = parse("producer id", &id)?;
    let view = s.federation.snapshot();
    let subject = caisse_protocol::messages::Subject::Producer(id);
    let elsewhere: Vec<PublishedAccreditation> = view
        .caisses
        .iter()
        .filter(|(c, _)| **c != s.caisse_id)
        .flat_map(|(c, p)| {
            let name = p
                .profile
                .as_ref()
                .map(|x| x.name.clone())
                .unwrap_or_default();
            let crit = p.criteria.as_ref().map(|(cr, h)| CriteriaRef {
                name: cr.name.clone(),
                version: cr.version,
                hash: *h,
            });
            p.accreditations
                .iter()
                .filter(|a| a.accreditation.subject == subject)
                .map(move |a| PublishedAccreditation {
                    id: a.id,
                    caisse: *c,
                    caisse_name: name.clone(),
                    scope: a.accreditation.scope.clone(),
                    criteria: a.accreditation.criteria,
                    criteria_version: crit.clone(),
                    subject_name: a.accreditation.subject_name.clone(),
                    valid_from: a.accreditation.valid_from,
                    valid_until: a.accreditation.valid_until,
                    status: if a.revocation.is_some() {
                        "revoked"
                    } else {
                        "published"
                    }
                    .into(),
                })
        })
        .collect();
    let local = s
        .handle
        .read(move |c, now| Ok(producer_view(c, &id, Day::from_unix(now))))
        .await?;
    match local {
        Some(mut v) => {
            v.federation = elsewhere;
            Ok(Json(v))
        }
        None if !elsewhere.is_empty() => Ok(Json(ProducerView {
            id,
            name: elsewhere[0].subject_name.clone(),
            registered_here: false,
            attributes: None,
            registered: None,
            accreditations: Vec::new(),
            federation: elsewhere,
        })),
        None => Err(CaisseError::NotFound {
            what: "producer",
            id: id.to_string(),
        }
        .into()),
    }
}

#[derive(Deserialize, Default)]
struct EvaluationQuery {
    /// Judge against this other caisse's published criteria and territory.
    #[serde(default)]
    caisse: Option<String>,
}

async fn evaluate_producer(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<EvaluationQuery>,
) -> Result<Json<EvaluationView>, ApiError> {
    auth.reader()?;
    let id: caisse_protocol::ProducerId = parse("producer id", &id)?;
    let view = s.federation.snapshot();
    if let Some(other) = q.caisse.filter(|c| *c != s.caisse_id.to_string()) {
        return Ok(Json(evaluate_against(&s, &view, id, &other).await?));
    }
    // A producer not registered here is judged on its dossier from the federation.
    let carried = view.dossier(&id).cloned();
    let out = s
        .handle
        .read(move |c, now| {
            let today = Day::from_unix(now);
            let centre = c.policy().territory_centre;
            let crit = c.conventions().criteria().map(|r| CriteriaRef {
                name: r.version.criteria.name.clone(),
                version: r.version.criteria.version,
                hash: r.hash,
            });
            let (e, source, dossier) = match (c.conventions().producer(&id), carried) {
                (Some(p), _) => (
                    c.evaluate_producer(&id, today)?,
                    "registered here",
                    p.dossier.as_ref().map(|h| h.dossier.clone()),
                ),
                (None, Some(d)) => {
                    let criteria = c.conventions().criteria().ok_or_else(|| {
                        CaisseError::Conflict(
                            "no criteria adopted yet: the parliament must first pass a criteria proposal".into(),
                        )
                    })?;
                    (
                        criteria
                            .version
                            .criteria
                            .evaluate(&d.dossier.attributes_on(today, centre.as_ref())),
                        "dossier from the federation",
                        Some(d.dossier),
                    )
                }
                (None, None) => {
                    return Err(CaisseError::NotFound {
                        what: "producer",
                        id: id.to_string(),
                    });
                }
            };
            let lapse = match (&dossier, c.conventions().criteria()) {
                (Some(d), Some(cr)) => d
                    .relies_until(&cr.version.criteria, today, centre.as_ref())
                    .map(|(day, cert)| WouldLapse {
                        day,
                        certificate: cert.number.clone(),
                        label: cert.label.clone(),
                    }),
                _ => None,
            };
            Ok(EvaluationView {
                producer: id,
                caisse: None,
                caisse_name: None,
                criteria: crit,
                evaluation: e,
                source: source.into(),
                dossier_version: dossier.as_ref().map(|d| d.version),
                distance_km: dossier
                    .as_ref()
                    .and_then(|d| centre.map(|c| d.location.distance_km(&c))),
                would_lapse_with: lapse,
            })
        })
        .await?;
    Ok(Json(out))
}

/// A producer's dossier judged against another caisse's published criteria,
/// from that caisse's territory centre.
async fn evaluate_against(
    s: &App,
    view: &crate::documents::FederationView,
    id: caisse_protocol::ProducerId,
    other: &str,
) -> Result<EvaluationView, ApiError> {
    let caisse: CaisseId = parse("caisse id", other)?;
    let peer = view.caisses.get(&caisse).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("caisse {caisse} is not known here: see `caisse peers`"),
        )
    })?;
    let (criteria, hash) = peer.criteria.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("caisse {caisse} has published no criteria yet"),
        )
    })?;
    let (held, now) = s
        .handle
        .read(move |c, now| {
            Ok((
                c.conventions()
                    .producer(&id)
                    .and_then(|r| r.dossier.clone()),
                now,
            ))
        })
        .await?;
    let dossier = crate::producers::newest_dossier(view, id, held.map(|h| h.dossier))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dossier of {id} is known here: the producer publishes one with `caisse producer publish`"),
            )
        })?;
    let today = Day::from_unix(now);
    let e = criteria.evaluate(&dossier.attributes_on(today, peer.location.as_ref()));
    Ok(EvaluationView {
        producer: id,
        caisse: Some(caisse),
        caisse_name: peer.profile.as_ref().map(|p| p.name.clone()),
        criteria: Some(CriteriaRef {
            name: criteria.name.clone(),
            version: criteria.version,
            hash,
        }),
        evaluation: e,
        source: "dossier, against that caisse's criteria".into(),
        dossier_version: Some(dossier.version),
        distance_km: peer.location.map(|l| dossier.location.distance_km(&l)),
        would_lapse_with: None,
    })
}

/// A producer's signed dossier, from the producer (its token) or the desk
/// (admin): verified against the producer's key, then carried in this
/// caisse's federation document.
async fn submit_dossier(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<DossierBody>,
) -> Result<Json<DossierPublished>, ApiError> {
    let bytes = hex::decode(b.dossier.trim()).map_err(|_| {
        ApiError::bad_request("\"dossier\" is the signed dossier's bytes in hex (as `caisse producer sign` writes them)")
    })?;
    let envelope = caisse_protocol::Envelope::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request(format!("not a signed statement: {e}")))?;
    let opened = envelope.open::<caisse_protocol::producer::ProducerDossier>(&s.config.federation);
    let dossier = match opened {
        Ok(v) => v.message,
        Err(e) => {
            tracing::warn!(target: "caisse::security", caisse = %s.caisse_id.short(), error = %e, "refused a producer dossier");
            return Err(ApiError::bad_request(format!(
                "producer dossier refused: {e} (a dossier is signed by the producer's own key: `caisse producer sign --key`)"
            )));
        }
    };
    match &auth.0 {
        Role::Admin => {}
        Role::Producer { producer } if *producer == dossier.id() => {}
        Role::Producer { .. } => {
            return Err(ApiError::forbidden(
                "this producer token may only publish its own producer's dossier",
            ));
        }
        _ => {
            return Err(ApiError::forbidden(
                "publishing a dossier needs the admin token or the producer's own token",
            ));
        }
    }
    let rec = reply!(
        s.handle.execute(Command::RecordDossier { envelope }).await,
        Reply::Producer
    )?;
    Ok(Json(DossierPublished {
        producer: rec.id,
        version: rec.dossier.as_ref().map(|h| h.dossier.version),
        review: rec.dossier.as_ref().and_then(|h| h.review.clone()),
        name: rec.name,
    }))
}

/// The newest dossier of a producer known here (held, or carried by another caisse).
async fn show_dossier(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<DossierShown>, ApiError> {
    let id: caisse_protocol::ProducerId = parse("producer id", &id)?;
    match &auth.0 {
        Role::Producer { producer } if *producer == id => {}
        _ => auth.reader()?,
    }
    let held = s
        .handle
        .read(move |c, _| {
            Ok(c.conventions()
                .producer(&id)
                .and_then(|r| r.dossier.clone()))
        })
        .await?;
    match crate::producers::newest_dossier(&s.federation.snapshot(), id, held.map(|h| h.dossier)) {
        Some(dossier) => Ok(Json(DossierShown {
            producer: id,
            dossier,
        })),
        None => Err(CaisseError::NotFound {
            what: "producer dossier",
            id: id.to_string(),
        }
        .into()),
    }
}

async fn producer_page(
    s: &App,
    producer: caisse_protocol::ProducerId,
) -> Result<crate::producers::ProducerPage, ApiError> {
    let view = s.federation.snapshot();
    let (local, today) = s
        .handle
        .read(move |c, now| {
            Ok((
                crate::producers::local_side(c, producer)?,
                Day::from_unix(now),
            ))
        })
        .await?;
    Ok(crate::producers::page(&view, &local, producer, today))
}

/// The producer's own page: open with its producer token.
async fn own_producer_page(
    State(s): State<App>,
    auth: Auth,
) -> Result<Json<crate::producers::ProducerPage>, ApiError> {
    let Role::Producer { producer } = auth.0 else {
        return Err(ApiError::forbidden(
            "this is the producer's own page: sign in with the producer token the caisse issued (`caisse token new --role producer --producer prod_…`)",
        ));
    };
    Ok(Json(producer_page(&s, producer).await?))
}

/// A producer's page as the caisse's staff and committee see it.
async fn producer_page_of(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<crate::producers::ProducerPage>, ApiError> {
    auth.reader()?;
    let id: caisse_protocol::ProducerId = parse("producer id", &id)?;
    Ok(Json(producer_page(&s, id).await?))
}

/// Producers of the federation: by producer, who accredits it under what;
/// filters by category, label, distance and accrediting caisse.
async fn producer_registry(
    State(s): State<App>,
    auth: Auth,
    Query(f): Query<crate::producers::RegistryFilter>,
) -> Result<Json<Vec<crate::producers::RegistryRow>>, ApiError> {
    auth.reader()?;
    let view = s.federation.snapshot();
    let (local, today) = s
        .handle
        .read(move |c, now| {
            let profile: caisse_core::caisse::Profile = caisse_core::store::decode_value(
                caisse_core::store::keys::PROFILE,
                &c.read(caisse_core::store::keys::PROFILE)?
                    .unwrap_or_default(),
            )?;
            Ok((
                crate::producers::Local {
                    id: c.caisse_id(),
                    name: profile.name,
                    criteria: None,
                    centre: c.policy().territory_centre,
                    record: None,
                    accreditations: Vec::new(),
                    sales: Vec::new(),
                },
                Day::from_unix(now),
            ))
        })
        .await?;
    Ok(Json(crate::producers::registry(&view, &local, today, &f)))
}

#[derive(Deserialize)]
struct LapsingQuery {
    #[serde(default = "default_warn_days")]
    days: u32,
}

fn default_warn_days() -> u32 {
    crate::producers::WARN_DAYS
}

/// This caisse's accreditations ending within `days` (default 30), and why.
async fn lapsing_accreditations(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<LapsingQuery>,
) -> Result<Json<Vec<Lapsing>>, ApiError> {
    auth.reader()?;
    let days = q.days.min(3660);
    let out = s
        .handle
        .read(move |c, now| {
            Ok(crate::producers::lapsing(
                &c.conventions().all(),
                Day::from_unix(now),
                days,
            ))
        })
        .await?;
    Ok(Json(out))
}

/// Give a producer registered before producers had keys an identity held
/// by the caisse until the producer claims it.
async fn adopt_producer(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
    Body(b): Body<AdoptBody>,
) -> Result<Json<Adopted>, ApiError> {
    auth.admin()?;
    let producer: caisse_protocol::ProducerId = parse("producer id", &id)?;
    let adoption = crate::conventionnement::Adoption {
        siret: b.siret,
        commune: b.commune,
        postcode: b.postcode,
        location: caisse_protocol::producer::GeoPoint::parse(&b.location)
            .map_err(ApiError::bad_request)?,
    };
    let rec = reply!(
        s.handle
            .execute(Command::AdoptProducer { producer, adoption })
            .await,
        Reply::Producer
    )?;
    Ok(Json(Adopted {
        producer: rec.id,
        legacy_id: rec.legacy_id,
        name: rec.name,
    }))
}

/// Hand the held key over to its producer, once.
async fn hand_over_producer_key(
    State(s): State<App>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<KeyHandedOver>, ApiError> {
    auth.admin()?;
    let producer: caisse_protocol::ProducerId = parse("producer id", &id)?;
    let key = reply!(
        s.handle
            .execute(Command::HandOverProducerKey { producer })
            .await,
        Reply::Token
    )?;
    tracing::info!(target: "caisse::security", caisse = %s.caisse_id.short(), producer = %producer, "producer key handed over");
    Ok(Json(KeyHandedOver { producer, key }))
}

/// Set the point producers' distances are computed from.
async fn set_territory_centre(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<CentreBody>,
) -> Result<Json<TerritoryCentre>, ApiError> {
    auth.admin()?;
    let centre = if b.centre.trim().is_empty() {
        None
    } else {
        Some(caisse_protocol::producer::GeoPoint::parse(&b.centre).map_err(ApiError::bad_request)?)
    };
    reply!(
        s.handle
            .execute(Command::SetTerritoryCentre { centre })
            .await,
        Reply::Count
    )?;
    Ok(Json(TerritoryCentre {
        territory_centre: centre,
    }))
}

#[derive(Deserialize, Default)]
struct AccreditationQuery {
    #[serde(default)]
    federation: bool,
}

async fn list_accreditations(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<AccreditationQuery>,
) -> Result<Json<Vec<AccreditationView>>, ApiError> {
    auth.reader()?;
    if q.federation {
        let view = s.federation.snapshot();
        let today = s.handle.clock().today();
        let rows = view
            .caisses
            .values()
            .flat_map(|p| {
                let name = p
                    .profile
                    .as_ref()
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                p.accreditations.iter().map(move |a| {
                    let revoked = a.revocation.as_ref().map(|r| RevokedView {
                        day: r.effective,
                        reason: r.reason.clone(),
                    });
                    AccreditationView {
                        caisse_name: Some(name.clone()),
                        ..AccreditationView::of(a.id, &a.accreditation, revoked, today)
                    }
                })
            })
            .collect();
        return Ok(Json(rows));
    }
    let out = s
        .handle
        .read(|c, now| {
            let today = Day::from_unix(now);
            Ok(c.conventions()
                .all()
                .into_iter()
                .map(|r| accreditation_view(r, today))
                .collect())
        })
        .await?;
    Ok(Json(out))
}

async fn show_criteria(
    State(s): State<App>,
    auth: Auth,
) -> Result<Json<Option<CriteriaInForce>>, ApiError> {
    auth.reader()?;
    let out = s
        .handle
        .read(|c, _| {
            Ok(c.conventions().criteria().map(|r| CriteriaInForce {
                hash: r.hash,
                adopted_on: r.version.adopted_on,
                decided_by: r.version.decided_by,
                criteria: r.version.criteria.clone(),
            }))
        })
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
struct ReportQuery {
    period: String,
}

async fn report(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<ReportQuery>,
) -> Result<Json<ReportAnswer>, ApiError> {
    auth.reader()?;
    let period: Period = parse("period", &q.period)?;
    let report = crate::app::report(&s, period).await?;
    let markdown = crate::report::to_markdown(&report);
    Ok(Json(ReportAnswer { report, markdown }))
}

async fn report_export(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<ReportQuery>,
) -> Result<Json<crate::report::Export>, ApiError> {
    auth.reader()?;
    let period: Period = parse("period", &q.period)?;
    let export = crate::app::export(&s, period, crate::daemon::random32()).await?;
    Ok(Json(export))
}

async fn peers(State(s): State<App>, auth: Auth) -> Result<Json<Vec<PeerRow>>, ApiError> {
    auth.reader()?;
    let view = s.federation.snapshot();
    let (recognition, criteria) = s
        .handle
        .read(|c, _| {
            Ok((
                c.policy().recognition.clone(),
                c.conventions()
                    .criteria()
                    .map(|r| r.version.criteria.clone()),
            ))
        })
        .await?;
    let rows = view
        .caisses
        .iter()
        .filter(|(c, _)| **c != s.caisse_id)
        .map(|(c, p)| PeerRow {
            caisse: *c,
            name: p.profile.as_ref().map(|x| x.name.clone()),
            territory: p.profile.as_ref().map(|x| x.territory.clone()),
            recognised: view.recognises(c, &recognition, criteria.as_ref()),
            connected: p.connected,
            last_changed: p.last_changed,
            sequence: p.sequence,
            heads: p.heads.clone(),
            accreditations: p.accreditations.len(),
            criteria_version: p.criteria.as_ref().map(|(cr, _)| cr.version),
            invalid_statements: p.invalid_statements,
            addresses: p.addresses.clone(),
        })
        .collect();
    Ok(Json(rows))
}

async fn network_info(State(s): State<App>, auth: Auth) -> Result<Response, ApiError> {
    auth.reader()?;
    let info = s.federation.network.info().await;
    fn strings<T: ToString>(v: &[T]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }
    // The counters are the federation's own (atomics): serialised in place.
    Ok(Json(crate::dto::NetworkInfo {
        peer_id: info.peer_id.map(|p| p.to_string()),
        listen: strings(&info.listen),
        connected: strings(&info.connected),
        blocked: strings(&info.blocked),
        frames_refused: info.frame_failures,
        federation: &*s.federation.stats,
    })
    .into_response())
}

async fn network_block(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<BlockBody>,
) -> Result<Json<Blocked>, ApiError> {
    auth.admin()?;
    let peer = crate::network::peer_id_of(&b.caisse)
        .ok_or_else(|| ApiError::bad_request("that caisse id is not a valid key"))?;
    s.federation.network.block(peer, b.block).await;
    Ok(Json(Blocked {
        caisse: b.caisse,
        blocked: b.block,
    }))
}

async fn federation_document(
    State(s): State<App>,
    auth: Auth,
    Path(caisse): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    auth.reader()?;
    let caisse: CaisseId = parse("caisse id", &caisse)?;
    let bytes = s.federation.document(caisse).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no document of that caisse here",
        )
    })?;
    Ok(Json(
        json!({ "caisse": caisse, "bytes": hex::encode(bytes) }),
    ))
}

async fn settlement_run(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<PeriodBody>,
) -> Result<Json<crate::settlement::SettlementRun>, ApiError> {
    auth.admin()?;
    Ok(Json(crate::app::run_settlement(&s, b.period).await?))
}

async fn settlement_show(
    State(s): State<App>,
    auth: Auth,
    Query(q): Query<ReportQuery>,
) -> Result<Json<SettlementShow>, ApiError> {
    auth.reader()?;
    let period: Period = parse("period", &q.period)?;
    let view = s.federation.snapshot();
    let v = crate::settlement::settlement_view(&view, period);
    let sum = Amount::checked_sum(v.positions.values().copied()).unwrap_or(Amount::MAX);
    Ok(Json(SettlementShow {
        period,
        statements: v
            .statements
            .iter()
            .map(|(id, st, acked, dispute)| StatementRow {
                id: *id,
                creditor: st.creditor,
                debtor: st.debtor,
                amount: st.amount,
                count: st.count,
                acknowledged: *acked,
                dispute: dispute.clone(),
            })
            .collect(),
        positions: v
            .positions
            .iter()
            .map(|(c, a)| Position {
                caisse: *c,
                net: *a,
            })
            .collect(),
        net_sum: sum,
        transfers: v
            .transfers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let paid = v
                    .paid
                    .iter()
                    .find(|(p, _)| p.from == t.from && p.to == t.to && p.amount == t.amount);
                TransferRow {
                    transfer: i + 1,
                    from: t.from,
                    to: t.to,
                    amount: t.amount,
                    paid: paid.is_some(),
                    confirmed_by_receiver: paid.is_some_and(|(_, c)| *c),
                }
            })
            .collect(),
    }))
}

/// Creditor side: withdraw the claims a debtor disputed as unknown to it
/// (admin); the revised statement follows and so does the netting.
async fn settlement_withdraw(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<WithdrawBody>,
) -> Result<Json<Withdrawn>, ApiError> {
    auth.admin()?;
    let n = reply!(
        s.handle
            .execute(Command::WithdrawClaims {
                debtor: b.debtor,
                period: b.period,
            })
            .await,
        Reply::Count
    )?;
    tracing::info!(target: "caisse::events::settlement", debtor = %b.debtor.short(), period = %b.period, withdrawn = n, "disputed claims withdrawn");
    Ok(Json(Withdrawn {
        period: b.period,
        debtor: b.debtor,
        withdrawn: n,
    }))
}

async fn settlement_paid(
    State(s): State<App>,
    auth: Auth,
    Body(b): Body<PaidBody>,
) -> Result<Json<TransferRecorded>, ApiError> {
    auth.admin()?;
    let view = s.federation.snapshot();
    let v = crate::settlement::settlement_view(&view, b.period);
    let t = b
        .transfer
        .checked_sub(1)
        .and_then(|i| v.transfers.get(i))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no transfer {} for {}: see `settlement show`",
                b.transfer, b.period
            ))
        })?;
    if t.from != s.caisse_id {
        return Err(ApiError::forbidden(
            "that transfer is paid by another caisse: only the payer records it",
        ));
    }
    let (to, amount, period, reference) = (t.to, t.amount, b.period, b.reference);
    let id = reply!(
        s.handle
            .execute(Command::RecordTransfer {
                period,
                to,
                amount,
                reference,
            })
            .await,
        Reply::Transfer
    )?;
    Ok(Json(TransferRecorded {
        transfer: b.transfer,
        to,
        amount,
        statement: id,
    }))
}
