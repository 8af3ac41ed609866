//! The web console: server-rendered pages for the people of a caisse,
//! served by the same HTTP server as the API, in French and English.
//!
//! - `/` sign-in (card + PIN for members, token for staff and outlets);
//! - `/till` the point of sale of an outlet;
//! - `/member` a member's own page;
//! - `/parliament` seats, proposals, votes (admin, observer, seat holders);
//! - `/registry` every accreditation of the federation (public);
//! - `/treasury` and `/report` (admin, observer).
//!
//! Sessions live in memory behind an HTTP-only, same-site cookie; every
//! form carries the session's CSRF token and is refused without it; failed
//! sign-ins are rate-limited per client address; every role check is made
//! on the server, in the handler, before anything is read or changed.

// Handlers answer refusals with a ready page; boxing every one would only add noise.
#![allow(clippy::result_large_err)]

mod access;
mod charts;
pub mod html;
mod member;
mod parliament;
mod producer;
mod propose;
mod registry;
pub mod session;
mod till;
mod treasury;

use caisse_core::command::{Command, Reply};
use caisse_core::view::Reads;

use crate::writer::reply;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::app::App;
use crate::members::{Role, token_key};
use crate::store::decode_value;
use html::{Lang, esc};
use session::{Session, Who};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "caisse_session";
/// The language cookie's name.
pub const LANG_COOKIE: &str = "caisse_lang";

/// What console handlers reach: the application, and the console's own
/// sessions (which the API knows nothing of).
#[derive(Clone)]
pub struct ConsoleState {
    /// The application shared with the API.
    pub app: App,
    /// Signed-in visitors, CSRF tokens, the sign-in limiter.
    pub sessions: session::Sessions,
    /// Rendered registry pages, for a few seconds.
    pub registry_cache: registry::Cache,
}

impl ConsoleState {
    /// The console over `app`, with no session yet.
    pub fn new(app: App) -> ConsoleState {
        ConsoleState {
            app,
            sessions: Default::default(),
            registry_cache: Default::default(),
        }
    }
}

impl std::ops::Deref for ConsoleState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.app
    }
}

/// The console's routes.
pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/", get(home))
        .route("/console.css", get(stylesheet))
        .route("/lang/{lang}", get(switch_lang))
        .route("/login/token", post(login_token))
        .route("/login/card", post(login_card))
        .route("/logout", post(logout))
        .route("/till", get(till::page).post(till::sell))
        .route("/member", get(member::page))
        .route("/producer", get(producer::page))
        .route("/parliament", get(parliament::page))
        .route("/parliament/vote", post(parliament::vote))
        .route("/parliament/close", post(parliament::close))
        .route("/parliament/propose", post(propose::propose))
        .route("/registry", get(registry::page))
        .route("/treasury", get(treasury::page))
        .route("/access", get(access::page))
        .route("/access/revoke", post(access::revoke))
        .route("/access/outlet", post(access::outlet))
        .route("/treasury/allocations", post(treasury::allocate))
        .route("/treasury/members", post(treasury::enrol))
        .route("/treasury/contributions", post(treasury::contribution))
        .route("/treasury/subsidies", post(treasury::subsidy))
        .route("/treasury/payout", post(treasury::payout))
        .route("/treasury/withdraw", post(treasury::withdraw))
        .route("/report", get(treasury::report_page))
        .route("/report/export/{file}", get(treasury::export_csv))
}

