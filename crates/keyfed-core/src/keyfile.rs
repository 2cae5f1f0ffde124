//! The key file: a small text file a person can read, fields first and the
//! vendor's Ed25519 signature last. The signature covers the exact bytes of
//! every line above it (the canonical encoding), so export then import gives
//! back the same bytes, and any edit breaks the signature.
use crate::error::KeyError;
use crate::key::{Components, Key};
use chrono::{DateTime, NaiveDate, SecondsFormat};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

const HEADER: &str = "# keyfed license key: do not edit, the signature covers every line above it";
const FORMAT: &str = "keyfed-key/1";
/// Field order of the canonical encoding.
const FIELDS: [&str; 14] = [
    "format",
    "id",
    "license",
    "serial",
    "customer",
    "product",
    "kind",
    "components",
    "seats",
    "issued",
    "expires",
    "renews",
    "signer",
    "signature",
];
/// Upper bound on a key file's size; anything larger is not a key file.
pub const MAX_KEY_FILE_BYTES: usize = 4096;

/// A parsed, signature-checked key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub key: Key,
    /// hex of the vendor's Ed25519 public key
    pub signer: String,
    signature: [u8; 64],
}

impl KeyFile {
    /// The bytes the vendor signs: the header and every field up to `signer`.
    #[must_use]
    pub fn canonical(key: &Key, signer: &str) -> String {
        let mut s = String::with_capacity(512);
        s.push_str(HEADER);
        s.push('\n');
        let issued = key.issued_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let values: [String; 13] = [
            FORMAT.to_owned(),
            key.id.clone(),
            key.license.clone(),
            key.serial.to_string(),
            key.customer.clone(),
            key.product.clone(),
            key.kind.to_string(),
            key.components.to_string(),
            key.seats.to_string(),
            issued,
            key.expires.format("%Y-%m-%d").to_string(),
            key.renews.clone().unwrap_or_else(|| "-".into()),
            signer.to_owned(),
        ];
        for (name, value) in FIELDS.iter().zip(values) {
            s.push_str(name);
            s.push_str(": ");
            s.push_str(&value);
            s.push('\n');
        }
        s
    }

    /// The whole file text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = Self::canonical(&self.key, &self.signer);
        s.push_str("signature: ");
        s.push_str(&hex::encode(self.signature));
        s.push('\n');
        s
    }

    /// Parses a key file without checking who signed it (see [`KeyFile::verify`]).
    /// Only the canonical form is accepted, so a parsed file always renders
    /// back to the same bytes.
    // a line-by-line parser of a fixed format; splitting it would scatter the format
    #[allow(clippy::too_many_lines)]
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.trim().is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_FILE_BYTES {
            return Err(KeyError::InvalidField {
                field: "file",
                why: format!(
                    "{} bytes is larger than a key file can be ({MAX_KEY_FILE_BYTES})",
                    text.len()
                ),
            });
        }
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == HEADER => {}
            Some((_, l)) => {
                return Err(KeyError::UnexpectedLine {
                    line: 1,
                    expected: "# keyfed license key",
                    found: clip(l),
                })
            }
            None => return Err(KeyError::Empty),
        }
        let mut values = Vec::with_capacity(FIELDS.len());
        for name in FIELDS {
            let Some((n, line)) = lines.next() else {
                return Err(KeyError::Truncated { missing: name });
            };
            let value = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .ok_or_else(|| KeyError::UnexpectedLine {
                    line: n + 1,
                    expected: name,
                    found: clip(line),
                })?;
            values.push(value);
        }
        if let Some((n, _)) = lines.find(|(_, l)| !l.trim().is_empty()) {
            return Err(KeyError::TrailingContent { line: n + 1 });
        }
        let [format, id, license, serial, customer, product, kind, components, seats, issued, expires, renews, signer, signature] =
            values[..]
        else {
            unreachable!("FIELDS has 14 entries")
        };
        if format != FORMAT {
            return Err(KeyError::InvalidField {
                field: "format",
                why: format!("{format:?} is not {FORMAT}"),
            });
        }
        let key = Key {
            id: id.to_owned(),
            license: license.to_owned(),
            serial: parse_num("serial", serial)?,
            customer: customer.to_owned(),
            product: product.to_owned(),
            kind: kind.parse()?,
            components: Components::new(components.split(','))?,
            seats: parse_num("seats", seats)?,
            issued_at: DateTime::parse_from_rfc3339(issued)
                .map_err(|e| KeyError::InvalidField {
                    field: "issued",
                    why: format!("{issued:?}: {e}"),
                })?
                .to_utc(),
            expires: NaiveDate::parse_from_str(expires, "%Y-%m-%d").map_err(|e| {
                KeyError::InvalidField {
                    field: "expires",
                    why: format!("{expires:?}: {e}"),
                }
            })?,
            renews: (renews != "-").then(|| renews.to_owned()),
        };
        key.validate()?;
        let signer_bytes = decode_hex::<32>("signer", signer)?;
        VerifyingKey::from_bytes(&signer_bytes).map_err(|_| KeyError::InvalidField {
            field: "signer",
            why: "not an Ed25519 public key".into(),
        })?;
        let file = Self {
            key,
            signer: signer.to_owned(),
            signature: decode_hex::<64>("signature", signature)?,
        };
        // Anything that would not render back identically (a reordered
        // component list, "+00:00" for "Z", uppercase hex) is refused.
        let canonical = file.render();
        let normalized: String = text
            .lines()
            .filter(|l| !l.is_empty())
            .flat_map(|l| [l, "\n"])
            .collect();
        if canonical != normalized {
            let field = first_difference(&canonical, &normalized);
            return Err(KeyError::NotCanonical { field });
        }
        Ok(file)
    }

    /// Checks the signature against the signer named in the file.
    pub fn verify(&self) -> Result<(), KeyError> {
        let bytes = decode_hex::<32>("signer", &self.signer)?;
        let vk = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidField {
            field: "signer",
            why: "not an Ed25519 public key".into(),
        })?;
        let sig = Signature::from_bytes(&self.signature);
        vk.verify(Self::canonical(&self.key, &self.signer).as_bytes(), &sig)
            .map_err(|_| KeyError::BadSignature {
                signer: short(&self.signer),
            })
    }

    /// Parses, then checks that a trusted vendor key signed it.
    pub fn parse_trusted<S: AsRef<str>>(text: &str, trusted: &[S]) -> Result<Self, KeyError> {
        let file = Self::parse(text)?;
        if !trusted
            .iter()
            .any(|t| t.as_ref().eq_ignore_ascii_case(&file.signer))
        {
            return Err(KeyError::UnknownSigner {
                signer: short(&file.signer),
            });
        }
        file.verify()?;
        Ok(file)
    }
}

