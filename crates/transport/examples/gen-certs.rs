//! Regenerates `certs-example/`: a demo CA, certificates for two agencies and a relay, and a CRL.
//!
//! `cargo run -p rogatory-transport --example gen-certs -- certs-example`
//!
//! Demo material only: the private keys are published in the repository.

use std::fs;
use std::io::Write;
use std::path::Path;

use rogatory_transport::certs::{Ca, Validity};
use time::{Duration, OffsetDateTime};

fn write(dir: &Path, name: &str, text: &str, secret: bool) -> std::io::Result<()> {
    let path = dir.join(name);
    let mut o = fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if secret { 0o600 } else { 0o644 });
    }
    o.open(&path)?.write_all(text.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "certs-example".into());
    let dir = Path::new(&dir);
    fs::create_dir_all(dir)?;
    let ten_years = Validity::days_from_now(3650);
    let ca = Ca::generate("Rogatory demo CA", ten_years)?;
    write(dir, "ca.pem", ca.cert_pem(), false)?;
    write(dir, "ca.key", ca.key_pem(), true)?;
    // agency-a sends; agency-b receives with its analysts' client certificate; relay-b is
    // agency-b's relay: its certificate names agency-b (a relay speaks for its agency) with a
    // key of its own, so agency-b's card pins both keys.
    for (file, agency, serial) in [
        ("agency-a", "agency-a", 1),
        ("agency-b", "agency-b", 2),
        ("relay-b", "agency-b", 3),
        ("revoked", "agency-a", 4),
    ] {
        let c = ca.issue(&agency.parse()?, ten_years, serial)?;
        write(dir, &format!("{file}.pem"), &c.cert_pem, false)?;
        write(dir, &format!("{file}.key"), &c.key_pem, true)?;
    }
    let now = OffsetDateTime::now_utc();
    write(
        dir,
        "crl.pem",
        &ca.crl(&[4], now - Duration::hours(1), now + Duration::days(3650))?,
        false,
    )?;
    Ok(())
}
