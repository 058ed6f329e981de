//! `rogatory agency init|card|fingerprint` and `rogatory trust add|list|remove`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use rogatory_custody::{
    AgencyIdentity, CardChain, KeyKind, Revocation, Timestamp, fingerprint_matches,
    signing_key_sha256, split_notes,
};
use rogatory_envelope::HybridIdentity;
use rogatory_transport::certs::{Validity, self_signed};

use rogatory_client::json::Event as Json;

use crate::args::{AgencyInitArgs, AgencyRevokeArgs, RevokeKey, TrustAddArgs, TrustRevokeArgs};
use crate::error::{CliError, Exit, Result};
use crate::events::Events;
use crate::home::{Home, parse_agency, read_chain, write_file};

/// Creates the agency's identity, TLS key and self-signed certificate, and its signed card.
pub(crate) fn init(home: &Home, a: &AgencyInitArgs, events: &Events) -> Result<()> {
    let id = parse_agency(&a.id)?;
    if a.jurisdiction.len() != 2 || !a.jurisdiction.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--jurisdiction {:?}: expected an ISO 3166-1 alpha-2 code such as DE",
                a.jurisdiction
            ),
        ));
    }
    for f in ["identity.txt", "card.note", "tls/key.pem"] {
        if home.path(f).exists() {
            return Err(CliError::new(
                Exit::Safety,
                format!("{} already exists", home.path(f).display()),
            )
            .hint("this home already holds an agency; use another --home"));
        }
    }
    let full = AgencyIdentity::generate(id.clone());
    let identity = if a.relay_only {
        full.relay_only()
    } else {
        full
    };
    let tls = self_signed(&id, Validity::days_from_now(825))
        .map_err(|e| CliError::new(Exit::Internal, "generating the TLS certificate").source(e))?;
    let tls_id =
        rogatory_transport::TlsIdentity::from_pem(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes())
            .map_err(|e| {
                CliError::new(Exit::Internal, "loading the new TLS certificate").source(e)
            })?;
    let pin = tls_id
        .spki_sha256()
        .map_err(|e| CliError::new(Exit::Internal, "TLS key").source(e))?;
    // Every card issued says from when it is valid (`custody.md` §8, §8.5).
    let (card, note) = identity
        .issue_card(&a.name, &a.jurisdiction, vec![pin], Some(now_ts()), None)
        .map_err(|e| CliError::new(Exit::Usage, "making the card").source(e))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // The home and its directories are private whatever the umask (`cli.md` "Home").
    crate::home::create_private_dir(&home.root)?;
    crate::home::make_private(&home.root)?;
    write_file(
        &home.path("tls/key.pem"),
        tls.key_pem.as_bytes(),
        0o600,
        false,
    )?;
    write_file(
        &home.path("tls/cert.pem"),
        tls.cert_pem.as_bytes(),
        0o644,
        false,
    )?;
    write_file(
        &home.path("identity.txt"),
        identity.to_secret_text(&now).as_bytes(),
        0o600,
        false,
    )?;
    write_file(&home.path("card.note"), note.as_bytes(), 0o644, false)?;
    if events.json {
        events.emit(Json::AgencyCreated {
            agency: id.to_string(),
            home: home.root.display().to_string(),
            card: home.path("card.note").display().to_string(),
            fingerprint: card.fingerprint().to_string(),
            relay_only: a.relay_only,
        });
        return Ok(());
    }
    outln!("agency {id} created in {}", home.root.display());
    outln!("card: {}", home.path("card.note").display());
    outln!("fingerprint: {}", card.fingerprint());
    if a.relay_only {
        outln!("relay-only: this home holds no age identity and cannot decrypt evidence");
    }
    Ok(())
}

