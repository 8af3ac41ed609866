//! HTML helpers of the console: escaping, the page layout, the stylesheet,
//! languages and the wording of refusals.

use caisse_protocol::Amount;
use caisse_protocol::messages::DeclineReason;

use super::ConsoleState;
use super::Visitor;
use super::session::{Session, Who};
use crate::caisse::CaisseError;

/// A page language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// French.
    Fr,
    /// English.
    En,
}

impl Lang {
    /// The language a browser prefers among ours (`Accept-Language`),
    /// French when it names neither.
    pub fn from_accept(header: &str) -> Lang {
        let mut best: Option<(u16, Lang)> = None;
        for part in header.split(',').take(20) {
            let mut it = part.split(';');
            let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0) as u16);
            let lang = if tag == "fr" || tag.starts_with("fr-") {
                Lang::Fr
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::Fr, |(_, l)| l)
    }

    /// The English text or its French.
    pub fn t<'a>(self, en: &'a str, fr: &'a str) -> &'a str {
        match self {
            Lang::En => en,
            Lang::Fr => fr,
        }
    }

    /// The `lang` attribute.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fr => "fr",
        }
    }
}

/// A message carried to the next page after a redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    /// True for a success, false for a refusal.
    pub ok: bool,
    /// The text (already in the visitor's language).
    pub text: String,
}

impl Flash {
    /// A refusal from the caisse, for the next page.
    pub fn refused(lang: Lang, e: &CaisseError) -> Flash {
        Flash {
            ok: false,
            text: refusal(lang, e),
        }
    }
}

/// Escape text for HTML content and attribute values.
pub fn esc(text: impl std::fmt::Display) -> String {
    let s = text.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if caisse_protocol::text::is_hostile(c) && !matches!(c, '\n' | '\t') => {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

/// An amount as people read it: `12,50 €` in French, `€12.50` in English.
pub fn money(lang: Lang, a: Amount) -> String {
    let s = a.to_string();
    match lang {
        Lang::Fr => format!("{}\u{a0}€", s.replace('.', ",")),
        Lang::En => match s.strip_prefix('-') {
            Some(rest) => format!("-€{rest}"),
            None => format!("€{s}"),
        },
    }
}

/// A share in basis points as a percentage.
pub fn percent(lang: Lang, bp: u32) -> String {
    let s = crate::report::pct(bp);
    match lang {
        Lang::Fr => format!("{}\u{a0}%", s.trim_end_matches('%').replace('.', ",")),
        Lang::En => s,
    }
}

/// Percent-encode a query value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The hidden field every form carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&session.csrf)
    )
}

/// A refusal from the caisse in the visitor's words.
pub fn refusal(lang: Lang, e: &CaisseError) -> String {
    if lang == Lang::En {
        return e.to_string();
    }
    match e {
        CaisseError::Declined { reason, .. } => match reason {
            DeclineReason::InsufficientBalance { available } => format!(
                "Solde insuffisant : il ne reste que {} sur l'allocation. Réduisez les lignes payées par l'allocation ; le reste se paie autrement.",
                money(lang, *available)
            ),
            DeclineReason::UnknownCard => {
                "Carte inconnue : vérifiez le numéro (il commence par card_).".into()
            }
            DeclineReason::SuspendedCard => {
                "Cette carte est suspendue ou son membre a quitté la caisse : la personne doit s'adresser à la caisse.".into()
            }
            DeclineReason::CardLocked => {
                "Carte bloquée après trop de codes erronés : la personne doit demander à la caisse de refaire son code.".into()
            }
            DeclineReason::WrongPin => format!("Code erroné. ({e})"),
            DeclineReason::NotRecognised { detail } => format!(
                "Non conventionné : {detail}. Cette ligne ne peut pas être payée par l'allocation."
            ),
            DeclineReason::InvalidRequest { detail } => format!("Demande invalide : {detail}"),
            DeclineReason::ConflictingRetry => {
                "Ce numéro de vente a déjà servi pour une autre vente : recommencez la saisie.".into()
            }
        },
        CaisseError::NotFound { what, id } => format!("Introuvable : {what} {id}"),
        CaisseError::Invalid(m) => format!("Refusé : {m}"),
        CaisseError::Conflict(m) => format!("Refusé : {m}"),
        CaisseError::Suspended(_) => {
            "Les caisses de ce point de vente sont suspendues (trop de codes erronés, ou décision de la caisse) : l'administrateur de la caisse doit les rétablir.".into()
        }
        CaisseError::Storage(_) | CaisseError::Unavailable => {
            "La caisse ne peut pas enregistrer pour le moment : rien n'a été fait, réessayez dans un instant.".into()
        }
    }
}