/// Who is asking: their session (new if they had none) and language.
pub struct Visitor {
    /// The session (a copy; changes go through the session store).
    pub session: Session,
    /// True if the session was just created: its cookie must be set.
    pub fresh: bool,
    /// The page language.
    pub lang: Lang,
    /// The client's address, for rate limiting.
    pub client: String,
    /// A message left by the previous request (after a redirect).
    pub flash: Option<html::Flash>,
    /// The path and query asked for (to come back after switching language).
    pub path: String,
    /// Cookies are marked `Secure` (the console is served over https).
    pub secure: bool,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<ConsoleState> for Visitor {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let lang = match cookie(&parts.headers, LANG_COOKIE) {
            Some("fr") => Lang::Fr,
            Some("en") => Lang::En,
            _ => Lang::from_accept(
                parts
                    .headers
                    .get(axum::http::header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
        };
        let client = crate::app::client_address(parts, &state.app.config.http.trusted_proxies);
        let sessions = &state.sessions;
        let found = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|id| sessions.get(id))
            .filter(|s| {
                // A session whose credential was revoked, suspended or
                // reset ends now, not when it would have expired.
                let valid = s
                    .credential
                    .as_ref()
                    .is_none_or(|c| still_valid(&*state.store, c));
                if !valid {
                    tracing::info!(target: "caisse::security", role = ?s.who.as_ref().map(Who::kind), "console session ended: its credential is no longer valid");
                    sessions.remove(&s.id);
                }
                valid
            });
        let (mut session, fresh) = match found {
            Some(s) => (s, false),
            None => (sessions.visitor(), true),
        };
        let flash = session.flash.take();
        if flash.is_some() {
            sessions.set_flash(&session.id, None);
        }
        // After a form, come back to the start page (it leads each role home):
        // the form's own address answers POST only.
        let path = if parts.method == axum::http::Method::GET {
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .chars()
                .take(500)
                .collect()
        } else {
            "/".to_owned()
        };
        Ok(Visitor {
            session,
            fresh,
            lang,
            client,
            flash,
            path,
            secure: state.app.config.http.secure_cookies,
        })
    }
}

impl Visitor {
    /// Translate: the English text or its French.
    pub fn t<'a>(&self, en: &'a str, fr: &'a str) -> &'a str {
        self.lang.t(en, fr)
    }

    fn with_cookie(&self, mut r: Response) -> Response {
        if self.fresh {
            set_session_cookie(&mut r, &self.session.id, self.secure);
        }
        let h = r.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // No scripts, no framing (a till inside another site's frame could be
        // clicked by that site), forms only to this console.
        h.insert(
            axum::http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(
            axum::http::header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        );
        h.insert(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            axum::http::header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        r
    }

    /// A full page.
    pub fn page(
        &self,
        state: &ConsoleState,
        status: StatusCode,
        title: &str,
        body: &str,
    ) -> Response {
        let doc = html::layout(state, self, title, body);
        self.with_cookie(
            (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], doc).into_response(),
        )
    }

    /// An error page (403, 404, 429…) with what to do next.
    pub fn error(&self, state: &ConsoleState, status: StatusCode, message: &str) -> Response {
        let title = match status {
            StatusCode::FORBIDDEN => self.t("Not allowed", "Accès refusé"),
            StatusCode::NOT_FOUND => self.t("Not found", "Page introuvable"),
            StatusCode::TOO_MANY_REQUESTS => self.t("Too many attempts", "Trop de tentatives"),
            _ => self.t("Something went wrong", "Un problème est survenu"),
        };
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p><p><a href=\"/\">{}</a></p>",
            esc(message),
            self.t("Back to the start page", "Retour à l'accueil")
        );
        self.page(state, status, title, &body)
    }

    /// The page shown when the caisse could not answer a read.
    pub fn unavailable(&self, state: &ConsoleState, e: &crate::caisse::CaisseError) -> Response {
        self.error(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            &html::refusal(self.lang, e),
        )
    }

