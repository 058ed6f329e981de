//! Legal metadata of a send (`custody.md` §5): flags, or a TOML file with the manifest's
//! field names.

use std::fs;
use std::path::PathBuf;

use rogatory_custody::{Legal, LegalText, OnwardTransfer, is_bidi_or_invisible};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// The legal metadata as the user gave it: flags and the `meta` file's fields (a field given
/// in both with two values is refused).
#[derive(Clone, Debug, Default)]
pub struct LegalInput {
    /// Case reference.
    pub case: Option<String>,
    /// Legal basis.
    pub legal_basis: Option<String>,
    /// Purpose.
    pub purpose: Option<String>,
    /// Retention end, `YYYY-MM-DD`.
    pub retain_until: Option<String>,
    /// Classification marking.
    pub classification: Option<String>,
    /// A TOML file with the manifest's legal field names.
    pub meta: Option<PathBuf>,
}

/// Optional legal fields from `--meta FILE.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    case_reference: Option<String>,
    legal_basis: Option<String>,
    requesting_authority: Option<String>,
    executing_authority: Option<String>,
    purpose: Option<String>,
    classification: Option<String>,
    retain_until: Option<String>,
    onward_transfer: Option<String>,
    notes: Option<String>,
}

/// Builds and checks the legal metadata from flags and the `--meta` file.
pub(crate) fn legal(a: &LegalInput) -> Result<Legal> {
    let meta: Meta = match &a.meta {
        Some(p) => {
            let t = fs::read_to_string(p).map_err(|e| {
                Error::new(ErrorKind::Usage, format!("cannot read {}", p.display())).source(e)
            })?;
            toml::from_str(&t).map_err(|e| crate::error::toml(p, &t, &e))?
        }
        None => Meta::default(),
    };
    let text = |flag: &Option<String>,
                file: Option<String>,
                name: &str,
                multi: bool|
     -> Result<Option<LegalText>> {
        if let (Some(f), Some(m)) = (flag, &file)
            && f != m
        {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("{name} and the --meta file give two different values"),
            )
            .hint("give each legal field once: on the command line or in the --meta file"));
        }
        match flag.clone().or(file) {
            None => Ok(None),
            Some(s) => LegalText::new(&s, multi).map(Some).map_err(|_| {
                Error::new(ErrorKind::Usage, format!("{name}: {}", why_not(&s, multi)))
            }),
        }
    };
    if let (Some(f), Some(m)) = (&a.retain_until, &meta.retain_until)
        && f != m
    {
        return Err(Error::new(
            ErrorKind::Usage,
            "--retain-until and the --meta file give two different values",
        )
        .hint("give each legal field once: on the command line or in the --meta file"));
    }
    let retain = match a.retain_until.clone().or(meta.retain_until) {
        None => None,
        Some(d) => {
            let date: rogatory_custody::CalendarDate = d.parse().map_err(|e| {
                Error::new(
                    ErrorKind::Usage,
                    format!("--retain-until {d:?}: expected YYYY-MM-DD"),
                )
                .source(e)
            })?;
            // Checked before any work: a retention that has ended would have the relay refuse
            // the transfer, or purge it before anyone could fetch it.
            if date.0 < time::OffsetDateTime::now_utc().date() {
                return Err(Error::new(
                    ErrorKind::Usage,
                    format!("--retain-until {d}: that date has passed"),
                )
                .hint("retention must end today or later"));
            }
            Some(date)
        }
    };
    let onward = match meta.onward_transfer.as_deref() {
        None | Some("forbidden") => OnwardTransfer::Forbidden,
        Some("with-consent") => OnwardTransfer::WithConsent,
        Some(o) => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("onward_transfer {o:?}: forbidden or with-consent"),
            ));
        }
    };
    Ok(Legal {
        case_reference: text(&a.case, meta.case_reference, "--case", false)?,
        legal_basis: text(&a.legal_basis, meta.legal_basis, "--legal-basis", false)?,
        requesting_authority: text(
            &None,
            meta.requesting_authority,
            "requesting_authority",
            false,
        )?,
        executing_authority: text(
            &None,
            meta.executing_authority,
            "executing_authority",
            false,
        )?,
        purpose: text(&a.purpose, meta.purpose, "--purpose", false)?,
        classification: text(
            &a.classification,
            meta.classification,
            "--classification",
            false,
        )?,
        retain_until: retain,
        onward_transfer: Some(onward),
        notes: text(&None, meta.notes, "notes", true)?,
    })
}

