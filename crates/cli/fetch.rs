//! `rogatory inbox` and `rogatory fetch`: the client library's (`rogatory_client::inbox`,
//! `rogatory_client::fetch`), with the inbox printed as lines or JSON and the fetch's events as
//! a progress bar, lines or JSON.

use rogatory_client::Event;
use rogatory_client::fetch::{FetchRequest, fetch as fetch_transfers};
use rogatory_client::inbox::{InboxRequest, inbox as list_inbox};

use crate::args::{FetchArgs, InboxArgs};
use crate::error::Result;
use crate::events::Events;
use crate::home::Home;

pub(crate) fn inbox(home: &Home, a: &InboxArgs, events: &Events) -> Result<()> {
    let entries = list_inbox(
        home,
        &InboxRequest {
            relay: a.relay.clone(),
        },
    )?;
    for e in &entries {
        events.inbox_entry(e);
    }
    if entries.is_empty() {
        if events.json {
            events.emit(rogatory_client::json::Event::InboxEmpty {});
        }
        events.emit_line("nothing awaits this agency");
    }
    Ok(())
}

pub(crate) fn fetch(home: &Home, a: &FetchArgs, events: &Events) -> Result<()> {
    let req = FetchRequest {
        relay: a.relay.clone(),
        transfers: a.transfers.clone(),
        all: a.all,
        output: a.output.clone(),
        force: a.force,
    };
    // The delivery receipts are this agency's.
    let me = home.card().ok().map(|c| c.id.to_string());
    let done = fetch_transfers(home, &req, &|e| match e {
        // `fetch` does not report its connection (docs/cli.md "JSON events").
        Event::Connected { .. } => {}
        Event::Fetched(d) => events.fetched(d, me.clone()),
        e => events.event(e),
    })?;
    // `--all` with nothing left to deliver (the human line came as an event).
    if done.transfers.is_empty() && events.json {
        events.emit(rogatory_client::json::Event::NothingToFetch {});
    }
    Ok(())
}