/// Prints this agency's signed card, `card.note`: what a partner passes to `trust add` (after
/// checking the fingerprint with this agency over another channel). `--json`: one `card` event
/// with the card's body and its fingerprint.
pub(crate) fn card(home: &Home, events: &Events) -> Result<()> {
    let card = home.card()?;
    if events.json {
        let body: serde_json::Value = serde_json::from_slice(card.to_json().as_bytes())
            .map_err(|e| CliError::new(Exit::Internal, "the card's JSON").source(e))?;
        events.emit(Json::Card {
            card: body,
            fingerprint: card.fingerprint().to_string(),
        });
        return Ok(());
    }
    let p = home.path("card.note");
    let note = std::fs::read(&p).map_err(|e| crate::error::io("reading", &p, e))?;
    match std::io::Write::write_all(&mut std::io::stdout(), &note) {
        // A reader that went away (`| head`) ends the output quietly.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(crate::error::io(
            "writing the card to",
            Path::new("stdout"),
            e,
        )),
        _ => Ok(()),
    }
}

pub(crate) fn fingerprint(home: &Home, card: Option<&Path>, events: &Events) -> Result<()> {
    // A card-chain file names its newest card (`custody.md` §8.5).
    let c = match card {
        Some(p) => read_chain(p)?.newest().clone(),
        None => home.card()?,
    };
    if events.json {
        events.emit(Json::Fingerprint {
            agency: c.id.to_string(),
            fingerprint: c.fingerprint().to_string(),
        });
    } else {
        outln!("{}", c.fingerprint());
    }
    Ok(())
}

/// `trust add FILE`: FILE holds one card or a card chain (`custody.md` §8.5). A chain whose
/// cards link to the card already trusted for that agency (its newest key appears in the chain,
/// or the chain's first card succeeds it) is accepted without a fingerprint, unless that key is
/// revoked here; anything else needs the fingerprint of the newest card, as before.
pub(crate) fn trust_add(home: &Home, a: &TrustAddArgs, events: &Events) -> Result<()> {
    let note = std::fs::read(&a.card).map_err(|e| {
        CliError::new(
            Exit::Usage,
            format!("cannot read card {}", a.card.display()),
        )
        .source(e)
    })?;
    // The bytes read once: what is checked is what is stored.
    let chain = CardChain::parse(&note).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!(
                "{}: not a valid agency card or card chain",
                a.card.display()
            ),
        )
        .source(e)
    })?;
    let card = chain.newest().clone();
    let fp = card.fingerprint();
    let dest = home.path(&format!("trust/{}.card", card.id));
    let linked = linked_chain(home, &dest, &note);
    match (&a.fingerprint, &linked) {
        (Some(typed), _) => {
            if !fingerprint_matches(typed, &fp) {
                // The card's own fingerprint is never shown here: pasting it would skip the
                // out-of-band check the fingerprint exists for.
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "the card of {} does not have the fingerprint given; it is not trusted",
                        card.id
                    ),
                )
                .hint(format!(
                    "ask {} to read you its fingerprint (`rogatory agency fingerprint`) over a separate channel, such as a phone call",
                    card.id
                )));
            }
        }
        (None, Some(_)) => {}
        (None, None) => {
            if !std::io::stdin().is_terminal() {
                return Err(
                    CliError::new(Exit::Usage, "no --fingerprint given").hint(format!(
                        "ask {} for its fingerprint over a separate channel (it runs `rogatory agency fingerprint`), then pass it with --fingerprint",
                        card.id
                    )),
                );
            }
            errln!(
                "agency {} ({}, {}) has fingerprint\n  {fp}",
                card.id,
                card.name,
                card.jurisdiction
            );
            eprint!("Did you confirm it with the agency over a separate channel? Type yes: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            if line.trim() != "yes" {
                return Err(CliError::new(Exit::Usage, "not trusted"));
            }
        }
    }
    // A card whose key the trusted chain already holds adds nothing: the chain is kept (its
    // retired keys still verify what they signed, `custody.md` §8.5).
    let kept = std::fs::read(&dest).ok().filter(|b| {
        linked.is_none() && CardChain::parse(b).is_ok_and(|t| t.holds_key(&card.verifier_key))
    });
    let stored = match (&linked, &kept) {
        (Some((bytes, _)), _) => bytes.as_slice(),
        (None, Some(bytes)) => bytes.as_slice(),
        (None, None) => note.as_slice(),
    };
    write_file(&dest, stored, 0o644, true)?;
    if events.json {
        events.emit(trusted(&card));
    } else if let Some((_, previous)) = &linked {
        outln!(
            "trusted {} ({fp}): its card chain links to the card trusted before ({previous})",
            card.id
        );
    } else {
        outln!("trusted {} ({fp})", card.id);
    }
    Ok(())
}