/// Checks the legal metadata against what the relay's policy requires, before anything is
/// written or offered (`protocol.md` §6.0: WELCOME publishes it).
pub(crate) fn check_required(legal: &Legal, require: &[String]) -> Result<()> {
    let missing: Vec<&str> = require
        .iter()
        .map(String::as_str)
        .filter(|f| legal.has(f) == Some(false))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let how: Vec<String> = missing.iter().map(|f| how_to_set(f)).collect();
    Err(Error::new(
        ErrorKind::Usage,
        format!(
            "the relay's policy requires {}; nothing was sent",
            missing.join(", ")
        ),
    )
    .hint(format!("set {}", how.join(", "))))
}

/// The flag (or `--meta` key) that sets a legal field.
fn how_to_set(field: &str) -> String {
    match field {
        "case_reference" => "--case".into(),
        "legal_basis" => "--legal-basis".into(),
        "purpose" => "--purpose".into(),
        "retain_until" => "--retain-until".into(),
        "classification" => "--classification".into(),
        other => format!("{other} in the --meta file"),
    }
}

/// Why a legal value is refused, in plain words, quoting at most its first 40 characters
/// (`custody.md` §5: at most 4 096 bytes, no control, bidirectional or invisible characters).
fn why_not(s: &str, multiline: bool) -> String {
    let shown: String = s.chars().take(40).collect();
    let more = if s.chars().count() > 40 { "…" } else { "" };
    let quoted = format!("{shown:?}{more}");
    if s.trim().is_empty() {
        "is empty".to_owned()
    } else if s.len() > 4096 {
        format!(
            "{quoted} is {} bytes long; at most 4096 are allowed",
            s.len()
        )
    } else if let Some(c) = s.chars().find(|&c| is_bidi_or_invisible(c)) {
        format!(
            "{quoted} holds the invisible or bidirectional character U+{:04X}, which can make it read differently from what is stored",
            c as u32
        )
    } else if s.contains('\n') && !multiline {
        format!("{quoted} spans several lines; only notes may")
    } else {
        format!("{quoted} holds a control character")
    }
}

/// No legal metadata at all.
pub(crate) fn empty() -> Legal {
    Legal {
        case_reference: None,
        legal_basis: None,
        requesting_authority: None,
        executing_authority: None,
        purpose: None,
        classification: None,
        retain_until: None,
        onward_transfer: None,
        notes: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("meta.toml");
        fs::write(&p, text).expect("write");
        (dir, p)
    }

    #[test]
    fn a_flag_and_the_meta_file_never_disagree_silently() {
        let (_d, p) = meta("case_reference = \"XX-1\"\nretain_until = \"2099-01-01\"\n");
        let base = LegalInput {
            meta: Some(p),
            ..Default::default()
        };
        // The same value twice is fine; two values are refused, naming the flag.
        let same = LegalInput {
            case: Some("XX-1".into()),
            ..base.clone()
        };
        assert_eq!(
            legal(&same)
                .expect("same")
                .case_reference
                .map(|c| c.as_str().to_owned()),
            Some("XX-1".to_owned())
        );
        let other = LegalInput {
            case: Some("XX-2".into()),
            ..base.clone()
        };
        let e = legal(&other).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Usage);
        assert!(e.to_string().contains("--case"), "{e}");
        let date = LegalInput {
            retain_until: Some("2098-01-01".into()),
            ..base
        };
        assert!(legal(&date).is_err());
    }

    #[test]
    fn required_fields_are_named_with_the_flag_that_sets_them() {
        let l = legal(&LegalInput {
            case: Some("XX-1".into()),
            ..Default::default()
        })
        .expect("legal");
        let e = check_required(&l, &["case_reference".into(), "legal_basis".into()])
            .expect_err("missing");
        assert!(e.to_string().contains("legal_basis"), "{e}");
        assert!(e.hint_text().is_some_and(|h| h.contains("--legal-basis")));
        check_required(&l, &["case_reference".into()]).expect("present");
    }
}
