//! What the script reads from the user's message (words, numbers, an arithmetic expression, a place) and from the
//! conversation (the last user message, earlier structured answers).

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::model::Message;

/// What the script reads from the user's message.
pub(super) struct Facts {
    pub(super) text: String,
    /// Lower-cased words.
    pub(super) words: Vec<String>,
    pub(super) numbers: Vec<f64>,
    pub(super) expression: Option<Expression>,
    /// The place after "in", "for" or "at", e.g. `New York`.
    pub(super) place: Option<String>,
    /// The assistant's earlier answers that are JSON objects, for the enum rule.
    pub(super) earlier_answers: Vec<Map<String, Value>>,
}

pub(super) struct Expression {
    /// Normalized: `12 * 7`.
    pub(super) text: String,
    /// The first operator's name: `add`, `subtract`, `multiply`, `divide`.
    pub(super) operation: &'static str,
}

impl Facts {
    pub(super) fn of(text: &str) -> Self {
        let words: Vec<String> = word_runs(text).map(str::to_lowercase).collect();
        let numbers = words
            .iter()
            .filter(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        Self {
            text: text.trim().to_owned(),
            words,
            numbers,
            expression: expression(text),
            place: place(text),
            earlier_answers: Vec::new(),
        }
    }
}

/// The longest run of `number (operator number)+`, where operators are symbols or words (`plus`, `times`, ...).
fn expression(text: &str) -> Option<Expression> {
    enum Token {
        Number(String),
        Op(&'static str),
        Other,
        Skip,
    }
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut previous_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            tokens.push(Token::Number(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let token = match (word.as_str(), previous_word.as_str()) {
                ("plus", _) => Token::Op("+"),
                ("minus", _) => Token::Op("-"),
                ("times" | "x", _) => Token::Op("*"),
                ("by", "multiplied") => Token::Op("*"),
                ("by", "divided") => Token::Op("/"),
                // Read together with the "by" that follows.
                ("multiplied" | "divided", _) => Token::Skip,
                _ => Token::Other,
            };
            if !matches!(token, Token::Skip) {
                tokens.push(token);
            }
            previous_word = word;
            continue;
        }
        match c {
            '+' => tokens.push(Token::Op("+")),
            '-' | '\u{2212}' => tokens.push(Token::Op("-")),
            '*' | '\u{d7}' => tokens.push(Token::Op("*")),
            '/' | '\u{f7}' => tokens.push(Token::Op("/")),
            c if c.is_whitespace() => {}
            _ => tokens.push(Token::Other),
        }
        i += 1;
    }
    let mut best: Option<(usize, String, &'static str)> = None;
    let mut start = 0;
    while start < tokens.len() {
        if let Token::Number(first) = &tokens[start] {
            let mut text = first.clone();
            let mut operation = None;
            let mut len = 1;
            while let (Some(Token::Op(op)), Some(Token::Number(n))) =
                (tokens.get(start + len), tokens.get(start + len + 1))
            {
                let _ = write!(text, " {op} {n}");
                operation.get_or_insert(*op);
                len += 2;
            }
            if let Some(op) = operation
                && best.as_ref().is_none_or(|(l, ..)| len > *l)
            {
                best = Some((len, text, op));
            }
            start += len;
        } else {
            start += 1;
        }
    }
    best.map(|(_, text, op)| Expression {
        text,
        operation: match op {
            "+" => "add",
            "-" => "subtract",
            "*" => "multiply",
            _ => "divide",
        },
    })
}

/// The capitalized words after the last "in", "for" or "at" (else the next word), up to the end of the sentence:
/// `weather in New York? Send it` → `New York`.
pub(super) fn place(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().rposition(|w| matches!(w.to_lowercase().as_str(), "in" | "for" | "at"))?;
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
    let mut ended = false;
    let capitalized: Vec<String> = words[at + 1..]
        .iter()
        .take_while(|w| {
            // A word after `?`, `.`, `!` or `;` starts another sentence: not part of the name.
            let take = !ended && w.chars().next().is_some_and(char::is_uppercase);
            ended = w.ends_with(['?', '.', '!', ';']);
            take
        })
        .map(|w| clean(w))
        .collect();
    if !capitalized.is_empty() {
        return Some(capitalized.join(" "));
    }
    words.get(at + 1).map(|w| clean(w)).filter(|w| !w.is_empty())
}

pub(super) fn last_user_text(messages: &[Message]) -> Option<&str> {
    messages.iter().rev().find_map(|m| match m {
        Message::User { content } => Some(content.as_str()),
        _ => None,
    })
}

/// The assistant messages of the conversation whose text is a JSON object (earlier structured answers).
pub(super) fn earlier_answers(messages: &[Message]) -> Vec<Map<String, Value>> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Assistant { content: Some(content), .. } => match serde_json::from_str(content) {
                Ok(Value::Object(answer)) => Some(answer),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Runs of letters and digits (with inner `.` between digits, so `2.5` is one): the offline model's "tokens".
pub(super) fn word_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '.'))
        .flat_map(|w| {
            // `end.` and `.5.` are not numbers: split at dots unless the run is a number.
            if w.starts_with(|c: char| c.is_ascii_digit()) && w.parse::<f64>().is_ok() {
                vec![w]
            } else {
                w.split('.').collect()
            }
        })
        .filter(|w| !w.is_empty())
}
