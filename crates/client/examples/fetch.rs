//! Lists what awaits an agency at a relay and fetches all of it into a folder from a Rust
//! program, printing the client's events as JSON.
//!
//! ```sh
//! cargo run -p rogatory-client --example fetch -- HOME RELAY_ADDR OUTPUT_DIR
//! ```
//!
//! `HOME` is an agency home made by `rogatory agency init` (with its age identity: an analyst's
//! home, not a relay-only one) that trusts the relay's and the senders' cards. Running it again
//! after an interruption resumes; a transfer already fetched into `OUTPUT_DIR` is refused
//! (its files exist).

use rogatory_client::fetch::{FetchRequest, fetch};
use rogatory_client::inbox::{InboxRequest, inbox};
use rogatory_client::{Error, ErrorKind, Home};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [home, relay, output] = args.as_slice() else {
        return Err(Error::new(
            ErrorKind::Usage,
            "usage: fetch HOME RELAY_ADDR OUTPUT_DIR",
        ));
    };
    let home = Home::resolve(Some(home.as_ref()))?;

    // What awaits this agency.
    let waiting = inbox(
        &home,
        &InboxRequest {
            relay: relay.clone(),
        },
    )?;
    for i in &waiting {
        let e = &i.entry;
        let case = i
            .legal
            .as_ref()
            .and_then(|l| l.case_reference.as_ref())
            .map_or("?", |c| c.as_str());
        println!(
            "waiting: {} from {}, case {case}, {} files, {} bytes, {:?}",
            e.transfer, e.sender, e.files, e.ciphertext_bytes, e.state
        );
    }
    if waiting.is_empty() {
        println!("nothing awaits this agency");
        return Ok(());
    }

    // Fetch every one of them, one connection, events as JSON lines.
    let req = FetchRequest {
        relay: relay.clone(),
        transfers: waiting
            .iter()
            .map(|i| i.entry.transfer.to_string())
            .collect(),
        output: output.into(),
        ..Default::default()
    };
    let done = fetch(&home, &req, &|e| {
        if let Ok(line) = serde_json::to_string(e) {
            println!("{line}");
        }
    })?;
    for t in &done.transfers {
        println!(
            "transfer {} from {}: {} files, {} bytes downloaded, delivery receipt {}",
            t.transfer_id,
            t.sender,
            t.files,
            t.bytes_downloaded,
            t.receipt.display()
        );
    }
    Ok(())
}
