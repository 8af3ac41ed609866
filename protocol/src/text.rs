//! Text that came from another caisse, made safe to show.
//!
//! A peer's caisse name, outlet names and producer names travel in signed
//! documents; the signature says who wrote them, not that they are
//! harmless. Before a terminal or a page shows one, [`printable`] removes
//! what could clear a screen, move the cursor, forge a table row or flip
//! the reading direction.

/// True for characters that must never reach a terminal or a page from a
/// peer: C0 and C1 controls (escape sequences, carriage returns, newlines,
/// tabs), DEL, and the bidirectional overrides and isolates.
pub fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every hostile character replaced by `�` (so a reader sees
/// that something was removed).
pub fn printable(text: &str) -> String {
    if !text.chars().any(is_hostile) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| if is_hostile(c) { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_overrides_go() {
        assert_eq!(printable("Caisse A"), "Caisse A");
        assert_eq!(printable("\u{1b}[2JCaisse"), "\u{FFFD}[2JCaisse");
        assert_eq!(printable("A\nfake row"), "A\u{FFFD}fake row");
        assert_eq!(printable("\u{9b}31m"), "\u{FFFD}31m");
        assert_eq!(printable("abc\u{202E}fed"), "abc\u{FFFD}fed");
        assert_eq!(printable("Épicerie du Marché"), "Épicerie du Marché");
    }
}
