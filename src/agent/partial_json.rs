//! Best-effort parsing of JSON that is still being streamed, for structured output's `ObjectPartial` chunks.
//!
//! A model streams `{"title": "Sun", "tags": ["a", "b` in pieces. Clients want to render the object as it grows,
//! so each prefix is completed the cheapest way that parses: close an open string, drop a dangling key, comma or
//! half-written literal, then close the open arrays and objects. A prefix that cannot be completed yet (a lone
//! `{"ti`) gives `None` rather than a guess. The final, complete text is parsed strictly elsewhere.

use serde_json::Value;

/// The value `text` (a prefix of a JSON document) is on its way to, as far as it can be told; `None` when nothing
/// sensible can be made of it yet.
pub(crate) fn parse_partial(text: &str) -> Option<Value> {
    let text = text.trim_start();
    if text.is_empty() {
        return None;
    }
    if let Ok(value) = serde_json::from_str(text) {
        return Some(value);
    }
    // Cut back to ever earlier boundaries until a completion parses.
    let mut end = text.len();
    for _ in 0..64 {
        let prefix = &text[..end];
        if let Some(value) = complete(prefix).and_then(|c| serde_json::from_str(&c).ok()) {
            return Some(value);
        }
        end = last_boundary(prefix)?;
    }
    None
}

/// `prefix` with its open string and containers closed, and a trailing `,` or `:` (and the key before it) dropped.
fn complete(prefix: &str) -> Option<String> {
    let (stack, in_string) = scan(prefix);
    let mut out = prefix.to_owned();
    if in_string {
        // A string cut inside an escape is cut back to before the backslash.
        if trailing_backslashes(&out) % 2 == 1 {
            out.pop();
        }
        out.push('"');
    }
    let trimmed = out.trim_end();
    let trimmed = trimmed.strip_suffix(',').unwrap_or(trimmed).trim_end();
    let mut out = trimmed.to_owned();
    if out.ends_with(':') {
        // `{"a": 1, "b":` → drop the key too.
        out.pop();
        let key_start = out.trim_end().rfind('"').and_then(|close| out[..close].rfind('"'))?;
        out.truncate(key_start);
        let t = out.trim_end();
        out = t.strip_suffix(',').unwrap_or(t).to_owned();
    } else if stack.last() == Some(&'{') && out.ends_with('"') && ends_with_key(&out) {
        // `{"a": 1, "ti"` → a key without its value.
        let key_start = out[..out.len() - 1].rfind('"')?;
        out.truncate(key_start);
        let t = out.trim_end();
        out = t.strip_suffix(',').unwrap_or(t).to_owned();
    }
    let (stack, _) = scan(&out);
    for open in stack.iter().rev() {
        out.push(if *open == '{' { '}' } else { ']' });
    }
    Some(out)
}

/// The containers open at the end of `text` and whether it ends inside a string.
fn scan(text: &str) -> (Vec<char>, bool) {
    let mut stack = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => stack.push(c),
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    (stack, in_string)
}

/// Whether the string that ends `text` is an object key: the character before it (ignoring space) opens the object
/// or separates members.
fn ends_with_key(text: &str) -> bool {
    let body = &text[..text.len() - 1];
    let Some(open) = body.rfind('"') else { return false };
    matches!(body[..open].trim_end().chars().last(), Some('{' | ','))
}

fn trailing_backslashes(text: &str) -> usize {
    text.chars().rev().take_while(|c| *c == '\\').count()
}

/// The position of the last `,`, `[` or `{` outside strings, or of the last complete value's end: the next
/// earlier place worth trying to complete.
fn last_boundary(prefix: &str) -> Option<usize> {
    let mut last = None;
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in prefix.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            ',' => last = Some(i),
            '{' | '[' => last = Some(i + 1),
            _ => {}
        }
    }
    last.filter(|&i| i < prefix.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::parse_partial;

    #[test]
    fn prefixes_complete_to_what_they_say_so_far() {
        let cases = [
            ("", None),
            ("{", Some(json!({}))),
            ("{\"ti", Some(json!({}))),
            ("{\"title\"", Some(json!({}))),
            ("{\"title\":", Some(json!({}))),
            ("{\"title\": \"Su", Some(json!({ "title": "Su" }))),
            ("{\"title\": \"Sun\", ", Some(json!({ "title": "Sun" }))),
            ("{\"title\": \"Sun\", \"n\": 1", Some(json!({ "title": "Sun", "n": 1 }))),
            ("{\"title\": \"Sun\", \"n\": tr", Some(json!({ "title": "Sun" }))),
            ("{\"tags\": [\"a\", \"b", Some(json!({ "tags": ["a", "b"] }))),
            ("{\"a\": {\"b\": [1, 2", Some(json!({ "a": { "b": [1, 2] } }))),
            ("{\"q\": \"say \\\"hi\\", Some(json!({ "q": "say \"hi" }))),
            ("[1, 2", Some(json!([1, 2]))),
            ("{\"done\": true}", Some(json!({ "done": true }))),
        ];
        for (text, want) in cases {
            assert_eq!(parse_partial(text), want, "{text:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_document_parses_or_gives_none_without_panicking() {
        let doc = json!({ "title": "Sun ☀", "tags": ["a", "b\"c"], "n": -1.5e3, "ok": false, "x": null }).to_string();
        let mut last = None;
        for end in (0..=doc.len()).filter(|&i| doc.is_char_boundary(i)) {
            if let Some(v) = parse_partial(&doc[..end]) {
                last = Some(v);
            }
        }
        assert_eq!(last, Some(serde_json::from_str(&doc).unwrap()));
    }
}