/// The chain to store when the cards in `new` extend the chain trusted in `dest`
/// (`custody.md` §8.5): the trusted chain followed by the cards of `new` after its newest key.
/// `None` when nothing links (no card trusted, a chain that does not verify, nothing new), or
/// when the trusted newest signing key is revoked in this home. Returns the bytes and the
/// fingerprint of the card trusted before.
fn linked_chain(home: &Home, dest: &Path, new: &[u8]) -> Option<(Vec<u8>, String)> {
    let old_bytes = std::fs::read(dest).ok()?;
    let old = CardChain::parse(&old_bytes).ok()?;
    let head = &old.newest().verifier_key;
    let new_notes = split_notes(new);
    let new_chain = CardChain::from_notes(&new_notes).ok()?;
    let after = new_chain
        .cards()
        .position(|c| &c.verifier_key == head)
        .map_or(0, |k| k + 1);
    if after >= new_notes.len() {
        return None;
    }
    // A revoked trusted key cannot hand trust on to a successor (`custody.md` §8.5); nor can
    // one whose revocations cannot be read.
    let store = home.trust_store().ok()?;
    if store
        .revocations()
        .get(KeyKind::Signing, &signing_key_sha256(head))
        .is_some()
    {
        return None;
    }
    let mut notes = split_notes(&old_bytes);
    notes.extend_from_slice(&new_notes[after..]);
    CardChain::from_notes(&notes).ok()?;
    Some((notes.concat(), old.newest().fingerprint().to_string()))
}

pub(crate) fn trust_list(home: &Home, events: &Events) -> Result<()> {
    let store = home.trust_store()?;
    let own = home.card().ok().map(|c| c.id.clone());
    for c in store.cards() {
        if Some(&c.id) == own.as_ref() {
            continue;
        }
        if events.json {
            events.emit(trusted(c));
            continue;
        }
        outln!(
            "{}\t{}\t{}\t{}",
            c.id,
            c.jurisdiction,
            c.fingerprint(),
            c.name
        );
    }
    Ok(())
}

