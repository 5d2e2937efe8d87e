//! Target files: one request per line, TAB-separated,
//! `path<TAB>authorization` or `METHOD<TAB>path<TAB>authorization`.
//! The same files feed the wrk scripts (which take the two-column form).

use std::ops::Range;

/// Every line of a target file, kept as one string plus offsets (a million
/// heartbeat lines are ~450 MB; a `Vec<String>` per field would double that).
pub struct Targets {
    text: String,
    lines: Vec<Line>,
}

struct Line {
    method: Option<Range<usize>>,
    path: Range<usize>,
    auth: Range<usize>,
}

/// One target, borrowed from [`Targets`].
pub struct Target<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub auth: &'a str,
}

impl Targets {
    pub fn load(path: &str) -> Result<Targets, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Targets::parse(text).map_err(|e| format!("{path}: {e}"))
    }

    pub fn parse(text: String) -> Result<Targets, String> {
        let mut lines = Vec::new();
        let mut at = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            let start = at;
            at += raw.len();
            let line = raw.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = Vec::with_capacity(3);
            let mut from = start;
            for f in line.split('\t') {
                fields.push(from..from + f.len());
                from += f.len() + 1;
            }
            let (method, path, auth) = match fields.len() {
                2 => (None, fields[0].clone(), fields[1].clone()),
                3 => (Some(fields[0].clone()), fields[1].clone(), fields[2].clone()),
                k => return Err(format!("line {}: {k} TAB-separated fields, expected 2 or 3", n + 1)),
            };
            if !text[path.clone()].starts_with('/') {
                return Err(format!("line {}: the path must start with '/'", n + 1));
            }
            lines.push(Line { method, path, auth });
        }
        if lines.is_empty() {
            return Err("no targets".into());
        }
        Ok(Targets { text, lines })
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// The `i`-th target, round-robin; `default_method` where the line names none.
    pub fn get<'a>(&'a self, i: usize, default_method: &'a str) -> Target<'a> {
        let l = &self.lines[i % self.lines.len()];
        Target {
            method: l.method.clone().map_or(default_method, |m| &self.text[m]),
            path: &self.text[l.path.clone()],
            auth: &self.text[l.auth.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_and_three_columns() {
        let t = Targets::parse("/a\tBearer x\n\nGET\t/b\tBearer y\r\n# comment\n/c\tBearer z".into()).unwrap();
        assert_eq!(t.len(), 3);
        let a = t.get(0, "POST");
        assert_eq!((a.method, a.path, a.auth), ("POST", "/a", "Bearer x"));
        let b = t.get(1, "POST");
        assert_eq!((b.method, b.path, b.auth), ("GET", "/b", "Bearer y"));
        assert_eq!(t.get(5, "POST").path, "/c");
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(Targets::parse("/a\n".into()).is_err());
        assert!(Targets::parse("a\tb\n".into()).is_err());
        assert!(Targets::parse("\n".into()).is_err());
    }
}
