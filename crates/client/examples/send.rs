//! Sends a folder through a relay from a Rust program, printing the client's events as JSON.
//!
//! ```sh
//! cargo run -p rogatory-client --example send -- HOME RELAY_ADDR RECIPIENT PATH…
//! ```
//!
//! `HOME` is an agency home made by `rogatory agency init` that trusts the recipient's card.

use rogatory_client::send::{LegalInput, SendRequest, send};
use rogatory_client::{Error, ErrorKind, Home};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [home, relay, to, paths @ ..] = args.as_slice() else {
        return Err(Error::new(
            ErrorKind::Usage,
            "usage: send HOME RELAY_ADDR RECIPIENT PATH…",
        ));
    };
    let home = Home::resolve(Some(home.as_ref()))?;
    let req = SendRequest {
        relay: relay.clone(),
        to: vec![to.clone()],
        legal: LegalInput {
            case: Some("XX-2026-0042".into()),
            legal_basis: Some("MLAT art. 18".into()),
            purpose: Some("criminal investigation".into()),
            retain_until: Some("2030-12-31".into()),
            ..Default::default()
        },
        paths: paths.iter().map(Into::into).collect(),
        ..Default::default()
    };
    let done = send(&home, &req, &|e| {
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
    })?;
    println!(
        "transfer {} receipted: {} files, {} bytes sent, receipt {}",
        done.transfer,
        done.files,
        done.bytes_sent,
        done.receipt.display()
    );
    Ok(())
}
