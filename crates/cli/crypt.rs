//! `rogatory encrypt` and `rogatory decrypt`: age files on the command line.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rogatory_envelope::{
    AnyIdentity, AnyRecipient, ArmorError, ArmoredWriter, CHUNK_SIZE, DecryptError, Decryptor,
    EncryptError, Encryptor, KeyFileError, PayloadError, parse_identities, parse_recipients,
};
use zeroize::Zeroizing;

use crate::args::{DecryptArgs, EncryptArgs};
use crate::error::{CliError, Exit, Result};
use crate::events::{Events, Json};
use crate::output::{Sink, Target, is_stdio, storage_error};

/// Read and write in whole STREAM chunks.
const IO_BUF: usize = CHUNK_SIZE;

fn open_input(input: &Option<PathBuf>) -> Result<Box<dyn Read>> {
    if is_stdio(input) {
        return Ok(Box::new(io::stdin().lock()));
    }
    let path = input.as_deref().unwrap_or(Path::new("-"));
    match File::open(path) {
        Ok(f) => Ok(Box::new(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CliError::new(
            Exit::Usage,
            format!("input file not found: {}", path.display()),
        )),
        Err(e) => Err(CliError::new(
            Exit::Storage,
            format!("cannot read input {}", path.display()),
        )
        .source(e)),
    }
}

fn input_name(input: &Option<PathBuf>) -> String {
    match input {
        Some(p) if !is_stdio(input) => p.display().to_string(),
        _ => "<stdin>".into(),
    }
}

/// Collects `-r` and `-R` recipients. Every problem is a usage error (exit 2) that names the
/// offending recipient, file and line; nothing is written before this succeeds.
fn load_recipients(a: &EncryptArgs) -> Result<Vec<AnyRecipient>> {
    let mut out = Vec::new();
    for r in &a.recipients {
        let parsed = r.parse::<AnyRecipient>().map_err(|e| {
            CliError::new(Exit::Usage, format!("invalid recipient {r:?}: {e}")).hint(
                "a recipient is an age public key: \"age1\" and 58 characters (X25519), or \"age1pq1\" and 1952 (post-quantum)",
            )
        })?;
        out.push(parsed);
    }
    for file in &a.recipients_files {
        let text = fs::read_to_string(file).map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("cannot read recipients file {}", file.display()),
            )
            .source(e)
        })?;
        let parsed = parse_recipients(&text).map_err(|e| match e {
            KeyFileError::Empty => {
                CliError::new(Exit::Usage, format!("no recipients in {}", file.display()))
            }
            other => CliError::new(
                Exit::Usage,
                format!("invalid recipient in {}", file.display()),
            )
            .source(other),
        })?;
        out.extend(parsed);
    }
    if out.is_empty() {
        return Err(
            CliError::new(Exit::Usage, "no recipients given").hint("pass -r age1… or -R FILE")
        );
    }
    Ok(out)
}

/// Loads identity files. A missing, unreadable, malformed or group/world-accessible file is
/// refused with exit 4: a secret key readable by others is not a usable key.
fn load_identities(files: &[PathBuf]) -> Result<Vec<AnyIdentity>> {
    let mut out = Vec::new();
    for file in files {
        let unusable = |what: &str| {
            CliError::new(
                Exit::NoKey,
                format!("{what} identity file {}", file.display()),
            )
        };
        let meta = fs::metadata(file).map_err(|e| unusable("cannot read").source(e))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(CliError::new(
                Exit::NoKey,
                format!(
                    "identity file {} is accessible by other users (mode {:04o})",
                    file.display(),
                    mode & 0o7777
                ),
            )
            .hint(format!("run: chmod 600 {}", file.display())));
        }
        let text = Zeroizing::new(
            fs::read_to_string(file).map_err(|e| unusable("cannot read").source(e))?,
        );
        let ids = parse_identities(&text).map_err(|e| unusable("invalid").source(e))?;
        out.extend(ids);
    }
    Ok(out)
}

/// `--json` needs `-o FILE`: stdout carries the data (`docs/cli.md` "JSON events").
pub(crate) fn json_needs_output(
    events: &Events,
    output: &Option<PathBuf>,
    command: &str,
) -> Result<()> {
    if events.json && is_stdio(output) {
        return Err(CliError::new(
            Exit::Usage,
            format!("{command} --json needs -o FILE: its stdout is the data"),
        ));
    }
    Ok(())
}

