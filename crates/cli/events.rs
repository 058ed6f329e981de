//! What a command tells its user: human lines (stdout for results, stderr for progress) or,
//! with `--json`, one JSON object per line on stdout (`docs/cli.md` "JSON events").

use std::io::IsTerminal;
use std::path::Path;

pub(crate) use rogatory_client::json::Event as Json;
use rogatory_client::json::Unsendable;
use rogatory_custody::TransferId;

#[derive(Debug, Default)]
pub(crate) struct Events {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    /// The progress bar on a terminal (human mode only).
    pub(crate) bar: std::sync::OnceLock<indicatif::ProgressBar>,
}

impl Events {
    /// One `--json` line (`docs/cli.md` "JSON events").
    pub(crate) fn emit(&self, e: Json) {
        outln!("{}", e.to_line());
    }

    /// An informational line (human mode only, stderr).
    pub(crate) fn emit_line(&self, s: &str) {
        if !self.json && !self.quiet {
            errln!("rogatory: {s}");
        }
    }

    pub(crate) fn start(&self, t: &TransferId, files: usize, bytes_total: u64) {
        if self.json {
            self.emit(Json::Start {
                transfer_id: t.to_string(),
                files: files as u64,
                bytes_total,
            });
        } else if !self.quiet {
            errln!("rogatory: transfer {t}: {files} files, {bytes_total} bytes of ciphertext");
            if std::io::stderr().is_terminal() {
                let bar = indicatif::ProgressBar::new(bytes_total);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ) {
                    bar.set_style(style);
                }
                let _ = self.bar.set(bar);
            }
        }
    }

    pub(crate) fn progress(&self, done: u64, total: u64) {
        if self.json {
            self.emit(Json::Progress {
                bytes_done: done,
                bytes_total: total,
            });
        } else if let Some(bar) = self.bar.get() {
            bar.set_length(total);
            bar.set_position(done);
            if done == total {
                bar.finish_and_clear();
            }
        }
    }

    /// An event of the client library.
    pub(crate) fn event(&self, e: &rogatory_client::Event) {
        use rogatory_client::Event;
        match e {
            Event::Info { message } => self.emit_line(message),
            Event::Connected {
                relay_agency,
                tls_key_exchange,
            } => {
                if self.json {
                    self.emit(Json::Connected {
                        relay_agency: relay_agency.clone(),
                        tls_key_exchange: tls_key_exchange.clone(),
                    });
                } else {
                    self.emit_line(&format!(
                        "connected to {relay_agency} (TLS 1.3, key exchange {})",
                        tls_key_exchange.as_deref().unwrap_or("unknown")
                    ));
                }
            }
            Event::Start {
                transfer_id,
                files,
                bytes_total,
            } => self.start(transfer_id, *files, *bytes_total),
            Event::Progress {
                bytes_done,
                bytes_total,
            } => self.progress(*bytes_done, *bytes_total),
            Event::FileDone { path } => self.file_done(path),
            Event::Fetched(done) => self.fetched(done, None),
            Event::Failed { failed } => self.failed(failed),
            _ => {}
        }
    }

    pub(crate) fn file_done(&self, path: &str) {
        if self.json {
            self.emit(Json::FileDone {
                path: path.to_owned(),
            });
        }
    }

    /// A receipt saved: `kind` is `custody`, `delivery` or `purge`; `agency` the recipient of a
    /// delivery receipt.
    pub(crate) fn receipt(&self, kind: &str, agency: Option<String>, path: &Path) {
        if self.json {
            self.emit(Json::Receipt {
                kind: kind.to_owned(),
                agency,
                path: path.display().to_string(),
            });
        }
    }

    pub(crate) fn summary(
        &self,
        t: &TransferId,
        files: usize,
        total: u64,
        sent: u64,
        skipped: u64,
        receipt: &Path,
    ) {
        if self.json {
            self.emit(Json::Sent {
                transfer_id: t.to_string(),
                files: files as u64,
                bytes_total: total,
                bytes_sent: sent,
                bytes_skipped: skipped,
                receipt: receipt.display().to_string(),
            });
        } else if !self.quiet {
            outln!("transfer {t}");
            outln!("receipt {}", receipt.display());
            errln!(
                "rogatory: {files} files, {total} bytes; sent {sent}, already at the relay {skipped}"
            );
        }
    }

    /// A fetched transfer: its delivery receipt (signed by `me`) and summary.
    pub(crate) fn fetched(&self, d: &rogatory_client::fetch::Fetched, me: Option<String>) {
        self.receipt("delivery", me, &d.receipt);
        if self.json {
            self.emit(Json::Fetched {
                transfer_id: d.transfer_id.to_string(),
                sender: d.sender.to_string(),
                files: d.files as u64,
                bytes_total: d.bytes_total,
                plaintext_bytes: d.plaintext_bytes,
                bytes_downloaded: d.bytes_downloaded,
                bytes_resumed: d.bytes_resumed,
                output: d.output.display().to_string(),
                receipt: d.receipt.display().to_string(),
            });
        } else if !self.quiet {
            outln!(
                "fetched {}: {} files from {} into {}",
                d.transfer_id,
                d.files,
                d.sender,
                d.output.display()
            );
            outln!("receipt {}", d.receipt.display());
        }
    }

    /// One transfer of `inbox`: a tab-separated line and the legal metadata indented below
    /// it, or an `inbox` JSON object with a `legal` object.
    pub(crate) fn inbox_entry(&self, item: &rogatory_client::inbox::InboxItem) {
        let e = &item.entry;
        let state = rogatory_relay::relay::state_name(e.state);
        if self.json {
            self.emit(Json::Inbox {
                transfer_id: e.transfer.to_string(),
                sender: e.sender.to_string(),
                files: e.files,
                ciphertext_bytes: e.ciphertext_bytes,
                received: e.received.to_string(),
                state: state.to_owned(),
                legal: item
                    .legal
                    .as_ref()
                    .and_then(|l| serde_json::to_value(l).ok()),
                legal_problem: item.problem.clone(),
            });
        } else {
            outln!(
                "{}\t{}\t{} files\t{} bytes\t{}\t{}",
                e.transfer,
                e.sender,
                e.files,
                e.ciphertext_bytes,
                e.received,
                state
            );
            match (&item.legal, &item.problem) {
                (Some(l), _) => {
                    for (name, value) in legal_lines(l) {
                        outln!("  {name}: {value}");
                    }
                }
                (None, Some(p)) => outln!("  legal metadata not shown: {p}"),
                (None, None) => {}
            }
        }
    }

    /// Every source that could not be sent: an `unsendable` event in JSON mode, one stderr line
    /// each otherwise.
    pub(crate) fn failed(&self, failed: &[(String, String)]) {
        if self.json {
            self.emit(Json::Unsendable {
                failed: failed
                    .iter()
                    .map(|(p, e)| Unsendable {
                        path: p.clone(),
                        error: e.clone(),
                    })
                    .collect(),
            });
        } else {
            for (p, e) in failed {
                errln!(
                    "rogatory: cannot send {}: {}",
                    crate::error::escape_controls(p),
                    crate::error::escape_controls(e)
                );
            }
        }
    }

    pub(crate) fn error(&self, exit: i32, message: &str) {
        if self.json {
            self.emit(Json::Error {
                exit_code: exit,
                message: message.to_owned(),
            });
        }
    }
}

/// The legal metadata as `(label, value)` lines for people, in manifest order; notes last, one
/// line each.
pub(crate) fn legal_lines(l: &rogatory_custody::Legal) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut text = |label, v: &Option<rogatory_custody::LegalText>| {
        if let Some(t) = v {
            out.push((label, t.as_str().to_owned()));
        }
    };
    text("case", &l.case_reference);
    text("legal basis", &l.legal_basis);
    text("requesting authority", &l.requesting_authority);
    text("executing authority", &l.executing_authority);
    text("purpose", &l.purpose);
    text("classification", &l.classification);
    if let Some(d) = &l.retain_until {
        out.push(("retain until", d.to_string()));
    }
    if let Some(o) = &l.onward_transfer {
        out.push((
            "onward transfer",
            match o {
                rogatory_custody::OnwardTransfer::Forbidden => "forbidden".to_owned(),
                rogatory_custody::OnwardTransfer::WithConsent => {
                    "only with the sender's consent".to_owned()
                }
            },
        ));
    }
    if let Some(n) = &l.notes {
        for line in n.as_str().lines() {
            out.push(("notes", line.to_owned()));
        }
    }
    out
}
