//! A reader of the Prometheus text exposition format 0.0.4, as far as the
//! kubelet's `/metrics/resource` uses it: `# HELP`/`# TYPE`/other comments,
//! and sample lines `name{label="value",...} value [timestamp_ms]`.
//!
//! Hand-written rather than taken from a crate: none in the workspace's
//! lock file reads the text format (`prometheus-client` only writes it, and
//! only as OpenMetrics), and the one thing metrics-server needs from the
//! parser, each sample's own timestamp, is exactly what the small parsers
//! on crates.io drop or mishandle. The grammar is tiny; the reader is strict
//! where it matters (a malformed line fails the whole scrape with its line
//! number, as Prometheus' `textparse` does) and allocates only for label
//! values that carry escapes.

use std::borrow::Cow;

/// Why a body is not the text format. The line is 1-based; `text` is the
/// line itself (cut at [`MAX_EXCERPT`] characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The offending line (shortened).
    pub text: String,
}

/// How much of a bad line an error quotes.
pub const MAX_EXCERPT: usize = 120;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The 1-based line it came from.
    pub line: usize,
    /// The metric name.
    pub name: &'a str,
    /// Label names and (unescaped) values, in the order written.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
    /// The sample's own time, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Sample<'_> {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Every sample of `body`, in order; the first malformed line is an error.
