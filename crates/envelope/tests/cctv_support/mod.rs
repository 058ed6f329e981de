//! Reader for the CCTV age vector format (README in `tests/cctv-age/`).

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;

use rogatory_envelope::{
    AnyIdentity, ArmorError, ArmoredReader, DecryptError, Decryptor, PayloadError, PayloadKey,
    PayloadNonce, StreamWriter,
};
use sha2::{Digest, Sha256};

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cctv-age/testdata")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success(String),
    PayloadFailure(String),
    HeaderFailure,
    HmacFailure,
    NoMatch,
    ArmorFailure,
    Unsupported,
}

impl Outcome {
    fn class(&self) -> &'static str {
        match self {
            Self::Success(_) => "success",
            Self::PayloadFailure(_) => "payload failure",
            Self::HeaderFailure => "header failure",
            Self::HmacFailure => "HMAC failure",
            Self::NoMatch => "no match",
            Self::ArmorFailure => "armor failure",
            Self::Unsupported => "unsupported",
        }
    }
}

struct Vector {
    expect: String,
    payload: Option<String>,
    identities: Vec<AnyIdentity>,
    pq_identities: usize,
    passphrases: usize,
    armored: bool,
    body: Vec<u8>,
}

fn parse(name: &str) -> Result<Vector, String> {
    let raw = std::fs::read(dir().join(name)).map_err(|e| format!("{name}: {e}"))?;
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or(format!("{name}: no blank line"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| format!("{name}: {e}"))?;
    let mut v = Vector {
        expect: String::new(),
        payload: None,
        identities: vec![],
        pq_identities: 0,
        passphrases: 0,
        armored: false,
        body: raw[split + 2..].to_vec(),
    };
    let mut compressed = false;
    for line in head.lines() {
        let (k, val) = line
            .split_once(": ")
            .ok_or(format!("{name}: bad line {line:?}"))?;
        match k {
            "expect" => v.expect = val.to_owned(),
            "payload" => v.payload = Some(val.to_owned()),
            "identity" => {
                if val.starts_with("AGE-SECRET-KEY-PQ-") {
                    v.pq_identities += 1;
                }
                v.identities.push(
                    val.parse()
                        .map_err(|e| format!("{name}: identity {val}: {e}"))?,
                );
            }
            "passphrase" => v.passphrases += 1,
            "armored" => v.armored = val == "yes",
            "compressed" if val == "zlib" => compressed = true,
            "file key" | "comment" => {}
            // The README: "Files with unknown keys should be ignored"; we fail loudly instead
            // so a new key is looked at rather than silently skipped.
            other => return Err(format!("{name}: unknown vector key {other:?}")),
        }
    }
    if compressed {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&v.body[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{name}: zlib: {e}"))?;
        v.body = out;
    }
    Ok(v)
}

fn classify(e: &DecryptError) -> Outcome {
    match e {
        DecryptError::Armor(_) => Outcome::ArmorFailure,
        DecryptError::Header(_) => Outcome::HeaderFailure,
        DecryptError::UnsupportedScrypt => Outcome::Unsupported,
        DecryptError::NoMatch => Outcome::NoMatch,
        DecryptError::HeaderMac => Outcome::HmacFailure,
        other => panic!("unexpected error class: {other}"),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Decrypts `input` and reports what happened, with the hash of all released plaintext.
fn decrypt<R: std::io::BufRead>(input: R, ids: &[AnyIdentity]) -> Outcome {
    let d = match Decryptor::new(input) {
        Ok(d) => d,
        Err(e) => return classify(&e),
    };
    let mut reader = match d.decrypt(ids) {
        Ok(r) => r,
        Err(e) => return classify(&e),
    };
    let mut released = Vec::new();
    let mut buf = vec![0u8; 7919]; // odd size: chunk boundaries fall mid-buffer
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Outcome::Success(sha256_hex(&released)),
            Ok(n) => released.extend_from_slice(&buf[..n]),
            Err(e) if ArmorError::from_io(&e).is_some() => return Outcome::ArmorFailure,
            Err(e) if PayloadError::from_io(&e).is_some() => {
                return Outcome::PayloadFailure(sha256_hex(&released));
            }
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
}

/// Runs one vector; returns the kind it was counted as.
pub(crate) fn run_vector(name: &str) -> Result<String, String> {
    let v = parse(name)?;
    let got = if v.armored {
        decrypt(ArmoredReader::new(&v.body[..]), &v.identities)
    } else {
        decrypt(&v.body[..], &v.identities)
    };
    let expected = match v.expect.as_str() {
        "success" => Outcome::Success(v.payload.clone().ok_or("no payload")?),
        "payload failure" => Outcome::PayloadFailure(v.payload.clone().ok_or("no payload")?),
        "header failure" => Outcome::HeaderFailure,
        "HMAC failure" => Outcome::HmacFailure,
        "no match" => Outcome::NoMatch,
        "armor failure" => Outcome::ArmorFailure,
        other => return Err(format!("{name}: unknown expect {other:?}")),
    };
    let family = if v.passphrases > 0 {
        "scrypt"
    } else if v.pq_identities > 0 {
        "mlkem768x25519"
    } else {
        "x25519"
    };
    // The one deliberate deviation (`docs/envelope.md` §5.2): passphrase files are refused as
    // unsupported, except that scrypt mixed with another stanza is the exact header failure.
    let refusal = match family {
        "scrypt" if name != "scrypt_and_x25519" => Some(Outcome::Unsupported),
        _ => None,
    };
    let ok = got == expected || refusal.as_ref() == Some(&got);
    if !ok {
        return Err(format!(
            "{name}: expected {:?}{}, got {:?}",
            expected,
            refusal
                .map(|r| format!(" or refusal {r:?}"))
                .unwrap_or_default(),
            got
        ));
    }
    if got == expected && family != "scrypt" {
        check_round_trips(name, &v)?;
    }
    let how = if got == expected {
        "as expected"
    } else {
        "refused (unsupported)"
    };
    Ok(format!(
        "{family:<15} {:<7} {:<16} {how}",
        if v.armored { "armored" } else { "binary" },
        expected.class()
    ))
}

/// test-plan.md case 3 (non-malleability): a header that parses re-encodes byte for byte, and for
/// a success vector, re-encrypting STREAM with the recovered file key and nonce reproduces the
/// ciphertext exactly.
fn check_round_trips(name: &str, v: &Vector) -> Result<(), String> {
    let binary = if v.armored {
        let mut out = Vec::new();
        if ArmoredReader::new(&v.body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return Ok(()); // armor failure vectors have nothing to round-trip
        }
        out
    } else {
        v.body.clone()
    };
    let mut cursor = Cursor::new(&binary[..]);
    let Ok(d) = Decryptor::new(&mut cursor) else {
        return Ok(());
    };
    let encoded = d.header().encode();
    if !binary.starts_with(&encoded) {
        return Err(format!("{name}: header does not re-encode byte for byte"));
    }
    if v.expect != "success" {
        return Ok(());
    }
    let file_key = d
        .unwrap_file_key(&v.identities)
        .map_err(|e| format!("{name}: {e}"))?;
    let mut plain = Vec::new();
    Decryptor::new(&binary[..])
        .and_then(|d| d.decrypt_with_file_key(&file_key))
        .map_err(|e| format!("{name}: {e}"))?
        .read_to_end(&mut plain)
        .map_err(|e| format!("{name}: {e}"))?;
    let payload = &binary[encoded.len()..];
    let nonce = PayloadNonce(payload[..16].try_into().map_err(|_| "short nonce")?);
    let mut w = StreamWriter::new(Vec::new(), PayloadKey::derive(&file_key, &nonce));
    w.write_all(&plain).map_err(|e| e.to_string())?;
    let again = w.finish().map_err(|e| e.to_string())?;
    if again != payload[16..] {
        return Err(format!("{name}: STREAM re-encryption differs"));
    }
    Ok(())
}
