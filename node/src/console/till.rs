//! The till: an outlet's zero-install point of sale. The cashier types or
//! scans the card number, the member types their PIN if the card has one,
//! the cashier enters the lines by category; the page shows what the
//! allocation pays and what is left to pay. Each form carries a sale id
//! chosen when it was shown, so a resubmitted form (double click, reload,
//! lost connection) is answered from the first charge, never charged twice.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use caisse_core::view::Reads;
use caisse_protocol::messages::{PurchaseLine, Subject};
use caisse_protocol::{Amount, CardId, Category, Day, OutletId, ProducerId, PurchaseId};

use super::ConsoleState;
use super::html::{esc, money};
use super::session::Who;
use super::{Kind, Posted, Visitor};
use crate::caisse::{PurchaseInput, Receipt};

/// Line rows on the till form.
pub const ROWS: usize = 5;

/// What the form held, to show it again after a refusal.
#[derive(Default)]
struct Form {
    card: String,
    sale: String,
    rows: Vec<(String, String, String)>,
}

/// What the till offers: the outlet's name, its categories today, and the
/// producers a line may name.
struct Offer {
    name: String,
    categories: Vec<(Category, u8)>,
    producers: Vec<(ProducerId, String)>,
}

async fn offer(s: &ConsoleState, outlet: OutletId) -> Result<Offer, crate::caisse::CaisseError> {
    let view = s.federation.snapshot();
    let own = s.config.name.clone();
    s.handle
        .read(move |c, now| {
            let today = Day::from_unix(now);
            let name = c
                .outlets()
                .into_iter()
                .find(|o| o.id == outlet)
                .map_or_else(|| outlet.to_string(), |o| o.name);
            let mut categories: Vec<(Category, u8)> = Vec::new();
            for r in c.conventions().active(&Subject::Outlet(outlet), today) {
                for item in &r.accreditation.scope {
                    match categories.iter_mut().find(|(cat, _)| *cat == item.category) {
                        Some(e) => e.1 = e.1.max(item.coverage_pct),
                        None => categories.push((item.category.clone(), item.coverage_pct)),
                    }
                }
            }
            categories.sort();
            let mut producers: Vec<(ProducerId, String)> = Vec::new();
            for a in super::accredited_today(c, &view, today, &own) {
                if let Subject::Producer(p) = a.subject
                    && !producers.iter().any(|(x, _)| *x == p)
                {
                    let label = if a.own {
                        a.name
                    } else {
                        format!("{} ({})", a.name, a.caisse)
                    };
                    producers.push((p, label));
                }
            }
            Ok(Offer {
                name,
                categories,
                producers,
            })
        })
        .await
}

fn new_sale_id() -> String {
    crate::daemon::new_purchase_id().to_string()
}

fn outlet_of(v: &Visitor, s: &ConsoleState) -> Result<OutletId, Response> {
    match v.require(s, &[Kind::Outlet])? {
        Who::Outlet { outlet } => Ok(outlet),
        _ => Err(v.error(s, StatusCode::FORBIDDEN, "outlets only")),
    }
}

/// `GET /till`
pub async fn page(v: Visitor, State(s): State<ConsoleState>) -> Response {
    let outlet = match outlet_of(&v, &s) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let form = Form {
        sale: new_sale_id(),
        ..Form::default()
    };
    render(&v, &s, outlet, StatusCode::OK, &form, "").await
}