    /// Redirect (303) after a form, with a message for the next page.
    pub fn redirect(&self, state: &ConsoleState, to: &str, flash: Option<html::Flash>) -> Response {
        if flash.is_some() {
            state.sessions.set_flash(&self.session.id, flash);
        }
        self.with_cookie((StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response())
    }

    /// Require a signed-in role among `allowed`: not signed in goes to the
    /// sign-in page; signed in as something else is a 403.
    pub fn require(&self, state: &ConsoleState, allowed: &[Kind]) -> Result<Who, Response> {
        let Some(who) = self.session.who.clone() else {
            return Err(self.redirect(state, "/", None));
        };
        if allowed.contains(&who.kind()) {
            Ok(who)
        } else {
            Err(self.error(
                state,
                StatusCode::FORBIDDEN,
                self.t(
                    "This page is not open to your role. Sign out and sign in with the right card or token.",
                    "Cette page n'est pas ouverte à votre rôle. Déconnectez-vous et reconnectez-vous avec la bonne carte ou le bon jeton.",
                ),
            ))
        }
    }
}

/// The kinds of signed-in people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The caisse's staff.
    Admin,
    /// The evaluation committee (read-only).
    Observer,
    /// An outlet's till.
    Outlet,
    /// A parliament seat holder with a seat token.
    Seat,
    /// A member.
    Member,
    /// A producer (its own page).
    Producer,
}

fn set_session_cookie(r: &mut Response, id: &str, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"
    )) {
        r.headers_mut().append(SET_COOKIE, v);
    }
}

/// A form posted from a console page: its fields, once its CSRF token has
/// been checked against the session's.
pub struct Posted {
    /// Who posted it.
    pub visitor: Visitor,
    /// The fields, in order.
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// A field's value, trimmed ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }
}

impl FromRequest<ConsoleState> for Posted {
    type Rejection = Response;
    async fn from_request(req: Request, state: &ConsoleState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Ok(visitor) = Visitor::from_request_parts(&mut parts, state).await;
        let req = Request::from_parts(parts, body);
        let refused = |v: &Visitor, why: &str| {
            tracing::info!(target: "caisse::events::console", client = %v.client, why, "form refused");
            v.error(
                state,
                StatusCode::FORBIDDEN,
                v.t(
                    "This form was refused: it has expired or was not sent from this console. Nothing was changed. Go back, reload the page and try again.",
                    "Ce formulaire a été refusé : il a expiré ou ne vient pas de cette console. Rien n'a été modifié. Revenez en arrière, rechargez la page et réessayez.",
                ),
            )
        };
        let axum::Form(fields) =
            match axum::Form::<Vec<(String, String)>>::from_request(req, state).await {
                Ok(f) => f,
                Err(_) => {
                    return Err(visitor.error(
                        state,
                        StatusCode::BAD_REQUEST,
                        visitor.t(
                            "This form could not be read. Nothing was changed.",
                            "Ce formulaire n'a pas pu être lu. Rien n'a été modifié.",
                        ),
                    ));
                }
            };
        if visitor.fresh {
            return Err(refused(&visitor, "no session"));
        }
        let sent = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        match sent {
            Some(t) if session::same(t, &visitor.session.csrf) => Ok(Posted { visitor, fields }),
            Some(_) => Err(refused(&visitor, "wrong CSRF token")),
            None => Err(refused(&visitor, "missing CSRF token")),
        }
    }
}

async fn stylesheet() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        html::CSS,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Back {
    #[serde(default)]
    back: Option<String>,
}

async fn switch_lang(
    v: Visitor,
    State(s): State<ConsoleState>,
    axum::extract::Path(lang): axum::extract::Path<String>,
    Query(q): Query<Back>,
) -> Response {
    let lang = if lang == "fr" { "fr" } else { "en" };
    let back = q
        .back
        .filter(|b| is_local_path(b))
        .unwrap_or_else(|| "/".to_owned());
    let mut r = v.redirect(&s, &back, None);
    if let Ok(c) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={lang}; Path=/; Max-Age=31536000; SameSite=Lax"
    )) {
        r.headers_mut().append(SET_COOKIE, c);
    }
    r
}

/// True for a path on this site only: it starts with one `/` and holds
/// only visible ASCII other than `\\` (browsers drop tabs and newlines
/// from a `Location`, so `/\t/evil.example` would become `//evil.example`).
fn is_local_path(b: &str) -> bool {
    b.starts_with('/')
        && !b.starts_with("//")
        && b.len() <= 2048
        && b.bytes().all(|c| (0x21..0x7f).contains(&c) && c != b'\\')
}

