//! `rogatory keygen`: a new age identity, X25519 or (`--pq`) hybrid post-quantum
//! `mlkem768x25519`.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

use rogatory_envelope::{AnyIdentity, HybridIdentity, Identity, format_identity_file};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::args::KeygenArgs;
use crate::error::{CliError, Exit, Result};
use crate::events::{Events, Json};
use crate::output::{fsync_dir, storage_error};

pub(crate) fn run(a: &KeygenArgs, events: &Events) -> Result<()> {
    crate::crypt::json_needs_output(events, &a.output, "keygen")?;
    let identity = if a.pq {
        AnyIdentity::from(HybridIdentity::generate())
    } else {
        AnyIdentity::from(Identity::generate())
    };
    let created = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let text = format_identity_file(&identity, &created);
    match &a.output {
        Some(path) if path.as_os_str() != "-" => {
            // Created 0600 with O_EXCL: a key file is never overwritten.
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => CliError::new(
                        Exit::Safety,
                        format!("refusing to overwrite existing file: {}", path.display()),
                    ),
                    _ => storage_error(path, e),
                })?;
            let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
            if let Err(e) = written {
                drop(f);
                let _ = std::fs::remove_file(path);
                return Err(storage_error(path, e));
            }
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            fsync_dir(dir).map_err(|e| storage_error(dir, e))?;
        }
        _ => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| storage_error(std::path::Path::new("<stdout>"), e))?;
        }
    }
    if events.json {
        events.emit(Json::KeyCreated {
            path: a
                .output
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            public_key: identity.to_public().to_string(),
            post_quantum: a.pq,
        });
    } else {
        errln!("Public key: {}", identity.to_public());
    }
    Ok(())
}
