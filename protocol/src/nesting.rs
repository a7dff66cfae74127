//! A bound on TOML nesting, checked before a configuration is parsed.
//!
//! Both binaries parse their configuration with a recursive-descent TOML
//! parser, which has no depth limit: a file of 100,000 `[` overflows the
//! stack and aborts the process (the agent too, on SIGHUP). The scan here
//! is a flat pass over the text that counts `[` and `{` outside strings and
//! comments, so a file too deep for any real configuration is refused with
//! a line number before the parser sees it. Shared here because it is the
//! one crate both binaries depend on.

/// Deeper than any configuration either binary reads (they need 3).
pub const MAX_DEPTH: usize = 32;

/// The first place the nesting of `text` goes past `max`: its 1-based line.
pub fn too_deep(text: &str, max: usize) -> Option<usize> {
    let b = text.as_bytes();
    let (mut i, mut depth, mut line) = (0, 0usize, 1);
    let starts = |i: usize, s: &[u8]| b.get(i..i + s.len()) == Some(s);
    while let Some(&c) = b.get(i) {
        match c {
            b'\n' => line += 1,
            b'#' => {
                while b.get(i + 1).is_some_and(|&c| c != b'\n') {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                let multi = starts(i, if c == b'"' { b"\"\"\"" } else { b"'''" });
                let width = if multi { 3 } else { 1 };
                i += width;
                // Until the closing quote(s); a basic string's backslash
                // escapes the next byte. An unterminated string ends the
                // scan (the parser reports it).
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') if c == b'"' => i += 1,
                        Some(b'\n') => {
                            line += 1;
                            if !multi {
                                break;
                            }
                        }
                        Some(&q) if q == c && (!multi || starts(i, &[c, c, c])) => {
                            i += width - 1;
                            break;
                        }
                        Some(_) => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn real_configurations_pass_and_deep_ones_are_found_at_their_line() {
        let ok = "# [[[[ in a comment\nname = \"[[[[{{{{\"\nlit = '[[[['\n\
                  ml = \"\"\"\n[[[[\n\\\"\"\" ]]\"\"\"\n[[sinks]]\ntype = \"json\"\n\
                  t = { a = [1, [2, [3]]] }\n";
        assert_eq!(too_deep(ok, 4), None);
        assert_eq!(too_deep(ok, 3), Some(9), "the inline table's third array");
        let mut deep = [b'['; 100_000];
        deep[..10].copy_from_slice(b"a = 1\nb = ");
        let deep = core::str::from_utf8(&deep).unwrap();
        assert_eq!(too_deep(deep, MAX_DEPTH), Some(2));
        assert_eq!(too_deep("s = \"unterminated [[[[[", 2), None);
        assert_eq!(too_deep("ml = '''\n'''\nx = [[[]]]", 2), Some(3));
    }
}