/// The page around `body`: header with navigation for the visitor's role,
/// language switch and sign-out, then the content.
pub fn layout(state: &ConsoleState, v: &Visitor, title: &str, body: &str) -> String {
    let l = v.lang;
    let who = v.session.who.as_ref();
    let mut links: Vec<(&str, &str)> = Vec::new();
    match who {
        Some(Who::Admin) | Some(Who::Observer) => {
            links.push(("/treasury", l.t("Treasury", "Trésorerie")));
            links.push(("/report", l.t("Report", "Rapport")));
            links.push(("/parliament", l.t("Parliament", "Parlement")));
        }
        Some(Who::Outlet { .. }) => links.push(("/till", l.t("Till", "Encaisser"))),
        Some(Who::Seat { .. }) => links.push(("/parliament", l.t("Parliament", "Parlement"))),
        Some(Who::Producer { .. }) => links.push(("/producer", l.t("My farm", "Ma ferme"))),
        Some(Who::Member { .. }) => {
            links.push(("/member", l.t("My account", "Mon compte")));
            links.push(("/parliament", l.t("Parliament", "Parlement")));
        }
        None => links.push(("/", l.t("Sign in", "Connexion"))),
    }
    links.push(("/registry", l.t("Registry", "Registre")));
    let nav: String = links
        .iter()
        .map(|(href, text)| format!("<li><a href=\"{href}\">{}</a></li>", esc(text)))
        .collect();
    let role = match who {
        Some(Who::Admin) => l.t("admin", "administration"),
        Some(Who::Observer) => l.t("observer", "observation"),
        Some(Who::Outlet { .. }) => l.t("outlet", "point de vente"),
        Some(Who::Seat { .. }) => l.t("parliament seat", "siège au parlement"),
        Some(Who::Producer { .. }) => l.t("producer", "producteur"),
        Some(Who::Member { .. }) => l.t("member", "membre"),
        None => "",
    };
    let logout = if who.is_some() {
        format!(
            "<form method=\"post\" action=\"/logout\" class=\"inline\">{}<button type=\"submit\" class=\"link\">{}</button></form>",
            csrf_field(&v.session),
            l.t("Sign out", "Se déconnecter")
        )
    } else {
        String::new()
    };
    let (other, other_name) = match l {
        Lang::Fr => ("en", "English"),
        Lang::En => ("fr", "Français"),
    };
    let flash = v.flash.as_ref().map_or_else(String::new, |f| {
        let (class, role) = if f.ok {
            ("notice", "status")
        } else {
            ("error", "alert")
        };
        format!("<p class=\"{class}\" role=\"{role}\">{}</p>", esc(&f.text))
    });
    format!(
        r##"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {caisse}</title>
<link rel="stylesheet" href="/console.css">
</head>
<body>
<a class="skip" href="#main">{skip}</a>
<header>
<div class="bar">
<span class="brand">{caisse}</span>
<span class="who">{role}</span>
{logout}
<a class="lang" href="/lang/{other}?back={back}" lang="{other}">{other_name}</a>
</div>
<nav aria-label="{navl}"><ul>{nav}</ul></nav>
</header>
<main id="main">
<h1>{title}</h1>
{flash}
{body}
</main>
<footer><p>{foot} · <span class="mono">{cid}</span></p></footer>
</body>
</html>
"##,
        lang = l.code(),
        title = esc(title),
        caisse = esc(&state.config.name),
        skip = l.t("Skip to content", "Aller au contenu"),
        back = url_encode(&v.path),
        navl = l.t("Main menu", "Menu principal"),
        foot = l.t(
            "Caisse of the food social security",
            "Caisse de sécurité sociale de l'alimentation"
        ),
        cid = esc(state.caisse_id.short()),
    )
}

