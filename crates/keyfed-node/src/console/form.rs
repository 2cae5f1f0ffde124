//! The console's form bodies: `application/x-www-form-urlencoded` and, for
//! the key upload, `multipart/form-data`.
use crate::api::{decode, ApiError};
use std::collections::HashMap;

/// A submitted form's fields (the last of a repeated name wins).
#[derive(Debug, Default)]
pub struct Form(HashMap<String, String>);

impl Form {
    pub fn urlencoded(body: &[u8]) -> Result<Self, ApiError> {
        let text =
            std::str::from_utf8(body).map_err(|_| ApiError::invalid("the form is not UTF-8"))?;
        let mut m = HashMap::new();
        for part in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            m.insert(decode(k, true)?, decode(v, true)?);
        }
        Ok(Self(m))
    }

    /// A multipart body with `boundary`: each part's `name` and its content
    /// (a file part's bytes as UTF-8 text: key files are text).
    pub fn multipart(body: &[u8], boundary: &str) -> Result<Self, ApiError> {
        let bad = |why: &str| ApiError::invalid(format!("the uploaded form is malformed: {why}"));
        let text = std::str::from_utf8(body).map_err(|_| bad("it is not UTF-8 text"))?;
        let delim = format!("--{boundary}");
        let mut m = HashMap::new();
        for part in text.split(delim.as_str()).skip(1) {
            if part.starts_with("--") {
                break; // the closing delimiter
            }
            let part = part
                .strip_prefix("\r\n")
                .ok_or_else(|| bad("a part does not start on a new line"))?;
            let (head, content) = part
                .split_once("\r\n\r\n")
                .ok_or_else(|| bad("a part has no header end"))?;
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            let name = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
                .and_then(|l| l.split(';').find_map(|p| p.trim().strip_prefix("name=")))
                .map(|n| n.trim_matches('"').to_owned())
                .ok_or_else(|| bad("a part has no name"))?;
            m.insert(name, content.to_owned());
        }
        Ok(Self(m))
    }

    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }

    /// A whole number field; empty is 0.
    pub fn number(&self, name: &str) -> Result<u32, ApiError> {
        let v = self.get(name).trim();
        if v.is_empty() {
            return Ok(0);
        }
        v.parse().map_err(|_| {
            ApiError::invalid(format!("{name} {v:?} is not a non-negative whole number"))
        })
    }
}

/// The `boundary` of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<&str> {
    let (media, params) = content_type.split_once(';')?;
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_and_multipart_forms_are_read() {
        let f = Form::urlencoded(b"object=pc+1&seats=3&csrf=a%2Fb").unwrap();
        assert_eq!(
            (f.get("object"), f.number("seats").unwrap(), f.get("csrf")),
            ("pc 1", 3, "a/b")
        );
        assert!(f.number("object").is_err());
        assert_eq!(f.number("missing").unwrap(), 0);
        let ct = "multipart/form-data; boundary=----x42";
        let b = boundary(ct).unwrap();
        assert_eq!(b, "----x42");
        let body = "------x42\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok\r\n\
                    ------x42\r\nContent-Disposition: form-data; name=\"key_file\"; filename=\"k.key\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\nline 1\r\nline 2\r\n------x42--\r\n";
        let f = Form::multipart(body.as_bytes(), b).unwrap();
        assert_eq!(
            (f.get("csrf"), f.get("key_file")),
            ("tok", "line 1\r\nline 2")
        );
        assert!(boundary("application/json").is_none());
        assert!(Form::multipart(b"------x42\r\nno header end", b).is_err());
    }
}
