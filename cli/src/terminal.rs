//! Text from the server, made safe to print on a terminal.

/// Bytes for a terminal: printable text as is; `\\`, `\n`, `\r`, `\t`; every
/// other control character and every byte that is not UTF-8 as `\xNN`
/// (control characters beyond ASCII as `\u{…}`). Nothing that could move the
/// cursor or change the terminal's state gets through.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c if c.is_control() || is_format(c) => {
                    out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Invisible characters that reorder or hide text (bidi controls, zero
/// width characters, the BOM): shown escaped.
fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2069 | 0xFEFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(escape("café ü 東京".as_bytes()), "café ü 東京");
        assert_eq!(escape(b"a\\b\tc\r\x7f"), "a\\\\b\\tc\\r\\x7f");
        assert_eq!(escape("\u{202e}x\u{85}".as_bytes()), "\\u{202e}x\\u{85}");
        assert_eq!(escape(b"\xe2\x82"), "\\xe2\\x82", "a truncated sequence");
    }
}
