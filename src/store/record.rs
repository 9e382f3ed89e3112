//! The recordation data of a mark, as the customs service records it.

use serde::{Deserialize, Serialize};

/// Where a recorded right stands. Customs acts only on `active` recordations, but
/// officers want to see the others too (an expired right still explains a hit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MarkStatus {
    #[default]
    Active,
    Pending,
    Suspended,
    Expired,
    Withdrawn,
}

impl MarkStatus {
    pub const ALL: [MarkStatus; 5] = [
        MarkStatus::Active,
        MarkStatus::Pending,
        MarkStatus::Suspended,
        MarkStatus::Expired,
        MarkStatus::Withdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MarkStatus::Active => "active",
            MarkStatus::Pending => "pending",
            MarkStatus::Suspended => "suspended",
            MarkStatus::Expired => "expired",
            MarkStatus::Withdrawn => "withdrawn",
        }
    }
}

impl std::fmt::Display for MarkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MarkStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        MarkStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == wanted)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?} (expected one of: active, pending, suspended, expired, withdrawn)"
                )
            })
    }
}

/// The descriptive fields of a recorded mark: everything but its image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarkFields {
    /// Customs recordation number.
    pub recordation_number: Option<String>,
    /// Trademark registration number at the office of record.
    pub registration_number: Option<String>,
    /// The mark's name or word element.
    pub name: Option<String>,
    /// Right holder.
    pub holder: Option<String>,
    /// Nice classes of goods and services (1 to 45).
    pub nice_classes: Vec<u8>,
    pub status: MarkStatus,
    /// Last day of protection, ISO 8601 (`YYYY-MM-DD`).
    pub valid_until: Option<String>,
}

impl MarkFields {
    /// The canonical form that the store records: Nice classes sorted, once each.
    pub fn normalised(&self) -> MarkFields {
        let mut fields = self.clone();
        fields.nice_classes.sort_unstable();
        fields.nice_classes.dedup();
        fields
    }

    /// Checks values a client could get wrong; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(bad) = self.nice_classes.iter().find(|c| !(1..=45).contains(*c)) {
            return Err(format!("nice class {bad} is outside 1..=45"));
        }
        if let Some(date) = &self.valid_until
            && !is_iso_date(date)
        {
            return Err(format!("valid_until {date:?} is not a YYYY-MM-DD date"));
        }
        for (field, value) in [
            ("recordation_number", &self.recordation_number),
            ("registration_number", &self.registration_number),
            ("name", &self.name),
            ("holder", &self.holder),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 1024) {
                return Err(format!("{field} is longer than 1024 bytes"));
            }
        }
        Ok(())
    }
}

fn is_iso_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return false;
    };
    let num = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| b.is_ascii_digit());
    if !(num(y, 4) && num(m, 2) && num(d, 2)) {
        return false;
    }
    let (m, d): (u32, u32) = (m.parse().unwrap_or(0), d.parse().unwrap_or(0));
    (1..=12).contains(&m) && (1..=31).contains(&d)
}

/// A recorded mark as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkRecord {
    /// The operator's identifier for the mark.
    pub id: String,
    #[serde(flatten)]
    pub fields: MarkFields,
    /// SHA-256 of the source image bytes.
    pub image_sha256: String,
    /// Format of the source image (`png`, `jpeg`, ...).
    pub image_format: String,
    /// Number of embedding vectors (views) recorded for the mark.
    pub views: usize,
    /// When the mark was first enrolled and last changed (UTC, ISO 8601).
    pub created_at: String,
    pub updated_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_field() {
        let mut fields = MarkFields {
            nice_classes: vec![9, 25],
            valid_until: Some("2030-01-31".into()),
            ..MarkFields::default()
        };
        assert!(fields.validate().is_ok());
        fields.nice_classes.push(46);
        assert!(fields.validate().unwrap_err().contains("46"));
        fields.nice_classes.pop();
        fields.valid_until = Some("31/01/2030".into());
        assert!(fields.validate().unwrap_err().contains("valid_until"));
    }

    #[test]
    fn status_parses_case_insensitively() {
        assert_eq!("Expired".parse::<MarkStatus>(), Ok(MarkStatus::Expired));
        assert!("lapsed".parse::<MarkStatus>().is_err());
    }
}