/// Where each role lands after signing in.
fn landing(who: &Who) -> &'static str {
    match who {
        Who::Admin | Who::Observer => "/treasury",
        Who::Outlet { .. } => "/till",
        Who::Seat { .. } => "/parliament",
        Who::Member { .. } => "/member",
        Who::Producer { .. } => "/producer",
    }
}

async fn home(v: Visitor, State(s): State<ConsoleState>) -> Response {
    if let Some(who) = &v.session.who {
        return v.redirect(&s, landing(who), None);
    }
    sign_in_page(&v, &s, StatusCode::OK, None, "")
}

fn sign_in_page(
    v: &Visitor,
    s: &ConsoleState,
    status: StatusCode,
    error: Option<&str>,
    card: &str,
) -> Response {
    let err = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    let body = format!(
        r#"{err}<div class="cards">
<section class="card" aria-labelledby="member-h">
<h2 id="member-h">{member_h}</h2>
<p>{member_p}</p>
<form method="post" action="/login/card">
{csrf}
<label for="card">{card_l}</label>
<input id="card" name="card" required autocomplete="off" autocapitalize="off" spellcheck="false" value="{card}">
<label for="pin">{pin_l}</label>
<input id="pin" name="pin" type="password" inputmode="numeric" pattern="[0-9]{{4,8}}" required autocomplete="off">
<button type="submit">{enter}</button>
</form>
</section>
<section class="card" aria-labelledby="staff-h">
<h2 id="staff-h">{staff_h}</h2>
<p>{staff_p}</p>
<form method="post" action="/login/token">
{csrf}
<label for="token">{token_l}</label>
<input id="token" name="token" type="password" required autocomplete="off">
<button type="submit">{enter}</button>
</form>
</section>
<section class="card" aria-labelledby="reg-h">
<h2 id="reg-h">{reg_h}</h2>
<p>{reg_p}</p>
<p><a class="button" href="/registry">{reg_a}</a></p>
</section>
</div>"#,
        csrf = html::csrf_field(&v.session),
        card = esc(card),
        member_h = v.t("Members", "Membres"),
        member_p = v.t(
            "See your balance, your purchases and the open votes with your card number and PIN.",
            "Consultez votre solde, vos achats et les votes en cours avec votre numéro de carte et votre code."
        ),
        card_l = v.t("Card number", "Numéro de carte"),
        pin_l = v.t("PIN (4 to 8 digits)", "Code (4 à 8 chiffres)"),
        enter = v.t("Sign in", "Se connecter"),
        staff_h = v.t("Caisse staff and outlets", "Équipe de la caisse et points de vente"),
        staff_p = v.t(
            "Paste the token the caisse gave you: an outlet's token opens its till.",
            "Collez le jeton remis par la caisse : le jeton d'un point de vente ouvre sa caisse enregistreuse."
        ),
        token_l = v.t("Token", "Jeton"),
        reg_h = v.t("Public registry", "Registre public"),
        reg_p = v.t(
            "Every accredited producer and outlet of the federation, open to all.",
            "Tous les producteurs et points de vente conventionnés de la fédération, ouvert à tous."
        ),
        reg_a = v.t("Open the registry", "Ouvrir le registre"),
    );
    v.page(s, status, v.t("Sign in", "Connexion"), &body)
}

/// Refuse with 429 if this client failed too often lately.
fn rate_limited(v: &Visitor, s: &ConsoleState) -> Option<Response> {
    let wait = s.sessions.limiter_wait(&v.client)?;
    tracing::warn!(target: "caisse::events::console", client = %v.client, "sign-in rate limited");
    let mins = wait.as_secs().div_ceil(60).max(1);
    let msg = match v.lang {
        Lang::Fr => format!(
            "Trop de tentatives de connexion échouées depuis cet appareil. Réessayez dans {mins} minute(s)."
        ),
        Lang::En => format!(
            "Too many failed sign-in attempts from this device. Try again in {mins} minute(s)."
        ),
    };
    let mut r = v.error(s, StatusCode::TOO_MANY_REQUESTS, &msg);
    if let Ok(h) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, h);
    }
    Some(r)
}

