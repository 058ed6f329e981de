//! The encrypted contents of a transfer (`custody.md` §5.4): file names, plaintext digests, notes
//! and the legal fields the relay does not see, age-encrypted to the recipients and bound to the
//! sealed manifest by its digests.

use std::io::Read as _;

use rogatory_custody::{Inventory, MAX_MANIFEST_LEN, Manifest, TransferId};
use rogatory_envelope::{AnyIdentity, DecryptError, Decryptor};

use crate::error::{Error, ErrorKind, Result};

/// Checks the encrypted contents against the sealed manifest, decrypts them with this agency's
/// age identities and joins them with the manifest. Returns the inventory and the contents'
/// JSON (what the recipient's package keeps).
pub fn open(
    t: TransferId,
    manifest: &Manifest,
    ciphertext: &[u8],
    identities: &[AnyIdentity],
) -> Result<(Inventory, Vec<u8>)> {
    let bad = |what: &str| Error::new(ErrorKind::Integrity, format!("{t}: the contents {what}"));
    if !manifest.holds_contents_ciphertext(ciphertext) {
        return Err(bad("are not the ones the sender sealed"));
    }
    let reader = Decryptor::new(ciphertext)
        .and_then(|d| d.decrypt(identities))
        .map_err(|e| match e {
            DecryptError::NoMatch => Error::new(
                ErrorKind::NoKey,
                format!("{t}: the contents are not encrypted to this agency's age identity"),
            ),
            e => bad("cannot be decrypted").source(e),
        })?;
    let mut json = Vec::with_capacity(ciphertext.len());
    reader
        .take(MAX_MANIFEST_LEN as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|e| bad("cannot be decrypted").source(e))?;
    let inventory = manifest
        .open_contents(&json)
        .map_err(|e| bad("do not match the sealed manifest").source(e))?;
    Ok((inventory, json))
}
