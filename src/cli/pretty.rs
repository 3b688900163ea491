//! Pretty-printing JSON text as it was sent: keys keep their order, numbers and
//! strings their spelling (serde_json's Value would sort keys and reformat numbers).

/// `text` indented by two spaces a level; `None` if it is not valid JSON.
pub fn pretty_json(text: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).ok()?;
    let mut out: Vec<u8> = Vec::with_capacity(text.len() + text.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while let Some(&byte) = text.get(i) {
        i += 1;
        if in_string {
            out.push(byte);
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                in_string = true;
                out.push(byte);
            }
            b'{' | b'[' => {
                let close = if byte == b'{' { b'}' } else { b']' };
                let next = text
                    .get(i..)
                    .and_then(|rest| rest.iter().position(|b| !b.is_ascii_whitespace()))
                    .map(|offset| i + offset);
                if let Some(next) = next.filter(|&n| text.get(n) == Some(&close)) {
                    out.push(byte);
                    out.push(close);
                    i = next + 1;
                } else {
                    out.push(byte);
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(byte);
            }
            b',' => {
                out.push(byte);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(byte),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn newline(out: &mut Vec<u8>, depth: usize) {
    out.push(b'\n');
    out.extend(std::iter::repeat_n(b' ', depth * 2));
}

#[cfg(test)]
mod tests {
    use super::pretty_json;

    #[test]
    fn keeps_order_and_spelling() {
        let text = br#" {"b": 1.50, "a" :[ ], "c":{"x,y": "q\"{[", "n": null, "l": [1,{}]}} "#;
        let expected = "{\n  \"b\": 1.50,\n  \"a\": [],\n  \"c\": {\n    \"x,y\": \"q\\\"{[\",\n    \"n\": null,\n    \"l\": [\n      1,\n      {}\n    ]\n  }\n}";
        assert_eq!(pretty_json(text).as_deref(), Some(expected));
    }

    #[test]
    fn refuses_what_is_not_json() {
        assert_eq!(pretty_json(b"{not json"), None);
        assert_eq!(pretty_json(b""), None);
        assert_eq!(pretty_json("\"é\"".as_bytes()).as_deref(), Some("\"é\""));
    }
}