/// True while what a session was opened with still opens it: the token
/// still exists with the same role; the card still has the PIN it was
/// opened with, is not locked, and its member is active.
fn still_valid(store: &dyn crate::store::Store, c: &session::Credential) -> bool {
    match c {
        session::Credential::Token(key) => matches!(store.get(key), Ok(Some(_))),
        session::Credential::Card {
            card,
            member,
            pin_hash,
        } => {
            let ckey = crate::members::CardRecord::key(card);
            let card_ok = match store.get(&ckey) {
                Ok(Some(b)) => crate::members::decode_card(&ckey, &b)
                    .is_ok_and(|r| !r.locked && r.pin_hash == *pin_hash),
                _ => false,
            };
            let mkey = crate::members::MemberRecord::key(member);
            let member_ok = match store.get(&mkey) {
                Ok(Some(b)) => decode_value::<crate::members::MemberRecord>(&mkey, &b)
                    .is_ok_and(|m| m.status == crate::members::MemberStatus::Active),
                _ => false,
            };
            card_ok && member_ok
        }
    }
}

/// Start a signed-in session (a new id, so a planted cookie is worthless).
fn signed_in(v: &Visitor, s: &ConsoleState, who: Who, credential: session::Credential) -> Response {
    s.sessions.remove(&v.session.id);
    let to = landing(&who);
    tracing::info!(target: "caisse::events::console", client = %v.client, role = ?who.kind(), "signed in");
    let session = s.sessions.create(who, credential);
    let mut r = (StatusCode::SEE_OTHER, [(LOCATION, to)]).into_response();
    set_session_cookie(&mut r, &session.id, v.secure);
    r
}

async fn login_token(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Some(r) = rate_limited(v, &s) {
        return r;
    }
    let token = p.get("token");
    let key = token_key(token);
    let role = if token.is_empty() || token.len() > 200 {
        None
    } else {
        match s.store.get(&key) {
            Ok(Some(b)) => decode_value::<Role>(&key, &b).ok(),
            _ => None,
        }
    };
    let who = match role {
        Some(Role::Admin) => Who::Admin,
        // The console shows the auditor what it shows the committee.
        Some(Role::Observer | Role::Auditor) => Who::Observer,
        Some(Role::Outlet { outlet }) => Who::Outlet { outlet },
        Some(Role::Seat { seat }) => Who::Seat { seat },
        Some(Role::Producer { producer }) => Who::Producer { producer },
        None => {
            s.sessions.record_failure(&v.client);
            return sign_in_page(
                v,
                &s,
                StatusCode::UNAUTHORIZED,
                Some(v.t(
                    "This token is not known here. Check it with the caisse (it is in the admin.token file, or was shown when the outlet was registered).",
                    "Ce jeton est inconnu ici. Vérifiez-le auprès de la caisse (fichier admin.token, ou affiché à l'enregistrement du point de vente).",
                )),
                "",
            );
        }
    };
    signed_in(v, &s, who, session::Credential::Token(key))
}

async fn login_card(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    if let Some(r) = rate_limited(v, &s) {
        return r;
    }
    let card_text = p.get("card").to_owned();
    let fail = |msg: String| {
        s.sessions.record_failure(&v.client);
        sign_in_page(v, &s, StatusCode::UNAUTHORIZED, Some(&msg), &card_text)
    };
    let card: caisse_protocol::CardId = match card_text.parse() {
        Ok(c) => c,
        Err(_) => {
            return fail(
                v.t(
                    "This is not a card number: it starts with card_ (as printed on the card).",
                    "Ce n'est pas un numéro de carte : il commence par card_ (comme imprimé sur la carte).",
                )
                .to_owned(),
            );
        }
    };
    if !card.is_issued_by(&s.caisse_id) {
        return fail(
            v.t(
                "This card was issued by another caisse: sign in on your own caisse's console.",
                "Cette carte a été émise par une autre caisse : connectez-vous sur la console de votre caisse.",
            )
            .to_owned(),
        );
    }
    let pin = p.get("pin").to_owned();
    let login = Command::MemberLogin { card, pin };
    match reply!(s.handle.execute(login).await, Reply::SignedIn) {
        Ok(member) => {
            let ckey = crate::members::CardRecord::key(&card);
            let pin_hash = match s.store.get(&ckey) {
                Ok(Some(b)) => crate::members::decode_card(&ckey, &b)
                    .ok()
                    .and_then(|r| r.pin_hash),
                _ => None,
            };
            signed_in(
                v,
                &s,
                Who::Member { member, card },
                session::Credential::Card {
                    card,
                    member,
                    pin_hash,
                },
            )
        }
        Err(e) => fail(html::refusal(v.lang, &e)),
    }
}