pub fn parse(body: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    let mut out = Vec::new();
    for (index, raw) in body.split('\n').enumerate() {
        let line = index.saturating_add(1);
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = text.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let sample = Cursor {
            rest: trimmed,
            line,
        }
        .sample()
        .map_err(|reason| ParseError {
            line,
            reason,
            text: excerpt(text),
        })?;
        out.push(sample);
    }
    Ok(out)
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The unread rest of one sample line.
struct Cursor<'a> {
    rest: &'a str,
    line: usize,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

impl<'a> Cursor<'a> {
    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` (label names: no `:`; checked by the caller).
    fn name(&mut self, what: &str) -> Result<&'a str, String> {
        let end = self
            .rest
            .char_indices()
            .find(|&(i, c)| {
                !(if i == 0 {
                    is_name_start(c)
                } else {
                    is_name_char(c)
                })
            })
            .map_or(self.rest.len(), |(i, _)| i);
        if end == 0 {
            return Err(format!("expected a {what}"));
        }
        let (name, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(name)
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes.
    fn label_value(&mut self) -> Result<Cow<'a, str>, String> {
        if !self.eat('"') {
            return Err("expected '\"' to open a label value".into());
        }
        let body = self.rest;
        let mut owned: Option<String> = None;
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &body[i + 1..];
                    return Ok(match owned {
                        Some(s) => Cow::Owned(s),
                        None => Cow::Borrowed(&body[..i]),
                    });
                }
                '\\' => {
                    let unescaped = match chars.next() {
                        Some((_, '\\')) => '\\',
                        Some((_, '"')) => '"',
                        Some((_, 'n')) => '\n',
                        Some((_, other)) => {
                            return Err(format!(
                                "invalid escape sequence '\\{other}' in a label value"
                            ));
                        }
                        None => break,
                    };
                    owned
                        .get_or_insert_with(|| body[..i].to_string())
                        .push(unescaped);
                }
                c => {
                    if let Some(s) = owned.as_mut() {
                        s.push(c);
                    }
                }
            }
        }
        Err("unterminated label value".into())
    }

    fn labels(&mut self) -> Result<Vec<(&'a str, Cow<'a, str>)>, String> {
        let mut labels: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
        loop {
            self.skip_blanks();
            if self.eat('}') {
                return Ok(labels);
            }
            let name = self.name("label name")?;
            if name.contains(':') {
                return Err(format!("invalid label name {name:?}"));
            }
            if labels.iter().any(|(k, _)| *k == name) {
                return Err(format!("duplicate label {name:?}"));
            }
            self.skip_blanks();
            if !self.eat('=') {
                return Err(format!("expected '=' after label name {name:?}"));
            }
            self.skip_blanks();
            let value = self.label_value()?;
            labels.push((name, value));
            self.skip_blanks();
            if self.eat(',') {
                continue;
            }
            if self.eat('}') {
                return Ok(labels);
            }
            return Err("expected ',' or '}' after a label".into());
        }
    }

    /// The next blank-separated token.
    fn token(&mut self) -> &'a str {
        self.skip_blanks();
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        token
    }

    fn sample(mut self) -> Result<Sample<'a>, String> {
        let name = self.name("metric name")?;
        let labels = if self.eat('{') {
            self.labels()?
        } else {
            Vec::new()
        };
        if !self.rest.is_empty() && !self.rest.starts_with([' ', '\t']) {
            return Err(format!(
                "unexpected character after the metric name {name:?}"
            ));
        }
        let value_text = self.token();
        if value_text.is_empty() {
            return Err(format!("no value for {name:?}"));
        }
        let value = parse_float(value_text)
            .ok_or_else(|| format!("invalid value {:?}", excerpt(value_text)))?;
        let ts_text = self.token();
        let timestamp_ms = if ts_text.is_empty() {
            None
        } else {
            Some(
                ts_text
                    .parse::<i64>()
                    .map_err(|_| format!("invalid timestamp {:?}", excerpt(ts_text)))?,
            )
        };
        self.skip_blanks();
        if !self.rest.is_empty() {
            return Err("unexpected text after the timestamp".into());
        }
        Ok(Sample {
            line: self.line,
            name,
            labels,
            value,
            timestamp_ms,
        })
    }
}

/// A value as Go's `strconv.ParseFloat` reads the text format's: decimal
/// and exponent forms, `NaN`, `+Inf`, `-Inf` (any case).
fn parse_float(text: &str) -> Option<f64> {
    // Rust also takes "infinity" and "inf" as Go does; it refuses hex floats
    // and `_`, which the kubelet never writes.
    let ok = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    if !ok {
        return None;
    }
    text.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kubelets_text() {
        let body = "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n\
# TYPE node_cpu_usage_seconds_total counter\n\
node_cpu_usage_seconds_total 357.35491 1624396278302\n\
container_memory_working_set_bytes{container=\"c\",namespace=\"ns\",pod=\"p\"} 1.6384e+06 1624396278302\n\
container_start_time_seconds{container=\"c\",namespace=\"ns\",pod=\"p\"} 1.6243962483020916e+09\n\
resource_scrape_error 0\n";
        let samples = parse(body).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].name, "node_cpu_usage_seconds_total");
        assert_eq!(samples[0].value, 357.35491);
        assert_eq!(samples[0].timestamp_ms, Some(1_624_396_278_302));
        assert_eq!(samples[0].line, 3);
        assert_eq!(samples[1].label("pod"), Some("p"));
        assert_eq!(samples[1].label("container"), Some("c"));
        assert_eq!(samples[1].value, 1_638_400.0);
        assert_eq!(samples[2].timestamp_ms, None);
        assert_eq!(samples[2].value, 1_624_396_248.302_091_6);
        assert_eq!(samples[3].labels, vec![]);
    }

    #[test]
    fn escaped_label_values_and_blanks() {
        let body = "m{a=\"x\\\"y\\\\z\\nw\", b = \"plain\",} 1 -5\r\n  \t\n\tm2{} NaN\nm3 +Inf\nm4 -inf 7\n";
        let s = parse(body).unwrap();
        assert_eq!(s[0].label("a"), Some("x\"y\\z\nw"));
        assert!(matches!(s[0].labels[0].1, Cow::Owned(_)));
        assert_eq!(s[0].label("b"), Some("plain"));
        assert!(matches!(s[0].labels[1].1, Cow::Borrowed(_)));
        assert_eq!(s[0].timestamp_ms, Some(-5));
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::INFINITY);
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        // Unicode in a label value.
        let s = parse("m{pod=\"wéb→1\"} 2\n").unwrap();
        assert_eq!(s[0].label("pod"), Some("wéb→1"));
    }

    #[test]
    fn garbage_names_the_line() {
        let cases = [
            ("ok 1\nthis is not a metric\n", 2, "invalid value \"is\""),
            ("ok 1\n\n{a=\"b\"} 1\n", 3, "expected a metric name"),
            ("m{a=\"b} 1\n", 1, "unterminated label value"),
            ("m{a=b} 1\n", 1, "expected '\"' to open a label value"),
            (
                "m{a=\"\\t\"} 1\n",
                1,
                "invalid escape sequence '\\t' in a label value",
            ),
            ("m{a=\"1\",a=\"2\"} 1\n", 1, "duplicate label \"a\""),
            ("m 1 2 3\n", 1, "unexpected text after the timestamp"),
            ("m 1 1.5\n", 1, "invalid timestamp \"1.5\""),
            ("m\n", 1, "no value for \"m\""),
            ("m 0x10\n", 1, "invalid value \"0x10\""),
            (
                "m{a=\"1\" b=\"2\"} 1\n",
                1,
                "expected ',' or '}' after a label",
            ),
            (
                "m-1 1\n",
                1,
                "unexpected character after the metric name \"m\"",
            ),
        ];
        for (body, line, reason) in cases {
            let e = parse(body).unwrap_err();
            assert_eq!((e.line, e.reason.as_str()), (line, reason), "{body:?}");
        }
        let e = parse("x 1\ngarbage here and there\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: invalid value \"here\": \"garbage here and there\""
        );
        let long = format!("m 1\nm 1 {}\n", "z".repeat(400));
        let e = parse(&long).unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.text.chars().count(), MAX_EXCERPT + 1, "{e}");
    }
}
