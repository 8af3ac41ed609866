//! Member cards to print: a page of credit-card-sized cards, each with the
//! caisse's name and how to reach it, the member's name, the card number
//! in plain text, a QR code and a Code 128 barcode of it (what a
//! keyboard-wedge scanner at the till types back: the card number as
//! printed). The QR and barcode are drawn by well-kept crates (`qrcode`,
//! `barcoders`) as inline SVG, so the page prints from any browser with
//! nothing else installed.

use caisse_protocol::CardId;

use crate::console::html::esc;

/// One card to print.
pub struct CardToPrint {
    /// The member's name (printed on their own card only).
    pub name: String,
    /// The card.
    pub card: CardId,
}

fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(96, 96)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

fn barcode_svg(text: &str) -> String {
    // Code set B ('Ɓ' selects it in `barcoders`): letters, digits, '_'.
    let Ok(code) = barcoders::sym::code128::Code128::new(format!("\u{0181}{text}")) else {
        return String::new();
    };
    barcoders::generators::svg::SVG::new(40)
        .generate(&code.encode()[..])
        .unwrap_or_default()
}

/// The printable page.
pub fn sheet(caisse: &str, contact: &str, cards: &[CardToPrint]) -> String {
    let mut body = String::new();
    for c in cards {
        let number = c.card.to_string();
        body.push_str(&format!(
            r#"<section class="card"><div class="top"><div><header><strong>{caisse}</strong><small>{contact}</small></header><div class="who">{name}</div></div><div class="qr">{qr}</div></div><div class="bar">{bar}<code>{number}</code></div><footer>Carte de la caisse alimentaire · Food allocation card</footer></section>
"#,
            caisse = esc(caisse),
            contact = esc(contact),
            name = esc(&c.name),
            qr = qr_svg(&number),
            bar = barcode_svg(&number),
        ));
    }
    format!(
        r#"<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>{title}</title>
<style>
@page {{ size: A4; margin: 10mm; }}
body {{ font-family: sans-serif; margin: 0; }}
.sheet {{ display: grid; grid-template-columns: repeat(2, 85.6mm); gap: 6mm; }}
.card {{ width: 85.6mm; height: 53.98mm; box-sizing: border-box; border: 0.3mm solid #333; border-radius: 3mm; padding: 3mm; display: flex; flex-direction: column; justify-content: space-between; break-inside: avoid; }}
.card header {{ display: flex; flex-direction: column; }}
.card header small, .card footer {{ font-size: 2.4mm; color: #444; }}
.who {{ font-size: 4mm; font-weight: bold; }}
.top {{ display: flex; justify-content: space-between; gap: 2mm; }}
.qr svg {{ width: 20mm; height: 20mm; }}
/* The barcode spans the card: 37 characters of Code 128 at about 0.18 mm a
   bar, which a 300 dpi print still renders (57 mm beside the QR did not). */
.bar {{ display: flex; flex-direction: column; }}
.bar svg {{ width: 100%; height: 9mm; }}
.bar code {{ font-size: 2.2mm; word-break: break-all; }}
</style></head>
<body><main class="sheet">
{body}</main></body></html>
"#,
        title = esc(format!("Cartes — {caisse}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_has_its_number_as_text_qr_and_barcode() {
        let card = CardId::from_bytes([0xab; 16]);
        let page = sheet(
            "Caisse <A>",
            "caisse@example.org",
            &[CardToPrint {
                name: "Awa <script>".into(),
                card,
            }],
        );
        assert!(page.contains(&card.to_string()));
        assert_eq!(page.matches("<svg").count(), 2, "a QR code and a barcode");
        assert!(page.contains("Awa &lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("Caisse &lt;A&gt;"));
    }
}