pub(crate) fn trust_remove(home: &Home, id: &str, events: &Events) -> Result<()> {
    let id = parse_agency(id)?;
    let p = home.path(&format!("trust/{id}.card"));
    match std::fs::remove_file(&p) {
        Ok(()) => {
            if events.json {
                events.emit(Json::Untrusted {
                    agency: id.to_string(),
                });
            } else {
                outln!("removed {id}");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(CliError::new(Exit::Usage, format!("{id} is not trusted")))
        }
        Err(e) => Err(crate::error::io("removing", &p, e)),
    }
}

/// Re-signs this agency's card from its identity, after adding a hybrid post-quantum age key
/// with `add_pq` (`docs/custody.md` §8.2). The signing key, hence the fingerprint, is unchanged.
pub(crate) fn reissue_card(home: &Home, add_pq: bool, events: &Events) -> Result<()> {
    let identity = home.identity()?;
    if identity.age_identity().is_none() {
        return Err(
            CliError::new(Exit::NoKey, "this home holds no age identity (relay-only)").hint(
                "re-issue the card in the agency's own home, then run `agency export-relay --update DIR`",
            ),
        );
    }
    let identity = if add_pq {
        if identity.age_identity_pq().is_some() {
            return Err(CliError::new(
                Exit::Safety,
                "this agency already has a post-quantum age key",
            )
            .hint("run `agency reissue-card` without --add-pq to re-sign the card only"));
        }
        identity.with_pq(HybridIdentity::generate())
    } else {
        identity
    };
    let old = home.card()?;
    if old.previous_key.is_some() {
        // `custody.md` §8.5: a rotated card is signed by the previous key too, which this home
        // no longer holds; a re-issued card without that signature would break the chain.
        return Err(CliError::new(
            Exit::Safety,
            "this card was issued by `agency rotate` and is signed by the previous key too",
        )
        .hint("run `agency rotate` to issue a new card (it has a post-quantum age key)"));
    }
    let (card, note) = identity
        .issue_card(
            &old.name,
            &old.jurisdiction,
            old.tls_spki_sha256.clone(),
            Some(now_ts()),
            None,
        )
        .map_err(|e| CliError::new(Exit::Usage, "making the card").source(e))?;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if add_pq {
        write_file(
            &home.path("identity.txt"),
            identity.to_secret_text(&now).as_bytes(),
            0o600,
            true,
        )?;
    }
    write_file(&home.path("card.note"), note.as_bytes(), 0o644, true)?;
    if events.json {
        events.emit(Json::CardReissued {
            agency: card.id.to_string(),
            card: home.path("card.note").display().to_string(),
            fingerprint: card.fingerprint().to_string(),
            post_quantum: card.age_recipient_pq.is_some(),
        });
        return Ok(());
    }
    outln!("card re-issued: {}", home.path("card.note").display());
    outln!("fingerprint (unchanged): {}", card.fingerprint());
    outln!(
        "post-quantum age recipient: {}",
        if card.age_recipient_pq.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}

/// Writes a relay home for this agency without its age identity (`docs/cli.md`).
pub(crate) fn export_relay(home: &Home, dir: &Path, update: bool, events: &Events) -> Result<()> {
    let identity = home.identity()?.relay_only();
    let to = Home {
        root: dir.to_owned(),
    };
    match (dir.exists(), update) {
        (true, false) => {
            return Err(
                CliError::new(Exit::Safety, format!("{} already exists", dir.display())).hint(
                    "pass --update to bring an existing relay home of this agency up to date",
                ),
            );
        }
        (false, true) => {
            return Err(CliError::new(
                Exit::Usage,
                format!("{}: no relay home to update", dir.display()),
            ));
        }
        // Only a home of this agency whose card this agency's chain holds (the same card, or
        // one it rotated from): never another agency's home, nor a diverged one.
        (true, true) => check_updatable(home, &to, identity.id())?,
        (false, false) => {}
    }
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let copy = |rel: &str, mode: u32| -> Result<()> {
        let src = home.path(rel);
        if !src.exists() {
            return Ok(());
        }
        let b = std::fs::read(&src).map_err(|e| crate::error::io("reading", &src, e))?;
        write_file(&to.path(rel), &b, mode, update)
    };
    write_file(
        &to.path("identity.txt"),
        identity.to_secret_text(&now).as_bytes(),
        0o600,
        update,
    )?;
    copy("tls/key.pem", 0o600)?;
    // The card chain too (`custody.md` §8.5): the relay verifies its log's older checkpoints
    // with the retired log keys.
    for f in [
        "tls/cert.pem",
        "tls/ca.pem",
        "tls/crl.pem",
        // The chain before the card, as `agency rotate` installs them.
        "card-chain.note",
        "card.note",
    ] {
        copy(f, 0o644)?;
    }
    for sub in ["trust", "trust/revoked"] {
        if let Ok(rd) = std::fs::read_dir(home.path(sub)) {
            for e in rd.flatten().filter(|e| e.path().is_file()) {
                if let Some(name) = e.file_name().to_str() {
                    copy(&format!("{sub}/{name}"), 0o644)?;
                }
            }
        }
    }
    if update && !events.json {
        outln!(
            "relay home {} updated for {}; restart its relay to sign with the new keys",
            dir.display(),
            identity.id()
        );
        return Ok(());
    }
    if events.json {
        events.emit(Json::RelayHomeExported {
            agency: identity.id().to_string(),
            home: dir.display().to_string(),
        });
        return Ok(());
    }
    outln!(
        "relay home for {} written to {} (no age identity)",
        identity.id(),
        dir.display()
    );
    Ok(())
}

/// `export-relay --update`: `to` must be a home of `agency` whose card is one of this home's
/// card chain (the current card, or one this agency rotated from: `custody.md` §8.5).
fn check_updatable(home: &Home, to: &Home, agency: &rogatory_custody::AgencyId) -> Result<()> {
    let theirs = to.card().map_err(|e| {
        CliError::new(
            Exit::Safety,
            format!("{}: not a relay home to update", to.root.display()),
        )
        .source(e)
    })?;
    let ours = home.card_chain()?;
    if &theirs.id != agency || !ours.cards().any(|c| *c == *theirs) {
        return Err(CliError::new(
            Exit::Safety,
            format!(
                "{} is the home of {} with a card this agency's chain does not hold; it is not updated",
                to.root.display(),
                theirs.id
            ),
        ));
    }
    Ok(())
}

/// The `trusted` event of a card (`trust add`, `trust list`).
fn trusted(c: &rogatory_custody::AgencyCard) -> Json {
    Json::Trusted {
        agency: c.id.to_string(),
        name: c.name.clone(),
        jurisdiction: c.jurisdiction.clone(),
        fingerprint: c.fingerprint().to_string(),
        post_quantum: c.age_recipient_pq.is_some(),
    }
}

/// The revocations of `agency`'s `key` as the card names them: the TLS pins, the signing key, or
/// the age recipients (X25519 and post-quantum).
fn revocations_of(
    issuer: &rogatory_custody::AgencyId,
    card: &rogatory_custody::AgencyCard,
    key: RevokeKey,
    reason: &str,
) -> Result<Vec<Revocation>> {
    let reason: rogatory_custody::Text = reason.parse().map_err(|_| {
        CliError::new(
            Exit::Usage,
            format!("--reason {reason:?}: one line of text without leading or trailing spaces"),
        )
    })?;
    let time = rogatory_custody::Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let keys = match key {
        RevokeKey::Tls => card
            .tls_spki_sha256
            .iter()
            .map(|k| (KeyKind::Tls, *k))
            .collect(),
        RevokeKey::Signing => vec![(KeyKind::Signing, signing_key_sha256(&card.verifier_key))],
        RevokeKey::Age => std::iter::once(card.age_recipient.to_string())
            .chain(card.age_recipient_pq.iter().map(ToString::to_string))
            .map(|r| {
                (
                    KeyKind::Age,
                    rogatory_custody::Sha256Digest::of(r.as_bytes()),
                )
            })
            .collect(),
    };
    if keys.is_empty() {
        return Err(CliError::new(
            Exit::Usage,
            format!("the card of {} pins no TLS key", card.id),
        ));
    }
    Ok(keys
        .into_iter()
        .map(|(kind, key_sha256)| Revocation {
            issuer: issuer.clone(),
            time,
            agency: card.id.clone(),
            kind,
            key_sha256,
            reason: reason.clone(),
        })
        .collect())
}

/// Stores a verified revocation under `trust/revoked/` (public, 0644) and reports it.
/// Of two revocations of one key the earlier counts (`custody.md` §8.3): one already stored
/// from an earlier time is kept, and reported, instead of the new one.
fn store_revocation(home: &Home, r: &Revocation, note: &[u8], events: &Events) -> Result<()> {
    let dest = home.path(&format!("trust/revoked/{}", r.file_name()));
    let stored = std::fs::read(&dest).ok().and_then(|b| {
        let store = home.trust_store().ok()?;
        let own = home.card().ok()?.id.clone();
        let old = Revocation::open(&b, &store, &own).ok()?.into_inner();
        (old.time <= r.time).then_some(old)
    });
    let r = match &stored {
        Some(old) => old,
        None => {
            write_file(&dest, note, 0o644, true)?;
            r
        }
    };
    if events.json {
        events.emit(Json::KeyRevoked {
            agency: r.agency.to_string(),
            key: r.kind.as_str().to_owned(),
            key_sha256: r.key_sha256.to_string(),
            issuer: r.issuer.to_string(),
            time: r.time.to_string(),
            reason: r.reason.as_str().to_owned(),
            path: dest.display().to_string(),
        });
    } else {
        outln!(
            "revoked {} key {} of {} from {} ({})",
            r.kind,
            r.key_sha256,
            r.agency,
            r.time,
            dest.display()
        );
    }
    Ok(())
}

/// `agency revoke --key tls|signing|age`: signs a revocation of this agency's own key with its
/// signing key, stores it in this home and writes it to `-o FILE` or standard output.
pub(crate) fn revoke(home: &Home, a: &AgencyRevokeArgs, events: &Events) -> Result<()> {
    let identity = home.identity()?;
    let card = home.card()?;
    let revocations = if a.retired {
        // `custody.md` §8.5: the retired signing keys, signed with the current key (a key may
        // revoke the keys of earlier cards). Retired TLS and age keys are used by nobody (TLS
        // pins and encryption use the current card only).
        if !matches!(a.key, RevokeKey::Signing) {
            return Err(CliError::new(
                Exit::Usage,
                "--retired revokes retired signing keys only: pass --key signing",
            ));
        }
        let chain = home.card_chain()?;
        let mut out = Vec::new();
        for old in chain.cards().take(chain.len().saturating_sub(1)) {
            out.extend(revocations_of(identity.id(), old, a.key, &a.reason)?);
        }
        if out.is_empty() {
            return Err(CliError::new(
                Exit::Usage,
                format!("{} has no retired key: it never rotated", identity.id()),
            ));
        }
        out
    } else {
        revocations_of(identity.id(), &card, a.key, &a.reason)?
    };
    let mut notes = String::new();
    for r in revocations {
        let note = r
            .sign(identity.signer())
            .map_err(|e| CliError::new(Exit::Internal, "signing the revocation").source(e))?;
        store_revocation(home, &r, note.as_bytes(), events)?;
        notes.push_str(&note);
    }
    match &a.output {
        Some(p) => write_file(p, notes.as_bytes(), 0o644, false)?,
        None if events.json => {}
        None => {
            if let Err(e) = std::io::stdout().write_all(notes.as_bytes())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(crate::error::io(
                    "writing the revocation to",
                    Path::new("stdout"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// `trust revoke FILE` imports a partner's revocation (verified against the card of the agency
/// it names); `trust revoke AGENCY --key tls|signing|age` signs a local revocation with this
/// agency's key. Either is stored under `trust/revoked/`, where a running relay picks it up.
pub(crate) fn trust_revoke(home: &Home, a: &TrustRevokeArgs, events: &Events) -> Result<()> {
    let store = home.trust_store()?;
    let own = home.card()?.id.clone();
    let Some(key) = a.key else {
        if a.reason.is_some() {
            return Err(CliError::new(Exit::Usage, "--reason needs --key")
                .hint("a revocation file carries its own reason"));
        }
        let p = Path::new(&a.target);
        let b = std::fs::read(p).map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("cannot read revocation {}", p.display()),
            )
            .source(e)
        })?;
        // A file may hold several revocations (one per TLS pin): one note each.
        let mut n = 0;
        for note in split_notes(&b) {
            let r = Revocation::open(note, &store, &own).map_err(|e| {
                CliError::new(
                    Exit::Integrity,
                    format!("{}: not a valid key revocation", p.display()),
                )
                .source(e)
                .hint("it must be signed by the agency it names, whose card is trusted here")
            })?;
            store_revocation(home, &r, note, events)?;
            n += 1;
        }
        if n == 0 {
            return Err(CliError::new(
                Exit::Integrity,
                format!("{}: holds no key revocation", p.display()),
            ));
        }
        return Ok(());
    };
    let agency = parse_agency(&a.target)?;
    let card = store
        .get(&agency)
        .ok_or_else(|| CliError::new(Exit::Usage, format!("{agency} is not trusted")))?;
    let identity = home.identity()?;
    let reason = a.reason.as_deref().unwrap_or("key revoked");
    for r in revocations_of(identity.id(), card, key, reason)? {
        let note = r
            .sign(identity.signer())
            .map_err(|e| CliError::new(Exit::Internal, "signing the revocation").source(e))?;
        store_revocation(home, &r, note.as_bytes(), events)?;
    }
    Ok(())
}

/// Now, as a card's `valid_from` (`custody.md` §8).
fn now_ts() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// `agency rotate` (`custody.md` §8.5): new signing, age (X25519 and hybrid) and TLS keys, and a
/// new card naming the previous key and signed by both. The retired age secrets are kept under
/// `retired/` (0600) so transfers already encrypted to them still open; `card-chain.note`
/// holds every card this agency issued, oldest first, for partners and the relay home.
pub(crate) fn rotate(home: &Home, events: &Events) -> Result<()> {
    if install_staged(home)? {
        // An interrupted rotation, now installed: report it instead of rotating again.
        errln!("rogatory: completed an interrupted `agency rotate`");
        let chain = home.card_chain()?;
        let mut cards = chain.cards().rev();
        let (Some(card), Some(prev)) = (cards.next(), cards.next()) else {
            return Err(CliError::new(
                Exit::Internal,
                "no previous card after a rotation",
            ));
        };
        let retired = home.path(&format!(
            "retired/{}.identity.txt",
            retired_stem(card.valid_from)
        ));
        return report_rotation(home, events, card, prev, &retired);
    }
    let old = home.identity()?;
    if old.age_identity().is_none() {
        return Err(
            CliError::new(Exit::NoKey, "this home holds no age identity (relay-only)").hint(
                "rotate the keys in the agency's own home, then run `agency export-relay --update DIR`",
            ),
        );
    }
    let chain = home.card_chain()?;
    let prev = chain.newest().clone();
    if prev.verifier_key != old.signer().verifier() {
        return Err(CliError::new(
            Exit::Integrity,
            format!(
                "{} is not signed by this home's identity",
                home.path("card.note").display()
            ),
        ));
    }
    // The next whole second: what the previous key signed during this second (times have
    // second precision) stays before the new card's `valid_from` (`custody.md` §8.5).
    let valid_from = Timestamp::from_unix(now_ts().unix().saturating_add(1))
        .map_err(|e| CliError::new(Exit::Internal, "the time").source(e))?;
    let new = AgencyIdentity::generate(old.id().clone());
    let tls = self_signed(new.id(), Validity::days_from_now(825))
        .map_err(|e| CliError::new(Exit::Internal, "generating the TLS certificate").source(e))?;
    let pin =
        rogatory_transport::TlsIdentity::from_pem(tls.cert_pem.as_bytes(), tls.key_pem.as_bytes())
            .and_then(|t| t.spki_sha256())
            .map_err(|e| {
                CliError::new(Exit::Internal, "loading the new TLS certificate").source(e)
            })?;
    let (card, note) = new
        .issue_card(
            &prev.name,
            &prev.jurisdiction,
            vec![pin],
            Some(valid_from),
            Some(old.signer()),
        )
        .map_err(|e| CliError::new(Exit::Internal, "making the card").source(e))?;
    let chain_path = home.path("card-chain.note");
    let mut chain_bytes = match std::fs::read(&chain_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = home.path("card.note");
            std::fs::read(&p).map_err(|e| crate::error::io("reading", &p, e))?
        }
        Err(e) => return Err(crate::error::io("reading", &chain_path, e)),
    };
    chain_bytes.extend_from_slice(note.as_bytes());
    CardChain::parse(&chain_bytes)
        .map_err(|e| CliError::new(Exit::Internal, "the new card chain").source(e))?;
    let stamp = valid_from.to_string();
    let retired = home.path(&format!(
        "retired/{}.identity.txt",
        retired_stem(Some(valid_from))
    ));
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // `custody.md` §8.5, `cli.md` "Rotating keys": the retired secrets first, so no key is
    // ever lost; then every new file is staged under `rotate.new/`, marked complete, and
    // installed by renames (`card.note` last). An interrupted installation is completed by the
    // next `agency rotate`; an incomplete stage is discarded (nothing of it was installed).
    write_file(
        &retired,
        old.retired_secret_text(&stamp).as_bytes(),
        0o600,
        false,
    )?;
    let stage = home.path(STAGE);
    let secret = new.to_secret_text(&now);
    let staged: [(&str, &[u8], u32); 5] = [
        ("tls/key.pem", tls.key_pem.as_bytes(), 0o600),
        ("tls/cert.pem", tls.cert_pem.as_bytes(), 0o644),
        ("identity.txt", secret.as_bytes(), 0o600),
        ("card-chain.note", &chain_bytes, 0o644),
        ("card.note", note.as_bytes(), 0o644),
    ];
    for (f, data, mode) in staged {
        write_file(&stage.join(f), data, mode, true)?;
    }
    write_file(&stage.join(STAGE_COMPLETE), b"", 0o600, true)?;
    install_staged(home)?;
    report_rotation(home, events, &card, &prev, &retired)
}

/// The staging directory of `agency rotate` and its completion marker.
const STAGE: &str = "rotate.new";
const STAGE_COMPLETE: &str = "complete";
/// The files `agency rotate` replaces, in the order it installs them (`card.note` last).
const ROTATED: [&str; 5] = [
    "tls/key.pem",
    "tls/cert.pem",
    "identity.txt",
    "card-chain.note",
    "card.note",
];

/// Installs a staged rotation by renames; returns whether there was one. A stage without its
/// completion marker was never installed and is removed.
fn install_staged(home: &Home) -> Result<bool> {
    let stage = home.path(STAGE);
    if !stage.exists() {
        return Ok(false);
    }
    let complete = stage.join(STAGE_COMPLETE).exists();
    if complete {
        for f in ROTATED {
            let (from, to) = (stage.join(f), home.path(f));
            if from.exists() {
                std::fs::rename(&from, &to).map_err(|e| crate::error::io("renaming", &to, e))?;
                if let Some(dir) = to.parent() {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| crate::error::io("syncing", dir, e))?;
                }
            }
        }
    }
    std::fs::remove_dir_all(&stage).map_err(|e| crate::error::io("removing", &stage, e))?;
    Ok(complete)
}

/// Reports a rotation: the new card, the previous one, the retired secrets.
fn report_rotation(
    home: &Home,
    events: &Events,
    card: &rogatory_custody::AgencyCard,
    prev: &rogatory_custody::AgencyCard,
    retired: &Path,
) -> Result<()> {
    let stamp = card.valid_from.map(|t| t.to_string()).unwrap_or_default();
    let chain_path = home.path("card-chain.note");
    if events.json {
        events.emit(Json::CardRotated {
            agency: card.id.to_string(),
            card: home.path("card.note").display().to_string(),
            card_chain: chain_path.display().to_string(),
            fingerprint: card.fingerprint().to_string(),
            previous_fingerprint: prev.fingerprint().to_string(),
            valid_from: stamp,
            retired: retired.display().to_string(),
        });
        return Ok(());
    }
    outln!("keys of {} rotated, new card valid from {stamp}", card.id);
    outln!("fingerprint: {}", card.fingerprint());
    outln!("previous fingerprint: {}", prev.fingerprint());
    outln!("card: {}", home.path("card.note").display());
    outln!(
        "card chain for partners (`rogatory trust add`): {}",
        chain_path.display()
    );
    outln!("retired age secrets: {}", retired.display());
    outln!(
        "then `agency export-relay --update DIR` for this agency's relay home, and restart the relay"
    );
    Ok(())
}

/// The name of a retired identity file: the new card's `valid_from` as `YYYYMMDDTHHMMSSZ`.
fn retired_stem(valid_from: Option<Timestamp>) -> String {
    valid_from
        .map(|t| t.to_string().replace([':', '-'], ""))
        .unwrap_or_default()
}