pub(crate) fn encrypt(a: &EncryptArgs, events: &Events) -> Result<()> {
    let io = &a.io;
    json_needs_output(events, &io.output, "encrypt")?;
    let recipients = load_recipients(a)?;
    let target = Target::resolve(&io.output, &io.input, io.force, !a.armor)?;
    let mut input = open_input(&io.input)?;
    let enc = Encryptor::new(&recipients).map_err(|e| match e {
        EncryptError::TooManyRecipients
        | EncryptError::HeaderTooLarge
        | EncryptError::MixedPostQuantum => CliError::new(Exit::Usage, e.to_string()),
        other => CliError::new(Exit::Usage, "cannot encrypt to these recipients").source(other),
    })?;
    let sink = target.open()?;
    let where_ = sink.describe();
    let write_err = |e: io::Error| storage_error(Path::new(&where_), e);
    let sink = if a.armor {
        let mut w = enc
            .wrap_output(ArmoredWriter::new(sink))
            .map_err(|e| encrypt_io(e, &where_))?;
        let n = pump(&mut input, &mut w, &io.input)?;
        let sink = w
            .finish()
            .and_then(ArmoredWriter::finish)
            .map_err(write_err)?;
        (sink, n)
    } else {
        let mut w = enc.wrap_output(sink).map_err(|e| encrypt_io(e, &where_))?;
        let n = pump(&mut input, &mut w, &io.input)?;
        (w.finish().map_err(write_err)?, n)
    };
    let (sink, plaintext_bytes) = sink;
    sink.commit()?;
    if events.json {
        events.emit(Json::Encrypted {
            output: where_,
            plaintext_bytes,
        });
    }
    Ok(())
}

fn encrypt_io(e: EncryptError, where_: &str) -> CliError {
    match e {
        EncryptError::Io(io) => storage_error(Path::new(where_), io),
        other => CliError::new(Exit::Internal, "encryption failed").source(other),
    }
}

/// Copies plaintext from `input` into the encrypting writer in whole chunks; returns the bytes
/// copied.
fn pump<W: Write>(input: &mut dyn Read, w: &mut W, name: &Option<PathBuf>) -> Result<u64> {
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CliError::new(
                    Exit::Storage,
                    format!("cannot read input {}", input_name(name)),
                )
                .source(e));
            }
        };
        w.write_all(&buf[..n])
            .map_err(|e| CliError::new(Exit::Storage, "cannot write output").source(e))?;
        total += n as u64;
    }
}

fn decrypt_error(e: DecryptError, input: &str) -> CliError {
    match e {
        DecryptError::NoMatch => CliError::new(
            Exit::NoKey,
            format!("no identity matches any recipient of {input}"),
        )
        .hint("is this file encrypted to you? pass the right -i FILE"),
        DecryptError::UnsupportedScrypt => CliError::new(
            Exit::NoKey,
            format!("{input} is passphrase-encrypted, which rogatory does not support"),
        ),
        DecryptError::Io(io) => {
            CliError::new(Exit::Storage, format!("cannot read input {input}")).source(io)
        }
        other => {
            CliError::new(Exit::Integrity, format!("{input} is not a valid age file")).source(other)
        }
    }
}

pub(crate) fn decrypt(a: &DecryptArgs, events: &Events) -> Result<()> {
    let io = &a.io;
    json_needs_output(events, &io.output, "decrypt")?;
    let target = Target::resolve(&io.output, &io.input, io.force, true)?;
    let identities = load_identities(&a.identities)?;
    let name = input_name(&io.input);
    let input = BufReader::with_capacity(IO_BUF, open_input(&io.input)?);
    let mut reader = Decryptor::new_detect(input)
        .and_then(|d| d.decrypt(&identities))
        .map_err(|e| decrypt_error(e, &name))?;
    let mut sink = target.open()?;
    let output = sink.describe();
    let plaintext_bytes = copy_plaintext(&mut reader, &mut sink, &name)?;
    sink.commit()?;
    if events.json {
        events.emit(Json::Decrypted {
            output,
            plaintext_bytes,
        });
    }
    Ok(())
}

/// Streams authenticated plaintext into the sink; any failure drops (removes) a file sink.
/// Returns the bytes written.
fn copy_plaintext<R: Read>(reader: &mut R, sink: &mut Sink, name: &str) -> Result<u64> {
    let mut buf = vec![0u8; IO_BUF];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let exit =
                    if PayloadError::from_io(&e).is_some() || ArmorError::from_io(&e).is_some() {
                        Exit::Integrity
                    } else {
                        Exit::Storage
                    };
                let what = if exit == Exit::Integrity {
                    format!("{name} failed authentication")
                } else {
                    format!("cannot read input {name}")
                };
                return Err(CliError::new(exit, what).source(e));
            }
        };
        sink.write_all(&buf[..n])
            .map_err(|e| storage_error(Path::new(&sink.describe()), e))?;
        total += n as u64;
    }
}