/// The vendor's signing identity (held by the upstream only).
pub struct VendorSigner {
    key: SigningKey,
}

impl VendorSigner {
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    #[must_use]
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    #[must_use]
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs a key; the key must be valid.
    pub fn sign(&self, key: Key) -> Result<KeyFile, KeyError> {
        key.validate()?;
        let signer = self.public_hex();
        let signature = self
            .key
            .sign(KeyFile::canonical(&key, &signer).as_bytes())
            .to_bytes();
        Ok(KeyFile {
            key,
            signer,
            signature,
        })
    }
}

impl std::fmt::Debug for VendorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VendorSigner({})", short(&self.public_hex()))
    }
}

fn parse_num<T: std::str::FromStr>(field: &'static str, s: &str) -> Result<T, KeyError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| KeyError::InvalidField {
        field,
        why: format!("{s:?}: {e}"),
    })
}

fn decode_hex<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], KeyError> {
    let bytes = hex::decode(s).map_err(|e| KeyError::InvalidField {
        field,
        why: format!("not hex: {e}"),
    })?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::InvalidField {
            field,
            why: format!("{} bytes, expected {N}", b.len()),
        })
}

fn first_difference(a: &str, b: &str) -> &'static str {
    for (i, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
        if la != lb {
            return if i == 0 {
                "header"
            } else {
                FIELDS.get(i - 1).copied().unwrap_or("file")
            };
        }
    }
    "file"
}

fn clip(line: &str) -> String {
    line.chars().take(60).collect()
}

/// First 16 hex digits of a public key, enough to tell vendors apart in messages.
#[must_use]
pub fn short(hex_key: &str) -> String {
    hex_key.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyKind;

    pub(crate) fn sample_key() -> Key {
        Key {
            id: "k-0001".into(),
            license: "l-acme-1".into(),
            serial: 1,
            customer: "acme".into(),
            product: "endpoint-security".into(),
            components: Components::new(["antivirus", "firewall"]).unwrap(),
            seats: 50,
            kind: KeyKind::Term,
            issued_at: "2026-11-23T05:00:00Z".parse().unwrap(),
            expires: "2027-11-23".parse().unwrap(),
            renews: None,
        }
    }

    fn vendor(n: u8) -> VendorSigner {
        VendorSigner::from_seed([n; 32])
    }

    #[test]
    fn export_then_import_gives_the_same_bytes() {
        let file = vendor(1).sign(sample_key()).unwrap();
        let text = file.render();
        let back = KeyFile::parse_trusted(&text, &[vendor(1).public_hex()]).unwrap();
        assert_eq!(back.render(), text);
        assert_eq!(back.key, sample_key());
        assert!(
            text.contains("seats: 50\n") && text.lines().last().unwrap().starts_with("signature: ")
        );
    }

    #[test]
    fn a_tampered_key_fails_the_signature_check() {
        let text = vendor(1)
            .sign(sample_key())
            .unwrap()
            .render()
            .replace("seats: 50", "seats: 500");
        let err = KeyFile::parse_trusted(&text, &[vendor(1).public_hex()]).unwrap_err();
        assert!(matches!(err, KeyError::BadSignature { .. }), "{err}");
        assert!(err.to_string().contains("signature"));
    }

    #[test]
    fn a_key_from_an_unknown_vendor_is_refused() {
        let text = vendor(2).sign(sample_key()).unwrap().render();
        let err = KeyFile::parse_trusted(&text, &[vendor(1).public_hex()]).unwrap_err();
        assert!(matches!(err, KeyError::UnknownSigner { .. }), "{err}");
    }

    #[test]
    fn a_truncated_key_file_names_the_missing_line() {
        let text = vendor(1).sign(sample_key()).unwrap().render();
        let cut: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
        let err = KeyFile::parse(&cut).unwrap_err();
        assert_eq!(err, KeyError::Truncated { missing: "product" });
    }

    #[test]
    fn garbage_is_refused_with_the_line_number() {
        let err = KeyFile::parse("hello\nworld\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(KeyFile::parse("  \n").unwrap_err(), KeyError::Empty);
    }

    #[test]
    fn non_canonical_but_correctly_signed_text_is_refused() {
        let text = vendor(1)
            .sign(sample_key())
            .unwrap()
            .render()
            .replace("antivirus,firewall", "firewall,antivirus");
        assert!(matches!(
            KeyFile::parse(&text).unwrap_err(),
            KeyError::NotCanonical {
                field: "components"
            }
        ));
    }
}