async fn render(
    v: &Visitor,
    s: &ConsoleState,
    outlet: OutletId,
    status: StatusCode,
    form: &Form,
    before: &str,
) -> Response {
    let offer = match offer(s, outlet).await {
        Ok(o) => o,
        Err(e) => {
            return v.unavailable(s, &e);
        }
    };
    let cats: String = offer
        .categories
        .iter()
        .map(|(c, p)| {
            format!(
                "{} {p}\u{a0}%",
                esc(super::html::category_label(v.lang, c.as_str()))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let intro = if offer.categories.is_empty() {
        format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            v.t(
                "This outlet is not conventioned for any category today: nothing can be paid with the allocation here. Ask the caisse.",
                "Ce point de vente n'est conventionné pour aucune catégorie aujourd'hui : rien ne peut être payé par l'allocation ici. Adressez-vous à la caisse."
            )
        )
    } else {
        format!(
            "<p>{} <strong>{}</strong></p>",
            v.t(
                "Conventioned today (share paid by the allocation):",
                "Conventionné aujourd'hui (part payée par l'allocation) :"
            ),
            cats
        )
    };
    let mut rows = String::new();
    // One line shows; each further one opens on demand ("Add a line"), or
    // already open when the form comes back with it (or a later one) filled.
    let last_filled = form
        .rows
        .iter()
        .rposition(|(c, p, a)| !c.is_empty() || !p.is_empty() || !a.is_empty())
        .unwrap_or(0);
    for i in 0..ROWS {
        let (cat, prod, amount) = form.rows.get(i).cloned().unwrap_or_default();
        let n = i + 1;
        if i > 0 {
            rows.push_str(&format!(
                "<details class=\"more-line\"{}><summary>{}</summary>",
                if i <= last_filled { " open" } else { "" },
                v.t("+ Add a line", "+ Ajouter une ligne")
            ));
        }
        let mut cat_opts = format!("<option value=\"\">{}</option>", v.t("—", "—"));
        for (c, _) in &offer.categories {
            let sel = if c.as_str() == cat { " selected" } else { "" };
            cat_opts.push_str(&format!(
                "<option value=\"{}\"{sel}>{}</option>",
                esc(c),
                esc(super::html::category_label(v.lang, c.as_str()))
            ));
        }
        let mut prod_opts = format!(
            "<option value=\"\">{}</option>",
            v.t("(not named)", "(non précisé)")
        );
        for (p, name) in &offer.producers {
            let sel = if p.to_string() == prod {
                " selected"
            } else {
                ""
            };
            prod_opts.push_str(&format!(
                "<option value=\"{}\"{sel}>{}</option>",
                esc(p),
                esc(name)
            ));
        }
        rows.push_str(&format!(
            r#"<fieldset class="line"><legend class="sr-only">{line} {n}</legend>
<div><label for="cat{n}">{cat_l} {n}</label><select id="cat{n}" name="cat{n}">{cat_opts}</select></div>
<div class="producer"><label for="producer{n}">{prod_l}</label><select id="producer{n}" name="producer{n}">{prod_opts}</select></div>
<div><label for="amount{n}">{amount_l}</label><input id="amount{n}" name="amount{n}" inputmode="decimal" autocomplete="off" pattern="[0-9]+([.,][0-9]{{1,2}})?" value="{amount}" placeholder="0,00"></div>
</fieldset>"#,
            line = v.t("Line", "Ligne"),
            cat_l = v.t("Category, line", "Catégorie, ligne"),
            prod_l = v.t("Producer", "Producteur"),
            amount_l = v.t("Price", "Prix"),
            amount = esc(&amount),
        ));
    }
    rows.push_str(&"</details>".repeat(ROWS.saturating_sub(1)));
    let body = format!(
        r#"{before}
<p>{outlet_l} <strong>{name}</strong></p>
{intro}
<form method="post" action="/till" autocomplete="off">
{csrf}
<input type="hidden" name="sale" value="{sale}">
<div class="cards">
<div><label for="card">{card_l}</label>
<input id="card" name="card" required autofocus autocapitalize="off" spellcheck="false" value="{card}" aria-describedby="card-help">
<small id="card-help">{card_h}</small></div>
<div><label for="pin">{pin_l}</label>
<input id="pin" name="pin" type="password" inputmode="numeric" pattern="[0-9]{{4,8}}" autocomplete="off" aria-describedby="pin-help">
<small id="pin-help">{pin_h}</small></div>
</div>
<h2>{lines_h}</h2>
<div class="lines">{rows}</div>
<button type="submit">{charge}</button>
</form>"#,
        outlet_l = v.t("Outlet:", "Point de vente :"),
        name = esc(&offer.name),
        csrf = super::html::csrf_field(&v.session),
        sale = esc(&form.sale),
        card_l = v.t("Card number", "Numéro de carte"),
        card = esc(&form.card),
        card_h = v.t(
            "Type it or scan the card's code.",
            "Saisissez-le ou scannez le code de la carte."
        ),
        pin_l = v.t("Member's PIN", "Code du membre"),
        pin_h = v.t(
            "Typed by the member, if the card has a PIN.",
            "Tapé par le membre, si la carte a un code."
        ),
        lines_h = v.t("Lines", "Lignes"),
        charge = v.t("Charge the allocation", "Débiter l'allocation"),
    );
    v.page(s, status, v.t("Till", "Encaisser"), &body)
}

/// `POST /till`
pub async fn sell(State(s): State<ConsoleState>, p: Posted) -> Response {
    let v = &p.visitor;
    let outlet = match outlet_of(v, &s) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let mut form = Form {
        card: p.get("card").to_owned(),
        sale: p.get("sale").to_owned(),
        rows: Vec::new(),
    };
    for n in 1..=ROWS {
        form.rows.push((
            p.get(&format!("cat{n}")).to_owned(),
            p.get(&format!("producer{n}")).to_owned(),
            p.get(&format!("amount{n}")).to_owned(),
        ));
    }
    let refuse = |status: StatusCode, msg: &str| {
        format!(
            "<p class=\"error\" role=\"alert\">{}</p>{}",
            esc(msg),
            if status == StatusCode::SERVICE_UNAVAILABLE {
                format!(
                    "<p>{}</p>",
                    v.t(
                        "Nothing was charged. Send the same form again to retry: it keeps its sale number and cannot charge twice.",
                        "Rien n'a été débité. Renvoyez le même formulaire pour réessayer : il garde son numéro de vente et ne peut pas débiter deux fois."
                    )
                )
            } else {
                String::new()
            }
        )
    };
    let Ok(sale) = form.sale.parse::<PurchaseId>() else {
        form.sale = new_sale_id();
        let msg = v.t(
            "This form has no valid sale number: enter the sale again.",
            "Ce formulaire n'a pas de numéro de vente valide : saisissez la vente à nouveau.",
        );
        let before = refuse(StatusCode::UNPROCESSABLE_ENTITY, msg);
        return render(
            v,
            &s,
            outlet,
            StatusCode::UNPROCESSABLE_ENTITY,
            &form,
            &before,
        )
        .await;
    };
    let invalid = |msg: String| {
        let before = refuse(StatusCode::UNPROCESSABLE_ENTITY, &msg);
        (before, StatusCode::UNPROCESSABLE_ENTITY)
    };
    let card: CardId = match form.card.parse() {
        Ok(c) => c,
        Err(_) => {
            let (before, st) = invalid(
                v.t(
                    "This is not a card number: it starts with card_.",
                    "Ce n'est pas un numéro de carte : il commence par card_.",
                )
                .to_owned(),
            );
            return render(v, &s, outlet, st, &form, &before).await;
        }
    };
    let mut lines = Vec::new();
    for (i, (cat, prod, amount)) in form.rows.iter().enumerate() {
        let n = i + 1;
        if amount.is_empty() && cat.is_empty() {
            continue;
        }
        let parsed = amount.replace(',', ".").parse::<Amount>();
        let line = match (Category::new(cat), parsed) {
            (Ok(category), Ok(amount)) if amount > Amount::ZERO => {
                let producer = if prod.is_empty() {
                    None
                } else {
                    prod.parse::<ProducerId>().ok()
                };
                PurchaseLine {
                    category,
                    producer,
                    amount,
                }
            }
            (Err(_), _) => {
                let msg = match v.lang {
                    super::html::Lang::Fr => format!("Ligne {n} : choisissez une catégorie."),
                    super::html::Lang::En => format!("Line {n}: choose a category."),
                };
                let (before, st) = invalid(msg);
                return render(v, &s, outlet, st, &form, &before).await;
            }
            _ => {
                let msg = match v.lang {
                    super::html::Lang::Fr => format!(
                        "Ligne {n} : « {amount} » n'est pas un prix ; écrivez par exemple 12,50."
                    ),
                    super::html::Lang::En => {
                        format!("Line {n}: {amount:?} is not a price; write for example 12.50.")
                    }
                };
                let (before, st) = invalid(msg);
                return render(v, &s, outlet, st, &form, &before).await;
            }
        };
        lines.push(line);
    }
    if lines.is_empty() {
        let (before, st) = invalid(
            v.t(
                "Enter at least one line: a category and its price.",
                "Saisissez au moins une ligne : une catégorie et son prix.",
            )
            .to_owned(),
        );
        return render(v, &s, outlet, st, &form, &before).await;
    }
    let pin = Some(p.get("pin").to_owned()).filter(|x| !x.is_empty());
    let input = PurchaseInput {
        id: sale,
        card,
        outlet,
        lines: lines.clone(),
        pin,
    };
    use tracing::Instrument;
    let span = tracing::info_span!("till", caisse = %s.caisse_id.short(), purchase = %sale);
    let result: Result<Receipt, (StatusCode, String)> = crate::app::sell(&s, input, &v.client)
        .instrument(span)
        .await
        .map_err(|e| match e {
            crate::app::SaleError::Caisse(c) => {
                let st = match c {
                    crate::caisse::CaisseError::Storage(_)
                    | crate::caisse::CaisseError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                (st, super::html::refusal(v.lang, &c))
            }
            crate::app::SaleError::HomeUnreachable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            crate::app::SaleError::RefusedByHome(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            crate::app::SaleError::TooManyWrongPins(_) => {
                (StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
        });
    match result {
        Ok(r) => {
            let done = Form {
                sale: new_sale_id(),
                ..Form::default()
            };
            let before = receipt(v, &r, &lines);
            render(v, &s, outlet, StatusCode::OK, &done, &before).await
        }
        Err((st, msg)) => {
            // A definite refusal charged nothing: the next try is a new sale.
            // An uncertain one keeps its number so a retry cannot charge twice.
            if st != StatusCode::SERVICE_UNAVAILABLE {
                form.sale = new_sale_id();
            }
            let before = refuse(st, &msg);
            render(v, &s, outlet, st, &form, &before).await
        }
    }
}

fn receipt(v: &Visitor, r: &Receipt, lines: &[PurchaseLine]) -> String {
    let l = v.lang;
    let replayed = if r.replayed {
        format!(
            "<p class=\"notice\">{}</p>",
            v.t(
                "This sale had already been recorded: it was not charged again.",
                "Cette vente était déjà enregistrée : elle n'a pas été débitée une seconde fois."
            )
        )
    } else {
        String::new()
    };
    let offline = if r.offline {
        format!(
            "<p class=\"notice\">{}</p>",
            v.t(
                "The card's home caisse could not be reached: accepted under this caisse's offline allowance; it will be confirmed later.",
                "La caisse de la carte est injoignable : vente acceptée dans la limite hors ligne de notre caisse ; elle sera confirmée plus tard."
            )
        )
    } else {
        String::new()
    };
    let rows: String = lines
        .iter()
        .map(|x| {
            format!(
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(super::html::category_label(l, x.category.as_str())),
                money(l, x.amount)
            )
        })
        .collect();
    format!(
        r#"<section class="notice" role="status" aria-labelledby="receipt-h" id="receipt">
<h2 id="receipt-h">{done}</h2>
{replayed}{offline}
<div class="figures">
<div class="figure"><div class="label">{alloc_l}</div><div class="big" id="allocation-part">{alloc}</div></div>
<div class="figure"><div class="label">{pay_l}</div><div class="big" id="member-part">{pay}</div></div>
<div class="figure"><div class="label">{total_l}</div><div class="big">{total}</div></div>
<div class="figure"><div class="label">{bal_l}</div><div class="big">{bal}</div></div>
</div>
<div class="table-wrap"><table><thead><tr><th scope="col">{cat_h}</th><th scope="col" class="num">{price_h}</th></tr></thead><tbody>{rows}</tbody></table></div>
<p class="mono">{sale_l} {sale}</p>
</section>"#,
        done = v.t("Sale recorded", "Vente enregistrée"),
        alloc_l = v.t("Paid by the allocation", "Payé par l'allocation"),
        alloc = money(l, r.allocation_part),
        pay_l = v.t("Left to pay at the till", "Reste à payer en caisse"),
        pay = money(l, r.member_part),
        total_l = v.t("Total", "Total"),
        total = money(l, r.total),
        bal_l = v.t("Allocation left on the card", "Reste sur l'allocation"),
        bal = money(l, r.balance_after),
        cat_h = v.t("Category", "Catégorie"),
        price_h = v.t("Price", "Prix"),
        sale_l = v.t("Sale", "Vente"),
        sale = esc(r.purchase),
    )
}