/// The console's stylesheet: large targets, strong contrast, one column on
/// phones, visible focus.
pub const CSS: &str = r#"
:root { --ink: #1a1a1a; --muted: #4a4a4a; --bg: #ffffff; --soft: #f3f5f0; --accent: #1d5e2c; --accent-ink: #ffffff; --bad: #9b1c1c; --bad-bg: #fdecec; --good-bg: #e8f5e9; --line: #c8cec3; }
* { box-sizing: border-box; }
html { font-size: 100%; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); line-height: 1.5; }
a { color: var(--accent); }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #f2b705; outline-offset: 2px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; z-index: 10; }
header { background: var(--accent); color: var(--accent-ink); }
header a, header .link { color: var(--accent-ink); }
.bar { display: flex; flex-wrap: wrap; align-items: center; gap: .75rem; padding: .6rem 1rem; }
.brand { font-weight: 700; font-size: 1.1rem; margin-right: auto; }
.who { font-size: .9rem; opacity: .95; }
nav ul { list-style: none; margin: 0; padding: 0 1rem .5rem; display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; }
nav a { font-weight: 600; text-decoration: none; display: inline-block; padding: .35rem 0; }
nav a:hover { text-decoration: underline; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.25rem; margin: 1.5rem 0 .5rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .35rem; }
footer { color: var(--muted); font-size: .85rem; padding: 1rem; text-align: center; }
.mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .9em; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(17rem, 1fr)); gap: 1rem; }
.card { border: 1px solid var(--line); border-radius: .5rem; padding: 1rem; background: var(--soft); }
label { display: block; font-weight: 600; margin: .75rem 0 .25rem; }
input, select, textarea { font: inherit; width: 100%; padding: .6rem; border: 2px solid #6b7167; border-radius: .35rem; background: #fff; color: var(--ink); min-height: 2.75rem; }
button, .button { font: inherit; font-weight: 700; display: inline-block; margin-top: 1rem; padding: .7rem 1.2rem; min-height: 2.75rem; border: 0; border-radius: .35rem; background: var(--accent); color: var(--accent-ink); cursor: pointer; text-decoration: none; }
button.secondary { background: #fff; color: var(--accent); border: 2px solid var(--accent); }
button.link { background: none; border: 0; padding: 0; margin: 0; min-height: 0; text-decoration: underline; font-weight: 400; }
form.inline { display: inline; }
.error { background: var(--bad-bg); color: var(--bad); border-left: 6px solid var(--bad); padding: .75rem 1rem; font-weight: 600; }
.notice { background: var(--good-bg); color: #14461f; border-left: 6px solid var(--accent); padding: .75rem 1rem; font-weight: 600; }
.big { font-size: 2rem; font-weight: 800; margin: .25rem 0; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(12rem, 1fr)); gap: .75rem; margin: 1rem 0; }
.figure { border: 1px solid var(--line); border-radius: .5rem; padding: .75rem 1rem; }
.figure .label { color: var(--muted); font-size: .9rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; padding: .45rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.lines { display: grid; grid-template-columns: 1fr; gap: .5rem; }
.line { display: grid; grid-template-columns: 2fr 2fr 1.2fr; gap: .5rem; align-items: end; }
.line label { margin-top: .25rem; }
@media (max-width: 40rem) { .line { grid-template-columns: 1fr 1fr; } .line .producer { grid-column: 1 / -1; } h1 { font-size: 1.35rem; } }
.status-active { color: #14461f; font-weight: 700; }
.status-revoked, .status-expired { color: var(--bad); font-weight: 700; }
.diff { background: #fafafa; border: 1px solid var(--line); padding: .5rem; overflow-x: auto; font-size: .85rem; }
.diff .add { background: #e6ffed; display: block; }
.diff .del { background: #ffeef0; display: block; }
.diff .same { display: block; color: var(--muted); }
.choices { display: flex; flex-wrap: wrap; gap: .5rem; }
.choices label { font-weight: 400; display: flex; gap: .4rem; align-items: center; margin: .25rem 1rem .25rem 0; }
.choices input { width: auto; min-height: 0; }
fieldset { border: 1px solid var(--line); border-radius: .35rem; }
.filters { display: flex; flex-wrap: wrap; gap: 1rem; align-items: end; }
.filters > div { min-width: 12rem; }
.filters button { margin-top: 0; }
svg { max-width: 100%; height: auto; }
input[name=period] { max-width: 12rem; }
@media (max-width: 40rem) {
  table.stack thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  table.stack tr { display: block; border-bottom: 2px solid var(--line); padding: .4rem 0; }
  table.stack td { display: block; border: 0; padding: .15rem .25rem; }
  table.stack td::before { content: attr(data-label); display: block; font-size: .8rem; font-weight: 700; color: var(--muted); }
}
details { margin: .5rem 0; border: 1px solid var(--line); border-radius: .35rem; padding: .25rem .75rem .75rem; }
summary { cursor: pointer; font-weight: 700; padding: .5rem 0; color: var(--accent); }
.proposal { border: 1px solid var(--line); border-radius: .5rem; padding: .75rem 1rem; margin: 1rem 0; }
.sr-only { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
"#;

/// A product category as people read it, in the visitor's language: the
/// usual ones by name, any other from its identifier (`herbal-tea` →
/// `Herbal tea`).
pub fn category_label(l: Lang, category: &str) -> String {
    let known: &[(&str, &str, &str)] = &[
        (
            "fresh-produce",
            "Fresh fruit and vegetables",
            "Fruits et légumes frais",
        ),
        ("bread", "Bread", "Pain"),
        ("dairy", "Dairy", "Produits laitiers"),
        ("groceries", "Groceries", "Épicerie"),
        ("meat", "Meat", "Viande"),
        ("meat-fish", "Meat and fish", "Viande et poisson"),
        ("fish", "Fish", "Poisson"),
        ("eggs", "Eggs", "Œufs"),
        ("cheese", "Cheese", "Fromage"),
        ("drinks", "Drinks", "Boissons"),
        ("legumes", "Pulses", "Légumineuses"),
        ("cereals", "Cereals", "Céréales"),
        ("prepared-meals", "Prepared meals", "Plats préparés"),
    ];
    if let Some((_, en, fr)) = known.iter().find(|(k, _, _)| *k == category) {
        return l.t(en, fr).to_owned();
    }
    let mut words = category.replace(['-', '_'], " ");
    if let Some(first) = words.get(..1) {
        let up = first.to_uppercase();
        words.replace_range(..1, &up);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the text, escaped it holds no markup character and
        /// unescapes to itself.
        #[test]
        fn escaping_is_complete_and_reversible(text in any::<String>()) {
            let e = esc(&text);
            prop_assert!(!e.contains(['<', '>', '"', '\'']));
            let back = e
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&");
            prop_assert_eq!(back, text);
        }

        /// Percent-encoding leaves only unreserved characters and `%`.
        #[test]
        fn url_encoding_leaves_no_reserved_character(text in any::<String>()) {
            let e = url_encode(&text);
            prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
        }
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">O'Neil & co</a>"),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;"
        );
    }

    #[test]
    fn accept_language_picks_the_preferred_of_ours() {
        assert_eq!(Lang::from_accept("en-GB,en;q=0.9,fr;q=0.8"), Lang::En);
        assert_eq!(Lang::from_accept("fr-FR,fr;q=0.9,en;q=0.8"), Lang::Fr);
        assert_eq!(Lang::from_accept("de-DE,en;q=0.5,fr;q=0.7"), Lang::Fr);
        assert_eq!(Lang::from_accept("de-DE,en;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept(""), Lang::Fr);
        assert_eq!(Lang::from_accept("garbage;;;q=x"), Lang::Fr);
    }

    #[test]
    fn money_reads_naturally_in_each_language() {
        let a: Amount = "1234.50".parse().expect("amount");
        assert_eq!(money(Lang::Fr, a), "1234,50\u{a0}€");
        assert_eq!(money(Lang::En, a), "€1234.50");
    }
}