async fn logout(State(s): State<ConsoleState>, p: Posted) -> Response {
    s.sessions.remove(&p.visitor.session.id);
    let fresh = s.sessions.visitor();
    let mut r = (StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response();
    set_session_cookie(&mut r, &fresh.id, p.visitor.secure);
    r
}

/// The HTML 404 for paths outside the API.
pub fn not_found(v: &Visitor, s: &ConsoleState) -> Response {
    v.error(
        s,
        StatusCode::NOT_FOUND,
        v.t(
            "There is no page at this address.",
            "Il n'y a pas de page à cette adresse.",
        ),
    )
}

/// A producer or outlet that members may buy from under the allocation.
#[derive(Clone, Debug)]
pub struct Accredited {
    /// Who.
    pub subject: caisse_protocol::messages::Subject,
    /// Their public name.
    pub name: String,
    /// The accrediting caisse's name.
    pub caisse: String,
    /// True when accredited by this caisse (else by a recognised one).
    pub own: bool,
    /// Categories and coverage rates.
    pub scope: Vec<caisse_protocol::messages::ScopeItem>,
    /// Last valid day.
    pub until: caisse_protocol::Day,
}

/// Everything active today: this caisse's accreditations, and those of the
/// caisses it recognises (producers only: outlets are where one shops).
pub fn accredited_today(
    c: &impl Reads,
    view: &crate::federation::FederationView,
    today: caisse_protocol::Day,
    own_name: &str,
) -> Vec<Accredited> {
    use caisse_protocol::messages::Subject;
    let mut out: Vec<Accredited> = c
        .conventions()
        .all()
        .into_iter()
        .filter(|r| r.active_on(today))
        .map(|r| Accredited {
            subject: r.accreditation.subject,
            name: r.accreditation.subject_name.clone(),
            caisse: own_name.to_owned(),
            own: true,
            scope: r.accreditation.scope.clone(),
            until: r.accreditation.valid_until,
        })
        .collect();
    let ours = c.conventions().criteria().map(|r| &r.version.criteria);
    for (id, p) in &view.caisses {
        if *id == c.caisse_id() || !view.recognises(id, &c.policy().recognition, ours) {
            continue;
        }
        let name = p
            .profile
            .as_ref()
            .map_or_else(|| id.short(), |x| x.name.clone());
        for a in &p.accreditations {
            let acc = &a.accreditation;
            if a.revocation.is_none()
                && acc.is_valid_on(today)
                && matches!(acc.subject, Subject::Producer(_))
            {
                out.push(Accredited {
                    subject: acc.subject,
                    name: acc.subject_name.clone(),
                    caisse: name.clone(),
                    own: false,
                    scope: acc.scope.clone(),
                    until: acc.valid_until,
                });
            }
        }
    }
    out.sort_by(|a, b| (!a.own, &a.name).cmp(&(!b.own, &b.name)));
    out
}

#[cfg(test)]
mod redirect_tests {
    #[test]
    fn only_local_paths_come_back() {
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "https://evil.example",
            "/ /evil",
            "",
        ] {
            assert!(!super::is_local_path(bad), "{bad:?}");
        }
        assert!(super::is_local_path("/treasury?period=2027-03"));
    }
}
